"""``processors.dispatch.fair_selection``: hierarchical DRR driven by hand, no clock.

A :class:`Sim` plays the dispatcher: it holds the backlogs, calls ``select`` with the state
threaded through, and drops what was picked from the heads. Backlogs are :class:`Head`
views that count the items ``select`` reads, so cost is asserted on reads, never on time.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from sluicegate.processors.dispatch import fair_selection as fs
from sluicegate.processors.dispatch.fair_selection import (
    PRIORITY_MAX_S,
    FairState,
    Item,
    Turn,
    Weights,
    order_backlog,
    order_key,
    score,
    select,
)

T0 = 1_700_000_000_000


class Head(Sequence):
    """A backlog from ``start`` on, counting item reads; iteration is forbidden (O(items))."""

    def __init__(self, items: list[Item], start: int = 0) -> None:
        self.items, self.start, self.reads = items, start, 0

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, i: Any) -> Any:
        assert isinstance(i, int) and 0 <= i < len(self)
        self.reads += 1
        return self.items[self.start + i]

    def __iter__(self) -> Any:
        raise AssertionError("select must not iterate a backlog")


def items(prefix: str, count: int, **kw: Any) -> list[Item]:
    return [Item(f"{prefix}{i:06d}", T0 + i, **kw) for i in range(count)]


class Sim:
    def __init__(self, backlogs: dict[tuple[str, str, str], list[Item]], weights: Weights = Weights(),
                 blocked: Any = frozenset()) -> None:
        self.lists = backlogs
        self.pos: Counter[tuple[str, str, str]] = Counter()
        self.state = FairState()
        self.weights, self.blocked = weights, blocked
        self.heads: dict[tuple[str, str, str], Head] = {}

    def ready(self) -> dict[str, dict[str, dict[str, Head]]]:
        out: dict[str, dict[str, dict[str, Head]]] = {}
        self.heads = {}
        for (t, f, k), lst in self.lists.items():
            if self.pos[(t, f, k)] < len(lst):
                h = self.heads[(t, f, k)] = Head(lst, self.pos[(t, f, k)])
                out.setdefault(t, {}).setdefault(f, {})[k] = h
        return out

    def add(self, path: tuple[str, str, str], new: list[Item]) -> None:
        self.lists[path] = [*self.lists.get(path, []), *new]

    def step(self, n: int) -> list[fs.Picked]:
        sel = select(self.state, self.ready(), n, self.weights, self.blocked)
        self.state = sel.state
        for p in sel.picked:
            self.pos[(p.tenant, p.function, p.key)] += 1
        return list(sel.picked)

    def run(self, total: int, batches: Sequence[int] = (1, 2, 3, 5, 7, 11)) -> list[fs.Picked]:
        out: list[fs.Picked] = []
        for n in itertools.cycle(batches):
            if len(out) >= total:
                break
            got = self.step(min(n, total - len(out)))
            if not got:
                break
            out += got
        return out


@functools.lru_cache(maxsize=None)
def big(prefix: str) -> list[Item]:
    """100k items, built once; Sim never mutates a list it did not create via ``add``."""
    return items(prefix, 100_000)


def share(picked: list[fs.Picked], level: str) -> Counter[str]:
    return Counter(getattr(p, level) for p in picked)


def jain(xs: Sequence[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


# --- order within a backlog -------------------------------------------------------------

@pytest.mark.parametrize("earlier,later,why", [
    (Item("z", T0 + 10_000, started=True), Item("a", T0), "started before new, however old"),
    (Item("b", T0), Item("a", T0 + 1), "older first"),
    (Item("a", T0), Item("b", T0), "tie: item id"),
    (Item("b", T0 + 60_000, priority_s=61), Item("a", T0), "+61 s jumps a run 60 s older"),
    (Item("b", T0), Item("a", T0 + 60_000, priority_s=59), "+59 s does not"),
    (Item("a", T0 + 1), Item("b", T0, priority_s=-1), "negative priority pushes back"),
    (Item("b", T0 + 5, started=True), Item("a", T0 + 9, started=True, priority_s=-1), "priority among started"),
    (Item("a", T0, priority_s=10**9), Item("b", T0 - PRIORITY_MAX_S * 1000 + 1), "clamped to +12 h"),
    (Item("a", T0 + PRIORITY_MAX_S * 1000 - 1), Item("b", T0, priority_s=-10**9), "clamped to -12 h"),
])
def test_order_within_backlog(earlier: Item, later: Item, why: str) -> None:
    assert order_key(earlier) < order_key(later), why
    assert order_backlog([later, earlier]) == [earlier, later]


def test_score_is_enqueued_minus_clamped_priority_ms() -> None:
    assert score(Item("a", T0, priority_s=120)) == T0 - 120_000
    assert score(Item("a", T0, priority_s=-10**6)) == T0 + PRIORITY_MAX_S * 1000


def test_select_releases_a_backlog_in_order() -> None:
    backlog = order_backlog([
        Item("new-old", T0), Item("new-urgent", T0 + 50_000, priority_s=100),
        Item("started-late", T0 + 90_000, started=True), Item("started-early", T0 + 1, started=True),
    ])
    sel = select(FairState(), {"t": {"f": {"": backlog}}}, 10)
    assert [p.item.item_id for p in sel.picked] == ["started-early", "started-late", "new-urgent", "new-old"]


def test_out_of_order_backlog_is_rejected_naming_it() -> None:
    with pytest.raises(ValueError, match=r"\('t', 'f', 'k'\).*index 1"):
        select(FairState(), {"t": {"f": {"k": [Item("b", T0 + 1), Item("a", T0)]}}}, 2)


# --- weights ----------------------------------------------------------------------------

TOL = 0.02  # stated tolerance on shares; DRR with unit cost is exact per round


@pytest.mark.parametrize("level,weights,expect", [
    ("tenant", Weights(tenants={"a": 3, "b": 1}), {"a": 0.75, "b": 0.25}),
    ("tenant", Weights(), {"a": 0.5, "b": 0.5}),
    ("tenant", Weights(tenants={"a": 5, "b": 2}), {"a": 5 / 7, "b": 2 / 7}),
    ("function", Weights(functions={("t", "a"): 3}), {"a": 0.75, "b": 0.25}),
    ("key", Weights(keys={("t", "f", "a"): 1, ("t", "f", "b"): 4}), {"a": 0.2, "b": 0.8}),
])
def test_weights_are_honoured(level: str, weights: Weights, expect: dict[str, float]) -> None:
    path = {"tenant": lambda x: (x, "f", "k"), "function": lambda x: ("t", x, "k"),
            "key": lambda x: ("t", "f", x)}[level]
    sim = Sim({path(x): items(x, 5000) for x in ("a", "b")}, weights)
    got = share(sim.run(4000), level)
    for x, want in expect.items():
        assert abs(got[x] / 4000 - want) <= TOL, (x, got)


def test_fan_out_does_not_buy_share() -> None:
    """A tenant with 50 functions x 20 keys gets the same share as one with a single key."""
    backlogs = {("wide", f"f{i}", f"k{j}"): items(f"w{i}.{j}.", 10) for i in range(50) for j in range(20)}
    backlogs[("narrow", "f", "k")] = items("n", 5000)
    got = share(Sim(backlogs).run(2000, batches=(50,)), "tenant")
    assert got == {"wide": 1000, "narrow": 1000}


def test_functions_and_keys_share_equally_unless_weighted() -> None:
    backlogs = {("t", f"f{i}", f"k{j}"): items(f"{i}.{j}.", 500) for i in range(3) for j in range(i + 1)}
    picked = Sim(backlogs).run(600)
    assert share(picked, "function") == {"f0": 200, "f1": 200, "f2": 200}
    assert Counter(p.key for p in picked if p.function == "f2") == {"k0": 67, "k1": 67, "k2": 66}


# --- starvation --------------------------------------------------------------------------

@pytest.mark.parametrize("noisy,quiet", [
    (("noisy", "f", "k"), ("quiet", "f", "k")),          # tenants
    (("t", "noisy", "k"), ("t", "quiet", "k")),          # functions of one tenant
    (("t", "f", "noisy"), ("t", "f", "quiet")),          # keys of one function
])
@pytest.mark.parametrize("warmup", [0, 1, 37])
def test_single_item_is_not_stuck_behind_100k(noisy: tuple[str, str, str], quiet: tuple[str, str, str],
                                              warmup: int) -> None:
    sim = Sim({noisy: big("n")})
    sim.run(warmup)
    sim.add(quiet, [Item("lonely", T0 + 10**9)])  # newest of all: order alone would put it last
    picked = sim.run(2, batches=(1,))             # 2 = active children at the level that differs
    assert "lonely" in [p.item.item_id for p in picked]


def test_lone_item_among_many_busy_tenants_goes_within_one_ring() -> None:
    sim = Sim({(f"t{i:02d}", "f", "k"): items(f"{i}.", 1000) for i in range(30)})
    sim.run(45)
    sim.add(("t15x", "f", "k"), [Item("lonely", T0 + 10**9)])
    picked = sim.run(31, batches=(4,))
    assert "lonely" in [p.item.item_id for p in picked]


def test_starvation_bound_holds_with_weights() -> None:
    """Every backlog, backlogged throughout, is served at least once per W·W_t·W_f picks."""
    tw = {"a": 1, "b": 2, "c": 3}
    fw = {("a", "f0"): 1, ("a", "f1"): 2, ("b", "f0"): 1, ("c", "f0"): 3, ("c", "f1"): 1, ("c", "f2"): 1}
    kw = {("a", "f1", "k0"): 2, ("c", "f0", "k1"): 4}
    keys = {("a", "f0"): 2, ("a", "f1"): 3, ("b", "f0"): 1, ("c", "f0"): 2, ("c", "f1"): 1, ("c", "f2"): 4}
    backlogs = {(t, f, f"k{j}"): items(f"{t}{f}{j}.", 3000) for (t, f), nk in keys.items() for j in range(nk)}
    weights = Weights(tenants=tw, functions=fw, keys=kw)
    W = sum(tw.values())

    def bound(t: str, f: str) -> int:
        wt = sum(w for (tt, _), w in fw.items() if tt == t)
        wf = sum(kw.get((t, f, f"k{j}"), 1) for j in range(keys[(t, f)]))
        return W * wt * wf

    picked = Sim(backlogs, weights).run(3000, batches=(1, 4, 9))
    last = {b: -1 for b in backlogs}
    for i, p in enumerate(picked):
        b = (p.tenant, p.function, p.key)
        assert i - last[b] <= bound(p.tenant, p.function), (b, i, last[b])
        last[b] = i
    for (t, f, k), i in last.items():
        assert len(picked) - 1 - i < bound(t, f)


# --- blocked ------------------------------------------------------------------------------

@pytest.mark.parametrize("blocked", [
    {("a", "f", "k")},
    {("a", "f")},
    {("a",)},
    lambda path: path[0] == "a",
])
def test_blocked_backlogs_are_skipped(blocked: Any) -> None:
    sim = Sim({("a", "f", "k"): items("a", 10), ("b", "f", "k"): items("b", 10)}, blocked=blocked)
    assert share(sim.run(10), "tenant") == {"b": 10}


def test_blocked_backlog_keeps_its_place_but_banks_no_credit() -> None:
    sim = Sim({(t, "f", "k"): items(t, 1000) for t in "abc"})
    sim.blocked = {("b",)}
    assert "".join(p.tenant for p in sim.run(6, batches=(1,))) == "acacac"
    sim.blocked = frozenset()
    # b is back at its ring place (right after a) with one quantum, not 3 turns' worth
    assert "".join(p.tenant for p in sim.run(6, batches=(1,))) == "abcabc"


def test_blocked_mid_turn_forfeits_the_rest_of_it() -> None:
    sim = Sim({(t, "f", "k"): items(t, 100) for t in "ab"}, Weights(tenants={"a": 3}))
    assert [p.tenant for p in sim.run(2, batches=(2,))] == ["a", "a"]
    assert sim.state.turn == Turn(child="a", remaining=1)
    sim.blocked = {("a",)}
    assert [p.tenant for p in sim.run(1)] == ["b"]
    sim.blocked = frozenset()
    assert "".join(p.tenant for p in sim.run(8, batches=(1,))) == "aaabaaab"


def test_unblocked_key_under_a_flooded_function_is_served_within_bound() -> None:
    """Keyed concurrency full for the flooding user: the other user's key is not delayed."""
    sim = Sim({("t", "f", "user1"): items("u1", 1000)}, blocked={("t", "f", "user1")})
    assert sim.run(5) == []
    sim.add(("t", "f", "user2"), [Item("u2", T0 + 10**9)])
    assert [p.item.item_id for p in sim.run(5)] == ["u2"]


