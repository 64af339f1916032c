"""Issue 5 on a real broker: sleep, wait_for_event (with lookback), invoke, send_event,
cancellation by event, timeouts, on_failure / on_cancel."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from confluent_kafka import Consumer, TopicPartition

from sluicegate.kafka_clients import make_producer
from sluicegate.partitioning import function_key, partition_for
from sluicegate.processors.wait_router import control_drop
from sluicegate.sdk import Cancel, NonRetriableError, StepError, Timeouts, TriggerEvent
from sluicegate.system_events import CANCELLED_EVENT

from polling import wait_until as _wait

if TYPE_CHECKING:
    from conftest import Engine




def test_a_sleep_of_2_s_survives_a_processor_restart_and_resumes_on_time(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("sleep")
    woke: list[float] = []

    @sg.function(id="nap", trigger=TriggerEvent(event="nap.start"))
    def nap(ctx: Any, step: Any) -> str:
        step.sleep("two-seconds", 2000)
        return step.run("after", lambda: woke.append(time.time() * 1000) or "awake")

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "nap.start"})
    run = engine_cleanup.wait_run(event_id, until=lambda r: any(s["status"] == "sleeping" for s in r.get("steps", [])))
    sleeping = [s for s in run["steps"] if s["status"] == "sleeping"]
    assert [(s["id"], s["kind"]) for s in sleeping] == [("two-seconds", "sleep")]
    due = sleeping[0]["until"]
    processor = engine_cleanup.processor
    processor.kill()
    processor.start()
    run = engine_cleanup.wait_run(event_id, timeout=60)
    assert (run["status"], run["output"]) == ("completed", "awake")
    assert [s["id"] for s in run["steps"]] == ["two-seconds", "after"]
    assert len(woke) == 1
    lateness = woke[0] - due
    print(f"sleep lateness across a processor restart: {lateness:.0f} ms")
    assert lateness >= 0


def test_wait_for_event_matches_times_out_and_sees_an_event_sent_right_after_the_trigger(
        engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("wait")

    @sg.function(id="await-payment", trigger=TriggerEvent(event="order.created"))
    def await_payment(ctx: Any, step: Any) -> Any:
        paid = step.wait_for_event("paid", event="order.paid", match="data.order", timeout="4s")
        return None if paid is None else paid["data"]

    engine_cleanup.start_worker(sg)
    # the race (inngest/inngest#1433): the payment is sent immediately after the trigger
    [raced] = sg.send({"name": "order.created", "data": {"order": "o-1"}})
    sg.send({"name": "order.paid", "data": {"order": "o-1", "amount": 5}})
    # a match that arrives while the run waits; an event of another order does not match
    [waits] = sg.send({"name": "order.created", "data": {"order": "o-2"}})
    engine_cleanup.wait_run(waits, until=lambda r: any(s["status"] == "waiting" for s in r.get("steps", [])))
    sg.send({"name": "order.paid", "data": {"order": "o-other", "amount": 1}})
    sg.send({"name": "order.paid", "data": {"order": "o-2", "amount": 7}})
    # no match: the timeout resumes it with None
    [times_out] = sg.send({"name": "order.created", "data": {"order": "o-3"}})

    assert engine_cleanup.wait_run(raced)["output"] == {"order": "o-1", "amount": 5}
    assert engine_cleanup.wait_run(waits)["output"] == {"order": "o-2", "amount": 7}
    run = engine_cleanup.wait_run(times_out, timeout=30)
    assert (run["status"], run.get("output")) == ("completed", None)
    assert run["ended_at"] - run["created_at"] >= 4000


def test_one_event_resumes_every_run_waiting_for_it(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("fanin")

    @sg.function(id="gate", trigger=TriggerEvent(event="job.queued"))
    def gate(ctx: Any, step: Any) -> Any:
        opened = step.wait_for_event("open", event="gate.opened", timeout="30s")
        return opened["data"]["by"] if opened else None

    engine_cleanup.start_worker(sg)
    ids = sg.send([{"name": "job.queued", "data": {"n": n}} for n in range(5)])
    for event_id in ids:
        engine_cleanup.wait_run(event_id, until=lambda r: any(s["status"] == "waiting" for s in r.get("steps", [])))
    sg.send({"name": "gate.opened", "data": {"by": "ops"}})
    assert [engine_cleanup.wait_run(i)["output"] for i in ids] == ["ops"] * 5


def test_invoke_returns_the_callees_result_and_surfaces_its_failure(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("invoke")

    @sg.function(id="square", trigger=TriggerEvent(event="never.sent"))
    def square(ctx: Any, step: Any) -> int:
        return step.run("sq", lambda: ctx.event["data"]["x"] ** 2)

    @sg.function(id="explode", trigger=TriggerEvent(event="never.sent"), retries=0)
    def explode(ctx: Any, step: Any) -> None:
        raise NonRetriableError("kaboom")

    @sg.function(id="caller", trigger=TriggerEvent(event="calc"))
    def caller(ctx: Any, step: Any) -> Any:
        value = step.invoke("square-it", function=square, data={"x": ctx.event["data"]["x"]}, timeout="30s")
        try:
            step.invoke("boom", function="explode", data={})
        except StepError as exc:
            return {"square": value, "error": exc.name, "message": exc.error_message}
        return {"square": value}

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "calc", "data": {"x": 7}})
    run = engine_cleanup.wait_run(event_id, timeout=60)
    assert run["status"] == "completed", run
    assert run["output"] == {"square": 49, "error": "NonRetriableError", "message": "kaboom"}


def test_send_event_fans_out_once(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("fanout")
    got: list[int] = []
    lock = threading.Lock()

    @sg.function(id="child", trigger=TriggerEvent(event="child.go"))
    def child(ctx: Any, step: Any) -> int:
        def record() -> int:
            with lock:
                got.append(ctx.event["data"]["n"])
            return ctx.event["data"]["n"]
        return step.run("record", record)

    @sg.function(id="parent", trigger=TriggerEvent(event="parent.go"))
    def parent(ctx: Any, step: Any) -> list[str]:
        return step.send_event("fan", [{"name": "child.go", "data": {"n": n}} for n in range(3)])

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "parent.go"})
    run = engine_cleanup.wait_run(event_id)
    assert run["status"] == "completed" and len(run["output"]) == 3
    for child_event in run["output"]:
        assert engine_cleanup.wait_run(child_event)["status"] == "completed"
    assert sorted(got) == [0, 1, 2]


def test_cancel_on_an_event_while_sleeping_and_the_on_cancel_handler_runs_once(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("cancelon")
    handled: list[str] = []

    def on_cancel(ctx: Any, step: Any) -> None:
        step.run("note", lambda: handled.append(ctx.event["data"]["run_id"]))

    @sg.function(id="reminder", trigger=TriggerEvent(event="signup"),
                 cancel_on=[Cancel(event="unsubscribed", match="data.user")], on_cancel=on_cancel)
    def reminder(ctx: Any, step: Any) -> str:
        step.sleep("a-day", "1d")
        return step.run("remind", lambda: "sent")

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "signup", "data": {"user": "u-1"}})
    run = engine_cleanup.wait_run(event_id, until=lambda r: any(s["status"] == "sleeping" for s in r.get("steps", [])))
    sg.send({"name": "unsubscribed", "data": {"user": "someone-else"}})
    sg.send({"name": "unsubscribed", "data": {"user": "u-1"}})
    run = engine_cleanup.wait_run(event_id)
    assert run["status"] == "cancelled"
    assert "unsubscribed" in run["error"]["message"]
    _wait(lambda: handled == [run["run_id"]], timeout=30, what="the on_cancel handler")
    time.sleep(1.0)
    assert handled == [run["run_id"]]


def test_timeouts_cancel_a_run_that_does_not_start_or_finish_in_time(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("timeouts")
    release = threading.Event()

    @sg.function(id="slow", trigger=TriggerEvent(event="slow.go"), concurrency=1,
                 timeouts=Timeouts(start="2s", finish="3s"))
    def slow(ctx: Any, step: Any) -> str:
        step.run("first", lambda: release.wait(20) and "ok")
        step.sleep("pause", "10s")
        return "done"

    engine_cleanup.start_worker(sg)
    [first] = sg.send({"name": "slow.go"})
    engine_cleanup.wait_run(first, until=lambda r: r["status"] == "running" and r.get("waiting") is None)
    [second] = sg.send({"name": "slow.go"})  # waits behind concurrency=1 longer than its start timeout
    second_run = engine_cleanup.wait_run(second, timeout=20)
    assert second_run["status"] == "cancelled" and "did not start" in second_run["error"]["message"]
    release.set()
    first_run = engine_cleanup.wait_run(first, timeout=30)
    assert first_run["status"] == "cancelled" and "did not finish" in first_run["error"]["message"]


def test_on_failure_runs_once_with_the_error(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("onfail")
    seen: list[dict[str, Any]] = []

    def on_failure(ctx: Any, step: Any) -> None:
        step.run("note", lambda: seen.append(ctx.event["data"]))

    @sg.function(id="fragile", trigger=TriggerEvent(event="fragile.go"), retries=0, on_failure=on_failure)
    def fragile(ctx: Any, step: Any) -> None:
        step.run("break", lambda: (_ for _ in ()).throw(ValueError("no good")))

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "fragile.go", "data": {"k": 1}})
    run = engine_cleanup.wait_run(event_id)
    assert run["status"] == "failed"
    _wait(lambda: len(seen) == 1, timeout=30, what="the on_failure handler")
    time.sleep(1.0)
    assert len(seen) == 1
    data = seen[0]
    assert data["run_id"] == run["run_id"] and data["event"]["data"] == {"k": 1}
    assert data["error"]["name"] == "StepError" or "no good" in data["error"]["message"]


def test_parallel_steps_are_jobs_of_their_own_each_memoized_and_a_failed_branch_is_retried_alone(
        engine_cleanup: "Engine") -> None:
    from sluicegate.sdk import Retries

    sg = engine_cleanup.app("parallel")
    calls: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    lock = threading.Lock()
    spans: dict[str, tuple[float, float]] = {}
    threads: dict[str, str] = {}

    def branch(name: str, fail_first: bool = False) -> Callable[[], str]:
        def body() -> str:
            with lock:
                calls[name] += 1
                n = calls[name]
            threads[name] = threading.current_thread().name
            start = time.monotonic()
            time.sleep(0.5)
            spans[name] = (start, time.monotonic())
            if fail_first and n == 1:
                raise RuntimeError("flaky")
            return name.upper()
        return body

    @sg.function(id="fan-in", trigger=TriggerEvent(event="par.go"),
                 retries=Retries(attempts=2, backoff=[1000], jitter=0))
    def fan_in(ctx: Any, step: Any) -> str:
        a, b, c = step.parallel([lambda: step.run("a", branch("a")), lambda: step.run("b", branch("b")),
                                 lambda: step.run("c", branch("c", fail_first=True))])
        return step.run("join", lambda: a + b + c)

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "par.go"})
    run = engine_cleanup.wait_run(event_id, timeout=60)
    assert (run["status"], run["output"]) == ("completed", "ABC")
    assert calls == {"a": 1, "b": 1, "c": 2}  # only the failed branch ran again
    # a and b overlapped in time, each in a job of its own (a worker job thread apiece)
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]
    assert len({threads["a"], threads["b"]}) == 2 and all(t.startswith("sg-job-") for t in threads.values())
    steps = {s["id"]: s for s in run["steps"]}
    assert set(steps) == {"a", "b", "c", "join"}
    assert [att["attempt"] for att in steps["c"]["attempts"]] == [0, 1]


def test_each_parallel_branch_holds_its_own_concurrency_slot(engine_cleanup: "Engine") -> None:
    """With a step concurrency of 1, the three branches of one run execute one at a time (each
    is a job that takes the slot); while one executes, the view shows all three running."""
    from sluicegate.sdk import Concurrency

    sg = engine_cleanup.app("parslots")
    lock = threading.Lock()
    active, most = [0], [0]

    def branch(name: str) -> Callable[[], str]:
        def body() -> str:
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.4)
            with lock:
                active[0] -= 1
            return name
        return body

    @sg.function(id="one-slot", trigger=TriggerEvent(event="slots.go"), concurrency=[Concurrency(limit=1)])
    def one_slot(ctx: Any, step: Any) -> str:
        return "".join(step.parallel([lambda n=n: step.run(n, branch(n)) for n in "xyz"]))

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "slots.go"})
    mid = engine_cleanup.wait_run(event_id, until=lambda r: sum(s["status"] == "running" for s in r["steps"]) == 3)
    assert {s["id"] for s in mid["steps"] if s["status"] == "running"} == {"x", "y", "z"}
    run = engine_cleanup.wait_run(event_id, timeout=60)
    assert (run["status"], run["output"], most[0]) == ("completed", "xyz", 1)


def test_parallel_branches_in_flight_survive_a_processor_restart(engine_cleanup: "Engine") -> None:
    """The dispatcher rebuilds each branch job's record after a restart: the branches that
    were executing report to the new processor, none runs twice, and the run completes."""
    sg = engine_cleanup.app("parrestart")
    lock = threading.Lock()
    calls: dict[str, int] = {}
    go = threading.Event()

    def branch(name: str) -> Callable[[], str]:
        def body() -> str:
            with lock:
                calls[name] = calls.get(name, 0) + 1
            go.wait(30)
            return name.upper()
        return body

    @sg.function(id="fan", trigger=TriggerEvent(event="fan.go"))
    def fan(ctx: Any, step: Any) -> str:
        return "".join(step.parallel([lambda n=n: step.run(n, branch(n)) for n in "pqr"]))

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "fan.go"})
    _wait(lambda: len(calls) == 3, timeout=30, what="all three branches executing")
    processor = engine_cleanup.processor
    processor.kill()
    processor.start()
    go.set()
    run = engine_cleanup.wait_run(event_id, timeout=90)
    assert (run["status"], run["output"]) == ("completed", "PQR")
    assert calls == {"p": 1, "q": 1, "r": 1}


def test_cancel_on_while_waiting_for_an_event_and_a_late_match_changes_nothing(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("cancelwait")

    @sg.function(id="approval", trigger=TriggerEvent(event="request.made"),
                 cancel_on=[Cancel(event="request.withdrawn", if_exp="event.data.req == async.data.req")])
    def approval(ctx: Any, step: Any) -> Any:
        return step.wait_for_event("approved", event="request.approved", match="data.req", timeout="1m")

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "request.made", "data": {"req": 42}})
    engine_cleanup.wait_run(event_id, until=lambda r: any(s["status"] == "waiting" for s in r.get("steps", [])))
    sg.send({"name": "request.withdrawn", "data": {"req": 42}})
    run = engine_cleanup.wait_run(event_id)
    assert run["status"] == "cancelled"
    sg.send({"name": "request.approved", "data": {"req": 42}})
    time.sleep(1.5)
    r = engine_cleanup.http.get(f"/v1/runs/{run['run_id']}").json()
    assert r["status"] == "cancelled" and r.get("output") is None


def test_cancel_by_event_while_a_step_executes_discards_its_result(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("cancelexec")
    entered, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def long_step() -> str:
        entered.set()
        release.wait(20)
        finished.append("done")
        return "result"

    @sg.function(id="job", trigger=TriggerEvent(event="job.start"),
                 cancel_on=[Cancel(event="job.stop", match="data.job")])
    def job(ctx: Any, step: Any) -> str:
        return step.run("long", long_step)

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "job.start", "data": {"job": "j1"}})
    assert entered.wait(30)
    sg.send({"name": "job.stop", "data": {"job": "j1"}})
    run = engine_cleanup.wait_run(event_id)
    assert run["status"] == "cancelled"
    release.set()
    _wait(lambda: finished == ["done"], timeout=10, what="the step to finish")
    time.sleep(1.5)  # its outcome has reached the engine by now
    r = engine_cleanup.http.get(f"/v1/runs/{run['run_id']}").json()
    assert r["status"] == "cancelled" and r.get("output") is None and r["steps"] == []
    # the late outcome left the run as it was: its end was announced once, not again for it
    announced = _records_of(engine_cleanup, engine_cleanup.settings.events_topic,
                            partition_for(sg.app_id, engine_cleanup.settings.partitions),
                            CANCELLED_EVENT.encode(), f'"id":"{run["run_id"]}"'.encode())
    assert len(announced) == 1


def test_after_a_processor_restart_a_wait_looks_back_in_kafka_and_a_pending_wait_survives(
        engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("lookback")

    @sg.function(id="pair", trigger=TriggerEvent(event="pair.open"))
    def pair(ctx: Any, step: Any) -> Any:
        other = step.wait_for_event("other", event="pair.close", match="data.pair", timeout="1m")
        return None if other is None else other["data"]["n"]

    engine_cleanup.start_worker(sg)
    [pending] = sg.send({"name": "pair.open", "data": {"pair": "before-restart"}})
    engine_cleanup.wait_run(pending, until=lambda r: any(s["status"] == "waiting" for s in r.get("steps", [])))
    processor = engine_cleanup.processor
    processor.kill()
    sg.send({"name": "pair.close", "data": {"pair": "before-restart", "n": 1}})  # while the engine is down
    processor.start()
    # right after a restart the in-memory lookback is empty: this wait must read Kafka back
    [raced] = sg.send({"name": "pair.open", "data": {"pair": "after-restart"}})
    sg.send({"name": "pair.close", "data": {"pair": "after-restart", "n": 2}})
    assert engine_cleanup.wait_run(pending)["output"] == 1
    assert engine_cleanup.wait_run(raced)["output"] == 2
    assert "looked back over" in processor.tail(20000)


def _records_of(engine: "Engine", topic: str, partition: int, *needles: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of one partition whose value contains all ``needles``."""
    c = Consumer({"bootstrap.servers": engine.settings.bootstrap_servers, "group.id": "sgtest-read-partition",
                  "enable.auto.commit": False})
    try:
        end = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        c.assign([TopicPartition(topic, partition, 0)])
        out: list[tuple[bytes, bytes]] = []
        offset = -1
        while offset < end - 1:
            msg = c.poll(5.0)
            assert msg is not None and msg.error() is None, f"read {topic}[{partition}] up to {offset} of {end}"
            offset = msg.offset()
            if all(n in msg.value() for n in needles):
                out.append((msg.key(), msg.value()))
        return out
    finally:
        c.close()


