"""Fair selection (DESIGN invariant 3, issue 4): which ready backlog releases its next item
into the dispatcher's bounded in-flight window. Pure.

``select(state, ready, n, weights=..., blocked=...) -> Selection``. No clock, Kafka or
RocksDB here; the dispatcher calls it with ``n`` = free slots in the window, forwards the
picked items, removes them from its backlogs and persists ``Selection.state``.

Hierarchy and ``ready``
-----------------------

``ready[tenant][function][key]`` is one backlog: the items waiting for one concurrency-key
value of one function of one tenant (app). A function without a key expression uses one key
(say ``""``). Each backlog must be in :func:`order_key` order — the order of the store's
time-ordered index — and ``select`` reads only its head: the items it returns, nothing else.

Within a backlog (reference §2 "Queue ordering detail", §8)
----------------------------------------------------------

1. runs that have started (this item is a later step) before runs that have not —
   "finish what you started";
2. then ``score = enqueued_at_ms - clamp(priority_s, ±43_200) * 1000`` (lower first);
   ``enqueued_at_ms`` is the *run's* creation time for every item of the run, so an older
   run's next step goes ahead of a newer run's; positive priority moves a run ahead of
   runs enqueued up to ``priority_s`` earlier;
3. then ``item_id`` (stable tie-breaker).

Algorithm: hierarchical deficit round-robin (DRR), unit cost
-------------------------------------------------------------

Each level — tenants of the root, functions of a tenant, keys of a function — is one DRR
scheduler over its children. Children are visited in a ring ordered by id. When a child's
turn starts it gets a quantum of ``weight`` (an integer ≥ 1; default 1; tenants' weights
come from e.g. their plan, functions and keys are equal unless given), and it releases
one item per unit of deficit: asking a child for an item asks *its* DRR for one, down to
a backlog's head. The turn ends when the deficit reaches 0 (the ring moves on) or the child
has nothing eligible (the rest of the turn is forfeited). So over any round a tenant of
weight 3 releases 3 items for every 1 of a tenant of weight 1, however many functions and
keys each has: fairness at one level is independent of the fan-out below it.

The state keeps one :class:`Turn` per scheduler: the child served last and the deficit left
in its turn. With unit costs and integer weights every other child's deficit is 0, so
nothing else is stored; the state holds one entry per tenant and per (tenant, function)
present in ``ready`` — never one per key — and entries for nodes no longer in ``ready`` are
dropped.

Blocked backlogs
----------------

``blocked`` is a set of, or a predicate on, paths ``(tenant,)``, ``(tenant, function)`` or
``(tenant, function, key)`` — concurrency full, throttled, paused. Blocking a prefix blocks
everything under it in O(1) (a function-scope limit that is full need not list its keys).
A blocked or empty child is *skipped*: it keeps its place in the ring and gets a full
quantum the next time the ring reaches it after it is unblocked, but it banks no credit
while blocked and forfeits the rest of a turn it cannot use. Banking would let a backlog
that was held back by its *own* limit burst past the others once the limit frees; losing
the ring position would let it be overtaken again and again. Either way the bound below
holds for it from the moment it is unblocked.

Starvation bound
----------------

Let ``W`` be the sum of the weights of the tenants with an eligible backlog, ``W_t`` the
sum of the weights of the eligible functions of tenant ``t`` and ``W_f`` that of the
eligible keys of function ``f`` (counting every one eligible at any time during the wait).
An eligible backlog ``(t, f, k)`` releases an item within **``W · W_t · W_f``** selections
(consecutive, over any number of ``select`` calls with the state threaded through). With all
weights 1 that is ``tenants × functions of t × keys of f``; a lone item of a tenant among
``T`` busy tenants goes within ``T`` selections — one window when ``T`` ≤ the window.
Proof: a child of a DRR level waits at most ``Σ others' weights`` items of its parent before
its turn, so its ``m``-th item needs ≤ ``W_parent · m`` of the parent's; compose the levels.

Cost
----

Selecting ``n`` items does O(n · 3) DRR steps plus one skip per child that turns out
empty or blocked. Children are read in id order straight from a mapping that keeps them
sorted (``SortedDict``, as the dispatcher's backlogs do; O(log C) to find the cursor), else
sorted once per call (O(C log C)). It reads ``len()`` of the backlogs it visits and exactly
the items it returns: never O(total items), and a key costs only when it is visited.

Cost-weighted extension
-----------------------

To charge items by cost (say expected step duration), give each item a ``cost`` and keep
a deficit per child, not only for the current turn: a turn adds ``weight · quantum`` with
``quantum ≥`` the largest cost (so every turn releases ≥ 1 item and a pull stays O(1)),
releases while ``deficit ≥ cost`` of the head, and carries the remainder (``< cost``) to the
child's next turn; an empty child's deficit resets to 0. The bound becomes
``quantum``-scaled. Unit cost is the special case ``cost = quantum = 1``, where every carry is 0.

Edge cases
----------

=====================================  ==========================================================
case                                   what happens
=====================================  ==========================================================
``n == 0``, nothing ready, all         no items; the state is returned unchanged (except nodes
blocked                                no longer in ``ready``, which are dropped)
``n`` larger than all eligible items   every eligible item is returned, in fair order
the child in ``Turn`` is gone          the ring resumes at the next id after it
weight lowered mid-turn                the remaining deficit is clamped to the new weight
weight < 1 or not an int, ``n < 0``    ``ValueError`` naming the field
backlog not in :func:`order_key`       ``ValueError`` naming the backlog, when ``select``
order                                  reaches the out-of-order item (it checks what it reads)
same inputs twice                      same output: no randomness, rings ordered by id
input state                            never mutated (frozen models; a new state is built)
=====================================  ==========================================================
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import AbstractSet, Union

from pydantic import BaseModel, ConfigDict, Field
from sortedcontainers import SortedDict

PRIORITY_MAX_S = 43_200  # reference §8: the server clamps priority to ±12 h

Path = tuple[str, ...]  # (tenant,) | (tenant, function) | (tenant, function, key)
Ready = Mapping[str, Mapping[str, Mapping[str, Sequence["Item"]]]]
Blocked = Union[AbstractSet[Path], Callable[[Path], bool]]


@dataclass(frozen=True)
class Item:
    """One waiting unit of work: a run's start or its next step."""

    item_id: str
    enqueued_at_ms: int       # wall clock: the *run's* creation time, for every step of the run
    priority_s: int = 0       # evaluated at schedule time; clamped to ±PRIORITY_MAX_S in score
    started: bool = False     # True: a step of a run that has already started


