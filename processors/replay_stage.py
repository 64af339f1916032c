"""Replays inside the function processor (a mixin of ``Processor``): the shell around
:mod:`.replay_plan`.

A replay lives in the ``sg.commands`` partition of its key ``replay/<id>``: its progress is
a record of the changelogged ``replays`` table. Each ``ReplayContinue`` reads one chunk of
``sg.events`` (a group-less consumer kept per replay, in a thread), sends the chunk's
triggers, writes the new progress, and queues the next ``ReplayContinue`` at the back of the
partition — at once, or through a durable timer when a pace is set. So a replay takes turns
with the other commands of its partition, the next chunk waits until the functions' partitions absorbed this one (a mark
after the chunk's triggers, answered by an ack), a crash resumes it from its last chunk (the
chunk's triggers are sent again: same run ids, dropped as duplicates), and a cancel takes
effect before the next chunk. Progress goes to ``sg.stats`` (key ``replay/<id>``).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from ..partitioning import function_key, partition_for
from ..settings import Settings
from ..state.codecs import timer_key
from ..wire import (EventRecord, FunctionDefinition, ReplayAck, ReplayCancel, ReplayContinue, ReplayMark, ReplayStart,
                    ReplayTally, Trigger)
from .replay_plan import ReplayState, apply_chunk, begin, chunk_events, next_delay_ms, pace_due, pending_ranges
from .routing import TriggerIndex

log = logging.getLogger("sluicegate.replay")

READ_TIMEOUT_S = 5.0


def replay_key(replay_id: str) -> str:
    return f"replay/{replay_id}"


class _Reader:
    """A group-less consumer over a replay's pending ranges (kept between chunks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "sluicegate-replay",
                                  "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
        self.positions: dict[int, int] = {}

    def read(self, pending: dict[int, tuple[int, int]], limit: int) -> tuple[list[tuple[int, int, bytes | None]],
                                                                           dict[int, int]]:
        """Up to ``limit`` records of the pending ranges; and how far each partition got."""
        wanted = {p: nxt for p, (nxt, _end) in pending.items()}
        if wanted != self.positions:
            self.consumer.assign([TopicPartition(self.settings.events_topic, p, o) for p, o in wanted.items()])
            self.positions = dict(wanted)
        out: list[tuple[int, int, bytes | None]] = []
        reached = dict(wanted)
        open_parts = set(wanted)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while open_parts and len(out) < limit and time.monotonic() < deadline:
            for msg in self.consumer.consume(min(500, limit - len(out)), 0.2):
                p = msg.partition()
                if msg.error() is not None:
                    if p in open_parts:  # partition EOF: nothing more now
                        open_parts.discard(p)
                        end = pending[p][1]
                        reached[p] = max(reached[p], min(end, msg.offset() if msg.offset() >= 0 else reached[p]))
                    continue
                if p not in pending:
                    continue
                end = pending[p][1]
                if msg.offset() >= end:
                    open_parts.discard(p)
                    reached[p] = end
                    continue
                out.append((p, msg.offset(), msg.value()))
                reached[p] = msg.offset() + 1
                if reached[p] >= end:
                    open_parts.discard(p)
        self.positions = dict(reached)
        return out, reached

    def close(self) -> None:
        self.consumer.close()


