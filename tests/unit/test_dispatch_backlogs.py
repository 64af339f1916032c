"""``processors.dispatch.backlogs``: the in-memory ready index of one dispatcher partition.

Cases are sequences of ``add``/``remove`` operations; after each sequence the whole index is
read back as ``{(app, fn, key): [item ids in order]}`` and compared with the expectation.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from sluicegate.processors.dispatch.backlogs import Backlogs
from sluicegate.processors.dispatch.fair_selection import FairState, Item, order_key, select

T0 = 1_700_000_000_000
A = ("app", "fn", "k")


def snapshot(b: Backlogs) -> dict[tuple[str, str, str], list[str]]:
    """Every backlog, read through the public shape that ``select`` reads."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for app in b.apps():
        for fn, keys in b.ready(app)[app].items():
            for key, backlog in keys.items():
                out[(app, fn, key)] = [i.item_id for i in backlog]
    return out


def it(item_id: str, at: int = 0, **kw: Any) -> Item:
    return Item(item_id, T0 + at, **kw)


def apply(ops: list[tuple[Any, ...]]) -> Backlogs:
    b = Backlogs()
    for op in ops:
        if op[0] == "add":
            b.add(op[1], op[2])
        else:
            b.remove(op[1])
    return b


# op: ("add", (app, fn, key), Item) | ("rm", item_id)
CASES = [
    ("one item", [("add", A, it("a"))], {A: ["a"]}),
    ("add twice is a no-op", [("add", A, it("a")), ("add", A, it("a"))], {A: ["a"]}),
    ("remove", [("add", A, it("a")), ("add", A, it("b", 1)), ("rm", "a")], {A: ["b"]}),
    ("remove twice and unknown are no-ops",
     [("add", A, it("a")), ("add", A, it("b", 1)), ("rm", "a"), ("rm", "a"), ("rm", "zzz")], {A: ["b"]}),
    ("re-add after remove", [("add", A, it("a")), ("rm", "a"), ("add", A, it("a"))], {A: ["a"]}),
    ("last item out: backlog, function and app disappear", [("add", A, it("a")), ("rm", "a")], {}),
    ("older first", [("add", A, it("late", 5)), ("add", A, it("early", 1))], {A: ["early", "late"]}),
    ("started first, however new",
     [("add", A, it("old")), ("add", A, it("new-started", 9_000, started=True))], {A: ["new-started", "old"]}),
    ("priority moves a run ahead of older ones",
     [("add", A, it("old")), ("add", A, it("urgent", 30_000, priority_s=60)), ("add", A, it("mid", 10_000))],
     {A: ["urgent", "old", "mid"]}),
    ("tie on score: item id",
     [("add", A, it("b")), ("add", A, it("c")), ("add", A, it("a"))], {A: ["a", "b", "c"]}),
    ("re-add the same id changed moves it (started now)",
     [("add", A, it("x")), ("add", A, it("y", 1)), ("add", A, it("y", 1, started=True))], {A: ["y", "x"]}),
    ("re-add the same id elsewhere moves it, the old backlog disappears",
     [("add", A, it("x")), ("add", ("app", "fn", "other"), it("x"))], {("app", "fn", "other"): ["x"]}),
    ("separate apps, functions, keys",
     [("add", ("a1", "f", "k"), it("1")), ("add", ("a2", "f", "k"), it("2")),
      ("add", ("a1", "g", "k"), it("3")), ("add", ("a1", "f", "j"), it("4"))],
     {("a1", "f", "k"): ["1"], ("a2", "f", "k"): ["2"], ("a1", "g", "k"): ["3"], ("a1", "f", "j"): ["4"]}),
    ("emptying one key keeps its siblings",
     [("add", ("a", "f", "k1"), it("1")), ("add", ("a", "f", "k2"), it("2")), ("rm", "1")],
     {("a", "f", "k2"): ["2"]}),
]


@pytest.mark.parametrize("name,ops,expected", CASES, ids=[c[0] for c in CASES])
def test_sequences(name: str, ops: list[tuple[Any, ...]], expected: dict[tuple[str, str, str], list[str]]) -> None:
    b = apply(ops)
    assert snapshot(b) == expected
    ids = [i for lst in expected.values() for i in lst]
    assert len(b) == len(ids)
    for i in ids:
        assert i in b
    assert {i: b.location(i) for i in ids} == {i: loc for loc, lst in expected.items() for i in lst}
    assert sorted(b.apps()) == sorted({loc[0] for loc in expected})