def test_a_wait_registration_lost_with_a_crashed_processor_is_sent_again_when_its_command_is_read_again(
        engine_cleanup: "Engine") -> None:
    """A processor that dies after writing a command's state but before its outputs reach
    Kafka leaves the run waiting with no waiter at the router. Its successor reads the command
    again, finds the state already written, and must register the wait again. Reproduced on
    the real stack: with the processor down, the waiter is dropped at the router (the lost
    registration) and the command that planned the wait is put back into the span the new
    processor reads again; the matching event goes by meanwhile and must still resume the run
    (the re-registered waiter looks back), long before the wait's 10-minute timeout."""

    sg = engine_cleanup.app("relost")

    @sg.function(id="await-ack", trigger=TriggerEvent(event="ship.requested"))
    def await_ack(ctx: Any, step: Any) -> Any:
        ack = step.wait_for_event("ack", event="ship.acked", match="data.parcel", timeout="10m")
        return None if ack is None else ack["data"]["by"]

    engine_cleanup.start_worker(sg)
    [event_id] = sg.send({"name": "ship.requested", "data": {"parcel": "p-9"}})
    run = engine_cleanup.wait_run(event_id, until=lambda r: any(s["status"] == "waiting" for s in r.get("steps", [])))
    [waiting] = [s for s in run["steps"] if s["status"] == "waiting"]
    wait_id = f"{run['run_id']}:{waiting['hash']}"
    settings = engine_cleanup.settings
    key = function_key(sg.app_id, "await-ack")
    results_partition = partition_for(key, settings.partitions)
    [(outcome_key, outcome)] = _records_of(engine_cleanup, settings.results_topic, results_partition,
                                           run["run_id"].encode(), b'"op":"wait"')

    processor = engine_cleanup.processor
    processor.kill()
    producer = make_producer(settings.bootstrap_servers)
    producer.produce(settings.events_topic, control_drop(wait_id), sg.app_id.encode(),
                     partition=partition_for(sg.app_id, settings.partitions))
    producer.flush(10)
    sg.send({"name": "ship.acked", "data": {"parcel": "p-9", "by": "courier"}})  # after the drop, same partition
    producer.produce(settings.results_topic, outcome, outcome_key, partition=results_partition)
    assert producer.flush(10) == 0
    processor.start()

    done = engine_cleanup.wait_run(event_id, timeout=60)
    assert (done["status"], done["output"]) == ("completed", "courier")
    assert done["ended_at"] - done["created_at"] < 300_000  # resumed by the event, not by the timeout
