"""The processor's consumer gets a short fetch wait and a short prefetch backoff
(processors/faust_tuning.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from sluicegate.processors import faust_tuning


def test_apply_sets_a_short_fetch_wait_on_the_consumer_faust_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    async def start() -> None:  # aiokafka creates its fetcher when the consumer starts
        made._fetcher = SimpleNamespace(_prefetch_backoff=0.1, _fetch_max_wait_ms=1500, _records={},
                                        _get_actions_per_node=lambda a: asked.append(a) or "actions")

    made = SimpleNamespace(_fetch_max_wait_ms=1500, start=start)  # what faust hard-codes
    monkeypatch.setattr(faust_tuning, "_original", lambda self, transport: made)
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer",
                        faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    faust_tuning.apply()
    faust_tuning.apply()  # idempotent
    thread: Any = object.__new__(faust_aiokafka.AIOKafkaConsumerThread)
    consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer(thread, transport=None)
    assert consumer is made and consumer._fetch_max_wait_ms == faust_tuning.FETCH_MAX_WAIT_MS == 20
    asyncio.run(consumer.start())
    assert consumer._fetcher._prefetch_backoff == faust_tuning.PREFETCH_BACKOFF_S == 0.005
    # each time aiokafka plans its fetches, the wait is set first (here: nothing assigned)
    assignment = SimpleNamespace(tps=[], state_value=lambda tp: None)
    assert consumer._fetcher._get_actions_per_node(assignment) == "actions" and asked == [assignment]
    assert consumer._fetcher._fetch_max_wait_ms == faust_tuning.IDLE_FETCH_WAIT_MS == 500


def _state(paused: bool = False, positioned: bool = True) -> Any:
    return SimpleNamespace(paused=paused, has_valid_position=positioned)


@pytest.mark.parametrize(("states", "buffered", "expected"), [
    pytest.param({"a": _state(), "b": _state()}, set(), 500, id="every-partition-in-the-fetch"),
    pytest.param({"a": _state(), "b": _state()}, {"b"}, 20, id="records-not-yet-consumed"),
    pytest.param({"a": _state(), "b": _state(paused=True)}, set(), 20, id="a-paused-partition"),
    pytest.param({"a": _state(positioned=False), "b": _state()}, set(), 20, id="an-offset-reset-pending"),
    pytest.param({}, set(), 500, id="nothing-assigned"),
])
def test_a_fetch_is_held_long_only_when_it_asks_for_every_partition(states: dict[str, Any], buffered: set[str],
                                                                     expected: int) -> None:
    fetcher = SimpleNamespace(_records={tp: object() for tp in buffered})
    assignment = SimpleNamespace(tps=list(states), state_value=states.__getitem__)
    assert faust_tuning._fetch_wait_ms(fetcher, assignment) == expected


def test_aiokafka_still_builds_fetches_with_the_wait_we_set_and_skips_what_we_check() -> None:
    import inspect

    import aiokafka.consumer.fetcher as fetcher_module

    source = inspect.getsource(fetcher_module.Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms," in source
    for skipped in ("if tp in self._records:", "elif not tp_state.has_valid_position:", "elif tp_state.paused:"):
        assert skipped in source


def test_aiokafka_still_reads_the_attribute_we_set() -> None:
    import inspect

    import aiokafka.consumer.consumer as consumer_module

    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(consumer_module.AIOKafkaConsumer.start)


def test_aiokafka_still_gives_fetched_records_the_backoff_we_set() -> None:
    import inspect

    import aiokafka.consumer.fetcher as fetcher_module

    source = inspect.getsource(fetcher_module.Fetcher)
    assert "backoff=self._prefetch_backoff" in source and "if node_id in backoff_by_nodes" in source


def test_a_stream_yields_to_the_loop_once_every_stream_yield_every_records() -> None:
    turns = 0
    n = faust_tuning.STREAM_YIELD_EVERY * 4

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def read_queued_records() -> None:
        other = asyncio.ensure_future(other_task())
        await asyncio.sleep(0)  # let it start
        before = turns
        for _ in range(n):
            await faust_tuning._sleep_now_and_then(0)  # what faust awaits before each event
        after = turns
        other.cancel()
        # the other task ran once per STREAM_YIELD_EVERY records, not once per record
        assert after - before == n // faust_tuning.STREAM_YIELD_EVERY

    asyncio.run(read_queued_records())


def test_a_real_sleep_still_sleeps() -> None:
    async def sleep_a_little() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await faust_tuning._sleep_now_and_then(0.02, "done") == "done"
        return loop.time() - t0

    assert asyncio.run(sleep_a_little()) >= 0.015


def test_apply_gives_both_faust_stream_iterators_the_sleep() -> None:
    import faust.streams as faust_streams
    from faust._cython import streams as cython_streams

    faust_tuning.apply()
    assert cython_streams.sleep is faust_tuning._sleep_now_and_then  # type: ignore[attr-defined]
    assert faust_streams.asyncio.sleep is faust_tuning._sleep_now_and_then
    assert faust_streams.asyncio.Event is asyncio.Event  # everything else is asyncio's


def test_faust_still_sleeps_before_each_event_of_a_stream() -> None:
    import inspect

    import faust.streams as faust_streams

    source = inspect.getsource(faust_streams.Stream._py_aiter)
    assert "sleep = asyncio.sleep" in source and "await sleep(0)" in source


@pytest.mark.parametrize(("asked", "waits"), [(1.0, 0.05), (0.2, 0.05), (0.05, 0.05), (0.01, 0.01), (0.0, 0.0)])
def test_faust_asks_the_consumer_for_records_waiting_briefly(monkeypatch: pytest.MonkeyPatch, asked: float,
                                                             waits: float) -> None:
    """A partition resumed while faust's getmany waits is not in that call: the wait bounds
    how long its records sit unfetched."""
    from faust.transport import consumer as faust_consumer

    seen: list[float] = []
    monkeypatch.setattr(faust_tuning, "_original_getmany", lambda self, timeout: seen.append(timeout) or "records")
    monkeypatch.setattr(faust_consumer.Consumer, "getmany", faust_consumer.Consumer.getmany)
    faust_tuning.apply()
    faust_tuning.apply()  # idempotent: wraps faust's method once
    assert faust_consumer.Consumer.getmany(object(), asked) == "records"  # type: ignore[arg-type]
    assert seen == [waits] and faust_tuning.RESUME_PICKUP_S == 0.05


def test_faust_still_waits_a_second_for_records_when_draining() -> None:
    import inspect

    from faust.transport import consumer as faust_consumer

    assert "getmany(timeout=1.0)" in inspect.getsource(faust_consumer.Consumer._drain_messages)
