"""The waits of the router stage (a mixin of ``Processor``): ``step.wait_for_event``, invoke
results and ``cancel_on``.

Why the router: every event of an app passes one ``sg.events`` partition in order, so the
router of that partition sees each event exactly once, in order, after or before each
waiter — no event can slip between the registration of a wait and its first match.

* The function processor registers and drops waiters by producing a control record into the
  app's ``sg.events`` partition (:func:`control_add`, :func:`control_drop`). The router keeps
  the live ones in the changelogged ``waits`` table (key: wait id) and, in memory, one
  :class:`~.event_waits.WaitIndex` per partition, rebuilt after a rebalance.
* For each event, the router sends a :class:`~sluicegate.wire.WaitResolved` to the waiting
  run's function partition for every waiter the event resumes, and forgets those waiters.
* Lookback: a waiter sees the events accepted since its step was planned (``since_ms``),
  including those that went by before it was registered. The last
  ``settings.wait_lookback_events`` events of each partition (at most
  ``settings.wait_lookback_ms`` old) are kept in memory; a waiter older than that reads the
  partition back from Kafka (:func:`read_back`; rare: after a restart, or when the
  registration waited behind a long backlog).

The function partition decides: the first of a resolution and the wait's timeout wins, the
other is stale there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from ..partitioning import function_key, partition_for
from ..settings import Settings
from ..wire import EventRecord, WaitResolved
from .event_waits import SKEW_MS, LookbackBuffer, WaitIndex, Waiter, first_match

log = logging.getLogger("sluicegate.router")

CONTROL_PREFIX = b'{"control":'
EXPIRED_SWEEP_MS = 5_000
READ_BACK_MAX_EVENTS = 2_000_000


def control_add(waiter: Waiter) -> bytes:
    return CONTROL_PREFIX + b'"wait_add","waiter":' + waiter.dumps() + b"}"


def control_drop(wait_id: str) -> bytes:
    return CONTROL_PREFIX + json.dumps("wait_drop").encode() + b',"wait_id":' + json.dumps(wait_id).encode() + b"}"


def read_back(settings: Settings, partition: int, since_ms: int, until_offset: int) -> list[tuple[int, EventRecord]]:
    """The events of an ``sg.events`` partition from about ``since_ms - SKEW_MS`` up to (not
    including) ``until_offset``, read with a group-less consumer. Blocking: run it in a thread."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "sluicegate-wait-lookback",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    out: list[tuple[int, EventRecord]] = []
    try:
        tp = consumer.offsets_for_times([TopicPartition(settings.events_topic, partition,
                                                        max(0, since_ms - SKEW_MS))], timeout=10)[0]
        start = tp.offset if tp.offset >= 0 else until_offset
        if start >= until_offset:
            return out
        consumer.assign([TopicPartition(settings.events_topic, partition, start)])
        deadline = time.monotonic() + 60
        while len(out) < READ_BACK_MAX_EVENTS and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.offset() is not None and msg.offset() >= until_offset - 1:
                    break
                continue
            if msg.offset() >= until_offset:
                break
            value = msg.value()
            if value and not value.startswith(CONTROL_PREFIX):
                try:
                    out.append((msg.offset(), EventRecord.model_validate_json(value)))
                except ValueError:
                    pass
            if msg.offset() >= until_offset - 1:
                break
    finally:
        consumer.close()
    return out


