"""Debounce: one run per quiet period of a (function, key); the last event by ``ts`` wins
(reference §5, and inngest/inngest#3695 for ``deliver="all"``). Pure.

``decide(state, input, now_ms, config=...) -> Decision``. ``now_ms`` is wall-clock ms (the
processor's clock): every period, deadline and fire time below is wall-clock. The event's
``ts`` (event time, the sender's clock) is used for one thing only: ordering events, so a
late-delivered older event cannot replace a newer one.

The caller keeps one :class:`DebounceState` per (function, key value) — ``None`` when there
is no pending debounce — evaluates the key expression, persists ``Decision.state`` (``None``
= delete), and carries out the actions: ``SetTimer`` / ``CancelTimer`` on its timer table,
``StartRun`` as a run of the function, ``Replaced`` as a ``sluicegate/run.skipped`` system
event with reason ``"debounced_replaced"``. When a timer is due it feeds back
``TimerFired(timer_id)``, which is always re-checked here.

Algorithm
---------
1. The first event opens a debounce: ``fire_at = now + period`` and, with ``timeout_ms``,
   an absolute ``deadline = now + timeout`` fixed for the life of the debounce; ``fire_at``
   is clamped to it (so a timeout shorter than the period fires at the deadline).
2. A later event (``now < fire_at``) joins: with ``deliver="last"`` it replaces the held
   event (``Replaced(old, "superseded")``); with ``deliver="all"`` it is appended. Either
   way ``fire_at = min(now + period, deadline)``.
3. The debounce is *due* at ``fire_at``. Whichever comes first at or after ``fire_at`` —
   its timer or the next event — starts the run (``StartRun``) and deletes the state. An
   event at or after ``fire_at`` therefore never joins: it starts the due run first and
   then opens a new debounce (step 1). This is how "after the timeout the run starts even
   if events keep arriving, and the next event opens a new debounce" holds even when the
   timer is late, and the result depends only on ``now_ms``, not on timer lag.
4. ``StartRun`` carries the held events: the last one, or with ``deliver="all"`` the
   window's events oldest first by ``ts``.

Edge cases
----------
======================================  ====================================================
case                                    outcome
======================================  ====================================================
event ``ts`` < newest held ``ts``       ignored: does not extend, does not join or replace;
                                        ``Replaced(it, "older")`` (it will never run). Same
                                        for ``deliver="all"``, so "last wins by ts" holds in
                                        both modes and the window stays in ``ts`` order.
event ``ts`` == newest held ``ts``      not older: joins (``last``: replaces; ties go to the
                                        later arrival)
event id already held (redelivery)      ignored, no action — even when the debounce is due
                                        (its timer starts it; the event must not run twice).
                                        Only held events are known: an event that was
                                        already replaced and comes again is judged by ts.
event at ``now == deadline``            the debounce is due (step 3): run, then a new
                                        debounce opens with this event
event at ``now == deadline - 1``        joins; ``fire_at`` clamped to the deadline
new ``fire_at`` equal to the current    no timer actions (the pending timer stays)
``TimerFired`` with another id          stale (an older generation, or another debounce):
                                        nothing
``TimerFired`` before ``fire_at``       fired early: nothing; the timer row is left in
                                        place (no ``CancelTimer``)
``TimerFired`` with no state            nothing
``deliver="all"``, > ``max_events``     the oldest are dropped: ``Replaced(id,
                                        "window_full")``; the newest ``max_events`` are kept
``deliver="all"``, > 10 MiB             the oldest are dropped until the window's bytes
                                        (``size_bytes`` of each event) are at most
                                        ``flow_config.MAX_BATCH_BYTES``; the newest event is
                                        never dropped, even if it alone is larger
config changed while pending            the deadline stays as first recorded; ``period``,
                                        ``deliver`` and ``max_events`` apply from the next
                                        input (a window is re-trimmed when it starts)
======================================  ====================================================

Timers: every change of ``fire_at`` is ``CancelTimer(old) + SetTimer(new)`` with a new
generation in the timer id, so a timer's id always names its due time and a superseded
timer that still fires is recognisably stale. Starting a run also emits ``CancelTimer``
for the current timer (after a firing that deletes its row, as ``run_decisions`` does).
``CancelTimer`` carries ``due_ms`` because the processor's timer table is keyed by
``due ‖ id`` (``state.codecs``).

Ids (formats pinned by tests): ``debounce_id`` is the first event's ``id@received_at`` —
deterministic on replay, since both come from the ``sg.events`` record, and distinct per
debounce of a key, since an event opens at most one debounce (``received_at`` keeps it
distinct if a sender reuses an id after the 24 h dedup window). Timer ids are
``debounce <debounce_id> <generation>``; the run's seed is ``debounce <debounce_id>``.
Timer ids are unique within one (function, key); the caller qualifies them with the
function and key when it stores them (one event may be debounced by two functions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from pydantic import BaseModel

from ...flow_config import MAX_BATCH_BYTES, Debounce
from ...wire import EventRecord
from .timer_actions import CancelTimer, SetTimer, TimerFired

# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventArrives:
    event: EventRecord
    size_bytes: int | None = None
    """The event's serialized size; ``None``: ``len(event.dumps())`` (its ``sg.events`` value)."""


Input = Union[EventArrives, TimerFired]

# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartRun:
    """Start one run with ``events``; its run id is ``routing.run_id_for(app, fn, run_seed)``."""

    kind: Literal["start_run"] = field(default="start_run", init=False)
    debounce_id: str
    run_seed: str
    events: tuple[EventRecord, ...]


ReplacedReason = Literal["superseded", "older", "window_full"]


