"""Batching, ``flow.batching.decide``, driven by hand: wall-clock ``now`` is an argument.

Times are offsets from ``T0`` in ms; every case asserts the exact state fields and actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sluicegate.flow_config import MAX_BATCH_BYTES, Batch
from sluicegate.processors.flow.batching import (
    BatchState,
    CancelTimer,
    ClosedBy,
    Decision,
    EventArrives,
    Input,
    SetTimer,
    StartRun,
    TimerFired,
    batch_id_for,
    batch_run_seed,
    batch_timer_id,
    decide,
)
from sluicegate.wire import EventRecord

T0 = 1_700_000_000_000
S = 1_000
MIB = 1024 * 1024
SMALL = Batch(max_size=3, timeout_ms=2 * S)
REFERENCE = Batch(max_size=100, timeout_ms=2 * S)


def ev(eid: str, ts: int = 0) -> EventRecord:
    """An event whose event time is ``T0 + ts`` and whose receipt time is ``T0``."""
    return EventRecord(app_id="shop", id=eid, name="order.placed", data={"id": eid}, ts=T0 + ts, received_at=T0)


def arrive(eid: str, size: int = 100, batchable: bool = True, ts: int = 0) -> EventArrives:
    return EventArrives(ev(eid, ts), size, batchable)


def bid(eid: str) -> str:
    return f"{eid}@{T0}"


def tid(eid: str) -> str:
    return f"batch {bid(eid)}"


def run(first: str, ids: list[str], closed_by: ClosedBy) -> StartRun:
    return StartRun(bid(first), f"batch {bid(first)}", tuple(ev(i) for i in ids), closed_by)


def drive(config: Batch, script: Sequence[tuple[int, Input]],
          state: BatchState | None = None) -> tuple[BatchState | None, list[Decision]]:
    """Feed ``(now offset, input)`` pairs in order, threading the state."""
    decisions = []
    for at, inp in script:
        decision = decide(state, inp, T0 + at, config=config)
        decisions.append(decision)
        state = decision.state
    return state, decisions


def fields(state: BatchState | None) -> tuple[Any, ...] | None:
    if state is None:
        return None
    return state.batch_id, [e.id for e in state.events], state.total_bytes, state.opened_at - T0, state.due_ms - T0


def actions(decisions: list[Decision]) -> list[Any]:
    return [a for d in decisions for a in d.actions]


# -- ids ---------------------------------------------------------------------------------------


def test_id_formats_are_pinned() -> None:
    # These formats are in changelogged timers and in run ids: a change is a migration.
    assert batch_id_for(ev("01EV")) == f"01EV@{T0}"
    assert batch_timer_id(f"01EV@{T0}") == f"batch 01EV@{T0}"
    assert batch_run_seed(f"01EV@{T0}") == f"batch 01EV@{T0}"


def test_batch_ids_are_distinct_per_batch_and_the_same_on_replay() -> None:
    script: list[tuple[int, Input]] = [(i, arrive(f"e{i}")) for i in range(9)]
    first = [a.batch_id for a in actions(drive(SMALL, script)[1]) if isinstance(a, StartRun)]
    replay = [a.batch_id for a in actions(drive(SMALL, script)[1]) if isinstance(a, StartRun)]
    assert first == replay == [bid("e0"), bid("e3"), bid("e6")]
    later = ev("e0").model_copy(update={"received_at": T0 + 86_400_001})  # an id reused after 24 h
    assert batch_id_for(later) != bid("e0")


# -- the reference case: 250 events, max_size 100, timeout 2 s ---------------------------------


def test_250_events_make_three_runs_of_100_100_and_50() -> None:
    script: list[tuple[int, Input]] = [(i * 4, arrive(f"e{i:03d}")) for i in range(250)]  # 0 .. 996 ms
    state, decisions = drive(REFERENCE, script)

    assert decisions[0].actions == [SetTimer(tid("e000"), T0 + 2 * S)]
    assert decisions[99].actions == [CancelTimer(tid("e000"), T0 + 2 * S),
                                     run("e000", [f"e{i:03d}" for i in range(100)], "max_size")]
    assert decisions[100].actions == [SetTimer(tid("e100"), T0 + 400 + 2 * S)]
    assert decisions[199].actions == [CancelTimer(tid("e100"), T0 + 400 + 2 * S),
                                      run("e100", [f"e{i:03d}" for i in range(100, 200)], "max_size")]
    assert decisions[200].actions == [SetTimer(tid("e200"), T0 + 800 + 2 * S)]
    assert sum(len(d.actions) for d in decisions) == 7
    assert fields(state) == (bid("e200"), [f"e{i:03d}" for i in range(200, 250)], 5_000, 800, 2_800)

    # The first batch's timer may still fire: stale. The open batch's timer before its time: early.
    assert decide(state, TimerFired(tid("e000")), T0 + 2 * S, config=REFERENCE) == Decision(state, note="stale timer")
    assert decide(state, TimerFired(tid("e200")), T0 + 2_799, config=REFERENCE) == Decision(
        state, note="timer fired early")
    fired = decide(state, TimerFired(tid("e200")), T0 + 2_800, config=REFERENCE)
    assert fired == Decision(None, [CancelTimer(tid("e200"), T0 + 2_800),
                                    run("e200", [f"e{i:03d}" for i in range(200, 250)], "timeout")], changed=True)

    runs = [a for a in actions([*decisions, fired]) if isinstance(a, StartRun)]
    assert [len(r.events) for r in runs] == [100, 100, 50]
    assert [e.id for r in runs for e in r.events] == [f"e{i:03d}" for i in range(250)]
    assert len({r.run_seed for r in runs}) == 3


# -- flush by size -----------------------------------------------------------------------------

SIZE_CASES = [
    # max_size, events arriving, runs closed by size, events left open
    (2, 2, [["e0", "e1"]], []),
    (2, 5, [["e0", "e1"], ["e2", "e3"]], ["e4"]),
    (3, 2, [], ["e0", "e1"]),
    (3, 3, [["e0", "e1", "e2"]], []),
    (3, 7, [["e0", "e1", "e2"], ["e3", "e4", "e5"]], ["e6"]),
]


@pytest.mark.parametrize(("max_size", "count", "closed", "left"), SIZE_CASES)
def test_a_batch_closes_when_it_reaches_max_size(max_size: int, count: int, closed: list[list[str]],
                                                 left: list[str]) -> None:
    config = Batch(max_size=max_size, timeout_ms=2 * S)
    state, decisions = drive(config, [(10 * i, arrive(f"e{i}")) for i in range(count)])

    expected: list[Any] = []
    for ids in closed:
        opened = 10 * int(ids[0][1:])
        expected += [SetTimer(tid(ids[0]), T0 + opened + 2 * S), CancelTimer(tid(ids[0]), T0 + opened + 2 * S),
                     run(ids[0], ids, "max_size")]
    if left:
        opened = 10 * int(left[0][1:])
        expected.append(SetTimer(tid(left[0]), T0 + opened + 2 * S))
    assert actions(decisions) == expected
    assert fields(state) == (None if not left else (bid(left[0]), left, 100 * len(left), opened, opened + 2 * S))


def test_lowering_max_size_closes_an_open_batch_at_the_next_event() -> None:
    state, _ = drive(Batch(max_size=10, timeout_ms=2 * S), [(i, arrive(f"e{i}")) for i in range(5)])
    decision = decide(state, arrive("e5"), T0 + 5, config=SMALL)
    assert decision == Decision(None, [CancelTimer(tid("e0"), T0 + 2 * S),
                                       run("e0", [f"e{i}" for i in range(6)], "max_size")], changed=True)


# -- flush by time -----------------------------------------------------------------------------

TIMER_CASES = [
    # timer id, now, closes?, note
    (tid("a"), 2_000, True, ""),
    (tid("a"), 90_000, True, ""),  # a late timer
    (tid("a"), 1_999, False, "timer fired early"),
    (tid("zz"), 2_000, False, "stale timer"),  # an earlier batch's timer
    ("", 2_000, False, "stale timer"),
]


@pytest.mark.parametrize(("timer_id", "now", "closes", "note"), TIMER_CASES)
def test_timer_closes_the_batch_only_when_current_and_due(timer_id: str, now: int, closes: bool, note: str) -> None:
    state, _ = drive(SMALL, [(0, arrive("a")), (1_500, arrive("b"))])
    assert fields(state) == (bid("a"), ["a", "b"], 200, 0, 2_000)

    decision = decide(state, TimerFired(timer_id), T0 + now, config=SMALL)

    if closes:
        assert decision == Decision(None, [CancelTimer(tid("a"), T0 + 2_000), run("a", ["a", "b"], "timeout")],
                                    changed=True)
    else:
        assert decision == Decision(state, note=note)


def test_timer_without_a_batch_is_stale() -> None:
    assert decide(None, TimerFired(tid("a")), T0, config=SMALL) == Decision(None, note="stale timer: no batch")


@pytest.mark.parametrize(("at", "joins"), [(1_999, True), (2_000, False), (5_000, False)])
def test_an_event_at_or_after_the_timeout_closes_the_batch_and_opens_the_next(at: int, joins: bool) -> None:
    config = Batch(max_size=10, timeout_ms=2 * S)
    state, _ = drive(config, [(0, arrive("a"))])
    decision = decide(state, arrive("b"), T0 + at, config=config)
    if joins:
        assert decision.actions == []
        assert fields(decision.state) == (bid("a"), ["a", "b"], 200, 0, 2_000)
    else:
        assert decision.actions == [CancelTimer(tid("a"), T0 + 2_000), run("a", ["a"], "timeout"),
                                    SetTimer(tid("b"), T0 + at + 2_000)]
        assert fields(decision.state) == (bid("b"), ["b"], 100, at, at + 2_000)


@pytest.mark.parametrize("ts", [-86_400_000, 0, 86_400_000])
def test_event_time_does_not_move_the_timeout(ts: int) -> None:
    decision = decide(None, arrive("a", ts=ts), T0 + 7, config=SMALL)
    assert decision.actions == [SetTimer(tid("a"), T0 + 7 + 2 * S)]


def test_a_changed_timeout_does_not_move_an_open_batch() -> None:
    state, _ = drive(SMALL, [(0, arrive("a"))])
    decision = decide(state, arrive("b"), T0 + 100, config=Batch(max_size=3, timeout_ms=60 * S))
    assert fields(decision.state) == (bid("a"), ["a", "b"], 200, 0, 2_000)


# -- dedup -------------------------------------------------------------------------------------

DEDUP_CASES = [
    # now of the redelivery of "a" (batch opened by "a" at 0, due at 2000)
    1,
    1_999,
    2_000,  # due: still ignored; the timer closes the batch and "a" runs once
]


@pytest.mark.parametrize("now", DEDUP_CASES)
def test_an_event_id_already_in_the_batch_is_ignored(now: int) -> None:
    state, _ = drive(SMALL, [(0, arrive("a")), (1, arrive("b"))])
    redelivered = EventArrives(ev("a").model_copy(update={"data": {"other": True}}), 999)
    assert decide(state, redelivered, T0 + now, config=SMALL) == Decision(state, note="duplicate event")


def test_duplicates_do_not_count_towards_max_size() -> None:
    state, decisions = drive(SMALL, [(0, arrive("a")), (1, arrive("a")), (2, arrive("b")), (3, arrive("b")),
                                     (4, arrive("c"))])
    assert state is None
    assert actions(decisions) == [SetTimer(tid("a"), T0 + 2_000), CancelTimer(tid("a"), T0 + 2_000),
                                  run("a", ["a", "b", "c"], "max_size")]


# -- 10 MiB ------------------------------------------------------------------------------------

BYTES_CASES = [
    # sizes of e0, e1, ... ; runs closed (first id, ids, closed_by); ids left open
    ([4 * MIB, 4 * MIB], [], ["e0", "e1"]),
    ([4 * MIB, 4 * MIB, 2 * MIB], [(["e0", "e1", "e2"], "max_bytes")], []),  # reaches 10 MiB exactly
    ([4 * MIB, 4 * MIB, 2 * MIB + 1], [(["e0", "e1"], "max_bytes")], ["e2"]),  # would exceed: split
    ([MAX_BATCH_BYTES - 1, 1], [(["e0", "e1"], "max_bytes")], []),
    ([MAX_BATCH_BYTES - 1, 2], [(["e0"], "max_bytes")], ["e1"]),
    ([MAX_BATCH_BYTES + 1], [(["e0"], "max_bytes")], []),  # alone over the cap: runs at once
    ([MIB, MAX_BATCH_BYTES + 1], [(["e0"], "max_bytes"), (["e1"], "max_bytes")], []),
]


@pytest.mark.parametrize(("sizes", "closed", "left"), BYTES_CASES)
def test_a_batch_never_exceeds_10_mib(sizes: list[int], closed: list[tuple[list[str], ClosedBy]],
                                      left: list[str]) -> None:
    config = Batch(max_size=100, timeout_ms=2 * S)
    state, decisions = drive(config, [(0, arrive(f"e{i}", size)) for i, size in enumerate(sizes)])

    assert [a for a in actions(decisions) if isinstance(a, StartRun)] == [run(ids[0], ids, by) for ids, by in closed]
    assert fields(state) == (None if not left else (bid(left[0]), left, sum(sizes[int(i[1:])] for i in left), 0, 2_000))


def test_a_split_closes_the_batch_then_opens_the_next_with_the_event() -> None:
    state, _ = drive(REFERENCE, [(0, arrive("a", 6 * MIB))])
    decision = decide(state, arrive("b", 5 * MIB), T0 + 10, config=REFERENCE)
    assert decision.actions == [CancelTimer(tid("a"), T0 + 2_000), run("a", ["a"], "max_bytes"),
                                SetTimer(tid("b"), T0 + 2_010)]
    assert fields(decision.state) == (bid("b"), ["b"], 5 * MIB, 10, 2_010)


def test_an_event_alone_over_the_cap_sets_no_timer() -> None:
    assert decide(None, arrive("a", MAX_BATCH_BYTES + 1), T0, config=REFERENCE) == Decision(
        None, [run("a", ["a"], "max_bytes")], changed=True)


# -- if_exp false: bypass ----------------------------------------------------------------------

BYPASS_CASES = [
    # events before the unbatchable one, and the now at which it arrives
    ([], 10),
    (["a"], 10),
    (["a", "b"], 10),
    (["a"], 5_000),  # the open batch is due: still untouched (its timer closes it)
]


@pytest.mark.parametrize(("before", "now"), BYPASS_CASES)
def test_an_unbatchable_event_starts_its_own_run_and_leaves_the_batch_alone(before: list[str], now: int) -> None:
    state, _ = drive(SMALL, [(0, arrive(e)) for e in before])

    decision = decide(state, arrive("x", batchable=False), T0 + now, config=SMALL)

    assert decision == Decision(state, [StartRun(None, "x", (ev("x"),), "not_batchable")], note="not batchable")


def test_unbatchable_events_do_not_count_towards_the_batch() -> None:
    script: list[tuple[int, Input]] = [
        (0, arrive("a")), (1, arrive("x", batchable=False)), (2, arrive("b")), (3, arrive("y", batchable=False)),
        (4, arrive("c")),
    ]
    state, decisions = drive(SMALL, script)
    assert state is None
    assert [a for a in actions(decisions) if isinstance(a, StartRun)] == [
        StartRun(None, "x", (ev("x"),), "not_batchable"), StartRun(None, "y", (ev("y"),), "not_batchable"),
        run("a", ["a", "b", "c"], "max_size")]


# -- purity ------------------------------------------------------------------------------------


def test_decide_never_mutates_the_state_passed_in() -> None:
    script: list[tuple[int, Input]] = [
        (0, arrive("a")), (1, arrive("a")), (2, arrive("x", batchable=False)), (3, arrive("b", 9 * MIB)),
        (4, arrive("c")), (5, TimerFired("nope")), (6, arrive("d", 5 * MIB)), (3_000, arrive("e")),
        (3_001, arrive("f")), (3_002, arrive("g")),
    ]
    for config in (SMALL, REFERENCE):
        state: BatchState | None = None
        for at, inp in script:
            snapshot = None if state is None else state.model_dump()
            for probe in (inp, TimerFired("" if state is None else state.timer_id)):
                decide(state, probe, T0 + at + 5_000, config=config)
                decide(state, probe, T0 + at, config=config)
                assert (None if state is None else state.model_dump()) == snapshot
            state = decide(state, inp, T0 + at, config=config).state


def test_state_round_trips_through_json() -> None:
    state, _ = drive(SMALL, [(0, arrive("a")), (1, arrive("b"))])
    assert state is not None
    assert BatchState.model_validate_json(state.model_dump_json()) == state
