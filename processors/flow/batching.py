"""Batching: group a (function, key)'s events into one run (reference §6). Pure.

``decide(state, input, now_ms, config=...) -> Decision``. ``now_ms`` is wall-clock ms (the
processor's clock); a batch's timeout runs on it. The events' ``ts`` (event time) plays no
part: a future ``ts`` does not delay a batch, an old one does not hasten it.

The caller keeps one :class:`BatchState` per (function, key value) — ``None`` when no batch
is open — evaluates the key and ``if_exp`` (CEL) for each event and passes the result as
``EventArrives.batchable`` (false, or an evaluation error, means not batchable), persists
``Decision.state`` (``None`` = delete), and carries out the actions. ``StartRun.run_seed``
gives the run id: ``routing.run_id_for(app, fn, run_seed)``; the same seed is the run's
idempotency key (reference §6: "the run's idempotency key is the batch ID").

Algorithm
---------
1. A batchable event with no open batch opens one: ``batch_id`` from this first event,
   ``due_ms = now + timeout_ms``, ``SetTimer``.
2. Later batchable events are appended in arrival order, with their ``size_bytes``.
3. The batch closes — ``StartRun`` with all its events in arrival order, state deleted —
   on the first of:

   =========================================  ===============  ==========================
   trigger                                    ``closed_by``    timer
   =========================================  ===============  ==========================
   ``max_size`` events held                   ``max_size``     ``CancelTimer``
   bytes held reach ``MAX_BATCH_BYTES``       ``max_bytes``    ``CancelTimer``
   its timer fires at or after ``due_ms``     ``timeout``      ``CancelTimer`` (the row)
   a batchable event arrives at or after      ``timeout``      ``CancelTimer``; the event
   ``due_ms`` (the timer is late)                              opens the next batch
   =========================================  ===============  ==========================

4. An event that would take the batch *over* 10 MiB (``flow_config.MAX_BATCH_BYTES``) does
   not join it: the batch closes with the events so far (``max_bytes``) and this event opens
   the next one. So a batch never exceeds the cap, except a batch of one event larger than
   the cap on its own, which opens and closes at once (``max_bytes``, no timer).

Edge cases
----------
======================================  ====================================================
case                                    outcome
======================================  ====================================================
``batchable=False``                     ``StartRun`` of this event alone (``batch_id=None``,
                                        ``run_seed`` = the event id, like an unbatched
                                        function's run); the open batch is untouched, even
                                        if it is due (its timer closes it)
event id already in the open batch      ignored, no action (dedup within the batch), also
                                        when the batch is due, so a redelivery never runs
                                        twice
event id of an already closed batch     a new event to this decision (the closed batch's
                                        state is gone). A crash replay rebuilds the whole
                                        batch with the same id (below); any other
                                        redelivery needs event-id dedup upstream
                                        (``EVENT_DEDUP_PERIOD_MS``)
``TimerFired`` with another id          stale (a batch that closed by size): nothing
``TimerFired`` before ``due_ms``        fired early: nothing; the timer row stays
``TimerFired`` with no open batch       nothing
``max_size`` lowered while open         closes at the next batchable event (``>=``)
``timeout_ms`` changed while open       ``due_ms`` stays as set when the batch opened
======================================  ====================================================

Batch ids come from the batch's first event (id and ``received_at``). A counter would have
to outlive the state, which is deleted when the batch closes; the first event of a batch is
first of no other batch of the key (it is in exactly one batch), so the id is distinct per
batch. It is deterministic on replay: after a crash the same events rebuild the same batch
with the same id, hence the same run id, and the run processor drops the duplicate
trigger. ``received_at`` keeps it distinct if a sender reuses an event id after the 24 h
dedup window.

Timer ids are unique within one (function, key); the caller qualifies them with the
function and key when it stores them. ``CancelTimer`` carries ``due_ms`` because the
processor's timer table is keyed by ``due ‖ id`` (``state.codecs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from pydantic import BaseModel

from ...flow_config import MAX_BATCH_BYTES, Batch
from ...wire import EventRecord
from .timer_actions import CancelTimer, SetTimer, TimerFired

# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventArrives:
    event: EventRecord
    size_bytes: int  # the event's serialized size (its sg.events value)
    batchable: bool = True  # the caller's evaluation of if_exp (None: True; error: False)


Input = Union[EventArrives, TimerFired]

# -- actions -----------------------------------------------------------------------------------


ClosedBy = Literal["max_size", "max_bytes", "timeout", "not_batchable"]


@dataclass(frozen=True)
class StartRun:
    """Start one run with ``events`` (arrival order); run id ``run_id_for(app, fn, run_seed)``."""

    kind: Literal["start_run"] = field(default="start_run", init=False)
    batch_id: str | None  # None: a single event that was not batchable
    run_seed: str
    events: tuple[EventRecord, ...]
    closed_by: ClosedBy


Action = Union[SetTimer, CancelTimer, StartRun]

# -- state -------------------------------------------------------------------------------------


class BatchState(BaseModel):
    """The open batch of one (function, key)."""

    batch_id: str
    events: list[EventRecord]  # arrival order, distinct ids
    total_bytes: int
    opened_at: int  # wall-clock ms of the first event
    due_ms: int  # opened_at + timeout_ms as configured when it opened; the timer's due time

    @property
    def timer_id(self) -> str:
        return batch_timer_id(self.batch_id)


@dataclass(frozen=True)
class Decision:
    state: BatchState | None
    actions: list[Action] = field(default_factory=list)
    changed: bool = False  # the caller must write (or delete, if state is None) the state
    note: str = ""


# -- ids: NEVER change these formats. Pending timers in the changelogged timer table and the
# -- ids (and idempotency keys) of batch runs derive from them; a change orphans timers and
# -- re-runs batches replayed after a crash. Tests pin them.


def batch_id_for(first: EventRecord) -> str:
    return f"{first.id}@{first.received_at}"


def batch_timer_id(batch_id: str) -> str:
    return f"batch {batch_id}"


def batch_run_seed(batch_id: str) -> str:
    """The seed of the batch's run id. Contains a space, which no event id may
    (``events.EventIn``), so it never equals the seed of a single-event run."""
    return f"batch {batch_id}"


# -- decision ----------------------------------------------------------------------------------


def _run(state: BatchState, closed_by: ClosedBy) -> StartRun:
    return StartRun(state.batch_id, batch_run_seed(state.batch_id), tuple(state.events), closed_by)


def _close(state: BatchState, closed_by: ClosedBy) -> list[Action]:
    return [CancelTimer(state.timer_id, state.due_ms), _run(state, closed_by)]


def _full(config: Batch, state: BatchState) -> ClosedBy | None:
    if len(state.events) >= config.max_size:
        return "max_size"
    if state.total_bytes >= MAX_BATCH_BYTES:
        return "max_bytes"
    return None


def _open(config: Batch, inp: EventArrives, now_ms: int, actions: list[Action]) -> Decision:
    state = BatchState(batch_id=batch_id_for(inp.event), events=[inp.event], total_bytes=inp.size_bytes,
                       opened_at=now_ms, due_ms=now_ms + config.timeout_ms)
    closed_by = _full(config, state)
    if closed_by is not None:  # one event over the byte cap: it never waits, so no timer
        return Decision(None, [*actions, _run(state, closed_by)], changed=True)
    return Decision(state, [*actions, SetTimer(state.timer_id, state.due_ms)], changed=True)


def _on_event(config: Batch, state: BatchState | None, inp: EventArrives, now_ms: int) -> Decision:
    event = inp.event
    if not inp.batchable:
        return Decision(state, [StartRun(None, event.id, (event,), "not_batchable")], note="not batchable")
    if state is None:
        return _open(config, inp, now_ms, [])
    if any(e.id == event.id for e in state.events):
        return Decision(state, note="duplicate event")
    if now_ms >= state.due_ms:
        return _open(config, inp, now_ms, _close(state, "timeout"))
    if state.total_bytes + inp.size_bytes > MAX_BATCH_BYTES:
        return _open(config, inp, now_ms, _close(state, "max_bytes"))
    grown = state.model_copy(update={"events": [*state.events, event],
                                     "total_bytes": state.total_bytes + inp.size_bytes})
    closed_by = _full(config, grown)
    if closed_by is not None:
        return Decision(None, _close(grown, closed_by), changed=True)
    return Decision(grown, changed=True)


def _on_timer(state: BatchState | None, inp: TimerFired, now_ms: int) -> Decision:
    if state is None:
        return Decision(None, note="stale timer: no batch")
    if inp.timer_id != state.timer_id:
        return Decision(state, note="stale timer")
    if now_ms < state.due_ms:
        return Decision(state, note="timer fired early")
    return Decision(None, _close(state, "timeout"), changed=True)


def decide(state: BatchState | None, inp: Input, now_ms: int, *, config: Batch) -> Decision:
    """The one entry point: ``state`` is never mutated (the new state is a copy)."""
    if isinstance(inp, EventArrives):
        return _on_event(config, state, inp, now_ms)
    return _on_timer(state, inp, now_ms)
