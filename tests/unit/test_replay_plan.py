"""Replay decisions (processors/replay_plan.py) and the rerun decision: tables, no broker."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.processors.replay_plan import (CHUNK_EVENTS, apply_chunk, begin, chunk_events, next_delay_ms, pace_due,
                                               pending_ranges,
                                               replay_run_id, triggers_for_event)
from sluicegate.processors.routing import TriggerIndex, run_id_for
from sluicegate.processors.run_decisions import Dispatch, rerun
from sluicegate.state.run_state import RunState, StepRecord
from sluicegate.triggers import TriggerEvent
from sluicegate.wire import EventRecord, FunctionDefinition, ReplaySpec, RerunRun

NOW = 1_700_000_000_000


def fn(function_id: str, event: str = "order.created", if_exp: str | None = None, app: str = "shop") -> FunctionDefinition:
    return FunctionDefinition(app_id=app, function_id=function_id, name=function_id,
                              triggers=[TriggerEvent(event=event, if_exp=if_exp)], retries=0)


FUNCTIONS = [fn("checkout"), fn("email"), fn("big", if_exp="event.data.amount > 100")]
INDEX = TriggerIndex()
INDEX.rebuild(FUNCTIONS)


def event(i: int, name: str = "order.created", app: str = "shop", **data: Any) -> EventRecord:
    return EventRecord(app_id=app, id=f"e{i}", name=name, data={"n": i, **data}, ts=NOW, received_at=NOW)


def spec(**kw: Any) -> ReplaySpec:
    base: dict[str, Any] = {"replay_id": "r1", "app_id": "shop", "ranges": {2: (10, 20)}}
    return ReplaySpec(**{**base, **kw})


def rec(offset: int, ev: EventRecord | None = None, partition: int = 2, raw: bytes | None = None) -> tuple[int, int, bytes | None]:
    return partition, offset, raw if raw is not None else (ev or event(offset)).dumps()


@pytest.mark.parametrize(("replay", "ev", "expected"), [
    pytest.param(spec(), event(1), ["checkout", "email"], id="all-functions-the-event-triggers-today"),
    pytest.param(spec(), event(1, amount=500), ["checkout", "email", "big"], id="trigger-if-applies"),
    pytest.param(spec(functions=["email"]), event(1), ["email"], id="chosen-functions-only"),
    pytest.param(spec(functions=["big"]), event(1), [], id="chosen-function-not-triggered"),
    pytest.param(spec(if_exp="event.data.n > 5"), event(1), [], id="replay-if-false"),
    pytest.param(spec(if_exp="event.data.n > 5"), event(9), ["checkout", "email"], id="replay-if-true"),
    pytest.param(spec(if_exp="event.data.missing > 5"), event(9), [], id="replay-if-error-is-false"),
    pytest.param(spec(), event(1, app="other"), [], id="other-app"),
    pytest.param(spec(), event(1, name="sluicegate/function.failed"), [], id="engine-events-are-not-replayed"),
])
def test_which_functions_an_event_replays_into(replay: ReplaySpec, ev: EventRecord, expected: list[str]) -> None:
    triggers = triggers_for_event(replay, ev, INDEX.match(ev))
    assert sorted(t.function_id for t in triggers) == sorted(expected)
    for t in triggers:
        assert t.replay_id == "r1" and t.replay_of == run_id_for("shop", t.function_id, ev.id)
        assert t.run_id == replay_run_id(replay, t.function_id, ev.id) != t.replay_of
        assert t.only_if_original is None


def test_only_failed_asks_the_function_processor_to_check_the_original() -> None:
    [t, *_] = triggers_for_event(spec(only_failed=True), event(1), INDEX.match(event(1)))
    assert t.only_if_original == ["failed", "cancelled"]


def test_run_ids_are_stable_per_replay_and_event_and_differ_between_replays() -> None:
    a = replay_run_id(spec(), "checkout", "e1")
    assert a == replay_run_id(spec(), "checkout", "e1")
    assert a != replay_run_id(spec(replay_id="r2"), "checkout", "e1")
    assert a != replay_run_id(spec(), "checkout", "e2") != replay_run_id(spec(), "email", "e1")


def test_a_chunk_advances_offsets_counts_and_sends_triggers() -> None:
    state = begin(spec(), NOW)
    assert (state.next_offsets, state.total, state.position) == ({2: 10}, 10, 0)
    records = [rec(10), rec(11, event(11, app="other")), rec(12, raw=b'{"control":"wait_add"}'),
               rec(13, event(13, name="not.triggering")), rec(14, event(14, amount=1000))]
    chunk = apply_chunk(state, records, INDEX.match, NOW + 5)
    s = chunk.state
    assert s.next_offsets == {2: 15} and s.position == 5 and s.seq == 1 and not chunk.done
    assert (s.events_read, s.runs_created, s.skipped) == (3, 5, 1)  # e10: 2 runs; e13: none; e14: 3 runs
    assert [t.events[0].id for t in chunk.triggers] == ["e10", "e10", "e14", "e14", "e14"]
    assert state.seq == 0 and state.events_read == 0  # the input state is not changed


def test_records_outside_the_range_or_read_already_are_ignored() -> None:
    state = begin(spec(), NOW)
    state = apply_chunk(state, [rec(10), rec(11)], INDEX.match, NOW).state
    again = apply_chunk(state, [rec(10), rec(11), rec(25), rec(9), rec(12, partition=3)], INDEX.match, NOW)
    assert again.triggers == [] and again.state.events_read == 2 and again.state.next_offsets == {2: 12}


def test_reaching_the_end_finishes_the_replay() -> None:
    state = begin(spec(ranges={2: (10, 13), 3: (0, 0)}), NOW)
    assert pending_ranges(state) == {2: (10, 13)}
    chunk = apply_chunk(state, [rec(10), rec(11)], INDEX.match, NOW, reached={2: 13})  # 12 was compacted away
    assert chunk.done and chunk.state.status == "done" and chunk.state.finished_at == NOW
    assert pending_ranges(chunk.state) == {}
    assert chunk.state.position == chunk.state.total == 3


def test_progress_counts_originals_that_did_not_fail_as_skipped() -> None:
    state = apply_chunk(begin(spec(only_failed=True), NOW), [rec(10), rec(11)], INDEX.match, NOW).state
    state.not_started = 3
    p = state.progress()
    assert (p["events_read"], p["runs_created"], p["skipped"], p["status"]) == (2, 1, 3, "running")


@pytest.mark.parametrize(("pace", "events", "last_due", "read_at", "due"), [
    (None, CHUNK_EVENTS, 0, NOW, 0),                 # no pace: no wait
    (100.0, 25, 0, NOW, NOW + 250),                  # the first chunk: 25 events at 100/s, the next 250 ms on
    (50.0, 100, 0, NOW, NOW + 2000),
    (1000.0, 0, 0, NOW, 0),                          # nothing read (the range is empty): no wait
    (3.0, 1, 0, NOW, NOW + 333),
    (100.0, 25, NOW - 15, NOW, NOW + 235),           # read 15 ms late: the lateness does not add up
    (100.0, 25, NOW - 250, NOW, NOW),                # read a whole tick late: the next is due at once
    (100.0, 25, NOW - 251, NOW, NOW + 250),          # later than a tick (a stall): no burst to catch up
    (100.0, 25, NOW + 50, NOW, NOW + 250),           # read early (a repeated continue): from the read
])
def test_a_paced_chunk_sets_when_the_next_may_be_read(pace: float | None, events: int, last_due: int, read_at: int,
                                                      due: int) -> None:
    state = begin(spec(pace_per_s=pace), NOW)
    state.next_chunk_at = last_due
    assert pace_due(state, events, read_at) == due


@pytest.mark.parametrize(("due", "absorbed_at", "delay"), [
    (0, NOW, 0),                   # no pace
    (NOW + 250, NOW + 30, 220),    # absorbing the chunk took 30 ms of the 250: wait the rest
    (NOW + 250, NOW + 250, 0),
    (NOW + 250, NOW + 400, 0),     # absorbing took longer than the pace allows: at once, never negative
])
def test_the_wait_for_the_next_chunk_counts_the_time_taken_to_absorb_the_last(due: int, absorbed_at: int,
                                                                              delay: int) -> None:
    state = begin(spec(pace_per_s=100.0), NOW)
    state.next_chunk_at = due
    assert next_delay_ms(state, absorbed_at) == delay


@pytest.mark.parametrize(("pace", "events"), [
    (None, CHUNK_EVENTS),          # unpaced: whole chunks
    (1000.0, CHUNK_EVENTS),        # 250 per tick, capped at a whole chunk
    (100.0, 25),                   # one tick (250 ms) of events
    (40.0, 10),
    (20.0, 5),
    (3.0, 1),                      # less than one event per tick: one event at a time
    (0.5, 1),
])
def test_a_paced_replay_reads_a_tick_of_events_per_chunk(pace: float | None, events: int) -> None:
    assert chunk_events(begin(spec(pace_per_s=pace), NOW)) == events


# -- rerun --------------------------------------------------------------------------------------

def original_run() -> RunState:
    f = fn("checkout")
    steps = {h: StepRecord(hash=h, id=i, status="completed", output=i.upper(), size=3)
             for h, i in (("ha", "extract"), ("hb", "transform"), ("hc", "load"))}
    return RunState(run_id="orig", app_id="shop", function_id="checkout", function=f, status="failed",
                    events=[{"id": "e1", "name": "order.created", "data": {}, "ts": NOW}], event_ids=["e1"],
                    created_at=NOW, steps=steps, step_order=["ha", "hb", "hc"], state_bytes=9)


@pytest.mark.parametrize(("from_step", "kept"), [
    (None, []), ("extract", []), ("transform", ["ha"]), ("load", ["ha", "hb"]),
])
def test_rerun_keeps_the_steps_before_the_chosen_one(from_step: str | None, kept: list[str]) -> None:
    current = fn("checkout", event="order.placed")  # the current version
    d = rerun(original_run(), RerunRun(app_id="shop", function_id="checkout", run_id="orig", new_run_id="new",
                                       from_step=from_step), current, NOW + 10)
    run = d.state
    assert run is not None and run.run_id == "new" and run.rerun_of == "orig" and run.function == current
    assert run.status == "running" and run.events == original_run().events and run.event_ids == ["e1"]
    assert run.step_order == kept and run.state_bytes == 3 * len(kept)
    assert [type(a) for a in d.actions] == [Dispatch] and run.job is not None
    assert run.memos() == {h: {"data": original_run().steps[h].output, "id": original_run().steps[h].id} for h in kept}


def test_rerun_from_an_unknown_step_fails_clearly() -> None:
    d = rerun(original_run(), RerunRun(app_id="shop", function_id="checkout", run_id="orig", new_run_id="new",
                                       from_step="nope"), fn("checkout"), NOW)
    assert d.state is not None and d.state.status == "failed"
    assert d.state.error is not None and "from_step" in d.state.error.message and "'nope'" in d.state.error.message
