"""The glue between the processor and the debounce/batch decisions (no broker)."""

from __future__ import annotations

import json

import pytest

from sluicegate.flow_config import Batch, Debounce, FlowControl
from sluicegate.processors import grouping
from sluicegate.processors.flow import batching, debounce
from sluicegate.wire import EventRecord, FunctionDefinition, TriggerEvent

NOW = 1_700_000_000_000


def fn(flow: FlowControl | None) -> FunctionDefinition:
    return FunctionDefinition(app_id="shop", function_id="f", name="f", triggers=[TriggerEvent(event="x")],
                              retries=0, flow=flow)


def ev(n: int, **data: object) -> EventRecord:
    return EventRecord(app_id="shop", id=f"e{n}", name="x", data=dict(data), ts=NOW + n, received_at=NOW + n)


class Store(dict):
    def apply(self, g: grouping.Grouped) -> grouping.Grouped:
        for k, v in g.puts.items():
            if v is None:
                self.pop(k, None)
            else:
                self[k] = v
        return g


DEB = fn(FlowControl(debounce=Debounce(period_ms=1000, key="event.data.order")))
BAT = fn(FlowControl(batch=Batch(max_size=2, timeout_ms=1000, if_exp="event.data.bulk")))


@pytest.mark.parametrize(("definition", "kind"), [
    (fn(None), None), (fn(FlowControl()), None), (DEB, "debounce"), (BAT, "batch")])
def test_grouping_of(definition: FunctionDefinition, kind: str | None) -> None:
    assert grouping.grouping_of(definition) == kind


def test_flow_keys_are_pinned() -> None:
    # stored in the processor's flow table: never change without a migration
    assert grouping.flow_key_for(DEB, "debounce", "o-1") == (
        "deb/shop/f/" + __import__("hashlib").sha1(b"o-1").hexdigest())
    assert grouping.flow_key_for(BAT, "batch", None) == "batch/shop/f/da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert grouping.qualify("deb/shop/f/abc", "debounce e1@1 0") == "deb/shop/f/abc|debounce e1@1 0"


def test_a_debounce_sets_a_qualified_timer_and_the_timer_starts_the_run_with_the_last_event() -> None:
    store = Store()
    first = store.apply(grouping.on_event(DEB, ev(1, order="o"), store.get, NOW))
    [timer] = first.set_timers
    assert timer.timer_id == grouping.qualify(timer.flow_key, timer.raw_id) and timer.due_ms == NOW + 1000
    second = store.apply(grouping.on_event(DEB, ev(2, order="o"), store.get, NOW + 10))
    assert [e.id for e in second.replaced] == ["e1"] and second.runs == []
    assert second.cancel_timers == [(timer.timer_id, NOW + 1000)]
    [moved] = second.set_timers
    fired = store.apply(grouping.on_timer(DEB, moved.flow_key, moved.raw_id, store.get, NOW + 1010))
    [(seed, events)] = fired.runs
    assert seed == debounce.debounce_run_seed("e1@" + str(NOW + 1)) and [e.id for e in events] == ["e2"]
    assert moved.flow_key not in store  # the group is closed


def test_a_redelivered_event_is_ignored_even_after_its_group_started() -> None:
    store = Store()
    store.apply(grouping.on_event(BAT, ev(1, bulk=True), store.get, NOW))
    full = store.apply(grouping.on_event(BAT, ev(2, bulk=True), store.get, NOW + 1))
    assert [len(events) for _, events in full.runs] == [2]
    again = grouping.on_event(BAT, ev(2, bulk=True), store.get, NOW + 2)
    assert again == grouping.Grouped()
    seen = json.loads(store[f"seen/{grouping.flow_key_for(BAT, 'batch', None)}"])
    assert seen == {"at": NOW + 1, "ids": ["e1", "e2"]}  # when the last was taken: it goes a day later


def test_seen_ids_are_bounded() -> None:
    store = Store()
    for n in range(grouping.RECENT_IDS + 5):
        store.apply(grouping.on_event(BAT, ev(n, bulk=False), store.get, NOW + n))
    seen = grouping.seen_ids(store[f"seen/{grouping.flow_key_for(BAT, 'batch', None)}"])
    assert len(seen) == grouping.RECENT_IDS and seen[-1] == f"e{grouping.RECENT_IDS + 4}"


def test_a_seen_record_written_before_it_held_a_time_still_dedups() -> None:
    store = Store()
    key = f"seen/{grouping.flow_key_for(BAT, 'batch', None)}"
    store[key] = json.dumps(["e1"])  # the bare list of earlier versions
    assert grouping.on_event(BAT, ev(1, bulk=True), store.get, NOW) == grouping.Grouped()
    store.apply(grouping.on_event(BAT, ev(2, bulk=True), store.get, NOW + 5))
    assert json.loads(store[key]) == {"at": NOW + 5, "ids": ["e1", "e2"]}


@pytest.mark.parametrize(("data", "batched"), [({"bulk": True}, True), ({"bulk": False}, False), ({}, False)])
def test_batch_if_false_or_failing_runs_the_event_alone(data: dict, batched: bool) -> None:
    g = grouping.on_event(BAT, ev(1, **data), Store().get, NOW)
    assert (g.runs == []) is batched
    if not batched:
        assert [[e.id for e in events] for _, events in g.runs] == [["e1"]]


def test_a_failing_debounce_key_skips_the_event_visibly() -> None:
    g = grouping.on_event(DEB, ev(1), Store().get, NOW)  # no data.order
    assert g.skipped is not None and g.skipped[0] == "expression_error" and "debounce.key" in g.skipped[1]


def test_a_timer_of_a_function_that_stopped_batching_starts_what_was_held() -> None:
    store = Store()
    opened = store.apply(grouping.on_event(BAT, ev(1, bulk=True), store.get, NOW))
    [timer] = opened.set_timers
    g = store.apply(grouping.on_timer(fn(None), timer.flow_key, timer.raw_id, store.get, NOW + 5000))
    assert [(seed, [e.id for e in events]) for seed, events in g.runs] == [
        (batching.batch_run_seed(f"e1@{NOW + 1}"), ["e1"])]
    assert timer.flow_key not in store
