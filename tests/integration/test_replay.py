"""Issue 6 on a real broker: replay a time range with "only failed" after fixing a bug,
resume a replay across a processor crash without duplicates, live traffic during a replay,
dry runs, and rerun (from the start and from a step)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, TopicPartition

from sluicegate.partitioning import partition_for
from sluicegate.processors.replay_plan import CHUNK_EVENTS
from sluicegate.sdk import NonRetriableError, TriggerEvent

from polling import wait_until as _wait

if TYPE_CHECKING:
    from conftest import Engine




def _replay(engine: "Engine", body: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    r = engine.http.post("/v1/replays", json=body)
    assert r.status_code == 202, r.text
    replay_id = r.json()["id"]
    final: dict[str, Any] = {}

    def done() -> bool:
        got = engine.http.get(f"/v1/replays/{replay_id}")
        if got.status_code == 200:
            final.update(got.json())
        return final.get("status") in ("done", "cancelled", "failed")

    _wait(done, timeout, f"replay {replay_id}")
    return final


def _runs(engine: "Engine", event_id: str) -> list[dict[str, Any]]:
    return engine.runs_for_event(event_id)


def test_fix_the_bug_then_replay_only_the_failed_events(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg = engine.app("replay-fix")
    fixed = threading.Event()
    executions: Counter[int] = Counter()
    lock = threading.Lock()

    @sg.function(id="import-row", trigger=TriggerEvent(event="row.imported"), retries=0)
    def import_row(ctx: Any, step: Any) -> int:
        n = ctx.event["data"]["n"]

        def work() -> int:
            with lock:
                executions[n] += 1
            if n % 2 and not fixed.is_set():
                raise NonRetriableError(f"bug: odd row {n}")
            return n
        return step.run("import", work)

    engine.start_worker(sg)
    since = int(time.time() * 1000) - 1
    ids = sg.send([{"name": "row.imported", "data": {"n": n}} for n in range(20)])
    finals = {eid: engine.wait_run(eid) for eid in ids}
    until = int(time.time() * 1000) + 1
    failed = {eid for eid, run in finals.items() if run["status"] == "failed"}
    assert len(failed) == 10

    dry = engine.http.post("/v1/replays", json={"app_id": sg.app_id, "since": since, "until": until,
                                                 "only_failed": True, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert (dry.json()["events_read"], dry.json()["would_run"]) == (20, 10)

    fixed.set()  # "deploy the fix"
    progress = _replay(engine, {"app_id": sg.app_id, "functions": ["import-row"], "since": since, "until": until,
                                "only_failed": True})
    assert (progress["status"], progress["events_read"]) == ("done", 20)
    _wait(lambda: engine.http.get(f"/v1/replays/{progress['id']}").json()["runs_created"] == 10, 30,
          "the tallies of the runs not replayed")
    for eid in ids:
        runs = _runs(engine, eid)
        replayed = [r for r in runs if r.get("replay_id") == progress["id"]]
        if eid in failed:
            _wait(lambda: all(r["status"] == "completed" for r in _runs(engine, eid) if r.get("replay_id")), 30,
                  "the replayed run")
            replayed = [r for r in _runs(engine, eid) if r.get("replay_id")]
            assert len(replayed) == 1 and replayed[0]["replay_of"] == finals[eid]["run_id"]
        else:
            assert replayed == []
    n_by_event = {finals[eid]["output"] if eid not in failed else None for eid in ids}
    assert len(n_by_event) == 11  # 10 outputs plus None
    assert sorted(executions.values()) == [1] * 10 + [2] * 10  # only the failed ones ran again


def test_a_replay_resumes_after_a_processor_crash_without_duplicates(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg = engine.app("replay-crash")
    executions: Counter[int] = Counter()
    lock = threading.Lock()

    @sg.function(id="count", trigger=TriggerEvent(event="tick"))
    def count(ctx: Any, step: Any) -> int:
        def work() -> int:
            with lock:
                executions[ctx.event["data"]["n"]] += 1
            return 1
        return step.run("count", work)

    engine.start_worker(sg)
    since = int(time.time() * 1000) - 1
    ids = sg.send([{"name": "tick", "data": {"n": n}} for n in range(60)])
    for eid in ids:
        engine.wait_run(eid)
    until = int(time.time() * 1000) + 1
    r = engine.http.post("/v1/replays", json={"app_id": sg.app_id, "since": since, "until": until, "pace": 20})
    assert r.status_code == 202, r.text
    replay_id = r.json()["id"]
    _wait(lambda: engine.http.get(f"/v1/replays/{replay_id}").json().get("events_read", 0) >= 20
          if engine.http.get(f"/v1/replays/{replay_id}").status_code == 200 else False, 30, "a third of the replay")
    processor = engine.processor
    processor.kill()
    processor.start()
    final: dict[str, Any] = {}

    def done() -> bool:
        got = engine.http.get(f"/v1/replays/{replay_id}")
        final.update(got.json() if got.status_code == 200 else {})
        return final.get("status") == "done"

    _wait(done, 60, "the replay to finish after the restart")
    assert final["runs_created"] == 60
    _wait(lambda: sum(executions.values()) >= 120, 60, "the replayed runs")
    time.sleep(1.0)
    assert executions == Counter({n: 2 for n in range(60)})  # the original run and exactly one replayed run
    for eid in ids:
        assert len([x for x in _runs(engine, eid) if x.get("replay_id") == replay_id]) == 1


def _routed_everything(engine: "Engine", app_id: str) -> bool:
    """The processor has committed every event of the app's ``sg.events`` partition so far
    (its router has seen them all)."""
    topic = engine.settings.events_topic
    tp = TopicPartition(topic, partition_for(app_id, engine.settings.partitions))
    c = Consumer({"bootstrap.servers": engine.settings.bootstrap_servers, "group.id": engine.settings.processor_id,
                  "enable.auto.commit": False})
    try:
        end = c.get_watermark_offsets(tp, timeout=10)[1]
        [committed] = c.committed([tp], timeout=10)
        return committed.offset >= end
    finally:
        c.close()


def test_live_events_keep_their_turn_during_a_replay_of_20k_events(engine_cleanup: "Engine") -> None:
    """The B4 bound in behaviour (DESIGN invariant 3): a live event sent while a replay of
    20,000 events is under way starts after at most one replay chunk and one window of the
    function's replayed runs, not after the replay. The history is sent before the function
    is registered (so it started no runs of its own), then replayed through it. Ordering comes
    from the steps themselves (one monotonic clock: the worker runs in this process); no
    speed is asserted."""
    engine = engine_cleanup
    sg = engine.app("replay-live")
    history = 20_000
    limit = 4
    lock = threading.Lock()
    starts: list[tuple[float, bool]] = []  # (when its step started, live)

    def body(live: bool) -> str:
        with lock:
            starts.append((time.monotonic(), live))
        time.sleep(0.005)
        return "ok"

    @sg.function(id="work", trigger=TriggerEvent(event="job"), concurrency=limit)
    def work(ctx: Any, step: Any) -> str:
        return step.run("w", lambda: body(bool(ctx.event["data"].get("live"))))

    since = int(time.time() * 1000) - 1
    for first in range(0, history, 5_000):
        sg.send([{"name": "job", "data": {"n": n}} for n in range(first, first + 5_000)])
    until = int(time.time() * 1000) + 1
    _wait(lambda: _routed_everything(engine, sg.app_id), 120, "the router to pass the history")
    engine.start_worker(sg, concurrency=limit)  # registers the function: the history ran nothing
    r = engine.http.post("/v1/replays", json={"app_id": sg.app_id, "since": since, "until": until})
    assert r.status_code == 202, r.text
    replay_id = r.json()["id"]
    try:
        _wait(lambda: len(starts) >= 200, 120, "the replay to be under way")  # the rest is backlogged
        [live] = sg.send({"name": "job", "data": {"live": True}})
        with lock:  # acknowledged: accepted into sg.events; later starts are stamped after this
            sent, pending = time.monotonic(), history - len(starts)
        assert pending > CHUNK_EVENTS + engine.settings.dispatch_window  # a FIFO queue would start them all first
        live_run = engine.wait_run(live, timeout=120)
        assert live_run["status"] == "completed"
        replay_state = engine.http.get(f"/v1/replays/{replay_id}").json()
        with lock:
            [live_start] = [t for t, is_live in starts if is_live]
            replayed = [t for t, is_live in starts if not is_live]
        ahead = sum(1 for t in replayed if sent < t < live_start)
        print(f"live run started {(live_start - sent) * 1000:.0f} ms after it was accepted, after {ahead} replayed "
              f"starts; {pending} were still to start; replay at {replay_state['events_read']}/"
              f"{replay_state['total']} events")
        # what may go first: the replay's one chunk of triggers waiting ahead of it in the
        # function's partition (each run they start, and the results handled meanwhile, start
        # replayed runs), then one window; one FIFO queue would start the whole backlog first
        window = engine.settings.dispatch_window
        assert ahead <= CHUNK_EVENTS + window, f"{ahead} replayed runs started between its acceptance and its start"
        assert replay_state["status"] == "running" and replay_state["total"] == history
    finally:
        engine.http.delete(f"/v1/replays/{replay_id}")  # the rest of the replay is not this test's


def test_a_replay_of_slow_steps_leaves_live_runs_a_share_of_the_window(engine_cleanup: "Engine") -> None:
    """Replayed runs hold at most ``replay_window_share`` of the app's window; a live event
    sent while that share is full of long steps starts at once, without waiting for one."""
    engine = engine_cleanup
    settings = engine.settings
    share = int(settings.dispatch_window * settings.replay_window_share)
    assert 0 < share < settings.dispatch_window  # the engine's settings leave room for live work
    sg = engine.app("replay-share")
    lock = threading.Lock()
    release = threading.Event()
    holding = {"now": 0, "most": 0, "blocking": False}
    live_started: list[float] = []

    @sg.function(id="slow", trigger=TriggerEvent(event="slow.job"))
    def slow(ctx: Any, step: Any) -> str:
        def body() -> str:
            if ctx.event["data"].get("live"):
                live_started.append(time.monotonic())
                return "live"
            with lock:
                if not holding["blocking"]:
                    return "history"
                holding["now"] += 1
                holding["most"] = max(holding["most"], holding["now"])
            try:
                release.wait(60)  # a long step (the worker heartbeats its lease meanwhile)
            finally:
                with lock:
                    holding["now"] -= 1
            return "replayed"
        return step.run("s", body)

    n = share + 12
    engine.start_worker(sg, concurrency=settings.dispatch_window + 8)
    since = int(time.time() * 1000) - 1
    ids = sg.send([{"name": "slow.job", "data": {"n": i}} for i in range(n)])
    for eid in ids:
        engine.wait_run(eid, timeout=60)
    until = int(time.time() * 1000) + 1
    with lock:
        holding["blocking"] = True
    try:
        r = engine.http.post("/v1/replays", json={"app_id": sg.app_id, "since": since, "until": until})
        assert r.status_code == 202, r.text
        replay_id = r.json()["id"]
        _wait(lambda: holding["now"] == share, 60, f"{share} replayed steps executing")
        time.sleep(1.0)  # the rest of the replay stays in its backlog
        assert holding["now"] == share and holding["most"] == share
        [live] = sg.send({"name": "slow.job", "data": {"live": True}})
        run = engine.wait_run(live, timeout=30)
        assert run["status"] == "completed" and run["output"] == "live"
        assert holding["now"] == share and not release.is_set()  # it went while the share was full
        # why the replayed runs wait (the queue figures are published once a second)
        seen: dict[str, Any] = {}

        def reported() -> bool:
            seen.update(engine.http.get(f"/v1/functions/{sg.app_id}/slow/queue").json())
            return seen.get("backlog") == n - share and seen.get("in_flight") == share
        _wait(reported, 10, "the queue figures of the full share")
        assert seen["waiting"] == {"window_full": n - share}, seen
    finally:
        release.set()
    _wait(lambda: engine.http.get(f"/v1/replays/{replay_id}").json().get("status") == "done", 60, "the replay")

    def all_replayed() -> bool:
        return all([x["status"] for x in _runs(engine, eid) if x.get("replay_id") == replay_id] == ["completed"]
                   for eid in ids)
    _wait(all_replayed, 60, "one completed replayed run per event")
    assert holding["most"] == share  # never more than the share at once


def test_rerun_from_the_start_and_from_a_step(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg = engine.app("rerun")
    calls: Counter[str] = Counter()

    @sg.function(id="pipeline", trigger=TriggerEvent(event="pipe"))
    def pipeline(ctx: Any, step: Any) -> list[str]:
        a = step.run("extract", lambda: calls.update(["extract"]) or "E")
        b = step.run("transform", lambda: calls.update(["transform"]) or a + "T")
        return [a, b, step.run("load", lambda: calls.update(["load"]) or b + "L")]

    engine.start_worker(sg)
    [eid] = sg.send({"name": "pipe"})
    original = engine.wait_run(eid)
    assert original["output"] == ["E", "ET", "ETL"]
    bad = engine.http.post(f"/v1/runs/{original['run_id']}/rerun", json={"from_step": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "from_step"
    r = engine.http.post(f"/v1/runs/{original['run_id']}/rerun", json={"from_step": "transform"})
    assert r.status_code == 202, r.text
    new_id = r.json()["run_id"]
    _wait(lambda: engine.http.get(f"/v1/runs/{new_id}").status_code == 200
          and engine.http.get(f"/v1/runs/{new_id}").json()["status"] == "completed", 30, "the rerun")
    rerun = engine.http.get(f"/v1/runs/{new_id}").json()
    assert rerun["rerun_of"] == original["run_id"] and rerun["output"] == ["E", "ET", "ETL"]
    assert calls == Counter({"extract": 1, "transform": 2, "load": 2})
    r = engine.http.post(f"/v1/runs/{original['run_id']}/rerun")
    assert r.status_code == 202
    again = r.json()["run_id"]
    _wait(lambda: engine.http.get(f"/v1/runs/{again}").status_code == 200
          and engine.http.get(f"/v1/runs/{again}").json()["status"] == "completed", 30, "the full rerun")
    assert calls == Counter({"extract": 2, "transform": 3, "load": 3})


def test_events_retention_follows_the_setting_on_an_existing_topic(engine: "Engine") -> None:
    from confluent_kafka.admin import ConfigResource

    from sluicegate.topics import admin, apply_events_retention

    settings = engine.settings.model_copy(update={"events_retention_ms": 8 * 24 * 3600 * 1000})

    def retention() -> str:
        resource = ConfigResource(ConfigResource.Type.TOPIC, settings.events_topic)
        client = admin(settings)  # keep the handle alive until the answer is in
        return client.describe_configs([resource])[resource].result(30)["retention.ms"].value

    try:
        assert apply_events_retention(settings) is True
        assert retention() == str(8 * 24 * 3600 * 1000)
        assert apply_events_retention(settings) is False  # already so
    finally:
        apply_events_retention(engine.settings)
    assert retention() == str(engine.settings.events_retention_ms)


def test_a_cancelled_replay_stops_reading(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg = engine.app("replay-cancel")

    @sg.function(id="noop", trigger=TriggerEvent(event="noop"))
    def noop(ctx: Any, step: Any) -> int:
        return step.run("n", lambda: 1)

    engine.start_worker(sg)
    since = int(time.time() * 1000) - 1
    ids = sg.send([{"name": "noop", "data": {"n": n}} for n in range(40)])
    engine.wait_run(ids[-1])
    r = engine.http.post("/v1/replays", json={"app_id": sg.app_id, "since": since, "pace": 5})
    assert r.status_code == 202, r.text
    replay_id = r.json()["id"]
    assert engine.http.delete("/v1/replays/not-a-replay").status_code == 404
    _wait(lambda: engine.http.get(f"/v1/replays/{replay_id}").status_code == 200, 30, "the replay to start")
    cancelled = engine.http.delete(f"/v1/replays/{replay_id}")
    assert cancelled.status_code == 202, cancelled.text
    final = _wait(lambda: (lambda b: b if b.get("status") == "cancelled" else None)(
        engine.http.get(f"/v1/replays/{replay_id}").json()), 30, "the cancellation")
    time.sleep(2.0)  # at 5 events/s, a replay still reading would have moved on by now
    after = engine.http.get(f"/v1/replays/{replay_id}").json()
    assert after["status"] == "cancelled" and after["events_read"] == final["events_read"] < 40


def test_a_paced_replay_reads_no_faster_than_its_pace(engine_cleanup: "Engine") -> None:
    """``pace`` is a rate limit on events read: at every moment the replay has read at most
    pace × elapsed + one tick's chunk (processors/replay_plan.py ``chunk_events``)."""
    engine = engine_cleanup
    sg = engine.app("replay-pace")
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    @sg.function(id="count", trigger=TriggerEvent(event="tick"))
    def count(ctx: Any, step: Any) -> None:
        n = int(ctx.event["data"]["n"])

        def note() -> None:
            with lock:
                seen[n] += 1

        step.run("note", note)

    engine.start_worker(sg)
    since = int(time.time() * 1000) - 1
    ids = sg.send([{"name": "tick", "data": {"n": n}} for n in range(60)])
    engine.wait_run(ids[-1])
    _wait(lambda: len(seen) == 60, 30, "the original runs")
    pace, chunk = 20, 5  # 20 events/s: a chunk of 5 every 250 ms
    posted = time.monotonic()
    r = engine.http.post("/v1/replays", json={"app_id": sg.app_id, "since": since, "pace": pace})
    assert r.status_code == 202, r.text
    replay_id = r.json()["id"]
    samples: list[tuple[float, int]] = []
    final: dict[str, Any] = {}

    def done() -> bool:
        got = engine.http.get(f"/v1/replays/{replay_id}")
        if got.status_code != 200:
            return False
        body = got.json()
        samples.append((time.monotonic() - posted, int(body["events_read"])))
        final.update(body)
        return body["status"] == "done"

    _wait(done, 60, "the paced replay", interval=0.05)
    took = samples[-1][0]
    assert final["runs_created"] == 60 and samples[-1][1] >= 60, final
    over = [(round(t, 2), n) for t, n in samples if n > pace * t + chunk]
    assert not over, f"read ahead of the pace at {over}"
    assert took >= (60 - chunk) / pace, took
    _wait(lambda: all(seen[n] == 2 for n in range(60)), 30, "every event's replayed run")
