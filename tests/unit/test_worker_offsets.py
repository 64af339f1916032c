"""The worker's offset and lease bookkeeping, and its poll loop over a fake consumer and producer.

No broker: the tracker and the heartbeat rule are pure; the loop test swaps the worker's
``Consumer`` and ``SyncProducer`` for in-memory fakes and drives job completion by hand.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

import pytest
from pydantic import ValidationError

import sluicegate.sdk.worker as worker_module
from sluicegate.sdk import Sluicegate
from sluicegate.sdk.offset_tracking import LeaseClock, OffsetTracker, due_heartbeats
from sluicegate.sdk.worker import MAX_CONCURRENCY, Worker, check_concurrency
from sluicegate.settings import Settings
from sluicegate.wire import Job, command_adapter

# -- offset tracker --------------------------------------------------------------------------

# Each step: ("start" | "done" | "forget", partition, offset, what `done` returns).
Step = tuple[str, int, int, int | None]

TRACKER_CASES: dict[str, list[Step]] = {
    "in order": [
        ("start", 0, 10, None), ("start", 0, 11, None),
        ("done", 0, 10, 11), ("done", 0, 11, 12),
    ],
    "out of order: commits only the contiguous prefix": [
        ("start", 0, 10, None), ("start", 0, 11, None), ("start", 0, 12, None),
        ("done", 0, 12, None), ("done", 0, 11, None), ("done", 0, 10, 13),
    ],
    "out of order: a later prefix": [
        ("start", 0, 10, None), ("start", 0, 11, None), ("start", 0, 12, None),
        ("done", 0, 11, None), ("done", 0, 10, 12), ("done", 0, 12, 13),
    ],
    "gaps in the offsets (transaction markers) are not waited for": [
        ("start", 0, 10, None), ("start", 0, 13, None), ("start", 0, 20, None),
        ("done", 0, 13, None), ("done", 0, 10, 14), ("done", 0, 20, 21),
    ],
    "several partitions are independent": [
        ("start", 0, 5, None), ("start", 1, 5, None), ("start", 0, 6, None), ("start", 1, 6, None),
        ("done", 1, 6, None), ("done", 0, 5, 6), ("done", 1, 5, 7), ("done", 0, 6, 7),
    ],
    "a duplicate done changes nothing": [
        ("start", 0, 10, None), ("start", 0, 11, None),
        ("done", 0, 10, 11), ("done", 0, 10, None), ("done", 0, 11, 12), ("done", 0, 11, None),
    ],
    "done before started is ignored, not remembered": [
        ("done", 0, 10, None), ("done", 3, 1, None),
        ("start", 0, 10, None), ("start", 0, 11, None),
        ("done", 0, 11, None), ("done", 0, 12, None), ("done", 0, 10, 12),
    ],
    "a lower start means the consumer went back: the partition starts over": [
        ("start", 0, 10, None), ("start", 0, 11, None), ("done", 0, 11, None),
        ("start", 0, 10, None), ("done", 0, 11, None), ("done", 0, 10, 11),
    ],
    "a revoked partition forgets its jobs": [
        ("start", 0, 10, None), ("start", 1, 10, None), ("forget", 0, 0, None),
        ("done", 0, 10, None), ("done", 1, 10, 11),
    ],
}


@pytest.mark.parametrize("steps", TRACKER_CASES.values(), ids=TRACKER_CASES.keys())
def test_offset_tracker(steps: list[Step]) -> None:
    tracker = OffsetTracker()
    for i, (op, partition, offset, expected) in enumerate(steps):
        if op == "start":
            tracker.started(partition, offset)
        elif op == "forget":
            tracker.forget(partition)
        else:
            assert tracker.done(partition, offset) == expected, f"step {i}: {op} {partition}:{offset}"


def test_offset_tracker_counts_running_jobs() -> None:
    tracker = OffsetTracker()
    for offset in (1, 2, 3):
        tracker.started(0, offset)
    tracker.done(0, 2)
    assert (tracker.running(0), tracker.running(1)) == (2, 0)


# -- heartbeats -------------------------------------------------------------------------------

# (lease_ms, last_beat_ms, now_ms, due): times are monotonic ms
HEARTBEAT_CASES = [
    pytest.param(0, 0, 10**9, False, id="no lease: never"),
    pytest.param(-1, 0, 10**9, False, id="negative lease: never"),
    pytest.param(30_000, 0, 0, False, id="just started"),
    pytest.param(30_000, 0, 9_999, False, id="before a third of the lease"),
    pytest.param(30_000, 0, 10_000, True, id="at a third of the lease"),
    pytest.param(30_000, 0, 25_000, True, id="long after"),
    pytest.param(30_000, 10_000, 19_999, False, id="after a heartbeat: a third from it"),
    pytest.param(30_000, 10_000, 20_000, True, id="a third after the last heartbeat"),
    pytest.param(1_000, 500, 832, False, id="1 s lease: 333 ms interval, 332 ms"),
    pytest.param(1_000, 500, 833, True, id="1 s lease: 333 ms interval, 333 ms"),
    pytest.param(30_000, 5_000, 0, False, id="last beat in the future (clock mapped ahead)"),
]


@pytest.mark.parametrize(("lease_ms", "last_beat_ms", "now_ms", "due"), HEARTBEAT_CASES)
def test_heartbeat_due(lease_ms: int, last_beat_ms: int, now_ms: int, due: bool) -> None:
    assert due_heartbeats({"job": LeaseClock(lease_ms, last_beat_ms)}, now_ms) == (["job"] if due else [])


def test_due_heartbeats_picks_the_due_jobs_in_order() -> None:
    leases = {"a": LeaseClock(3_000, 0), "b": LeaseClock(0, 0), "c": LeaseClock(3_000, 900),
              "d": LeaseClock(600, 800)}
    assert due_heartbeats(leases, 1_000) == ["a", "d"]


# -- worker construction ---------------------------------------------------------------------


class FakeProducer:
    """Records what is produced; ``poll``/``flush`` deliver everything pending (or fail it)."""

    def __init__(self, _bootstrap: str = "") -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.fail_next = False
        self._pending: deque[tuple[Callable[..., None] | None, Any]] = deque()
        self._lock = threading.Lock()

    def produce(self, topic: str, key: str, value: bytes, partitions: int,
                on_delivery: Callable[..., None] | None) -> None:
        with self._lock:
            self.sent.append((topic, key, value))
            err = FakeError() if self.fail_next else None
            self.fail_next = False
            self._pending.append((on_delivery, err))

    def send_many(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    @property
    def raw(self) -> "FakeProducer":
        return self

    def poll(self, _timeout: float = 0) -> int:
        with self._lock:
            pending, self._pending = list(self._pending), deque()
        for callback, err in pending:
            if callback is not None:
                callback(err, None)
        return len(pending)

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return 0

    def commands(self) -> list[Any]:
        with self._lock:
            return [command_adapter.validate_json(value) for _topic, _key, value in self.sent]


class FakeError:
    def str(self) -> str:
        return "broker said no"


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._partition, self._offset, self._value = partition, offset, value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class FakeConsumer:
    instances: list["FakeConsumer"] = []
    messages: list[FakeMessage] = []

    def __init__(self, _conf: dict[str, Any]) -> None:
        self.queue = deque(FakeConsumer.messages)
        self.stored: list[tuple[int, int]] = []
        self.closed = False
        FakeConsumer.instances.append(self)

    def subscribe(self, _topics: list[str], **_callbacks: Any) -> None:
        pass

    def poll(self, timeout: float) -> FakeMessage | None:
        if self.queue:
            return self.queue.popleft()
        time.sleep(min(timeout, 0.005))
        return None

    def store_offsets(self, offsets: list[Any]) -> None:
        self.stored.extend((tp.partition, tp.offset) for tp in offsets)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> type[FakeConsumer]:
    monkeypatch.setattr(worker_module, "SyncProducer", FakeProducer)
    monkeypatch.setattr(worker_module, "Consumer", FakeConsumer)
    FakeConsumer.instances = []
    FakeConsumer.messages = []
    return FakeConsumer


@pytest.mark.parametrize("value", [0, -1, MAX_CONCURRENCY + 1, 2.5, "8", True, None])
def test_concurrency_out_of_range_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ValueError, match=rf"concurrency must be an integer from 1 to {MAX_CONCURRENCY}"):
        check_concurrency(value)


@pytest.mark.parametrize("value", [0, 1001])
def test_worker_refuses_a_bad_concurrency_before_touching_kafka(value: int) -> None:
    # validation comes before the producer is made: no broker needed for this
    with pytest.raises(ValueError, match="concurrency .* 1 to 1000"):
        Worker(Sluicegate(app_id="shop"), concurrency=value)


def test_concurrency_defaults_to_the_setting(fakes: type[FakeConsumer]) -> None:
    sg = Sluicegate(app_id="shop", settings=Settings(worker_concurrency=3))
    assert Worker(sg).concurrency == 3
    assert Worker(sg, concurrency=1000).concurrency == 1000
    assert Settings().worker_concurrency == 8


@pytest.mark.parametrize("value", [0, 1001])
def test_the_setting_has_the_same_limits(value: int) -> None:
    with pytest.raises(ValidationError, match="worker_concurrency"):
        Settings(worker_concurrency=value)


def test_the_setting_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_WORKER_CONCURRENCY", "16")
    assert Settings().worker_concurrency == 16


# -- the poll loop ---------------------------------------------------------------------------


def make_job(run_id: str, *, lease_ms: int = 0) -> bytes:
    return Job(job_id=f"job-{run_id}", app_id="shop", function_id="fn", run_id=run_id, attempt=1,
               max_attempts=3, events=[{"name": "order.placed", "data": {}}],
               dispatched_at=int(time.time() * 1000), lease_id=f"lease-{run_id}", lease_ms=lease_ms).dumps()


def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_jobs_run_at_once_and_offsets_wait_for_the_earlier_outcomes(fakes: type[FakeConsumer]) -> None:
    gates = {run: threading.Event() for run in ("a", "b", "c", "d")}
    entered: list[str] = []
    sg = Sluicegate(app_id="shop")

    @sg.function(id="fn", trigger="order.placed")
    def fn(ctx: Any, step: Any) -> str:
        entered.append(ctx.run_id)
        assert gates[ctx.run_id].wait(5)
        return ctx.run_id

    fakes.messages = [FakeMessage(0, 10, make_job("a", lease_ms=300)), FakeMessage(0, 11, make_job("b")),
                      FakeMessage(0, 12, b"not json"), FakeMessage(0, 13, make_job("c")),
                      FakeMessage(0, 14, make_job("d"))]
    worker = Worker(sg, concurrency=3)
    producer: FakeProducer = worker._producer  # type: ignore[assignment]
    thread = threading.Thread(target=worker.run, kwargs={"register": False}, daemon=True)
    thread.start()
    consumer = None
    try:
        eventually(lambda: sorted(entered) == ["a", "b", "c"], "three jobs running")
        consumer = fakes.instances[0]
        time.sleep(0.05)
        assert list(consumer.queue) and sorted(entered) == ["a", "b", "c"], "the fourth job waits for a slot"

        gates["c"].set()
        gates["b"].set()
        eventually(lambda: worker.jobs_done == 2 and "d" in entered, "b and c done, d started")
        time.sleep(0.05)
        assert consumer.stored == [], "a is still running: nothing may be committed"

        # a runs longer than a third of its 300 ms lease: it is heartbeated, with its lease id
        eventually(lambda: any(c.kind == "heartbeat" for c in producer.commands()), "a heartbeat")
        beats = [c for c in producer.commands() if c.kind == "heartbeat"]
        assert {(b.run_id, b.lease_id, b.worker_id) for b in beats} == {("a", "lease-a", worker.worker_id)}

        gates["a"].set()
        eventually(lambda: consumer.stored and consumer.stored[-1] == (0, 14), "offsets up to d")
        assert consumer.stored == [(0, 14)]
        gates["d"].set()
        eventually(lambda: consumer.stored[-1] == (0, 15), "the offset after d")
    finally:
        for gate in gates.values():
            gate.set()
        worker.stop(5)
    assert not thread.is_alive() and consumer is not None and consumer.closed
    outcomes = {c.run_id: c for c in producer.commands() if c.kind == "outcome"}
    assert {run: (o.op, o.data, o.lease_id) for run, o in outcomes.items()} == {
        "a": ("run_ok", "a", "lease-a"), "b": ("run_ok", "b", "lease-b"),
        "c": ("run_ok", "c", "lease-c"), "d": ("run_ok", "d", "lease-d")}
    assert worker.jobs_done == 4


def test_stop_waits_for_running_jobs_and_stores_their_offsets(fakes: type[FakeConsumer]) -> None:
    release = threading.Event()
    sg = Sluicegate(app_id="shop")

    @sg.function(id="fn", trigger="order.placed")
    def fn(ctx: Any, step: Any) -> str:
        release.wait(5)
        return "ok"

    fakes.messages = [FakeMessage(2, 7, make_job("a")), FakeMessage(2, 8, make_job("b"))]
    worker = Worker(sg, concurrency=2)
    thread = threading.Thread(target=worker.run, kwargs={"register": False}, daemon=True)
    thread.start()
    eventually(lambda: bool(fakes.instances) and not fakes.instances[0].queue, "both jobs taken")
    threading.Timer(0.1, release.set).start()
    worker.stop(5)
    assert not thread.is_alive()
    assert worker.jobs_done == 2
    stored = fakes.instances[0].stored
    assert stored[-1] == (2, 9) and stored == sorted(set(stored))  # a and b may finish in either order


def test_a_lost_outcome_stops_the_worker_without_moving_past_it(fakes: type[FakeConsumer]) -> None:
    sg = Sluicegate(app_id="shop")
    sg.function(id="fn", trigger="order.placed")(lambda ctx, step: "ok")
    fakes.messages = [FakeMessage(0, 1, make_job("a"))]
    worker = Worker(sg, concurrency=2)
    worker._producer.fail_next = True  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="could not be delivered: broker said no"):
        worker.run(register=False)
    assert fakes.instances[0].stored == [] and fakes.instances[0].closed