# --- determinism, purity, state ------------------------------------------------------------

def _mixed() -> dict[tuple[str, str, str], list[Item]]:
    return {(f"t{i}", f"f{i % 3}", f"k{j}"): items(f"{i}.{j}.", 40) for i in range(5) for j in range(i % 4 + 1)}


def test_deterministic() -> None:
    w = Weights(tenants={"t1": 2, "t3": 4})
    a = [p.item.item_id for p in Sim(_mixed(), w).run(300)]
    b = [p.item.item_id for p in Sim(_mixed(), w).run(300)]
    assert a == b


def test_batch_size_does_not_change_the_order() -> None:
    one = [p.item.item_id for p in Sim(_mixed()).run(500, batches=(1,))]
    many = [p.item.item_id for p in Sim(_mixed()).run(500, batches=(3, 50, 7))]
    assert one == many


def test_state_round_trips_json_and_continues_identically() -> None:
    sim = Sim(_mixed(), Weights(tenants={"t2": 3}))
    sim.run(77)
    ready = sim.ready()
    restored = FairState.model_validate_json(sim.state.model_dump_json())
    a = select(sim.state, ready, 30, sim.weights)
    b = select(restored, ready, 30, sim.weights)
    assert a == b


def test_input_state_and_ready_are_not_mutated() -> None:
    sim = Sim(_mixed())
    sim.run(33)
    before = sim.state.model_dump()
    ready = sim.ready()
    snapshot = {t: {f: {k: len(v) for k, v in fns.items()} for f, fns in r.items()} for t, r in ready.items()}
    sel = select(sim.state, ready, 40)
    assert sim.state.model_dump() == before and sel.state != sim.state
    assert snapshot == {t: {f: {k: len(v) for k, v in fns.items()} for f, fns in r.items()}
                        for t, r in ready.items()}