@dataclass(frozen=True)
class Replaced:
    """This event will never run: a newer one took its place, it was older than the held
    one, or it fell out of a full ``deliver="all"`` window."""

    kind: Literal["replaced"] = field(default="replaced", init=False)
    event_id: str
    reason: ReplacedReason


Action = Union[SetTimer, CancelTimer, StartRun, Replaced]

# -- state -------------------------------------------------------------------------------------


class HeldEvent(BaseModel):
    event: EventRecord
    size_bytes: int


class DebounceState(BaseModel):
    """The pending debounce of one (function, key). Held events are never mutated in place."""

    debounce_id: str
    events: list[HeldEvent]  # oldest first by ts; exactly one with deliver="last"
    total_bytes: int
    opened_at: int  # wall-clock ms of the first event
    deadline_ms: int | None  # opened_at + timeout_ms, fixed when opened; None: no timeout
    fire_at: int  # wall-clock ms; the current timer's due time
    generation: int = 0  # bumped each time the timer moves

    @property
    def timer_id(self) -> str:
        return debounce_timer_id(self.debounce_id, self.generation)


@dataclass(frozen=True)
class Decision:
    state: DebounceState | None
    actions: list[Action] = field(default_factory=list)
    changed: bool = False  # the caller must write (or delete, if state is None) the state
    note: str = ""


# -- ids: NEVER change these formats. Pending timers in the changelogged timer table and the
# -- ids of runs already started derive from them; a change orphans timers and re-runs
# -- debounces replayed after a crash. Tests pin them.


def debounce_id_for(first: EventRecord) -> str:
    """The first event's id and its ``received_at``: deterministic on replay (both come from
    the ``sg.events`` record) and distinct even if a sender reuses an id after the 24 h
    event dedup window."""
    return f"{first.id}@{first.received_at}"


def debounce_timer_id(debounce_id: str, generation: int) -> str:
    return f"debounce {debounce_id} {generation}"


def debounce_run_seed(debounce_id: str) -> str:
    """Contains a space, which no event id may (``events.EventIn``), so it never equals the
    seed of a single-event run."""
    return f"debounce {debounce_id}"


# -- decision ----------------------------------------------------------------------------------


def _fire_at(config: Debounce, now_ms: int, deadline_ms: int | None) -> int:
    fire = now_ms + config.period_ms
    return fire if deadline_ms is None else min(fire, deadline_ms)


def _trim(config: Debounce, held: list[HeldEvent], total: int) -> tuple[list[HeldEvent], int, list[Action]]:
    """Drop the oldest events beyond the window's bounds; never the newest one."""
    limit = 1 if config.deliver == "last" else config.max_events
    reason: ReplacedReason = "superseded" if config.deliver == "last" else "window_full"
    drop = 0
    while len(held) - drop > 1 and (len(held) - drop > limit or total > MAX_BATCH_BYTES):
        total -= held[drop].size_bytes
        drop += 1
    return held[drop:], total, [Replaced(h.event.id, reason) for h in held[:drop]]


def _start(config: Debounce, state: DebounceState) -> list[Action]:
    held, _total, replaced = _trim(config, state.events, state.total_bytes)
    return [*replaced, CancelTimer(state.timer_id, state.fire_at),
            StartRun(state.debounce_id, debounce_run_seed(state.debounce_id), tuple(h.event for h in held))]


def _open(config: Debounce, held: HeldEvent, now_ms: int, actions: list[Action]) -> Decision:
    deadline = None if config.timeout_ms is None else now_ms + config.timeout_ms
    state = DebounceState(debounce_id=debounce_id_for(held.event), events=[held], total_bytes=held.size_bytes,
                          opened_at=now_ms, deadline_ms=deadline, fire_at=_fire_at(config, now_ms, deadline))
    return Decision(state, [*actions, SetTimer(state.timer_id, state.fire_at)], changed=True)


def _on_event(config: Debounce, state: DebounceState | None, inp: EventArrives, now_ms: int) -> Decision:
    event = inp.event
    held = HeldEvent(event=event, size_bytes=len(event.dumps()) if inp.size_bytes is None else inp.size_bytes)
    if state is not None and any(h.event.id == event.id for h in state.events):
        return Decision(state, note="duplicate event")
    actions: list[Action] = []
    if state is not None and now_ms >= state.fire_at:
        actions = _start(config, state)  # due: its run starts before this event opens the next
        state = None
    if state is None:
        return _open(config, held, now_ms, actions)
    if event.ts < state.events[-1].event.ts:
        return Decision(state, [Replaced(event.id, "older")], note="older than the held event")

    events, total, actions = _trim(config, [*state.events, held], state.total_bytes + held.size_bytes)
    fire_at = _fire_at(config, now_ms, state.deadline_ms)
    moved = fire_at != state.fire_at
    new = state.model_copy(update={"events": events, "total_bytes": total, "fire_at": fire_at,
                                   "generation": state.generation + 1 if moved else state.generation})
    if moved:
        actions += [CancelTimer(state.timer_id, state.fire_at), SetTimer(new.timer_id, fire_at)]
    return Decision(new, actions, changed=True)


def _on_timer(config: Debounce, state: DebounceState | None, inp: TimerFired, now_ms: int) -> Decision:
    if state is None:
        return Decision(None, note="stale timer: no debounce")
    if inp.timer_id != state.timer_id:
        return Decision(state, note="stale timer")
    if now_ms < state.fire_at:
        return Decision(state, note="timer fired early")
    return Decision(None, _start(config, state), changed=True)


def decide(state: DebounceState | None, inp: Input, now_ms: int, *, config: Debounce) -> Decision:
    """The one entry point: ``state`` is never mutated (the new state is a copy)."""
    if isinstance(inp, EventArrives):
        return _on_event(config, state, inp, now_ms)
    return _on_timer(config, state, inp, now_ms)