class ReplayStage:
    """Needs from the processor: ``settings``, the ``replays``/``timers``/``runs`` tables, the
    timer ``_heap``, ``index`` (TriggerIndex of the registry), ``registry`` and ``_send``."""

    settings: Settings
    replays: Any
    timers: Any
    registry: Any
    index: TriggerIndex
    _heap: list[tuple[int, str, bytes]]
    _replay_readers: dict[str, _Reader]

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        raise NotImplementedError

    def _replay_state(self, replay_id: str) -> ReplayState | None:
        raw = self.replays.get(replay_id.encode())
        return None if raw is None else ReplayState.model_validate_json(raw)

    async def _save_replay(self, state: ReplayState) -> None:
        self.replays[state.spec.replay_id.encode()] = state.model_dump_json().encode()
        await self._send(self.settings.topic("stats"), replay_key(state.spec.replay_id),
                         json.dumps(state.progress()).encode(), 0)
        if state.status != "running":
            reader = self._replay_readers.pop(state.spec.replay_id, None)
            if reader is not None:
                await asyncio.get_running_loop().run_in_executor(None, reader.close)

    async def _continue_replay(self, state: ReplayState, partition: int, delay_ms: int) -> None:
        cmd = ReplayContinue(replay_id=state.spec.replay_id, seq=state.seq)
        if delay_ms <= 0:
            await self._send(self.settings.commands_topic, replay_key(state.spec.replay_id), cmd.dumps(), partition)
            return
        due = int(time.time() * 1000) + delay_ms
        timer_id = f"replay/{state.spec.replay_id}/{state.seq}"
        value = json.dumps({"replay_id": state.spec.replay_id, "seq": state.seq}).encode()
        self.timers[timer_key(due, timer_id)] = value
        heapq.heappush(self._heap, (due, timer_id, value))

    async def _on_replay(self, cmd: ReplayStart | ReplayContinue | ReplayCancel | ReplayTally, partition: int,
                         now: int) -> None:
        if isinstance(cmd, ReplayStart):
            if self._replay_state(cmd.spec.replay_id) is not None:
                return  # a repeated start
            state = begin(cmd.spec, now)
            log.info("replay %s of app %s started: %d offset(s) to read", cmd.spec.replay_id, cmd.spec.app_id,
                     state.total)
            await self._save_replay(state)
            await self._continue_replay(state, partition, 0)
            return
        if isinstance(cmd, ReplayContinue) and cmd.timer_due is not None:
            self.timers.pop(timer_key(cmd.timer_due, f"replay/{cmd.replay_id}/{cmd.seq}"), None)
        state = self._replay_state(cmd.replay_id)
        if state is None:
            log.warning("replay %s: unknown; %s ignored", cmd.replay_id, cmd.kind)
            return
        if isinstance(cmd, ReplayTally):
            state.not_started += cmd.skipped
            state.updated_at = now
            await self._save_replay(state)
            return
        if isinstance(cmd, ReplayCancel):
            if state.status == "running":
                state.status, state.finished_at, state.updated_at = "cancelled", now, now
                log.info("replay %s cancelled after %d event(s)", cmd.replay_id, state.events_read)
                await self._save_replay(state)
            return
        if state.status != "running" or cmd.seq != state.seq:
            return  # cancelled, done, or a continue already acted on
        await self._replay_chunk(state, partition, now)

    async def _replay_chunk(self, state: ReplayState, partition: int, now: int) -> None:
        replay_id = state.spec.replay_id
        reader = self._replay_readers.get(replay_id)
        if reader is None:
            reader = self._replay_readers[replay_id] = _Reader(self.settings)
        loop = asyncio.get_running_loop()
        records, reached = await loop.run_in_executor(None, reader.read, pending_ranges(state), chunk_events(state))
        chunk = apply_chunk(state, records, self._matching, int(time.time() * 1000), reached)
        marks: dict[int, str] = {}
        for trig in chunk.triggers:
            key = function_key(trig.app_id, trig.function_id)
            target = partition_for(key, self.settings.partitions)
            marks[target] = key
            await self._send(self.settings.commands_topic, key, trig.dumps(), target)
        new = chunk.state
        new.next_chunk_at = pace_due(new, len(records), now)
        if chunk.done:
            log.info("replay %s done: %d event(s) read, %d run(s) created", replay_id, new.events_read,
                     new.runs_created)
        elif marks:
            # backpressure: the next chunk waits until every partition absorbed this one
            new.awaiting = sorted(marks)
            mark = ReplayMark(replay_id=replay_id, seq=new.seq).dumps()
            for target, key in marks.items():
                await self._send(self.settings.commands_topic, key, mark, target)
        await self._save_replay(new)
        if not chunk.done and not marks:
            await self._continue_replay(new, partition, next_delay_ms(new, int(time.time() * 1000)))

    async def _on_replay_flow(self, cmd: ReplayMark | ReplayAck, partition: int) -> None:
        """A chunk's mark reached a function partition (answer its replay), or the answer
        reached the replay (the next chunk goes once every partition answered)."""
        if isinstance(cmd, ReplayMark):
            key = replay_key(cmd.replay_id)
            ack = ReplayAck(replay_id=cmd.replay_id, seq=cmd.seq, partition=partition)
            await self._send(self.settings.commands_topic, key, ack.dumps(), partition_for(key, self.settings.partitions))
            return
        state = self._replay_state(cmd.replay_id)
        if state is None or state.status != "running" or cmd.seq != state.seq or cmd.partition not in state.awaiting:
            return  # stale, repeated, or the replay ended
        state.awaiting = [p for p in state.awaiting if p != cmd.partition]
        state.updated_at = int(time.time() * 1000)
        await self._save_replay(state)
        if not state.awaiting:
            await self._continue_replay(state, partition, next_delay_ms(state, state.updated_at))

    def _matching(self, event: EventRecord) -> list[FunctionDefinition]:
        return self.index.match(event)

    async def _on_replay_timer(self, target: dict[str, Any]) -> None:
        """A pace timer is due: queue the replay's next chunk (from the timers task)."""
        cmd = ReplayContinue(replay_id=target["replay_id"], seq=target["seq"], timer_due=target.get("due_ms"))
        key = replay_key(cmd.replay_id)
        await self._send(self.settings.commands_topic, key, cmd.dumps(), partition_for(key, self.settings.partitions))

    def _replay_tally_for(self, trig: Trigger) -> tuple[str, bytes, int] | None:
        """(key, value, partition) of the tally saying this replayed trigger was not started."""
        if trig.replay_id is None:
            return None
        key = replay_key(trig.replay_id)
        return key, ReplayTally(replay_id=trig.replay_id).dumps(), partition_for(key, self.settings.partitions)