def test_state_drops_nodes_not_in_ready_and_holds_no_per_key_entries() -> None:
    sim = Sim({("a", "f", f"k{j}"): items(f"a{j}.", 2) for j in range(1000)} | {("b", "g", "k"): items("b", 3)})
    sim.run(2)
    assert set(sim.state.tenants) == {"a", "b"} and set(sim.state.tenants["a"].functions) == {"f"}
    sim.run(10)  # b's items went; b leaves ready
    assert set(sim.state.tenants) == {"a"}


@pytest.mark.parametrize("turn,expect", [
    (Turn(child="b", remaining=0), "ca"),      # b was served last: resume after it
    (Turn(child="b", remaining=2), "bb"),      # b's turn is unfinished (weight 5): continue it
    (Turn(child="bb", remaining=3), "ca"),     # gone: resume at the next id after it
    (Turn(child="zz", remaining=0), "ab"),     # past the end: wrap
])
def test_cursor_resume(turn: Turn, expect: str) -> None:
    ready = {t: {"f": {"k": items(t, 5)}} for t in "abc"}
    sel = select(FairState(turn=turn), ready, 2, Weights(tenants={"b": 5}))
    assert "".join(p.tenant for p in sel.picked) == expect


def test_remaining_clamped_to_lowered_weight() -> None:
    ready = {t: {"f": {"k": items(t, 20)}} for t in "ab"}
    sel = select(FairState(turn=Turn(child="a", remaining=9)), ready, 4, Weights(tenants={"a": 2}))
    assert "".join(p.tenant for p in sel.picked) == "aaba"  # 2 left, not 9


