"""Which waiting runs an event resumes (wait_for_event, invoke results, cancel_on). Pure."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.expressions import ExpressionError, InvalidExpression, evaluate
from sluicegate.processors import event_waits as ew
from sluicegate.processors.event_waits import SKEW_MS, LookbackBuffer, WaitIndex, Waiter
from sluicegate.wire import EventRecord

T0 = 1_700_000_000_000
TRIGGER = {"id": "trig-1", "name": "order.created", "ts": T0,
           "data": {"id": "o-1", "n": 5, "flag": True, "user": {"id": "u-1", "tags": ["a"]}, "items": [1, 2]},
           "user": {"email": "a@b.c"}}


def waiter(wait_id: str = "w1", *, match: str | None = None, if_exp: str | None = None, event: str = "order.paid",
           app_id: str = "shop", since_ms: int = T0, expires_ms: int = T0 + 60_000,
           trigger: dict[str, Any] | None = TRIGGER, purpose: ew.Purpose = "step") -> Waiter:
    return ew.make_waiter(wait_id=wait_id, app_id=app_id, function_id="f", run_id=f"run-{wait_id}", event=event,
                          since_ms=since_ms, expires_ms=expires_ms, trigger_event=trigger, match=match,
                          if_exp=if_exp, purpose=purpose)


def ev(data: dict[str, Any] | None = None, *, id: str = "e1", name: str = "order.paid", app_id: str = "shop",
       at: int = T0 + 1_000, user: dict[str, Any] | None = None) -> EventRecord:
    return EventRecord(app_id=app_id, id=id, name=name, data=data or {}, user=user, ts=at, received_at=at)


# ---------------------------------------------------------------------------- match sugar

@pytest.mark.parametrize(("match", "expected"), [
    ("data.id", "event.data.id == async.data.id"),
    ("data.user.id", "event.data.user.id == async.data.user.id"),
    ("user.email", "event.user.email == async.user.email"),
    ("data.user_id2", "event.data.user_id2 == async.data.user_id2"),
    ("  data.id ", "event.data.id == async.data.id"),
])
def test_match_to_if(match: str, expected: str) -> None:
    assert ew.match_to_if(match) == expected


@pytest.mark.parametrize(("match", "why"), [
    ("", "dotted field path"),
    ("data.", "dotted field path"),
    (".data.id", "dotted field path"),
    ("data..id", "dotted field path"),
    ("data[0]", "dotted field path"),
    ("data.id == 1", "dotted field path"),
    ("1data.id", "dotted field path"),
    ("data.user-id", "dotted field path"),
    ("event.data.id", "relative to the event"),
    ("async.data.id", "relative to the event"),
    ("data.in", "reserved word"),
])
def test_match_to_if_rejects(match: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        ew.match_to_if(match)
    assert str(info.value).startswith("match: ")
    assert info.value.field == "match"  # type: ignore[attr-defined]


def test_match_sugar_evaluates_as_equality() -> None:
    source = ew.match_to_if("data.user.id")
    bound = ew.bind_trigger(source, TRIGGER)
    assert evaluate(source, {"event": bound, "async": {"data": {"user": {"id": "u-1"}}}}) is True
    assert evaluate(source, {"event": bound, "async": {"data": {"user": {"id": "u-2"}}}}) is False


# ---------------------------------------------------------------------------- binding

@pytest.mark.parametrize(("if_exp", "bound"), [
    ("event.data.id == async.data.id", {"data": {"id": "o-1"}}),
    ("event.data.user.id == async.data.uid", {"data": {"user": {"id": "u-1"}}}),
    ("event.data.id == async.data.id && event.user.email == async.data.email",
     {"data": {"id": "o-1"}, "user": {"email": "a@b.c"}}),
    ("event.data.user.tags == async.data.tags", {"data": {"user": {"tags": ["a"]}}}),
    # the same path twice, and a path covered by a shorter one: bound once
    ("event.data.n > 1 && event.data.n < 9", {"data": {"n": 5}}),
    ("event.data.user.id == async.x && size(event.data.user) > 0", {"data": {"user": TRIGGER["data"]["user"]}}),
    # missing: the key is absent, the containers on the way are kept
    ("event.data.missing == async.data.x", {"data": {}}),
    ("event.data.user.nope.deeper == async.x", {"data": {"user": {}}}),
    ("event.nothere.x == async.x", {}),
    # a non-map on the way is copied as is (CEL errors on it just as on the whole event)
    ("event.data.id.x == async.x", {"data": {"id": "o-1"}}),
    # references inside string literals are not references
    ('async.data.s == "event.data.secret" && event.data.id == async.data.id', {"data": {"id": "o-1"}}),
    ("async.data.s == 'event.user.email'", {}),
    ('async.data.s == """event.data.n"""', {}),
    ('async.data.s == r"\\" && event.data.n == async.data.n', {"data": {"n": 5}}),
    # a method call drops its name; an index keeps the indexed container; bare event binds all
    ('event.data.id.startsWith("o") && true', {"data": {"id": "o-1"}}),
    ("event.data.user.size() == 2", {"data": {"user": TRIGGER["data"]["user"]}}),
    ("event.data.items[0] == async.data.first", {"data": {"items": [1, 2]}}),
    ('event["data"]["id"] == async.data.id', TRIGGER),
    # no event reference at all; identifiers that merely contain "event"
    ("async.data.n > 3", {}),
    ("async.event.data.x == 1 && myevent.x == 2", {}),
])
def test_bind_trigger(if_exp: str, bound: dict[str, Any]) -> None:
    assert ew.bind_trigger(if_exp, TRIGGER) == bound


def test_bind_trigger_copies_and_tolerates_no_trigger() -> None:
    bound = ew.bind_trigger("event.data.user.tags == async.x", TRIGGER)
    bound["data"]["user"]["tags"].append("mutated")
    assert TRIGGER["data"]["user"]["tags"] == ["a"]
    assert ew.bind_trigger("event.data.id == async.data.id", None) == {}


def test_bound_method_call_keeps_its_receiver() -> None:
    source = "event.data.user.size() == 2"
    assert evaluate(source, {"event": ew.bind_trigger(source, TRIGGER)}) is True


def test_bound_missing_path_evaluates_as_no_match_but_has_works() -> None:
    bound = ew.bind_trigger("!has(event.data.missing)", TRIGGER)
    assert evaluate("!has(event.data.missing)", {"event": bound}) is True
    with pytest.raises(ExpressionError):
        evaluate("event.data.missing == 1", {"event": ew.bind_trigger("event.data.missing == 1", TRIGGER)})


# ---------------------------------------------------------------------------- waiter

def test_waiter_round_trips_as_json() -> None:
    w = waiter(match="data.user.id", purpose="cancel")
    again = Waiter.loads(w.dumps())
    assert again == w
    assert again.if_exp == "event.data.user.id == async.data.user.id"
    assert again.bound == {"data": {"user": {"id": "u-1"}}}
    assert again.trigger_event_id == "trig-1" and again.purpose == "cancel"


def test_make_waiter_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        waiter(match="data.id", if_exp="true")
    with pytest.raises(InvalidExpression, match="^if: invalid expression"):
        waiter(if_exp="async.data.id ==")
    assert waiter(trigger=None, if_exp="async.data.x == 1").trigger_event_id is None


# ---------------------------------------------------------------------------- equality keys agree with CEL

@pytest.mark.parametrize(("a", "b"), [
    ("x", "x"), ("x", "y"), ("5", 5), (5, 5), (5, 5.0), (5.5, 5.5), (-0.0, 0), (0.1 + 0.2, 0.3),
    (True, True), (True, False), (True, 1), (False, 0), (None, None), (None, 0), (None, ""),
    (2**53 - 1, float(2**53 - 1)), (-(2**53) + 1, -(2**53) + 1),
])
def test_equality_key_agrees_with_cel(a: Any, b: Any) -> None:
    ka, kb = ew.equality_key(a), ew.equality_key(b)
    assert ka is not None and kb is not None
    assert (ka == kb) is evaluate("event.x == async.x", {"event": {"x": a}, "async": {"x": b}})


@pytest.mark.parametrize("value", [[1], {"a": 1}, b"x", float("nan"), float("inf"), 2**53, -(2**53), 2**64,
                                   float(2**53), ew._MISSING])
def test_equality_key_refuses_what_it_cannot_key_exactly(value: Any) -> None:
    # CEL compares int and double through double: 2**53+1 == 2**53.0 there, so such numbers are not keyed
    assert ew.equality_key(value) is None


# ---------------------------------------------------------------------------- WaitIndex: one waiter, one event

NOW = T0 + 2_000

# (id, waiter options, event, now, matches, where the index keeps it)
CASES: list[tuple[str, dict[str, Any], EventRecord, int, bool, str]] = [
    ("match sugar, equal", {"match": "data.id"}, ev({"id": "o-1"}), NOW, True, "indexed"),
    ("match sugar, different", {"match": "data.id"}, ev({"id": "o-2"}), NOW, False, "indexed"),
    ("match sugar, field missing on candidate", {"match": "data.id"}, ev({"other": 1}), NOW, False, "indexed"),
    ("match sugar, candidate value is a map", {"match": "data.id"}, ev({"id": {"v": "o-1"}}), NOW, False, "indexed"),
    ("nested match", {"match": "data.user.id"}, ev({"user": {"id": "u-1"}}), NOW, True, "indexed"),
    ("user match", {"match": "user.email"}, ev(user={"email": "a@b.c"}), NOW, True, "indexed"),
    ("reversed equality", {"if_exp": "async.data.order == event.data.id"}, ev({"order": "o-1"}), NOW, True, "indexed"),
    ("int equals double", {"if_exp": "event.data.n == async.data.n"}, ev({"n": 5.0}), NOW, True, "indexed"),
    ("string is not number", {"if_exp": "event.data.n == async.data.n"}, ev({"n": "5"}), NOW, False, "indexed"),
    ("bool is not 1", {"if_exp": "event.data.flag == async.data.f"}, ev({"f": 1}), NOW, False, "indexed"),
    ("bool equals bool", {"if_exp": "event.data.flag == async.data.f"}, ev({"f": True}), NOW, True, "indexed"),
    ("literal string", {"if_exp": 'async.data.status == "paid"'}, ev({"status": "paid"}), NOW, True, "indexed"),
    ("literal string, other", {"if_exp": "async.data.status == 'paid'"}, ev({"status": "open"}), NOW, False,
     "indexed"),
    ("literal first", {"if_exp": '"paid" == async.data.status'}, ev({"status": "paid"}), NOW, True, "indexed"),
    ("literal int vs double", {"if_exp": "async.data.n == 5"}, ev({"n": 5.0}), NOW, True, "indexed"),
    ("literal negative", {"if_exp": "async.data.n == -5"}, ev({"n": -5}), NOW, True, "indexed"),
    ("literal true", {"if_exp": "async.data.ok == true"}, ev({"ok": True}), NOW, True, "indexed"),
    ("literal true vs string", {"if_exp": "async.data.ok == true"}, ev({"ok": "true"}), NOW, False, "indexed"),
    ("literal null", {"if_exp": "async.data.x == null"}, ev({"x": None}), NOW, True, "indexed"),
    ("conjunction, all true", {"if_exp": "event.data.id == async.data.id && async.data.total > 10"},
     ev({"id": "o-1", "total": 11}), NOW, True, "indexed"),
    ("conjunction, rest false", {"if_exp": "event.data.id == async.data.id && async.data.total > 10"},
     ev({"id": "o-1", "total": 3}), NOW, False, "indexed"),
    ("conjunction, rest errors", {"if_exp": "event.data.id == async.data.id && async.data.total > 10"},
     ev({"id": "o-1"}), NOW, False, "indexed"),
    ("string literal holding &&", {"if_exp": 'async.data.s == "a && b"'}, ev({"s": "a && b"}), NOW, True, "indexed"),
    ("generic comparison", {"if_exp": "async.data.total > event.data.n"}, ev({"total": 6}), NOW, True, "scanned"),
    ("generic comparison, false", {"if_exp": "async.data.total > event.data.n"}, ev({"total": 4}), NOW, False,
     "scanned"),
    ("disjunction", {"if_exp": "event.data.id == async.data.id || async.data.all"}, ev({"all": True}), NOW, True,
     "scanned"),
    ("parenthesised", {"if_exp": "(event.data.id == async.data.id)"}, ev({"id": "o-1"}), NOW, True, "scanned"),
    ("list equality", {"if_exp": "event.data.items == async.data.items"}, ev({"items": [1.0, 2]}), NOW, True,
     "scanned"),
    ("method call", {"if_exp": 'async.data.email.endsWith("@b.c")'}, ev({"email": "x@b.c"}), NOW, True, "scanned"),
    ("evaluation error", {"if_exp": "async.data.total > 10"}, ev({"other": 1}), NOW, False, "scanned"),
    ("type error", {"if_exp": "async.data.total > 10"}, ev({"total": "many"}), NOW, False, "scanned"),
    ("not a bool", {"if_exp": "async.data.total"}, ev({"total": 1}), NOW, False, "scanned"),
    ("no expression", {}, ev({"anything": 1}), NOW, True, "scanned"),
    ("trigger lacks the field", {"if_exp": "event.data.missing == async.data.id"}, ev({"id": None}), NOW, False,
     "never"),
    ("trigger lacks it, in a conjunction", {"if_exp": "async.data.ok == true && event.data.missing == async.data.id"},
     ev({"ok": True, "id": 1}), NOW, False, "never"),
    ("other event name", {"match": "data.id"}, ev({"id": "o-1"}, name="order.created"), NOW, False, "indexed"),
    ("other app", {"match": "data.id"}, ev({"id": "o-1"}, app_id="other"), NOW, False, "indexed"),
    ("received exactly at since_ms", {"match": "data.id"}, ev({"id": "o-1"}, at=T0), NOW, True, "indexed"),
    ("received before since_ms", {"match": "data.id"}, ev({"id": "o-1"}, at=T0 - 1), NOW, False, "indexed"),
    ("the trigger itself", {}, ev({"id": "o-1"}, id="trig-1"), NOW, False, "scanned"),
    ("live until just before expiry", {"match": "data.id"}, ev({"id": "o-1"}), T0 + 59_999, True, "indexed"),
    ("expired at expires_ms", {"match": "data.id"}, ev({"id": "o-1"}), T0 + 60_000, False, "indexed"),
    ("received at expires_ms", {"match": "data.id", "expires_ms": T0 + 1_000}, ev({"id": "o-1"}, at=T0 + 1_000),
     T0 + 999, False, "indexed"),
]


@pytest.mark.parametrize(("options", "event", "now", "matches", "where"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_index_match(options: dict[str, Any], event: EventRecord, now: int, matches: bool, where: str) -> None:
    index = WaitIndex()
    w = waiter(**options)
    index.add(w)
    assert index.counts() == {k: int(k == where) for k in ("indexed", "scanned", "never")}
    assert index.match(event, now) == ([w] if matches else [])
    # the predicate used by the lookback agrees (it has no "now", only received_at < expires_ms)
    if now < w.expires_ms:
        assert ew.accepts(w, event) is matches


@pytest.mark.parametrize("value", ["o-1", "o-2", 5, 5.0, -0.0, 0, True, 1, None, "", [5], {"a": 5}, 2**53 + 1,
                                   float(2**53), float("nan")])
@pytest.mark.parametrize("bound", ["o-1", 5, 0, True, None, 2**53 - 1])
def test_indexed_lookup_agrees_with_evaluation(value: Any, bound: Any) -> None:
    trigger = {"id": "t", "name": "x", "data": {"v": bound}, "ts": 0}
    w = waiter(match="data.v", trigger=trigger)
    index = WaitIndex()
    index.add(w)
    assert index.indexed_count() == 1
    event = ev({"v": value})
    try:
        expected = evaluate(w.if_exp or "", {"event": w.bound, "async": event.as_payload()}) is True
    except ExpressionError:
        expected = False
    assert (index.match(event, NOW) == [w]) is expected


def test_unindexable_bound_value_is_scanned() -> None:
    index = WaitIndex()
    index.add(waiter("big", if_exp="event.data.n == async.data.n", trigger={"id": "t", "data": {"n": 2**53 + 1}}))
    index.add(waiter("list", match="data.items"))
    assert index.counts() == {"indexed": 0, "scanned": 2, "never": 0}
    assert [w.wait_id for w in index.match(ev({"n": 2**53 + 1, "items": [1, 2]}), NOW)] == ["big", "list"]


def test_conjunction_is_keyed_by_the_trigger_term_before_the_literal() -> None:
    w = waiter(if_exp='async.data.status == "paid" && event.data.id == async.data.id')
    assert ew._plan(w) == ew._Plan("eq", ("data", "id"), ("s", "o-1"), evaluate=True)


def test_uncompilable_stored_expression_never_matches() -> None:
    # a waiter restored from the table with an expression that no longer compiles: no match, no exception
    w = Waiter(wait_id="w", app_id="shop", function_id="f", run_id="r", event="order.paid",
               if_exp="async.data.id ==", since_ms=T0, expires_ms=T0 + 60_000)
    index = WaitIndex()
    index.add(w)
    assert index.match(ev({"id": 1}), NOW) == []
    assert ew.accepts(w, ev({"id": 1})) is False


# ---------------------------------------------------------------------------- WaitIndex: many waiters

def test_one_event_resumes_many_waiters_in_add_order() -> None:
    index = WaitIndex()
    trig2 = {**TRIGGER, "id": "trig-2", "data": {"id": "o-2"}}
    added = [
        waiter("a", match="data.id"),
        waiter("b", if_exp="async.data.total > 1"),
        waiter("c", match="data.id", purpose="cancel"),
        waiter("d", match="data.id", trigger=trig2),  # waits for another order
        waiter("e", if_exp='async.data.id == "o-1"'),
        waiter("f"),
        waiter("g", match="data.id", event="order.shipped"),
        waiter("h", match="data.id", since_ms=T0 + 5_000),
    ]
    for w in added:
        index.add(w)
    assert index.counts() == {"indexed": 6, "scanned": 2, "never": 0}
    got = index.match(ev({"id": "o-1", "total": 2}), NOW)
    assert [w.wait_id for w in got] == ["a", "b", "c", "e", "f"]
    assert len(index) == len(added)  # match removes nothing
    assert [w.wait_id for w in index.match(ev({"id": "o-2", "total": 0}), NOW)] == ["d", "f"]


def test_many_equal_waiters_share_one_bucket() -> None:
    index = WaitIndex()
    for i in range(1_000):
        index.add(waiter(f"w{i}", match="data.id", trigger={"id": f"t{i}", "data": {"id": f"o-{i % 10}"}}))
    assert index.indexed_count() == 1_000
    assert len(index._groups[("shop", "order.paid")].eq[("data", "id")]) == 10
    got = index.match(ev({"id": "o-3"}), NOW)
    assert [w.wait_id for w in got] == [f"w{i}" for i in range(3, 1_000, 10)]


def test_drop() -> None:
    index = WaitIndex()
    a, b, c = waiter("a", match="data.id"), waiter("b", if_exp="async.data.x > 0"), waiter("c", match="data.missing")
    for w in (a, b, c):
        index.add(w)
    assert index.counts() == {"indexed": 1, "scanned": 1, "never": 1}
    assert index.drop("a") == a
    assert index.drop("a") is None
    assert "a" not in index and index.get("a") is None and index.get("b") == b
    assert index.match(ev({"id": "o-1", "x": 1}), NOW) == [b]
    assert index.drop("b") == b and index.drop("c") == c
    assert len(index) == 0
    assert index.counts() == {"indexed": 0, "scanned": 0, "never": 0}
    assert index._groups == {}  # empty buckets and groups are cleaned up
    assert index.drop("nope") is None


def test_add_same_id_replaces() -> None:
    index = WaitIndex()
    index.add(waiter("w", match="data.id"))
    replacement = waiter("w", if_exp='async.data.id == "o-9"', expires_ms=T0 + 5_000)
    index.add(replacement)
    assert len(index) == 1 and index.get("w") == replacement
    assert index.match(ev({"id": "o-1"}), NOW) == []
    assert index.match(ev({"id": "o-9"}), NOW) == [replacement]
    assert index.expired(T0 + 5_000) == [replacement]


# ---------------------------------------------------------------------------- WaitIndex: expiry

def test_expired_boundary_order_and_no_removal() -> None:
    index = WaitIndex()
    for wid, exp in [("late", T0 + 300), ("soon", T0 + 100), ("mid", T0 + 200), ("gone", T0 + 50)]:
        index.add(waiter(wid, expires_ms=exp))
    index.drop("gone")
    assert index.expired(T0 + 99) == []
    assert [w.wait_id for w in index.expired(T0 + 100)] == ["soon"]  # expires_ms <= now
    assert [w.wait_id for w in index.expired(T0 + 250)] == ["soon", "mid"]
    assert len(index) == 3  # expired() removes nothing
    index.drop("soon")
    assert [w.wait_id for w in index.expired(T0 + 1_000)] == ["mid", "late"]


def test_heap_is_compacted_after_many_drops() -> None:
    index = WaitIndex()
    for i in range(3_000):
        index.add(waiter(f"w{i}", expires_ms=T0 + i))
    for i in range(2_990):
        index.drop(f"w{i}")
    assert len(index._heap) <= 2 * len(index) + 1_024
    assert [w.wait_id for w in index.expired(T0 + 10_000)] == [f"w{i}" for i in range(2_990, 3_000)]


# ---------------------------------------------------------------------------- LookbackBuffer

def buffered(n: int, *, start: int = 0, at: int = T0, step_ms: int = 1_000) -> list[tuple[int, EventRecord]]:
    return [(start + i, ev({"id": f"o-{i}"}, id=f"e{start + i}", at=at + i * step_ms)) for i in range(n)]


def test_buffer_evicts_by_count() -> None:
    buf = LookbackBuffer(started_at_ms=T0 - 60_000, max_events=3, max_age_ms=10**9)
    for off, e in buffered(5, start=100):
        buf.append(off, e, now_ms=e.received_at)
    assert buf.offsets() == [102, 103, 104]
    assert buf.started_offset == 100 and buf.last_offset == 104
    assert buf.newest_evicted_ms == T0 + 1_000


@pytest.mark.parametrize(("now", "kept"), [
    (T0 + 4_000 + 2_000, [0, 1, 2, 3, 4]),  # the oldest is exactly max_age old: kept
    (T0 + 4_000 + 2_001, [1, 2, 3, 4]),
    (T0 + 4_000 + 5_500, [4]),
    (T0 + 4_000 + 6_001, []),
])
def test_buffer_evicts_by_age(now: int, kept: list[int]) -> None:
    buf = LookbackBuffer(started_at_ms=T0, max_events=100, max_age_ms=6_000)
    for off, e in buffered(5):
        buf.append(off, e, now_ms=e.received_at)
    evicted = buf.evict(now)
    assert buf.offsets() == kept
    assert evicted == 5 - len(kept)
    assert buf.newest_evicted_ms == (None if len(kept) == 5 else T0 + (4 - len(kept)) * 1_000)


def test_buffer_evicts_by_arrival_and_tracks_the_newest_evicted() -> None:
    buf = LookbackBuffer(started_at_ms=T0, max_events=2, max_age_ms=10**9)
    # received_at goes backwards a little within the partition
    for off, at in [(0, T0 + 5_000), (1, T0 + 1_000), (2, T0 + 6_000), (3, T0 + 7_000)]:
        buf.append(off, ev(id=f"e{off}", at=at), now_ms=at)
    assert buf.offsets() == [2, 3]
    assert buf.newest_evicted_ms == T0 + 5_000  # the max, not the last evicted


def test_buffer_ignores_redelivered_offsets() -> None:
    buf = LookbackBuffer(started_at_ms=T0)
    for off, e in buffered(3):
        buf.append(off, e, now_ms=T0)
    buf.append(1, ev({"id": "dup"}, id="dup"), now_ms=T0)
    assert buf.offsets() == [0, 1, 2] and len(buf) == 3


@pytest.mark.parametrize(("started_at", "newest_evicted", "since", "covered"), [
    # nothing evicted: covered iff the buffer started more than SKEW_MS before since_ms
    (T0, None, T0 + SKEW_MS + 1, True),
    (T0, None, T0 + SKEW_MS, False),
    (T0, None, T0, False),
    (T0, None, T0 - 1, False),
    # something evicted: covered iff everything evicted is more than SKEW_MS older than since_ms
    (T0, T0 + 50_000, T0 + 50_000 + SKEW_MS + 1, True),
    (T0, T0 + 50_000, T0 + 50_000 + SKEW_MS, False),
    (T0, T0 + 50_000, T0 + 50_001, False),
    (T0 + 90_000, T0 + 1_000, T0 + 20_000, True),  # a backlog read after the start: the evicted rule decides
])
def test_buffer_covers(started_at: int, newest_evicted: int | None, since: int, covered: bool) -> None:
    buf = LookbackBuffer(started_at_ms=started_at, max_events=1, max_age_ms=10**9)
    if newest_evicted is not None:
        buf.append(0, ev(id="old", at=newest_evicted), now_ms=newest_evicted)
        buf.append(1, ev(id="new", at=newest_evicted + 1), now_ms=newest_evicted + 1)
        assert buf.newest_evicted_ms == newest_evicted
    assert buf.covers(since) is covered


def test_buffer_candidates_in_arrival_order() -> None:
    buf = LookbackBuffer(started_at_ms=T0 - 60_000)
    rows = [
        ev({"id": "o-1", "n": 1}, id="e0", at=T0 + 3_000),
        ev({"id": "o-2"}, id="e1", at=T0 + 1_000),  # other order
        ev({"id": "o-1", "n": 2}, id="e2", at=T0 + 1_000),  # earlier received_at, later arrival
        ev({"id": "o-1"}, id="e3", at=T0 - 1),  # before since_ms
        ev({"id": "o-1"}, id="e4", name="order.created", at=T0 + 4_000),  # other name
        ev({"id": "o-1"}, id="trig-1", at=T0 + 4_000),  # the trigger itself
        ev({"id": "o-1"}, id="e6", app_id="other", at=T0 + 4_000),  # other app
        ev({"id": "o-1", "n": 3}, id="e7", at=T0 + 60_000),  # at expires_ms
        ev({"id": "o-1", "n": 4}, id="e8", at=T0 + 5_000),
    ]
    for off, e in enumerate(rows):
        buf.append(off, e, now_ms=T0 + 5_000)
    w = waiter(match="data.id")
    got = buf.candidates(w)
    assert [p["id"] for p in got] == ["e0", "e2", "e8"]
    assert got[0] == rows[0].as_payload()
    assert [p["id"] for p in buf.candidates(waiter(if_exp="async.data.n >= 2"))] == ["e2", "e8"]
    assert buf.candidates(waiter(match="data.missing")) == []
    assert ew.first_match(w, rows) == rows[0].as_payload()
    assert ew.first_match(w, rows[1:]) == rows[2].as_payload()
    assert ew.first_match(w, rows[3:7]) is None


def test_buffer_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        LookbackBuffer(started_at_ms=T0, max_events=0)
