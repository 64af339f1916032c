"""``processors.dispatch.pump``: refills of one in-flight window driven by hand, no clock.

A :class:`World` plays the dispatcher: it holds the backlogs (plain lists in ``order_key``
order) and the tickets, calls ``pump`` with the fair, concurrency and throttle states
threaded through, and drops the released items from the heads. Times are ms from ``NOW``.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from typing import Any

import pytest

from sluicegate.flow_config import MINUTE, SECOND
from sluicegate.processors.dispatch.concurrency import (
    EMPTY,
    ConcurrencyState,
    Lease,
    SlotLimit,
    acquire,
    in_use,
    release,
    slot_key,
)
from sluicegate.processors.dispatch.fair_selection import FairState, Item, Weights, order_backlog
from sluicegate.processors.dispatch.pump import (
    PumpResult,
    Ticket,
    is_replay_key,
    pump,
    replay_key,
    replay_share_free,
)
from sluicegate.processors.dispatch.throttle import Throttle, decide, throttle_key
from sluicegate.processors.flow.rate_limit import GcraState

NOW = 1_700_000_000_000
LEASE = 30_000
APP, FN = "app", "fn"
FKEY = f"{APP}/{FN}"


def path(key: str, fn: str = FN) -> tuple[str, str, str]:
    return (APP, fn, key)


def per_key(key: str | None, limit: int, per: str = "step") -> SlotLimit:
    """A function-scope limit keyed by ``key`` (``None``: one counter for the function)."""
    return SlotLimit(slot_key("fn", FKEY, per, key), limit, per)  # type: ignore[arg-type]


TH_KEY = throttle_key(FKEY, None)


class World:
    def __init__(self, weights: Weights = Weights(), lease_ms: int = LEASE) -> None:
        self.ready: dict[str, dict[str, dict[str, list[Item]]]] = {}
        self.tickets: dict[str, Ticket] = {}
        self.fair = FairState()
        self.cc: ConcurrencyState = EMPTY
        self.gcra: dict[str, GcraState] = {}
        self.weights, self.lease_ms = weights, lease_ms

    def add(self, key: str, items: list[Item], *, fn: str = FN, limits: tuple[SlotLimit, ...] = (),
            throttle: Throttle | None = None, th_key: str = TH_KEY,
            run_ids: dict[str, str] | None = None) -> None:
        """Queue ``items`` in backlog ``(APP, fn, key)``; every item gets the same limits."""
        backlog = self.ready.setdefault(APP, {}).setdefault(fn, {}).setdefault(key, [])
        backlog[:] = order_backlog([*backlog, *items])
        for i in items:
            run_id = (run_ids or {}).get(i.item_id, i.item_id)
            self.tickets[i.item_id] = Ticket(i, run_id, f"{i.item_id}:lease", limits, throttle,
                                             th_key if throttle is not None else None)

    def pump(self, free: int, at: int = 0, replay_free: int | None = None) -> PumpResult:
        r = pump(self.ready, self.tickets, free=free, fair=self.fair, concurrency=self.cc,
                 throttle_state=self.gcra.get, now_ms=NOW + at, lease_ms=self.lease_ms, weights=self.weights,
                 replay_free=replay_free)
        self.fair, self.cc = r.fair, r.concurrency
        self.gcra.update(r.throttle_puts)
        for rel in r.released:
            _app, fn, key = rel.path
            backlog = self.ready[APP][fn][key]
            assert backlog[0] == rel.ticket.item, "released from the head of its backlog"
            backlog.pop(0)
            if not backlog:
                del self.ready[APP][fn][key]
                if not self.ready[APP][fn]:
                    del self.ready[APP][fn]
                    if not self.ready[APP]:
                        del self.ready[APP]
            del self.tickets[rel.ticket.item.item_id]
        return r

    def run(self, releases: int, frees: tuple[int, ...] = (1, 2, 3, 5, 7), at: int = 0) -> list[tuple[str, str]]:
        """Pump until ``releases`` items went (or nothing more goes): (key, item id) in order."""
        out: list[tuple[str, str]] = []
        n = 0
        while len(out) < releases:
            r = self.pump(min(frees[n % len(frees)], releases - len(out)), at)
            n += 1
            if not r.released:
                break
            out += [(rel.path[2], rel.ticket.item.item_id) for rel in r.released]
        return out

    def depth(self) -> int:
        return sum(len(b) for fns in self.ready.values() for keys in fns.values() for b in keys.values())


def items(prefix: str, count: int, at: int = 0, **kw: Any) -> list[Item]:
    return [Item(f"{prefix}{i:05d}", NOW + at + i, **kw) for i in range(count)]


def ids(r: PumpResult) -> list[str]:
    return [rel.ticket.item.item_id for rel in r.released]


# -- the window: free slots and window_full ------------------------------------------------

@pytest.mark.parametrize("free,queued,limit,held,released,window_full", [
    # limit: a function-wide step limit (None: none); held: its slots taken by others already
    (0, 3, None, 0, 0, True),     # something eligible, no room
    (0, 0, None, 0, 0, False),    # nothing ready
    (0, 3, 1, 1, 0, False),       # everything blocked: not the window's fault
    (1, 3, None, 0, 1, True),
    (2, 5, None, 0, 2, True),
    (5, 5, None, 0, 5, False),    # exactly drained: nothing left to be held back
    (9, 3, None, 0, 3, False),    # more room than items
    (9, 5, 2, 0, 2, False),       # the limit, not the window, holds the rest
    (9, 5, 3, 2, 1, False),       # others' leases count
    (2, 5, 2, 0, 2, False),       # window and limit run out together: the limit is the reason
    (2, 5, 3, 0, 2, True),
])
def test_releases_at_most_free(free: int, queued: int, limit: int | None, held: int, released: int,
                               window_full: bool) -> None:
    w = World()
    lims = () if limit is None else (per_key(None, limit),)
    for h in range(held):
        w.cc = acquire(w.cc, lims, lease_id=f"other{h}", run_id=f"other{h}", expires_ms=NOW + LEASE,
                       now_ms=NOW).state
    if queued:
        w.add("", items("i", queued), limits=lims)
    r = w.pump(free)
    assert len(r.released) == released
    assert ids(r) == [f"i{i:05d}" for i in range(released)]  # in order, from the head
    assert r.window_full is window_full
    assert w.depth() == queued - released
    limit_binds = limit is not None and held + released == limit and released < queued
    assert r.blocked == ({path(""): "concurrency"} if limit_binds else {})


def test_free_zero_reports_why_blocked_backlogs_wait() -> None:
    w = World()
    w.cc = acquire(EMPTY, (per_key("a", 1),), lease_id="x", run_id="x", expires_ms=NOW + LEASE, now_ms=NOW).state
    w.add("a", items("a", 2), limits=(per_key("a", 1),))
    r = w.pump(0)
    assert (r.released, r.window_full, r.blocked) == ((), False, {path("a"): "concurrency"})


def test_negative_free_is_rejected() -> None:
    with pytest.raises(ValueError, match="free"):
        World().pump(-1)


def test_pump_is_pure() -> None:
    w = World()
    w.add("a", items("a", 5), limits=(per_key("a", 2),))
    w.add("b", items("b", 5), throttle=Throttle(2, SECOND))
    ready, tickets = copy.deepcopy(w.ready), dict(w.tickets)
    args: dict[str, Any] = dict(free=10, fair=FairState(), concurrency=EMPTY, throttle_state=lambda k: None,
                                now_ms=NOW, lease_ms=LEASE)
    first, second = pump(w.ready, w.tickets, **args), pump(w.ready, w.tickets, **args)
    assert first == second
    assert (w.ready, w.tickets) == (ready, tickets)  # input backlogs untouched
    assert sorted(ids(first)) == ["a00000", "a00001", "b00000", "b00001"]


def test_released_items_hold_leases_of_lease_ms() -> None:
    w = World(lease_ms=5_000)
    lim = per_key("k", 3)
    w.add("k", items("k", 2), limits=(lim,))
    r = w.pump(5)
    assert [rel.path for rel in r.released] == [path("k")] * 2
    assert {lid: lease.expires_ms for lid, lease in r.concurrency.leases.items()} == {
        "k00000:lease": NOW + 5_000, "k00001:lease": NOW + 5_000}
    assert in_use(r.concurrency, lim.slot, NOW + 4_999) == 2
    assert in_use(r.concurrency, lim.slot, NOW + 5_000) == 0


# -- concurrency -------------------------------------------------------------------------

def test_otto_one_item_of_b_is_not_stuck_behind_a_thousand_of_a() -> None:
    w = World()
    w.add("A", items("a", 1000), limits=(per_key("A", 5),))
    w.add("B", items("b", 1), limits=(per_key("B", 5),))
    r = w.pump(6)
    assert "b00000" in ids(r)
    assert Counter(rel.path[2] for rel in r.released) == {"A": 5, "B": 1}
    assert r.blocked == {path("A"): "concurrency"}
    assert r.window_full is False  # A is held by its limit, not by the window
    assert in_use(r.concurrency, per_key("A", 5).slot, NOW) == 5


def test_full_key_is_blocked_and_other_keys_still_go() -> None:
    w = World()
    for k in ("A", "B", "C"):
        w.add(k, items(k, 10), limits=(per_key(k, 2),))
    w.cc = acquire(EMPTY, (per_key("B", 2),), lease_id="b1", run_id="b1", expires_ms=NOW + LEASE, now_ms=NOW).state
    w.cc = acquire(w.cc, (per_key("B", 2),), lease_id="b2", run_id="b2", expires_ms=NOW + LEASE, now_ms=NOW).state
    r = w.pump(10)
    assert Counter(rel.path[2] for rel in r.released) == {"A": 2, "C": 2}
    assert r.blocked == {path("A"): "concurrency", path("B"): "concurrency", path("C"): "concurrency"}


def test_function_limit_shared_by_keys() -> None:
    """One unkeyed counter over several backlogs (e.g. fairness keys): the sum is capped."""
    w = World()
    fn_limit = per_key(None, 3)
    for k in ("x", "y", "z"):
        w.add(k, items(k, 5), limits=(fn_limit,))
    r = w.pump(10)
    assert sorted(rel.path[2] for rel in r.released) == ["x", "y", "z"]  # one each: fair across keys
    assert in_use(r.concurrency, fn_limit.slot, NOW) == 3
    assert set(r.blocked.values()) == {"concurrency"} and len(r.blocked) == 3


@pytest.mark.parametrize("seed", range(6))
def test_keyed_limit_is_never_exceeded(seed: int) -> None:
    """Random pumps, outcomes (release) and lease expiries: per key never more than N live
    leases, in the state and by our own count; and the pump is work-conserving."""
    rng = random.Random(seed)
    n_limit, keys, lease_ms = 3, [f"k{i}" for i in range(6)], 4_000
    w = World(lease_ms=lease_ms)
    lims = {k: per_key(k, n_limit) for k in keys}
    for k in keys:
        w.add(k, items(k, 400), limits=(lims[k],))
    live: dict[str, tuple[str, int]] = {}  # lease id -> (key, expires)
    peak: Counter[str] = Counter()
    expired = released = 0
    at = 0
    for _ in range(300):
        at += rng.randrange(0, 1_500)
        for lid in sorted(live):
            key, exp = live[lid]
            if NOW + at >= exp:
                expired += 1
                del live[lid]          # expired: counts for nothing, even though never released
            elif rng.random() < 0.3:
                w.cc = release(w.cc, lid)
                del live[lid]
        free = rng.randrange(0, 9)
        r = w.pump(free, at)
        released += len(r.released)
        assert len(r.released) <= free
        for rel in r.released:
            live[rel.ticket.lease_id] = (rel.path[2], NOW + at + lease_ms)
        for k in keys:
            mine = sum(1 for key, _ in live.values() if key == k)
            assert in_use(w.cc, lims[k].slot, NOW + at) == mine <= n_limit
            peak[k] = max(peak[k], mine)
        if len(r.released) < free:  # room left: every waiting backlog must be at its limit
            waiting = {path(k) for k in keys if k in w.ready.get(APP, {}).get(FN, {})}
            assert r.blocked == {p: "concurrency" for p in waiting}
            assert all(in_use(w.cc, lims[p[2]].slot, NOW + at) == n_limit for p in waiting)
    assert peak == {k: n_limit for k in keys}  # the bound was reached, so it was tested
    assert expired > 0 and released > 300


@pytest.mark.parametrize("expires_at,goes", [
    (-1, True),        # expired before now
    (0, True),         # expires_ms is exclusive: expired at now
    (1, False),        # still live
])
def test_expired_leases_do_not_count(expires_at: int, goes: bool) -> None:
    lim = per_key("k", 1)
    w = World()
    w.cc = ConcurrencyState(leases={"old": Lease(run_id="old", expires_ms=NOW + expires_at, slots=(lim.slot,))},
                            step_holders={lim.slot: ("old",)})  # not reaped yet
    w.add("k", items("k", 1), limits=(lim,))
    r = w.pump(1)
    assert ids(r) == (["k00000"] if goes else [])
    assert r.blocked == ({} if goes else {path("k"): "concurrency"})
    assert in_use(r.concurrency, lim.slot, NOW) == 1


def test_started_run_holding_its_run_slot_goes_when_the_limit_is_full() -> None:
    run_lim = per_key(None, 1, per="run")
    w = World()
    # run r1 took the only run slot on its first step; that step finished (lease released)
    w.cc = release(acquire(EMPTY, (run_lim,), lease_id="r1.s0", run_id="r1", expires_ms=NOW + LEASE,
                           now_ms=NOW).state, "r1.s0")
    assert in_use(w.cc, run_lim.slot, NOW) == 1
    w.add("", [Item("r1.s1", NOW - 5_000, started=True), Item("r2.s0", NOW - 9_000)], limits=(run_lim,),
          run_ids={"r1.s1": "r1", "r2.s0": "r2"})
    r = w.pump(5)
    assert ids(r) == ["r1.s1"]
    assert r.blocked == {path(""): "concurrency"}  # r2 waits for r1 to end
    assert in_use(r.concurrency, run_lim.slot, NOW) == 1


def test_new_run_is_blocked_by_a_full_run_limit() -> None:
    run_lim = per_key(None, 1, per="run")
    w = World()
    w.cc = acquire(EMPTY, (run_lim,), lease_id="r1.s0", run_id="r1", expires_ms=NOW + 1, now_ms=NOW).state
    w.add("", [Item("r2.s0", NOW)], limits=(run_lim,), run_ids={"r2.s0": "r2"})
    r = w.pump(5, at=LEASE)  # r1's lease long expired: a run slot has no expiry
    assert (ids(r), r.blocked) == ([], {path(""): "concurrency"})


# -- throttle ----------------------------------------------------------------------------

TH_CASES = [
    # (name, config, pump offsets, released per pump, wake_at offset per pump)
    ("1/s: one, then the next at +1000",
     Throttle(1, SECOND), [0, 999, 1000], [1, 0, 1], [1000, 1000, 2000]),
    ("limit 2 / 6 s, burst 1: three at once, then one every 3 s",
     Throttle(2, 6 * SECOND, burst=1), [0, 2999, 3000, 5999, 6000], [3, 0, 1, 0, 1],
     [3000, 3000, 6000, 6000, 9000]),
    ("30/min: 30 at once, then one every 2 s",
     Throttle(30, MINUTE), [0, 1999, 2000, 4000], [30, 0, 1, 1], [2000, 2000, 4000, 6000]),
    ("3/s, T not a whole ms: exact",
     Throttle(3, SECOND), [0, 333, 334, 666, 667], [3, 0, 1, 0, 1], [334, 334, 667, 667, 1000]),
]


@pytest.mark.parametrize("name,config,offsets,released,wakes", TH_CASES, ids=[c[0] for c in TH_CASES])
def test_throttled_head_waits_until_wake_at(name: str, config: Throttle, offsets: list[int],
                                            released: list[int], wakes: list[int]) -> None:
    w = World()
    w.add("", items("i", 100), throttle=config)
    for at, n, wake in zip(offsets, released, wakes):
        before = w.gcra.get(TH_KEY)
        r = w.pump(100, at)
        assert len(r.released) == n, at
        assert r.blocked == {path(""): "throttled"}, at
        assert r.wake_at_ms == NOW + wake, at
        assert r.window_full is False
        # the puts are the GCRA states of the starts, in order
        state = before
        for _ in range(n):
            state = decide(state, NOW + at, config).state
        assert r.throttle_puts == ({TH_KEY: state} if n else {}), at


def test_wake_at_is_the_first_ms_a_start_is_allowed() -> None:
    config = Throttle(7, 3 * SECOND, burst=2)
    w = World()
    w.add("", items("i", 200), throttle=config)
    at = 0
    for _ in range(30):
        r = w.pump(200, at)
        assert r.wake_at_ms is not None and r.wake_at_ms > NOW + at
        wake = r.wake_at_ms - NOW
        if wake - 1 > at:
            probe = copy.deepcopy(w)
            assert probe.pump(200, wake - 1).released == (), "nothing starts before wake_at_ms"
        at = wake
        assert w.pump(200, at).released, "something starts at wake_at_ms"


def test_thirty_per_minute_spreads_starts_over_sixty_seconds() -> None:
    w = World()
    w.add("", items("i", 200), throttle=Throttle(30, MINUTE))
    per_2s: Counter[int] = Counter()
    for at in range(0, 60 * SECOND, 100):  # the dispatcher ticks every 100 ms
        per_2s[at // (2 * SECOND)] += len(w.pump(50, at).released)
    assert per_2s[0] == 30
    assert [per_2s[b] for b in range(1, 30)] == [1] * 29
    assert sum(per_2s.values()) == 59


def test_started_item_is_not_throttled() -> None:
    config = Throttle(1, MINUTE)
    w = World()
    w.gcra[TH_KEY] = decide(None, NOW, config).state  # the bucket is empty for a minute
    w.add("", [Item("r1.s3", NOW - 60_000, started=True), Item("r2.s0", NOW - 90_000)], throttle=config)
    r = w.pump(5)
    assert ids(r) == ["r1.s3"]
    assert r.throttle_puts == {}  # a later step takes no start
    assert r.blocked == {path(""): "throttled"} and r.wake_at_ms == NOW + MINUTE


@pytest.mark.parametrize("emptied,released,blocked,wake", [
    ({}, ["a00000", "b00000", "c00000"], {"a": "throttled", "b": "throttled", "c": "throttled"}, 1_000),
    ({"a": 60_000}, ["b00000", "c00000"], {"a": "throttled", "b": "throttled", "c": "throttled"}, 1_000),
    ({"a": 60_000, "c": 5_000}, ["b00000"], {"a": "throttled", "b": "throttled", "c": "throttled"}, 1_000),
    ({"a": 60_000, "b": 1_000, "c": 5_000}, [], {"a": "throttled", "b": "throttled", "c": "throttled"}, 1_000),
    ({"a": 60_000, "c": 5_000, "b": 8_000}, [], {"a": "throttled", "b": "throttled", "c": "throttled"}, 5_000),
])
def test_each_key_has_its_bucket_and_wake_at_is_the_earliest(emptied: dict[str, int], released: list[str],
                                                              blocked: dict[str, str], wake: int) -> None:
    """Three keys with their own bucket (1 start per s); ``emptied[k]``: k's bucket has no
    room until that offset. Free keys start one run each; the pump wakes at the first room."""
    config = Throttle(1, SECOND, key="event.data.k")
    w = World()
    for k in ("a", "b", "c"):
        w.add(k, items(k, 3), throttle=config, th_key=throttle_key(FKEY, k))
        if k in emptied:
            w.gcra[throttle_key(FKEY, k)] = GcraState(tat_ms=NOW + emptied[k])
    r = w.pump(10)
    assert sorted(ids(r)) == released
    assert r.blocked == {path(k): why for k, why in blocked.items()}
    assert r.wake_at_ms == NOW + wake
    assert set(r.throttle_puts) == {throttle_key(FKEY, i[0]) for i in released}


def test_concurrency_is_reported_before_throttle() -> None:
    lim = per_key(None, 1)
    config = Throttle(1, MINUTE)
    w = World()
    w.cc = acquire(EMPTY, (lim,), lease_id="x", run_id="x", expires_ms=NOW + LEASE, now_ms=NOW).state
    w.gcra[TH_KEY] = decide(None, NOW, config).state
    w.add("", items("i", 2), limits=(lim,), throttle=config)
    r = w.pump(5)
    assert (ids(r), r.blocked, r.wake_at_ms, r.throttle_puts) == ([], {path(""): "concurrency"}, None, {})


# -- order, priority, weights, fairness ----------------------------------------------------

@pytest.mark.parametrize("backlog,first", [
    ([Item("old", NOW), Item("urgent", NOW + 30_000, priority_s=60)], "urgent"),
    ([Item("old", NOW), Item("meh", NOW + 30_000, priority_s=10)], "old"),
    ([Item("late", NOW + 5_000), Item("demoted", NOW, priority_s=-10)], "late"),
    ([Item("started", NOW + 99_000, started=True), Item("urgent", NOW, priority_s=43_200)], "started"),
    ([Item("a", NOW + 1, priority_s=2), Item("b", NOW + 2_000, priority_s=4)], "b"),
    ([Item("b", NOW), Item("a", NOW)], "a"),  # tie: item id
])
def test_priority_within_a_backlog(backlog: list[Item], first: str) -> None:
    w = World()
    w.add("", backlog)
    assert ids(w.pump(1)) == [first]
    expected = [i.item_id for i in order_backlog(backlog)]
    assert expected[0] == first
    w2 = World()
    w2.add("", backlog)
    assert [i for _k, i in w2.run(len(backlog), frees=(1,))] == expected


TOL = 0.02  # stated tolerance on shares (DRR with unit cost is exact per round)


@pytest.mark.parametrize("weights,expect", [
    ({}, {"a": 0.5, "b": 0.5}),
    ({"a": 3}, {"a": 0.75, "b": 0.25}),
    ({"a": 1, "b": 4}, {"a": 0.2, "b": 0.8}),
    ({"a": 5, "b": 2, "c": 3}, {"a": 0.5, "b": 0.2, "c": 0.3}),
])
def test_key_weights_are_honoured_over_many_pumps(weights: dict[str, int], expect: dict[str, float]) -> None:
    w = World(weights=Weights(keys={path(k): v for k, v in weights.items()}))
    for k in expect:
        w.add(k, items(k, 1500))
    got = Counter(k for k, _ in w.run(1000))
    for k, share in expect.items():
        assert abs(got[k] / 1000 - share) <= TOL, (k, got)


def test_weights_hold_under_a_keyed_limit_that_binds_nobody() -> None:
    w = World(weights=Weights(keys={path("a"): 3}))
    for k in ("a", "b"):
        w.add(k, items(k, 2000), limits=(per_key(k, 10_000),))
    got = Counter(k for k, _ in w.run(1000, frees=(4, 8)))
    assert got == {"a": 750, "b": 250}


@pytest.mark.parametrize("warmup", [0, 1, 137])
@pytest.mark.parametrize("frees", [(1,), (7,), (100,), (3, 50, 1)])
def test_every_key_gets_an_item_within_a_hundred_releases(warmup: int, frees: tuple[int, ...]) -> None:
    w = World()
    keys = [f"k{i:03d}" for i in range(100)]
    for k in keys:
        w.add(k, items(k, 10))
    w.run(warmup, frees=frees)
    got = w.run(100, frees=frees)
    assert len(got) == 100
    assert {k for k, _ in got} == set(keys)


def test_keys_of_several_functions_share_fairly() -> None:
    w = World()
    w.add("k", items("f", 500), fn="f")
    for i in range(10):
        w.add(f"k{i}", items(f"g{i}.", 50), fn="g")
    released: list[str] = []
    for _ in range(50):
        released += [rel.path[1] for rel in w.pump(4).released]
    assert Counter(released) == {"f": 100, "g": 100}  # functions share equally, however many keys


# -- a replay's share of the window ---------------------------------------------------------

REPLAY = replay_key("r1", "")


@pytest.mark.parametrize("window,share,in_flight,free,expected", [
    (50, 0.8, 0, 50, 40),    # an idle window: the share
    (50, 0.8, 40, 10, 0),    # the share is used: the 10 left are live work's
    (50, 0.8, 35, 15, 5),
    (50, 0.8, 0, 3, 3),      # never more than the window's free slots
    (50, 1.0, 0, 50, 50),
    (4, 0.1, 0, 4, 1),       # at least one slot, or a small window would never replay
    (4, 0.1, 1, 3, 0),
    (50, 0.8, 45, 5, 0),     # above the share (the setting was lowered): nothing until it drains
])
def test_replay_share_free(window: int, share: float, in_flight: int, free: int, expected: int) -> None:
    assert replay_share_free(window, share, in_flight, free) == expected


def test_replay_keys_are_told_from_live_keys() -> None:
    assert is_replay_key(replay_key("r1", "user-7")) and replay_key("r1", "user-7") == "replay:r1|user-7"
    assert not is_replay_key("user-7") and not is_replay_key("")


@pytest.mark.parametrize("free,replay_free,live,replayed,out_live,out_replay", [
    (10, 3, 20, 20, 7, 3),     # the replay gets its share, live work the rest
    (10, 3, 2, 20, 2, 3),      # little live work: the window keeps the slots free for more
    (10, 0, 20, 20, 10, 0),    # the share is used: live only
    (10, 0, 0, 20, 0, 0),      # a replay alone never goes past its share
    (10, None, 0, 20, 0, 10),  # no cap: the replay takes the free slots
    (10, 10, 20, 20, 5, 5),    # a share as large as the window: fair turns decide
    (4, 9, 0, 20, 0, 4),       # the window bounds the replay too
])
def test_a_replay_goes_out_only_within_its_share(free: int, replay_free: int | None, live: int, replayed: int,
                                                 out_live: int, out_replay: int) -> None:
    w = World()
    if live:
        w.add("", items("live", live))
    w.add(REPLAY, items("rep", replayed, at=-60_000))  # older: would go first by age alone
    r = w.pump(free, replay_free=replay_free)
    got = Counter("replay" if is_replay_key(rel.path[2]) else "live" for rel in r.released)
    assert (got["live"], got["replay"]) == (out_live, out_replay)
    capped = replay_free is not None and out_replay == replay_free and out_replay < replayed
    assert r.blocked == ({path(REPLAY): "window_full"} if capped else {})
    # the window is full only when something eligible is left beyond it: a capped replay is not
    assert r.window_full is (out_live + out_replay == free and (live > out_live or (not capped and replayed > out_replay)))


def test_negative_replay_free_is_rejected() -> None:
    with pytest.raises(ValueError, match="replay_free"):
        World().pump(3, replay_free=-1)
