"""Replays of ``sg.events`` through the functions' current versions: the decisions. Pure.

A replay (issue 6) re-reads a range of offsets of ``sg.events`` chunk by chunk. For each
event of the replay's app it starts a **new** run of every chosen function the event
triggers today (current triggers and ``if``), filtered by the replay's own ``if_exp``:

* the run id derives from (replay id, event id), so a chunk read again after a crash, or a
  replay resumed, never creates the same replayed run twice — and it never collides with the
  original run (replays bypass event-id dedup);
* ``only_failed``: the trigger carries ``only_if_original`` and the function processor,
  which holds the original run, starts it only if that run failed or was cancelled (it
  tallies the others back to the replay);
* only events senders sent are replayed, not the engine's own (``sluicegate/...``);
* backpressure: a chunk's triggers are followed by a mark in each function partition they
  went to; the next chunk is read only when every mark came back (the chunk is absorbed), so
  at most one chunk of a replay waits ahead of live commands in a partition;
* replayed runs skip schedule-time admission (rate limit, idempotency, debounce, batching:
  a replay re-runs what happened, it must not be dropped again) but go through the fair
  dispatcher like any other work (concurrency, throttle, priority), as their own fairness
  key, so a large replay shares the window with live traffic instead of starving it.

:class:`ReplayState` is the durable progress (the processor's ``replays`` table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from ..events import RESERVED_PREFIX
from ..expressions import ExpressionError, evaluate
from ..wire import EventRecord, FunctionDefinition, ReplaySpec, Trigger
from .routing import run_id_for

CHUNK_EVENTS = 25           # events read per chunk: at most this many replayed triggers wait ahead of live work
PACE_TICK_MS = 250          # a paced replay reads a chunk about this often (pace × tick events, at least 1)
CONTROL_PREFIX = b'{"control":'
RETRY_STATUSES = ["failed", "cancelled"]

ReplayStatus = Literal["running", "done", "cancelled", "failed"]


class ReplayState(BaseModel):
    spec: ReplaySpec
    status: ReplayStatus = "running"
    next_offsets: dict[int, int] = Field(default_factory=dict)
    seq: int = 0
    awaiting: list[int] = Field(default_factory=list, description=(
        "function partitions yet to absorb the last chunk (each answers with a ReplayAck)"))
    next_chunk_at: int = Field(0, description=(
        "with a pace: the earliest time (ms) of the next chunk, counted from when this one was due"))
    events_read: int = 0
    runs_created: int = 0
    skipped: int = Field(0, description="events of the range that start no run (other app, no function, if_exp)")
    not_started: int = Field(0, description="replayed triggers whose original run had not failed (only_failed)")
    started_at: int = 0
    updated_at: int = 0
    finished_at: int | None = None
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(end - start for start, end in self.spec.ranges.values())

    @property
    def position(self) -> int:
        """Offsets consumed so far, over all partitions (the progress bar's numerator)."""
        return sum(self.next_offsets.get(p, start) - start for p, (start, _end) in self.spec.ranges.items())

    def progress(self) -> dict[str, object]:
        """What the API shows (``GET /v1/replays/{id}``)."""
        return {"id": self.spec.replay_id, "app_id": self.spec.app_id, "status": self.status,
                "functions": self.spec.functions, "events_read": self.events_read,
                "runs_created": self.runs_created - self.not_started, "skipped": self.skipped + self.not_started,
                "position": self.position, "total": self.total, "started_at": self.started_at,
                "updated_at": self.updated_at, "finished_at": self.finished_at, "error": self.error,
                "only_failed": self.spec.only_failed, "pace_per_s": self.spec.pace_per_s}


def begin(spec: ReplaySpec, now_ms: int) -> ReplayState:
    return ReplayState(spec=spec, next_offsets={p: start for p, (start, _end) in spec.ranges.items()},
                       started_at=now_ms, updated_at=now_ms)


def pending_ranges(state: ReplayState) -> dict[int, tuple[int, int]]:
    """Partition -> [next, end) still to read."""
    out = {}
    for p, (_start, end) in state.spec.ranges.items():
        nxt = state.next_offsets.get(p, _start)
        if nxt < end:
            out[p] = (nxt, end)
    return out


def replayable(spec: ReplaySpec, event: EventRecord) -> bool:
    """An event of the replay's app that a sender sent: the engine's own events
    (``sluicegate/...``: run ends, invokes, skips) are consequences of runs, not inputs."""
    return event.app_id == spec.app_id and not event.name.startswith(RESERVED_PREFIX)


def replay_run_id(spec: ReplaySpec, function_id: str, event_id: str) -> str:
    return run_id_for(spec.app_id, function_id, f"replay\x00{spec.replay_id}\x00{event_id}")


def triggers_for_event(spec: ReplaySpec, event: EventRecord, matching: list[FunctionDefinition]) -> list[Trigger]:
    """The replayed runs one event starts (``matching``: the functions its name and data
    trigger today)."""
    if not replayable(spec, event):
        return []
    chosen = [fn for fn in matching if spec.functions is None or fn.function_id in spec.functions]
    if not chosen:
        return []
    if spec.if_exp:
        try:
            if evaluate(spec.if_exp, {"event": event.as_payload()}) is not True:
                return []
        except ExpressionError:
            return []
    return [Trigger(app_id=fn.app_id, function_id=fn.function_id, function=fn, events=[event],
                    run_id=replay_run_id(spec, fn.function_id, event.id), replay_id=spec.replay_id,
                    replay_of=run_id_for(fn.app_id, fn.function_id, event.id),
                    only_if_original=RETRY_STATUSES if spec.only_failed else None)
            for fn in chosen]


@dataclass
class Chunk:
    state: ReplayState
    triggers: list[Trigger] = field(default_factory=list)
    done: bool = False


def apply_chunk(state: ReplayState, records: Iterable[tuple[int, int, bytes | None]],
                matching: Callable[[EventRecord], list[FunctionDefinition]], now_ms: int,
                reached: dict[int, int] | None = None) -> Chunk:
    """Advance ``state`` over ``records`` (partition, offset, value) read from the pending
    ranges; ``reached``: partition -> the next offset the reader got to (past compacted or
    control records, or the range's end when the partition has nothing more)."""
    state = state.model_copy(deep=True)
    out = Chunk(state)
    for partition, offset, value in records:
        _start, end = state.spec.ranges.get(partition, (0, 0))
        if offset < state.next_offsets.get(partition, end) or offset >= end:
            continue  # outside the range, or read already
        state.next_offsets[partition] = offset + 1
        if not value or value.startswith(CONTROL_PREFIX):
            continue
        try:
            event = EventRecord.model_validate_json(value)
        except ValueError:
            continue
        if not replayable(state.spec, event):
            continue
        state.events_read += 1
        triggers = triggers_for_event(state.spec, event, matching(event))
        if not triggers:
            state.skipped += 1
        state.runs_created += len(triggers)
        out.triggers.extend(triggers)
    for partition, nxt in (reached or {}).items():
        _start, end = state.spec.ranges.get(partition, (0, 0))
        if nxt > state.next_offsets.get(partition, _start):
            state.next_offsets[partition] = min(nxt, end)
    state.seq += 1
    state.updated_at = now_ms
    if not pending_ranges(state):
        state.status, state.finished_at = "done", now_ms
        out.done = True
    return out


def chunk_events(state: ReplayState) -> int:
    """How many events the next chunk reads: ``CHUNK_EVENTS``, or with a pace one tick's
    worth (``pace × PACE_TICK_MS``, at least 1), so a paced replay's triggers arrive spread
    out in small chunks instead of one burst per ``CHUNK_EVENTS`` events."""
    pace = state.spec.pace_per_s
    if not pace:
        return CHUNK_EVENTS
    return max(1, min(CHUNK_EVENTS, int(pace * PACE_TICK_MS / 1000)))


def pace_due(state: ReplayState, events_in_chunk: int, read_at: int) -> int:
    """When (ms) the chunk after one of ``events_in_chunk`` events read at ``read_at`` may be
    read to keep to ``pace_per_s`` (0: no pace, or nothing read).

    Counted from when this chunk was due (``state.next_chunk_at``), not from when it was
    read, so the lateness of each read (the 20 ms timer tick, the absorbing) does not add up
    and the replay keeps its pace; a chunk read more than a tick late (a stall, a restart)
    counts from ``read_at`` instead, so the replay never bursts to catch up."""
    pace = state.spec.pace_per_s
    if not pace or events_in_chunk <= 0:
        return 0
    due = state.next_chunk_at
    base = due if 0 < due <= read_at <= due + PACE_TICK_MS else read_at
    return base + int(events_in_chunk * 1000 / pace)


def next_delay_ms(state: ReplayState, now: int) -> int:
    """How long to wait, at ``now`` (the last chunk absorbed), before reading the next chunk
    (0: at once). The pace counts from when the last chunk was due (:func:`pace_due`), so
    the time the partitions took to absorb it is part of the wait, not added to it."""
    return max(0, state.next_chunk_at - now)
