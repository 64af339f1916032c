"""``processors.dispatch.run_keys``: what a run fixes at its first ready, from its trigger event.

A case is a :class:`~sluicegate.flow_config.FlowControl` and an event; the expected
:class:`RunKeys` is written out in full, with counter names built by :func:`slot_key` /
:func:`throttle_key` (whose layouts other tests pin) from the values expected here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from sluicegate.flow_config import (
    MINUTE,
    SECOND,
    Concurrency,
    Fairness,
    FlowControl,
    Priority,
    Throttle,
)
from sluicegate.processors.dispatch import throttle as th
from sluicegate.processors.dispatch.concurrency import SlotLimit, slot_key
from sluicegate.processors.dispatch.run_keys import (
    KEY_ERROR,
    RunKeys,
    partitions_sharing,
    run_keys,
    shared_counter_id,
)
from sluicegate.triggers import TriggerEvent
from sluicegate.wire import FunctionDefinition

APP, FN = "shop", "sync"
FKEY = f"{APP}/{FN}"
EVENT: dict[str, Any] = {
    "id": "e1", "name": "order.created", "ts": 1_700_000_000_000,
    "data": {"customer": "acme", "region": "eu", "int": 7, "whole": 2.0, "frac": 2.5, "text": "7",
             "flag": True, "huge": 10**6, "zero": 0.0},
}


def fn(flow: FlowControl | None, function_id: str = FN, app_id: str = APP) -> FunctionDefinition:
    return FunctionDefinition(app_id=app_id, function_id=function_id, name=function_id,
                              triggers=[TriggerEvent(event="order.created")], flow=flow, retries=0)


def sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def step(value: str | None, limit: int, scope: str = "fn", scope_id: str = FKEY) -> SlotLimit:
    return SlotLimit(slot_key(scope, scope_id, "step", value), limit, "step")  # type: ignore[arg-type]


# -- keys, limits, throttle ----------------------------------------------------------------

CASES = [
    ("no flow control: defaults", None, RunKeys()),
    ("empty flow control: defaults", FlowControl(), RunKeys()),
    ("unkeyed fn limit: one counter, key ''",
     FlowControl(concurrency=[Concurrency(limit=4)]),
     RunKeys(key="", limits=(step(None, 4),))),
    ("keyed limit: counter holds sha1(value), backlog key is the value",
     FlowControl(concurrency=[Concurrency(limit=5, key="event.data.customer")]),
     RunKeys(key="acme", limits=(step("acme", 5),))),
    ("per run: a run counter, not a step counter",
     FlowControl(concurrency=[Concurrency(limit=2, key="event.data.customer", per="run")]),
     RunKeys(key="acme", limits=(SlotLimit(slot_key("fn", FKEY, "run", "acme"), 2, "run"),))),
    ("two limits: both counters, key joins both values in order",
     FlowControl(concurrency=[Concurrency(limit=5, key="event.data.customer"),
                              Concurrency(limit=50, key="event.data.region", scope="app")]),
     RunKeys(key="acme|eu", limits=(step("acme", 5), step("eu", 50, scope="app", scope_id=APP)))),
    ("a number key becomes its string",
     FlowControl(concurrency=[Concurrency(limit=1, key="event.data.int")]),
     RunKeys(key="7", limits=(step("7", 1),))),
    ("key expression error: shared '(key error)' backlog and counter",
     FlowControl(concurrency=[Concurrency(limit=3, key="event.data.missing")]),
     RunKeys(key=KEY_ERROR, limits=(step(KEY_ERROR, 3),))),
    ("throttle without key: one bucket per function",
     FlowControl(throttle=Throttle(limit=30, period_ms=MINUTE)),
     RunKeys(key="", throttle=th.Throttle(30, MINUTE), throttle_key=f"th/{FKEY}/")),
    ("keyed throttle: bucket holds sha1(value), value joins the key",
     FlowControl(throttle=Throttle(limit=2, period_ms=6 * SECOND, burst=1, key="event.data.region")),
     RunKeys(key="eu", throttle=th.Throttle(2, 6 * SECOND, 1, "event.data.region"),
             throttle_key=f"th/{FKEY}/{sha1('eu')}")),
    ("throttle key error: '(key error)' bucket",
     FlowControl(throttle=Throttle(limit=1, period_ms=SECOND, key="event.data.nope")),
     RunKeys(key=KEY_ERROR, throttle=th.Throttle(1, SECOND, 0, "event.data.nope"),
             throttle_key=f"th/{FKEY}/{sha1(KEY_ERROR)}")),
    ("fairness key first, then concurrency, then throttle",
     FlowControl(fairness=Fairness(key="event.data.customer"),
                 concurrency=[Concurrency(limit=9, key="event.data.region")],
                 throttle=Throttle(limit=1, period_ms=SECOND, key="event.data.int")),
     RunKeys(key="acme|eu|7", limits=(step("eu", 9),), throttle=th.Throttle(1, SECOND, 0, "event.data.int"),
             throttle_key=f"th/{FKEY}/{sha1('7')}")),
    ("fairness key error: '(key error)' backlog",
     FlowControl(fairness=Fairness(key="event.data.missing")),
     RunKeys(key=KEY_ERROR)),
]


@pytest.mark.parametrize("name,flow,expected", CASES, ids=[c[0] for c in CASES])
def test_run_keys(name: str, flow: FlowControl | None, expected: RunKeys) -> None:
    assert run_keys(fn(flow), EVENT) == expected


def test_keyed_slot_names_the_sha1_of_the_value() -> None:
    got = run_keys(fn(FlowControl(concurrency=[Concurrency(limit=5, key="event.data.customer")])), EVENT)
    assert got.limits[0].slot == f"cc/fn/{FKEY}/step/{sha1('acme')}"
    assert got.key == "acme"


def test_same_value_same_backlog_and_counter_different_value_different() -> None:
    flow = FlowControl(concurrency=[Concurrency(limit=5, key="event.data.customer")])
    a1 = run_keys(fn(flow), {"data": {"customer": "a"}})
    a2 = run_keys(fn(flow), {"data": {"customer": "a"}, "id": "other"})
    b = run_keys(fn(flow), {"data": {"customer": "b"}})
    assert a1 == a2
    assert (b.key, b.limits[0].slot) != (a1.key, a1.limits[0].slot)


# -- priority and weight -------------------------------------------------------------------

@pytest.mark.parametrize("expr,expected", [
    ("event.data.int", 7),
    ("-event.data.int", -7),
    ("event.data.whole", 2),             # a float holding an integer
    ("event.data.frac", 0),              # not an integer
    ("event.data.text", 0),              # a string, even of digits
    ("event.data.flag", 0),              # a bool is not a number here
    ("event.data.missing", 0),           # evaluation error
    ("event.data.int / 0", 0),           # evaluation error
    ("event.data.huge", 43_200),         # clamped to +12 h
    ("-event.data.huge", -43_200),       # clamped to -12 h
    ("43200", 43_200),
    ("-43201", -43_200),
    ("1.0 / event.data.zero", 0),        # +inf: not an integer
    ("-1.0 / event.data.zero", 0),       # -inf
    ("event.data.zero / event.data.zero", 0),  # NaN
])
def test_priority(expr: str, expected: int) -> None:
    got = run_keys(fn(FlowControl(priority=Priority(run=expr))), EVENT)
    assert got.priority_s == expected
    assert got.key == "" and got.weight == 1


@pytest.mark.parametrize("expr,expected", [
    (None, 1),                           # no weight expression
    ("4", 4),
    ("event.data.int", 7),
    ("event.data.whole", 2),
    ("event.data.huge", 100),            # clamped to 100
    ("0", 1),                            # clamped to 1
    ("-event.data.int", 1),
    ("event.data.frac", 1),              # not an integer
    ("event.data.text", 1),
    ("event.data.flag", 1),
    ("event.data.missing", 1),           # evaluation error
    ("event.data.customer == 'acme' ? 4 : 1", 4),
    ("1.0 / event.data.zero", 1),        # +inf
])
def test_fairness_weight(expr: str | None, expected: int) -> None:
    got = run_keys(fn(FlowControl(fairness=Fairness(key="event.data.customer", weight=expr))), EVENT)
    assert (got.key, got.weight) == ("acme", expected)


# -- app / account limits shared across partitions -----------------------------------------

@pytest.mark.parametrize("scope,n,limit,expected", [
    ("app", None, 10, 10),        # not in the map: one partition
    ("app", 1, 10, 10),
    ("app", 3, 10, 3),            # 10 // 3
    ("app", 20, 10, 1),           # never 0
    ("account", 4, 10, 2),
    ("fn", 3, 10, 10),            # fn counters are never shared: the map does not apply
])
def test_shared_counter_limit_is_split_across_partitions(scope: str, n: int | None, limit: int,
                                                         expected: int) -> None:
    c = Concurrency(limit=limit, key='"openai"', scope=scope)  # type: ignore[arg-type]
    sharing = {} if n is None else {shared_counter_id(scope, APP, '"openai"'): n}
    got = run_keys(fn(FlowControl(concurrency=[c])), EVENT, partitions_sharing=sharing)
    scope_id = {"fn": FKEY, "app": APP, "account": ""}[scope]
    assert got.limits == (step("openai", expected, scope=scope, scope_id=scope_id),)


def test_sharing_of_another_counter_does_not_apply() -> None:
    c = Concurrency(limit=10, key='"openai"', scope="app")
    sharing = {shared_counter_id("app", APP, '"anthropic"'): 5, shared_counter_id("app", "other", '"openai"'): 5}
    got = run_keys(fn(FlowControl(concurrency=[c])), EVENT, partitions_sharing=sharing)
    assert got.limits[0].limit == 10


def test_partitions_sharing_counts_distinct_partitions() -> None:
    app_c = Concurrency(limit=10, key='"openai"', scope="app")
    acct_c = Concurrency(limit=10, key='"db"', scope="account")
    fns = [
        fn(FlowControl(concurrency=[app_c]), "f1"),
        fn(FlowControl(concurrency=[app_c, acct_c]), "f2"),
        fn(FlowControl(concurrency=[app_c]), "f3"),
        fn(FlowControl(concurrency=[acct_c]), "g1", app_id="other"),
        fn(FlowControl(concurrency=[Concurrency(limit=1, key="event.data.customer")]), "f4"),  # fn: not shared
        fn(None, "f5"),
        fn(FlowControl(concurrency=[Concurrency(limit=10, key='"openai"', scope="app")]), "h1", app_id="other"),
    ]
    partition = {f"{APP}/f1": 0, f"{APP}/f2": 1, f"{APP}/f3": 1, "other/g1": 2, f"{APP}/f4": 3,
                 f"{APP}/f5": 4, "other/h1": 5}
    assert partitions_sharing(fns, partition.__getitem__) == {
        shared_counter_id("app", APP, '"openai"'): 2,        # f1 on 0; f2, f3 on 1
        shared_counter_id("account", APP, '"db"'): 2,        # f2 on 1, other's g1 on 2: one account
        shared_counter_id("app", "other", '"openai"'): 1,    # another app's counter
    }
    assert shared_counter_id("account", APP, "k") == shared_counter_id("account", "other", "k")


def test_partitions_sharing_of_nothing_is_empty() -> None:
    assert partitions_sharing([], lambda k: 0) == {}
    assert partitions_sharing([fn(None), fn(FlowControl(concurrency=[Concurrency(limit=1)]))], lambda k: 0) == {}


# -- FlowControl rejects bad dispatch config, naming the field ------------------------------

@pytest.mark.parametrize("raw,named", [
    ({"concurrency": [{"limit": 1}] * 3}, ["concurrency", "at most 2"]),
    ({"concurrency": [{"limit": 1, "scope": "app"}]}, ["concurrency.0", "concurrency.key", "'app'"]),
    ({"concurrency": [{"limit": 1}, {"limit": 1, "scope": "account"}]}, ["concurrency.1", "concurrency.key"]),
    ({"concurrency": [{"limit": 0}]}, ["concurrency.0.limit", "greater than or equal to 1"]),
    ({"throttle": {"limit": 1, "period_ms": 999}}, ["throttle.period_ms", "1000"]),
    ({"throttle": {"limit": 0, "period_ms": SECOND}}, ["throttle.limit"]),
    ({"fairness": {"key": "event.data.c", "weight": "1", "extra": 1}}, ["fairness.extra"]),
    ({"batch": {"max_size": 10, "timeout_ms": SECOND}, "priority": {"run": "1"}}, ["batch and priority"]),
])
def test_flow_control_rejects_naming_the_field(raw: dict[str, Any], named: list[str]) -> None:
    """As a registration arrives (JSON from the SDK): the error names the field and the limit."""
    with pytest.raises(ValidationError) as exc:
        FlowControl.model_validate(raw)
    text = str(exc.value)
    for part in named:
        assert part in text, (part, text)


def test_flow_control_accepts_the_limits() -> None:
    flow = FlowControl(concurrency=[Concurrency(limit=1), Concurrency(limit=2, key='"x"', scope="app")],
                       throttle=Throttle(limit=1, period_ms=SECOND), priority=Priority(run="1"),
                       fairness=Fairness(key="event.data.customer", weight="1"))
    assert len(flow.concurrency) == 2 and flow.throttle is not None and flow.throttle.period_ms == SECOND