def clamp_priority(priority_s: int) -> int:
    return max(-PRIORITY_MAX_S, min(PRIORITY_MAX_S, priority_s))


def score(item: Item) -> int:
    """``enqueued_at_ms - clamped priority in ms``: lower goes first."""
    return item.enqueued_at_ms - clamp_priority(item.priority_s) * 1000


def order_key(item: Item) -> tuple[int, int, str]:
    """The order within one backlog: started first, then :func:`score`, then ``item_id``."""
    return (0 if item.started else 1, score(item), item.item_id)


def order_backlog(items: Sequence[Item]) -> list[Item]:
    """``items`` in :func:`order_key` order (for callers without an ordered index)."""
    return sorted(items, key=order_key)


class Turn(BaseModel):
    """One DRR scheduler's cursor: the child served last and the deficit left in its turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    child: str
    remaining: int = Field(0, ge=0)


class TenantState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    turn: Turn | None = None                              # over the tenant's functions
    functions: dict[str, Turn] = Field(default_factory=dict)  # per function: over its keys


class FairState(BaseModel):
    """The whole selection state; JSON-serializable, one per dispatcher partition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn: Turn | None = None                              # over tenants
    tenants: dict[str, TenantState] = Field(default_factory=dict)


@dataclass(frozen=True)
class Weights:
    """DRR quanta. Missing entries weigh ``default`` (1)."""

    tenants: Mapping[str, int] = field(default_factory=dict)
    functions: Mapping[tuple[str, str], int] = field(default_factory=dict)
    keys: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    default: int = 1

    def __post_init__(self) -> None:
        _check_weight("default", self.default)
        for name in ("tenants", "functions", "keys"):
            for k, w in getattr(self, name).items():
                _check_weight(f"{name}[{k!r}]", w)

    def of(self, path: Path) -> int:
        table: Mapping = (self.tenants, self.functions, self.keys)[len(path) - 1]
        return table.get(path[0] if len(path) == 1 else path, self.default)


def _check_weight(name: str, w: object) -> None:
    if not isinstance(w, int) or isinstance(w, bool) or w < 1:
        raise ValueError(f"weight {name} must be an integer >= 1, got {w!r}")


@dataclass(frozen=True)
class Picked:
    tenant: str
    function: str
    key: str
    item: Item


@dataclass(frozen=True)
class Selection:
    state: FairState
    picked: tuple[Picked, ...]


class _Leaf:
    """One backlog: releases its head, checking order as it reads."""

    def __init__(self, path: Path, items: Sequence[Item], blocked: bool) -> None:
        self.path, self.items, self.blocked = path, items, blocked
        self.taken = 0
        self.last: Item | None = None

    def pull(self) -> Picked | None:
        if self.blocked or self.taken >= len(self.items):
            return None
        item = self.items[self.taken]
        if self.last is not None and order_key(item) < order_key(self.last):
            raise ValueError(f"backlog {self.path!r} is not in order_key order at index {self.taken}")
        self.taken += 1
        self.last = item
        t, f, k = self.path
        return Picked(t, f, k, item)


