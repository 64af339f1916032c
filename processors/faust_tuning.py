"""Settings of faust's Kafka consumer that faust does not expose, and fixes to its commit and flow.

faust-streaming creates the processor's aiokafka consumer with ``fetch_max_wait_ms=1500``,
hard-coded (``faust/transport/drivers/aiokafka.py``). aiokafka fetches a partition only when
its previous batch has been consumed; while the agent still works on a batch of
``sg.commands``, the next fetch goes out for the other topics alone and, when they are
quiet, the broker holds it for the full wait. Every fetch of ``sg.commands`` then waits
behind it: step results sat up to 1.6 s in the topic while the processor idled (B5/B6, and
adding unrelated traffic to ``sg.events`` made the drain faster). A short wait keeps fetches
flowing. It is needed only then: when a fetch asks for every assigned partition, nothing can
become fetchable while it is held, and the broker answers it as soon as a record arrives. So
such a fetch waits ``IDLE_FETCH_WAIT_MS`` (:func:`_fetch_wait_ms`): an idle processor used
14-15 % of a core, mostly on its 50 fetches/s; 5 % with this.

The processor's producer is not faust's aiokafka one any more: ``processors/rdkafka_producer.py``
(librdkafka) sends table changelogs and outputs; its flush waits for every record produced before it.

Two holes in faust's commit lost records in ``test_a_processor_killed_while_absorbing_a_burst_loses_nothing``
(the record never reached an agent, and a later commit went past it): after a rebalance
faust empties its agents' queues when it resumes the flow, after its seek back to the
commits, so the records fetched during the seek were dropped (:func:`_resume_without_clearing`);
and its commit takes the first run of acked offsets even when it starts one past the
committed offset (:func:`_new_offset`). A commit held back that way for ``STALL_S`` reads the
partition again from the committed offset (:func:`_held_back`).

Two delays kept a quiet partition's records from the agents while the processor was busy
(B4): faust's conveyor spent four tasks and two or three event-loop turns on each record it
handed over (:func:`_wait_first_eager` runs the hand-over at once when it need not wait), and
aiokafka held every partition's next fetch for 0.1 s while a paused partition kept fetched
records (:data:`PREFETCH_BACKOFF_S`). A third: faust's stream iterator gave the event loop a
turn before every event it took from an agent's queue (:func:`_sleep_now_and_then`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from typing import Any

import faust.streams as faust_streams
from faust.transport import consumer as faust_consumer
from mode.services import WaitResults
from mode.utils import queues as mode_queues
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("sluicegate.processor")

FETCH_MAX_WAIT_MS = 20
IDLE_FETCH_WAIT_MS = 500  # when the fetch asks for every assigned partition
_wait_ms = FETCH_MAX_WAIT_MS

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


# aiokafka sends no fetch to a broker while any partition it leads still has records buffered
# and unconsumed, for up to ``prefetch_backoff`` (0.1 s) after they were fetched. A partition
# the intake has paused (a flood, FairIntake's cap) keeps its buffered records, so every other
# partition of that broker went unfetched for 0.1 s after each of its fetches (B4: the quiet
# tenants' records sat fetched-but-unread p99 0.1–0.4 s). Its own records are never fetched
# again before they are consumed; the wait only delays the others.
PREFETCH_BACKOFF_S = 0.005


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = _wait_ms  # read by aiokafka when the consumer starts
    started = consumer.start

    async def start() -> None:
        await started()
        fetcher = consumer._fetcher  # exists once started
        fetcher._prefetch_backoff = PREFETCH_BACKOFF_S
        actions = fetcher._get_actions_per_node

        def actions_with_wait(assignment: Any) -> Any:
            fetcher._fetch_max_wait_ms = _fetch_wait_ms(fetcher, assignment)  # read as it builds the requests
            return actions(assignment)

        fetcher._get_actions_per_node = actions_with_wait

    consumer.start = start
    return consumer


def _fetch_wait_ms(fetcher: Any, assignment: Any) -> int:
    """How long the broker may hold the fetch aiokafka is about to build: ``IDLE_FETCH_WAIT_MS``
    when it asks for every assigned partition, else the short ``_wait_ms``.

    aiokafka leaves out of a fetch the partitions with fetched records not yet consumed, the
    paused ones and those waiting for an offset reset, and sends no other fetch to that broker
    while it is held. One of those becoming fetchable (consumed, resumed) would wait for the
    held fetch; with all of them in it, only new records can end the wait, and they end it at
    once. (Assignment changes cancel the fetch: aiokafka starts over.)"""
    records = fetcher._records
    for tp in assignment.tps:
        if tp in records:
            return _wait_ms
        state = assignment.state_value(tp)
        if state.paused or not state.has_valid_position:
            return _wait_ms
    return IDLE_FETCH_WAIT_MS


_original_wait_first = faust_consumer.Consumer.wait_first


async def _wait_first_eager(self: Any, *coros: Any, timeout: Any = None) -> Any:
    """``Consumer.wait_first`` that runs a delivery at once, as far as it goes without waiting.

    faust's conveyor hands every fetched record to the agents' queues through
    ``wait_first(callback(message), suspend_flow.wait())``: four tasks a record, and two or
    three turns of the event loop before the next record. While the agents work (a turn
    includes one record handled per busy partition, ~2–5 ms), the 64 records of one poll
    took 0.1–0.4 s to reach the queues, and a quiet partition's record waited behind them
    (B4: the quiet tenants' p99). The delivery only puts the record in a queue; it waits only
    when a queue is full, the producer buffer is high or the flow is suspended. So it is
    started here directly; when it completes without waiting (nearly always) that is the
    result, and when it does wait, the rest of it goes to faust's ``wait_first`` unchanged,
    so a suspended flow still cuts it short."""
    if len(coros) != 2 or not asyncio.iscoroutine(coros[0]) or not asyncio.iscoroutine(coros[1]) \
            or self._stopped.is_set() or self._crashed.is_set():
        return await _original_wait_first(self, *coros, timeout=timeout)
    delivery, other = coros
    try:
        pending = delivery.send(None)
    except StopIteration as done:
        other.close()
        return WaitResults([delivery], [done.value], False)
    except BaseException:
        other.close()
        raise
    return await _original_wait_first(self, _finish(delivery, pending), other, timeout=timeout)


async def _finish(coro: Any, pending: Any) -> Any:
    return await _continue(coro, pending)


@types.coroutine
def _continue(coro: Any, pending: Any) -> Any:
    """Drive a coroutine already started with ``send(None)`` that is waiting on ``pending``
    (what it yielded to the event loop): hand each yield up to the task running this, and
    what the task sends or throws (a cancellation) back down."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # the task was cancelled: the coroutine sees it where it waits
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                return done.value
            continue
        try:
            pending = coro.send(sent)
        except StopIteration as done:
            return done.value


_original_new_offset = faust_consumer.Consumer._new_offset


def _new_offset(self: Any, tp: Any) -> Any:
    """faust's next commit offset for ``tp``, but never past the committed offset's own record
    while it is not acked: faust takes the first run of acked offsets when it starts one past
    the committed offset (an off-by-one), so a record that never reached an agent was
    committed over."""
    acked = self._acked[tp]
    committed = self._committed_offset[tp]
    if acked and committed is not None and min(acked) > committed:
        gaps = self._gap[tp]  # offsets faust knows hold no record (compaction, transaction markers)
        if not gaps or not gaps.overlaps_point(committed):
            _held_back(self, tp, committed)
            return None
    _stalled.pop((id(self), tp), None)
    return _original_new_offset(self, tp)


STALL_S = 10.0
_stalled: dict[tuple[int, Any], float] = {}


def _held_back(consumer: Any, tp: Any, committed: int) -> None:
    """A commit of ``tp`` held back at ``committed``. Records handled out of turn hold it back
    for milliseconds; held back for ``STALL_S``, the record at ``committed`` never reached
    the agent: seek back to it, so it and those after it are read again (handlers are
    idempotent)."""
    key = (id(consumer), tp)
    now = time.monotonic()
    since = _stalled.setdefault(key, now)
    if now - since >= STALL_S:
        _stalled[key] = now
        log.warning("commits of %s held back at offset %d for %.0f s: reading it again from there",
                    tp, committed, now - since)
        asyncio.ensure_future(consumer.seek(tp, committed))


def _resume_without_clearing(self: Any) -> None:
    """``FlowControlEvent.resume`` without emptying the agents' queues. faust resumes (and
    emptied them) right after seeking its streams back to the committed offsets; records
    fetched while that seek was awaited were already in the queues with faust's read offset
    past them, so they were dropped and never read again. What a rebalance must drop is
    dropped when it revokes partitions (``flow_control.clear()``)."""
    self._suspend.clear()
    self._resume.set()


# The processor sends with linger 0: a record goes out at once, which is what an idle
# processor wants (B1). Under load that made one produce request per few records, and with one
# request in flight per broker the records behind it queued anyway while the socket writes
# took ~15 % of the processor (B4, REPLAY profiles). While records wait in the intake, a
# 2 ms linger gathers a handling's outputs and the next ones into one request: B4's drain
# rose from ~114 to ~134 runs/s and the quiet tenants' p99 fell (5 ms raised their p50).
# faust's stream iterator awaits ``asyncio.sleep(0)`` before every event it takes from an
# agent's queue (``faust/_cython/streams.pyx`` and ``Stream._py_aiter``): one turn of the event
# loop per record. While the agents work, a turn includes a record handled per busy partition
# (~2-5 ms), so the 64 records of one poll took up to ~0.3 s to pass from faust's queue into
# ours, and a quiet partition's record waited behind a flooded one's there (B4 probe: quiet
# records' poll -> our intake p90 54 ms / p99 279 ms during M's burst, while they then waited
# p99 8 ms in our intake). Now the iterator yields to the loop once every
# ``STREAM_YIELD_EVERY`` records when its queue is not empty; an empty queue still waits.
STREAM_YIELD_EVERY = 64
_stream_sleeps = 0
_asyncio_sleep = asyncio.sleep


async def _sleep_now_and_then(delay: float, result: Any = None, **_kw: Any) -> Any:
    """``asyncio.sleep`` for faust's stream iterators: a zero sleep yields every
    ``STREAM_YIELD_EVERY``-th time; any other sleep is a sleep."""
    global _stream_sleeps
    if delay == 0:
        _stream_sleeps += 1
        if _stream_sleeps % STREAM_YIELD_EVERY:
            return result
    return await _asyncio_sleep(delay, result)


class _AsyncioForStreams(types.ModuleType):
    """``asyncio`` as faust's pure-Python stream iterator sees it (no Cython build)."""

    sleep = staticmethod(_sleep_now_and_then)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


# faust's fetch loop asks the consumer for records of the partitions not paused, waiting up
# to 1 s (``Consumer._drain_messages``: ``getmany(timeout=1.0)``). A partition our intake
# resumes while such a call waits is not in it: its records came only when the call timed
# out, unless another partition's records ended it first. With the rest of the processor
# idle, a flood of events no function listens to passed the router at 128 events/s (64, the
# intake's cap, per wait); the wait is short now.
RESUME_PICKUP_S = 0.05
_original_getmany = faust_consumer.Consumer.getmany


def _getmany_soon(self: Any, timeout: float) -> Any:
    """faust's ``Consumer.getmany`` waiting at most ``RESUME_PICKUP_S``."""
    return _original_getmany(self, min(timeout, RESUME_PICKUP_S))


def apply(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Idempotent; call before the faust worker starts."""
    global _wait_ms
    _wait_ms = fetch_max_wait_ms
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    faust_consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    mode_queues.FlowControlEvent.resume = _resume_without_clearing  # type: ignore[method-assign]
    faust_consumer.Consumer.wait_first = _wait_first_eager  # type: ignore[method-assign]
    faust_consumer.Consumer.getmany = _getmany_soon  # type: ignore[method-assign]
    try:
        from faust._cython import streams as cython_streams
    except ImportError:  # pragma: no cover - faust without its Cython build
        cython_streams = None
    if cython_streams is not None:
        cython_streams.sleep = _sleep_now_and_then  # type: ignore[attr-defined]
    faust_streams.asyncio = _AsyncioForStreams("asyncio")  # type: ignore[attr-defined]
