"""Debounce, ``flow.debounce.decide``, driven by hand: wall-clock ``now`` is an argument.

Times are offsets from ``T0`` in ms; every case asserts the exact state fields and actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sluicegate.flow_config import MAX_BATCH_BYTES, Debounce
from sluicegate.processors.flow.debounce import (
    CancelTimer,
    DebounceState,
    Decision,
    EventArrives,
    Input,
    Replaced,
    SetTimer,
    StartRun,
    TimerFired,
    debounce_id_for,
    debounce_run_seed,
    debounce_timer_id,
    decide,
)
from sluicegate.wire import EventRecord

T0 = 1_700_000_000_000
S = 1_000
MIB = 1024 * 1024
PERIOD = Debounce(period_ms=5 * S)
TIMEOUT = Debounce(period_ms=5 * S, timeout_ms=8 * S)
ALL = Debounce(period_ms=5 * S, deliver="all")


def ev(eid: str, ts: int = 0) -> EventRecord:
    """An event whose event time is ``T0 + ts`` and whose receipt time is ``T0``."""
    return EventRecord(app_id="shop", id=eid, name="cart.updated", data={"id": eid}, ts=T0 + ts, received_at=T0)


def arrive(eid: str, ts: int = 0, size: int | None = 100) -> EventArrives:
    return EventArrives(ev(eid, ts), size)


def did(eid: str) -> str:
    return f"{eid}@{T0}"


def tid(eid: str, generation: int) -> str:
    return f"debounce {did(eid)} {generation}"


def start(first: str, *events: EventRecord) -> StartRun:
    return StartRun(did(first), f"debounce {did(first)}", tuple(events))


def drive(config: Debounce, script: Sequence[tuple[int, Input]],
          state: DebounceState | None = None) -> tuple[DebounceState | None, list[Decision]]:
    """Feed ``(now offset, input)`` pairs in order, threading the state."""
    decisions = []
    for at, inp in script:
        decision = decide(state, inp, T0 + at, config=config)
        decisions.append(decision)
        state = decision.state
    return state, decisions


def fields(state: DebounceState | None) -> tuple[Any, ...] | None:
    if state is None:
        return None
    return (state.debounce_id, [h.event.id for h in state.events], state.total_bytes, state.opened_at - T0,
            None if state.deadline_ms is None else state.deadline_ms - T0, state.fire_at - T0, state.generation)


# -- ids ---------------------------------------------------------------------------------------


def test_id_formats_are_pinned() -> None:
    # These formats are in changelogged timers and in run ids: a change is a migration.
    assert debounce_id_for(ev("01EV")) == f"01EV@{T0}"
    assert debounce_timer_id(f"01EV@{T0}", 3) == f"debounce 01EV@{T0} 3"
    assert debounce_run_seed(f"01EV@{T0}") == f"debounce 01EV@{T0}"


def test_a_reused_event_id_opens_a_debounce_with_another_id() -> None:
    later = ev("01EV").model_copy(update={"received_at": T0 + 86_400_001})
    assert debounce_id_for(later) != debounce_id_for(ev("01EV"))


# -- opening -----------------------------------------------------------------------------------

OPEN_CASES = [
    # config, expected deadline, expected fire_at (offsets from the event's arrival)
    (PERIOD, None, 5 * S),
    (Debounce(period_ms=5 * S, timeout_ms=60 * S), 60 * S, 5 * S),
    (Debounce(period_ms=5 * S, timeout_ms=5 * S), 5 * S, 5 * S),
    (Debounce(period_ms=5 * S, timeout_ms=2 * S), 2 * S, 2 * S),  # a timeout below the period wins
]


@pytest.mark.parametrize(("config", "deadline", "fire_at"), OPEN_CASES)
def test_first_event_opens_a_debounce_and_sets_its_timer(config: Debounce, deadline: int | None,
                                                         fire_at: int) -> None:
    decision = decide(None, arrive("a"), T0 + 10, config=config)

    assert decision.changed is True
    assert fields(decision.state) == (did("a"), ["a"], 100, 10, None if deadline is None else 10 + deadline,
                                      10 + fire_at, 0)
    assert decision.actions == [SetTimer(tid("a", 0), T0 + 10 + fire_at)]


def test_size_defaults_to_the_serialized_event() -> None:
    decision = decide(None, EventArrives(ev("a")), T0, config=PERIOD)
    assert decision.state is not None
    assert decision.state.total_bytes == len(ev("a").dumps())


# -- the reference case: 12 events in 2 s, period 5 s ------------------------------------------


def test_twelve_events_in_two_seconds_start_one_run_with_the_last() -> None:
    arrivals = [(i * 180, arrive(f"e{i:02d}", ts=i * 180)) for i in range(12)]  # 0 .. 1980 ms
    state, decisions = drive(PERIOD, arrivals)

    assert decisions[0].actions == [SetTimer(tid("e00", 0), T0 + 5 * S)]
    for i in range(1, 12):
        assert decisions[i].actions == [
            Replaced(f"e{i - 1:02d}", "superseded"),
            CancelTimer(tid("e00", i - 1), T0 + (i - 1) * 180 + 5 * S),
            SetTimer(tid("e00", i), T0 + i * 180 + 5 * S),
        ]
    assert fields(state) == (did("e00"), ["e11"], 100, 0, None, 1980 + 5 * S, 11)

    # Superseded timers that still fire are stale; the current one before its time is early.
    for gen in range(11):
        assert decide(state, TimerFired(tid("e00", gen)), T0 + 20 * S, config=PERIOD) == Decision(
            state, note="stale timer")
    assert decide(state, TimerFired(tid("e00", 11)), T0 + 1980 + 5 * S - 1, config=PERIOD) == Decision(
        state, note="timer fired early")

    fired = decide(state, TimerFired(tid("e00", 11)), T0 + 1980 + 5 * S, config=PERIOD)
    assert fired == Decision(None, [CancelTimer(tid("e00", 11), T0 + 1980 + 5 * S),
                                    start("e00", ev("e11", ts=1980))], changed=True)
    all_actions = [a for d in [*decisions, fired] for a in d.actions]
    assert sum(isinstance(a, StartRun) for a in all_actions) == 1
    assert sum(isinstance(a, Replaced) for a in all_actions) == 11


# -- timeout ceiling ---------------------------------------------------------------------------

# period 5 s, timeout 8 s: the first event at 0 fixes the deadline at 8000.
TIMEOUT_CASES = [
    # id, arrival (= ts), expected fire_at after it, timer moved?
    ("b", 2_000, 7_000, True),
    ("c", 4_000, 8_000, True),  # 9000 clamped to the deadline
    ("d", 6_000, 8_000, False),  # still the deadline: the pending timer stays
    ("e", 7_999, 8_000, False),  # one ms before the deadline still joins
]


def test_timeout_clamps_every_extension_to_the_deadline() -> None:
    state, _ = drive(TIMEOUT, [(0, arrive("a"))])
    generation = 0
    for eid, at, fire_at, moved in TIMEOUT_CASES:
        before = state
        assert before is not None
        decision = decide(before, arrive(eid, ts=at), T0 + at, config=TIMEOUT)
        replaced: list[Any] = [Replaced(before.events[0].event.id, "superseded")]
        if moved:
            generation += 1
            replaced += [CancelTimer(before.timer_id, before.fire_at), SetTimer(tid("a", generation), T0 + fire_at)]
        assert decision.actions == replaced
        assert fields(decision.state) == (did("a"), [eid], 100, 0, 8_000, fire_at, generation)
        state = decision.state
    assert generation == 2


@pytest.mark.parametrize(("at", "joins"), [(7_999, True), (8_000, False), (8_001, False), (30_000, False)])
def test_event_at_or_after_the_deadline_starts_the_run_and_opens_a_new_debounce(at: int, joins: bool) -> None:
    state, _ = drive(TIMEOUT, [(0, arrive("a")), (4_000, arrive("b", ts=4_000))])  # fire_at = deadline = 8000
    assert fields(state) == (did("a"), ["b"], 100, 0, 8_000, 8_000, 1)

    decision = decide(state, arrive("c", ts=at), T0 + at, config=TIMEOUT)

    if joins:
        assert decision.actions == [Replaced("b", "superseded")]
        assert fields(decision.state) == (did("a"), ["c"], 100, 0, 8_000, 8_000, 1)
    else:
        assert decision.actions == [CancelTimer(tid("a", 1), T0 + 8_000), start("a", ev("b", ts=4_000)),
                                    SetTimer(tid("c", 0), T0 + at + 5 * S)]
        assert fields(decision.state) == (did("c"), ["c"], 100, at, at + 8_000, at + 5 * S, 0)


def test_events_every_second_forever_still_run_once_per_timeout() -> None:
    script: list[tuple[int, Input]] = [(i * S, arrive(f"e{i:02d}", ts=i * S)) for i in range(20)]
    _, decisions = drive(TIMEOUT, script)
    starts = [a for d in decisions for a in d.actions if isinstance(a, StartRun)]
    # Deadlines at 8 s (opened at 0) and 16 s (opened at 8 s): the events at 8 s and 16 s
    # find a due debounce and open the next one.
    assert starts == [start("e00", ev("e07", ts=7 * S)), start("e08", ev("e15", ts=15 * S))]


def test_period_elapsed_with_a_late_timer_behaves_like_the_timer_fired_first() -> None:
    state, _ = drive(PERIOD, [(0, arrive("a"))])
    decision = decide(state, arrive("b", ts=5 * S), T0 + 5 * S, config=PERIOD)
    assert decision.actions == [CancelTimer(tid("a", 0), T0 + 5 * S), start("a", ev("a")),
                                SetTimer(tid("b", 0), T0 + 10 * S)]
    assert fields(decision.state) == (did("b"), ["b"], 100, 5 * S, None, 10 * S, 0)


# -- ordering by event time --------------------------------------------------------------------

ORDER_CASES = [
    # config, ts of the held event, ts of the new one, new event joins?
    (PERIOD, 1_000, 999, False),
    (PERIOD, 1_000, -50_000, False),
    (PERIOD, 1_000, 1_000, True),  # equal ts is not older: the later arrival wins
    (PERIOD, 1_000, 1_001, True),
    (ALL, 1_000, 999, False),
    (ALL, 1_000, 1_000, True),
    (ALL, 1_000, 9_000, True),
]


@pytest.mark.parametrize(("config", "held_ts", "new_ts", "joins"), ORDER_CASES)
def test_an_older_event_neither_replaces_nor_extends(config: Debounce, held_ts: int, new_ts: int,
                                                     joins: bool) -> None:
    state, _ = drive(config, [(0, arrive("a", ts=held_ts))])
    assert state is not None

    decision = decide(state, arrive("b", ts=new_ts), T0 + 2 * S, config=config)

    if not joins:
        assert decision == Decision(state, [Replaced("b", "older")], note="older than the held event")
        return
    held = ["b"] if config.deliver == "last" else ["a", "b"]
    replaced: list[Any] = [Replaced("a", "superseded")] if config.deliver == "last" else []
    assert decision.actions == [*replaced, CancelTimer(tid("a", 0), T0 + 5 * S), SetTimer(tid("a", 1), T0 + 7 * S)]
    assert fields(decision.state) == (did("a"), held, 100 * len(held), 0, None, 7 * S, 1)


def test_an_older_event_after_the_debounce_is_due_opens_the_next_one() -> None:
    state, _ = drive(PERIOD, [(0, arrive("a", ts=9 * S))])
    decision = decide(state, arrive("b", ts=0), T0 + 6 * S, config=PERIOD)
    assert decision.actions == [CancelTimer(tid("a", 0), T0 + 5 * S), start("a", ev("a", ts=9 * S)),
                                SetTimer(tid("b", 0), T0 + 11 * S)]


# -- duplicates --------------------------------------------------------------------------------

DUPLICATE_CASES = [
    # config, now of the redelivery (the debounce fires at 7000 after a at 0 and b at 2000)
    (PERIOD, 3_000),
    (PERIOD, 7_000),  # due: still ignored, the timer starts the run; b must not run twice
    (ALL, 3_000),
    (ALL, 9_000),
]


@pytest.mark.parametrize(("config", "now"), DUPLICATE_CASES)
def test_a_redelivered_held_event_changes_nothing(config: Debounce, now: int) -> None:
    state, _ = drive(config, [(0, arrive("a")), (2_000, arrive("b", ts=2_000))])
    assert decide(state, arrive("b", ts=2_000), T0 + now, config=config) == Decision(state, note="duplicate event")


def test_an_already_replaced_event_that_comes_again_is_judged_by_its_ts() -> None:
    state, _ = drive(PERIOD, [(0, arrive("a")), (2_000, arrive("b", ts=2_000))])
    assert decide(state, arrive("a"), T0 + 3_000, config=PERIOD).actions == [Replaced("a", "older")]


# -- timers ------------------------------------------------------------------------------------

TIMER_CASES = [
    # timer id, now, starts the run?, note
    (tid("a", 1), 7_000, True, ""),
    (tid("a", 1), 60_000, True, ""),  # a late timer
    (tid("a", 1), 6_999, False, "timer fired early"),
    (tid("a", 0), 7_000, False, "stale timer"),  # the generation before the extension
    (tid("zz", 1), 7_000, False, "stale timer"),  # another debounce's timer
    ("", 7_000, False, "stale timer"),
]


@pytest.mark.parametrize(("timer_id", "now", "starts", "note"), TIMER_CASES)
def test_timer_is_rechecked(timer_id: str, now: int, starts: bool, note: str) -> None:
    state, _ = drive(PERIOD, [(0, arrive("a")), (2_000, arrive("b", ts=2_000))])

    decision = decide(state, TimerFired(timer_id), T0 + now, config=PERIOD)

    if starts:
        assert decision == Decision(None, [CancelTimer(tid("a", 1), T0 + 7_000), start("a", ev("b", ts=2_000))],
                                    changed=True)
    else:
        assert decision == Decision(state, note=note)


def test_timer_without_a_debounce_is_stale() -> None:
    assert decide(None, TimerFired(tid("a", 0)), T0, config=PERIOD) == Decision(None, note="stale timer: no debounce")


def test_after_a_run_the_next_event_opens_a_new_debounce_and_old_timers_are_stale() -> None:
    state, decisions = drive(PERIOD, [(0, arrive("a")), (5 * S, TimerFired(tid("a", 0))), (6 * S, arrive("b", 6 * S))])
    assert decisions[1].state is None
    assert fields(state) == (did("b"), ["b"], 100, 6 * S, None, 11 * S, 0)
    assert decide(state, TimerFired(tid("a", 0)), T0 + 20 * S, config=PERIOD).note == "stale timer"


# -- deliver="all" -----------------------------------------------------------------------------


def test_deliver_all_starts_one_run_with_every_event_in_ts_order() -> None:
    script: list[tuple[int, Input]] = [
        (0, arrive("a", ts=10)), (1_000, arrive("b", ts=20)), (1_500, arrive("c", ts=20)),
        (2_000, arrive("old", ts=5)), (3_000, arrive("d", ts=30)),
    ]
    state, decisions = drive(ALL, script)
    assert [d.actions for d in decisions][3] == [Replaced("old", "older")]
    assert fields(state) == (did("a"), ["a", "b", "c", "d"], 400, 0, None, 8 * S, 3)

    fired = decide(state, TimerFired(tid("a", 3)), T0 + 8 * S, config=ALL)
    assert fired.actions == [CancelTimer(tid("a", 3), T0 + 8 * S),
                             start("a", ev("a", 10), ev("b", 20), ev("c", 20), ev("d", 30))]


WINDOW_CASES = [
    # max_events, sizes of the arrivals (in order), events kept, events dropped (oldest first)
    (3, [100] * 3, ["e0", "e1", "e2"], []),
    (3, [100] * 5, ["e2", "e3", "e4"], ["e0", "e1"]),
    (1, [100] * 3, ["e2"], ["e0", "e1"]),
    (500, [4 * MIB, 4 * MIB, 2 * MIB], ["e0", "e1", "e2"], []),  # exactly 10 MiB fits
    (500, [4 * MIB, 4 * MIB, 2 * MIB + 1], ["e1", "e2"], ["e0"]),
    (500, [4 * MIB, 4 * MIB, 9 * MIB], ["e2"], ["e0", "e1"]),
    (500, [100, 11 * MIB], ["e1"], ["e0"]),  # the newest is kept even alone over the cap
    (500, [11 * MIB, 100], ["e1"], ["e0"]),
    (2, [6 * MIB, 100, 5 * MIB], ["e1", "e2"], ["e0"]),
]


@pytest.mark.parametrize(("max_events", "sizes", "kept", "dropped"), WINDOW_CASES)
def test_deliver_all_keeps_the_newest_events_within_count_and_bytes(
        max_events: int, sizes: list[int], kept: list[str], dropped: list[str]) -> None:
    config = Debounce(period_ms=5 * S, deliver="all", max_events=max_events)
    script: list[tuple[int, Input]] = [(i, arrive(f"e{i}", ts=i, size=size)) for i, size in enumerate(sizes)]
    state, decisions = drive(config, script)

    assert state is not None
    assert [h.event.id for h in state.events] == kept
    assert state.total_bytes == sum(sizes[int(e[1:])] for e in kept) <= max(MAX_BATCH_BYTES, sizes[-1])
    replaced = [a for d in decisions for a in d.actions if isinstance(a, Replaced)]
    assert replaced == [Replaced(e, "window_full") for e in dropped]


def test_a_config_change_while_pending_applies_when_the_run_starts() -> None:
    state, _ = drive(ALL, [(i, arrive(f"e{i}", ts=i)) for i in range(3)])
    to_last = Debounce(period_ms=5 * S, deliver="last")
    fired = decide(state, TimerFired(tid("e0", 2)), T0 + 2 + 5 * S, config=to_last)
    assert fired.actions == [Replaced("e0", "superseded"), Replaced("e1", "superseded"),
                             CancelTimer(tid("e0", 2), T0 + 2 + 5 * S), start("e0", ev("e2", 2))]


def test_every_event_either_runs_once_or_is_replaced_once() -> None:
    # Events every 700 ms with ts running backwards now and then; timers fire when due.
    config = Debounce(period_ms=2 * S, timeout_ms=3 * S, deliver="all", max_events=3)
    state: DebounceState | None = None
    seen: list[str] = []
    for i in range(60):
        now = T0 + i * 700
        if state is not None and state.fire_at <= now:
            fired = decide(state, TimerFired(state.timer_id), state.fire_at, config=config)
            seen += [a.event_id for a in fired.actions if isinstance(a, Replaced)]
            seen += [e.id for a in fired.actions if isinstance(a, StartRun) for e in a.events]
            state = fired.state
        event = ev(f"e{i:02d}", ts=i * 700 - (1_500 if i % 7 == 3 else 0))
        decision = decide(state, EventArrives(event, 100), now + (i % 3), config=config)
        seen += [a.event_id for a in decision.actions if isinstance(a, Replaced)]
        seen += [e.id for a in decision.actions if isinstance(a, StartRun) for e in a.events]
        state = decision.state
    pending = [] if state is None else [h.event.id for h in state.events]
    assert sorted(seen + pending) == [f"e{i:02d}" for i in range(60)]


# -- purity ------------------------------------------------------------------------------------


def test_decide_never_mutates_the_state_passed_in() -> None:
    configs = [PERIOD, TIMEOUT, ALL, Debounce(period_ms=5 * S, deliver="all", max_events=2)]
    for config in configs:
        state: DebounceState | None = None
        script: list[tuple[int, Input]] = [
            (0, arrive("a")), (1_000, arrive("b", 1_000)), (1_500, arrive("old", -5)), (2_000, arrive("b", 1_000)),
            (3_000, arrive("c", 3_000, size=6 * MIB)), (3_500, arrive("d", 3_500, size=6 * MIB)),
            (4_000, TimerFired("nope")), (4_000, TimerFired(tid("a", 0))), (9_000, arrive("e", 9_000)),
            (30_000, arrive("f", 30_000)),
        ]
        for at, inp in script:
            snapshot = None if state is None else state.model_dump()
            for probe in (inp, TimerFired("" if state is None else state.timer_id)):
                decide(state, probe, T0 + at, config=config)
                assert (None if state is None else state.model_dump()) == snapshot
            state = decide(state, inp, T0 + at, config=config).state


def test_state_round_trips_through_json() -> None:
    state, _ = drive(ALL, [(0, arrive("a")), (1, arrive("b", 1))])
    assert state is not None
    assert DebounceState.model_validate_json(state.model_dump_json()) == state