def test_remove_returns_the_item_once() -> None:
    b = Backlogs()
    x = it("x", started=True)
    b.add(A, x)
    assert b.remove("x") == x
    assert b.remove("x") is None
    assert "x" not in b and b.location("x") is None and len(b) == 0


def test_empty_levels_disappear() -> None:
    b = Backlogs()
    b.add(("a", "f", "k1"), it("1"))
    b.add(("a", "f", "k2"), it("2"))
    b.add(("a", "g", "k"), it("3"))
    b.remove("1")
    assert list(b.backlogs("a", "f")) == [("k2", 1)]
    b.remove("2")
    assert b.functions("a") == ["g"] and list(b.backlogs("a", "f")) == []
    b.remove("3")
    assert b.apps() == [] and b.functions("a") == [] and b.ready("a") == {} and b.by_app == {}


def test_depth_and_backlogs_count_items_per_function_and_key() -> None:
    b = Backlogs()
    for i in range(5):
        b.add(("a", "f", "k1"), it(f"f1.{i}", i))
    for i in range(2):
        b.add(("a", "f", "k0"), it(f"f0.{i}", i))
    b.add(("a", "g", "k1"), it("g"))
    b.add(("a", "f", "k0"), it("f0.0", 0))  # again: no-op
    assert b.depth("a", "f") == 7
    assert b.depth("a", "g") == 1
    assert b.depth("a", "nope") == 0 and b.depth("nope", "f") == 0
    assert list(b.backlogs("a", "f")) == [("k0", 2), ("k1", 5)]  # sorted by key
    assert list(b.backlogs("nope", "f")) == []
    assert b.functions("a") == ["f", "g"]


def test_ready_is_one_app_and_select_reads_it_in_order() -> None:
    b = Backlogs()
    b.add(("a", "f", "k"), it("old"))
    b.add(("a", "f", "k"), it("started", 50_000, started=True))
    b.add(("a", "f", "k"), it("urgent", 20_000, priority_s=30))
    b.add(("a", "f", "j"), it("other-key"))
    b.add(("b", "f", "k"), it("other-app"))
    ready = b.ready("a")
    assert list(ready) == ["a"]
    sel = select(FairState(), ready, 10)
    picked = [(p.key, p.item.item_id) for p in sel.picked]
    assert sorted(picked) == sorted([("k", "started"), ("k", "urgent"), ("k", "old"), ("j", "other-key")])
    assert [i for k, i in picked if k == "k"] == ["started", "urgent", "old"]
    assert b.ready("nope") == {}


@pytest.mark.parametrize("seed", range(3))
def test_random_adds_and_removes_keep_order_and_counts(seed: int) -> None:
    """Against a plain dict model: same contents, every backlog sorted by order_key."""
    rng = random.Random(seed)
    b = Backlogs()
    model: dict[str, tuple[tuple[str, str, str], Item]] = {}
    locs = [(a, f, k) for a in ("a1", "a2") for f in ("f1", "f2") for k in ("", "k")]
    for _ in range(2000):
        item_id = f"i{rng.randrange(200)}"
        if rng.random() < 0.6:
            loc = rng.choice(locs)
            item = Item(item_id, T0 + rng.randrange(100), rng.choice([0, 0, 5, -5]), rng.random() < 0.2)
            b.add(loc, item)
            model[item_id] = (loc, item)
        else:
            got = b.remove(item_id)
            want = model.pop(item_id, None)
            assert got == (want[1] if want else None)
    expected: dict[tuple[str, str, str], list[Item]] = {}
    for loc, item in model.values():
        expected.setdefault(loc, []).append(item)
    assert snapshot(b) == {loc: [i.item_id for i in sorted(lst, key=order_key)] for loc, lst in expected.items()}
    assert len(b) == len(model)
    for a, f in {(loc[0], loc[1]) for loc in locs}:
        assert b.depth(a, f) == sum(1 for loc, _ in model.values() if loc[:2] == (a, f))