class _Drr:
    """One DRR level over the children of ``path``; children are built lazily."""

    def __init__(self, path: Path, children: Mapping, turn: Turn | None, ctx: _Ctx) -> None:
        self.path, self.children, self.ctx = path, children, ctx
        self.blocked = bool(path) and ctx.is_blocked(path)
        self.turn = turn                 # None until touched, then the live cursor
        self.touched = False
        self.nodes: dict[str, _Drr | _Leaf] = {}
        # The ring, lazily: children in id order from ``start``, a cursor ``i`` of steps taken
        # and the children skipped in this call. No O(children) copy per call.
        self.ids: Sequence[str] = ()
        self.start = 0
        self.i = 0
        self.skipped: set[str] = set()
        self.remaining = 0

    def _start(self) -> None:
        self.touched = True
        ids = sorted_ids(self.children)
        self.ids = ids
        turn = self.turn
        if turn is None:
            return
        lo = bisect_left(ids, turn.child)
        if lo < len(ids) and ids[lo] == turn.child and turn.remaining > 0:
            self.remaining = min(turn.remaining, self.ctx.weights.of(self.path + (turn.child,)))
        elif lo < len(ids) and ids[lo] == turn.child:
            lo += 1
        self.start = lo % len(ids) if ids else 0

    def _head(self) -> str | None:
        """The child at the ring's head (skipped children are out of the ring)."""
        n = len(self.ids)
        while len(self.skipped) < n:
            cid = self.ids[(self.start + self.i) % n]
            if cid not in self.skipped:
                return cid
            self.i += 1
        return None

    def node(self, cid: str) -> _Drr | _Leaf:
        n = self.nodes.get(cid)
        if n is None:
            n = self.ctx.make(self.path + (cid,), self.children[cid])
            self.nodes[cid] = n
        return n

    def pull(self) -> Picked | None:
        if self.blocked:
            return None
        if not self.touched:
            self._start()
        while True:
            cid = self._head()
            if cid is None:
                break
            if self.remaining == 0:
                self.remaining = self.ctx.weights.of(self.path + (cid,))
            got = self.node(cid).pull()
            if got is None:           # empty or blocked: skip, forfeit the rest of the turn
                self.skipped.add(cid)
                self.i += 1
                self.remaining = 0
                continue
            self.remaining -= 1
            self.turn = Turn(child=cid, remaining=self.remaining)
            if self.remaining == 0:
                self.i += 1           # the turn is over: the ring moves on
            return got
        if self.turn is not None:
            self.turn = Turn(child=self.turn.child, remaining=0)
        return None


def sorted_ids(children: Mapping) -> Sequence[str]:
    """The children's ids in order, without a sort or a copy when the mapping keeps them
    sorted (a ``SortedDict``, or a view offering ``sorted_ids()``)."""
    if isinstance(children, SortedDict):
        return children.keys()
    own = getattr(children, "sorted_ids", None)
    if own is not None:
        return own()
    return sorted(children)


class _Ctx:
    def __init__(self, state: FairState, weights: Weights, blocked: Blocked) -> None:
        self.state, self.weights = state, weights
        self.is_blocked: Callable[[Path], bool] = (
            blocked if callable(blocked) else blocked.__contains__
        )

    def make(self, path: Path, children: object) -> _Drr | _Leaf:
        if len(path) == 3:
            return _Leaf(path, children, self.is_blocked(path))  # type: ignore[arg-type]
        ts = self.state.tenants.get(path[0])
        if len(path) == 1:
            turn = ts.turn if ts else None
        else:
            turn = ts.functions.get(path[1]) if ts else None
        return _Drr(path, children, turn, self)  # type: ignore[arg-type]


def select(
    state: FairState,
    ready: Ready,
    n: int,
    weights: Weights = Weights(),
    blocked: Blocked = frozenset(),
) -> Selection:
    """Pick up to ``n`` items from the eligible backlogs of ``ready`` in fair order."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    ctx = _Ctx(state, weights, blocked)
    root = _Drr((), ready, state.turn, ctx)
    picked: list[Picked] = []
    while len(picked) < n:
        got = root.pull()
        if got is None:
            break
        picked.append(got)
    return Selection(_new_state(state, ready, root), tuple(picked))


def _new_state(old: FairState, ready: Ready, root: _Drr) -> FairState:
    tenants: dict[str, TenantState] = {}
    for t, ts in old.tenants.items():
        if t in ready:
            fns = ready[t]
            tenants[t] = TenantState(
                turn=ts.turn, functions={f: tu for f, tu in ts.functions.items() if f in fns}
            )
    for t, tnode in root.nodes.items():
        assert isinstance(tnode, _Drr)
        prev = tenants.get(t, TenantState())
        functions = dict(prev.functions)
        for f, fnode in tnode.nodes.items():
            assert isinstance(fnode, _Drr)
            if fnode.turn is not None:
                functions[f] = fnode.turn
        tenants[t] = TenantState(turn=tnode.turn, functions=functions)
    return FairState(turn=root.turn, tenants=tenants)