class WaitRouter:
    """Needs from the processor: ``settings``, the ``waits`` table and ``_send``."""

    settings: Settings
    waits: Any
    _wait_index: dict[int, WaitIndex]
    _lookback: dict[int, LookbackBuffer]
    _waits_dirty: bool
    _swept_at: dict[int, int]

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        raise NotImplementedError

    def _wait_state(self, partition: int) -> tuple[WaitIndex, LookbackBuffer]:
        if self._waits_dirty:
            self._rebuild_waits()
        index = self._wait_index.get(partition)
        if index is None:
            index = self._wait_index[partition] = WaitIndex()
        buffer = self._lookback.get(partition)
        if buffer is None:
            buffer = self._lookback[partition] = LookbackBuffer(
                started_at_ms=int(time.time() * 1000), max_events=max(1, self.settings.wait_lookback_events),
                max_age_ms=self.settings.wait_lookback_ms)
        return index, buffer

    def _rebuild_waits(self) -> None:
        self._waits_dirty = False
        self._wait_index, self._lookback = {}, {}
        n = 0
        for _key, raw in self.waits.items():
            waiter = Waiter.loads(raw)
            p = partition_for(waiter.app_id, self.settings.partitions)
            self._wait_index.setdefault(p, WaitIndex()).add(waiter)
            n += 1
        log.info("router: rebuilt %d live wait(s)", n)

    async def _on_wait_control(self, value: bytes, partition: int, offset: int) -> None:
        body = json.loads(value)
        index, buffer = self._wait_state(partition)
        if body.get("control") == "wait_drop":
            wait_id = body.get("wait_id", "")
            if index.drop(wait_id) is not None or self.waits.get(wait_id.encode()) is not None:
                self.waits.pop(wait_id.encode(), None)
            return
        if body.get("control") != "wait_add":
            log.warning("router: unknown control record %r", body.get("control"))
            return
        waiter = Waiter.model_validate(body["waiter"])
        if waiter.wait_id in index:
            return  # a replayed registration
        now = int(time.time() * 1000)
        if waiter.expires_ms <= now:
            return  # its timeout has fired (or will now): the function partition decides
        if buffer.covers(waiter.since_ms):
            candidates = buffer.candidates(waiter)
            hit = candidates[0] if candidates else None
        else:
            loop = asyncio.get_running_loop()
            events = await loop.run_in_executor(None, read_back, self.settings, partition, waiter.since_ms, offset)
            hit = first_match(waiter, (e for _o, e in events))
            log.info("router: wait %s looked back over %d event(s) read from Kafka", waiter.wait_id, len(events))
            self._extend_back(partition, events, waiter.since_ms, now)
        if hit is not None:
            await self._resolve(waiter, hit)
            return
        index.add(waiter)
        self.waits[waiter.wait_id.encode()] = waiter.dumps()

    def _extend_back(self, partition: int, events: list[tuple[int, EventRecord]], since_ms: int, now: int) -> None:
        """The events read back are every event of the partition from the first one stamped
        ``since_ms - SKEW_MS`` or later up to now, so they make a buffer that covers waits
        planned since ``since_ms`` (the next such wait needs no read)."""
        buffer = LookbackBuffer(started_at_ms=since_ms - SKEW_MS, max_events=max(1, self.settings.wait_lookback_events),
                                max_age_ms=self.settings.wait_lookback_ms)
        for offset, event in events:
            buffer.append(offset, event, now)
        self._lookback[partition] = buffer  # it holds everything the old one did, and more

    async def _match_waits(self, event: EventRecord, partition: int, offset: int) -> None:
        index, buffer = self._wait_state(partition)
        now = int(time.time() * 1000)
        buffer.append(offset, event, now)
        if not len(index):
            return
        hits = index.match(event, now)
        if hits:
            payload = event.as_payload()
            for waiter in hits:
                index.drop(waiter.wait_id)
                self.waits.pop(waiter.wait_id.encode(), None)
                await self._resolve(waiter, payload)
        if now - self._swept_at.get(partition, 0) >= EXPIRED_SWEEP_MS:
            self._swept_at[partition] = now
            for waiter in index.expired(now):  # normally dropped by its run; this is the safety net
                index.drop(waiter.wait_id)
                self.waits.pop(waiter.wait_id.encode(), None)

    async def _resolve(self, waiter: Waiter, event: dict[str, Any]) -> None:
        cmd = WaitResolved(app_id=waiter.app_id, function_id=waiter.function_id, run_id=waiter.run_id,
                           wait_id=waiter.wait_id, event=event)
        key = function_key(waiter.app_id, waiter.function_id)
        await self._send(self.settings.results_topic, key, cmd.dumps(), partition_for(key, self.settings.partitions))