@pytest.mark.parametrize("n,weights,match", [
    (-1, None, "n must be"),
    (1, lambda: Weights(tenants={"a": 0}), r"weight tenants\['a'\]"),
    (1, lambda: Weights(keys={("a", "f", "k"): 1.5}), "must be an integer"),
    (1, lambda: Weights(default=True), "weight default"),
])
def test_bad_input_names_the_field(n: int, weights: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select(FairState(), {}, n, weights() if weights else Weights())


@pytest.mark.parametrize("ready,n", [({}, 5), ({"t": {}}, 5), ({"t": {"f": {"k": []}}}, 5),
                                     ({"t": {"f": {"k": items("x", 3)}}}, 0)])
def test_nothing_to_pick(ready: Any, n: int) -> None:
    sel = select(FairState(), ready, n)
    assert sel.picked == () and sel.state.turn is None


def test_more_slots_than_items_returns_all() -> None:
    sel = select(FairState(), {t: {"f": {"k": items(t, 3)}} for t in "ab"}, 100)
    assert "".join(p.tenant for p in sel.picked) == "ababab"


# --- fairness index and cost ---------------------------------------------------------------

def test_jain_index_over_100_equal_tenants() -> None:
    """100 backlogged tenants of varied fan-out, 10k selections in windows of 50: J >= 0.99."""
    backlogs = {(f"t{i:03d}", f"f{j}", f"k{k}"): items(f"{i}.{j}.{k}.", 100)
                for i in range(100) for j in range(i % 3 + 1) for k in range(i % 5 + 1)}
    got = share(Sim(backlogs).run(10_000, batches=(50,)), "tenant")
    assert len(got) == 100
    assert jain(list(got.values())) >= 0.99
    assert max(got.values()) - min(got.values()) <= 1


def test_selection_reads_only_the_items_it_returns() -> None:
    """100k items in one backlog, 1000 keys elsewhere: 50 picks read exactly 50 items."""
    backlogs = {("big", "f", "k"): big("b")}
    backlogs |= {("many", "f", f"k{j}"): items(f"m{j}.", 100) for j in range(1000)}
    backlogs |= {(f"t{i}", "f", "k"): items(f"{i}.", 10) for i in range(8)}
    sim = Sim(backlogs)
    for _ in range(3):
        picked = sim.step(50)
        assert len(picked) == 50
        reads = {b: h.reads for b, h in sim.heads.items() if h.reads}
        assert sum(reads.values()) == 50
        assert reads == dict(Counter((p.tenant, p.function, p.key) for p in picked))
