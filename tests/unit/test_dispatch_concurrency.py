"""``processors.dispatch.concurrency``: slots and leases driven by hand, no clock.

Times are offsets in ms from ``NOW``. Lease ids are ``<run>.<step>:<attempt>``.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from sluicegate.errors import InvalidInput, LimitExceeded
from sluicegate.processors.dispatch.concurrency import (
    EMPTY,
    Concurrency,
    ConcurrencyState,
    SlotLimit,
    acquire,
    blocking,
    can_acquire,
    extend,
    in_use,
    reap,
    release,
    release_run,
    slot_key,
    slot_limits,
)

NOW = 1_700_000_000_000
LEASE = 30_000
FN = "app/fn"


def limits(*configs: Concurrency, keys: tuple[str | None, ...] | None = None) -> tuple[SlotLimit, ...]:
    return slot_limits(configs, keys if keys is not None else (None,) * len(configs),
                       function_key=FN, app_id="app", account_id="acct")


def take(state: ConcurrencyState, lims: tuple[SlotLimit, ...], lease_id: str, run_id: str,
         now: int = NOW, ttl: int = LEASE) -> tuple[ConcurrencyState, bool]:
    r = acquire(state, lims, lease_id=lease_id, run_id=run_id, expires_ms=now + ttl, now_ms=now)
    return r.state, r.acquired


# -- table: one limit, a sequence of operations ---------------------------------------------

STEP2 = Concurrency(2)
RUN1 = Concurrency(1, per="run")

# op: ("acq", lease, run, offset) | ("rel", lease) | ("end", run) | ("reap", offset)
CASES = [
    ("step limit 2: third waits, release frees", STEP2,
     [("acq", "a.0:0", "a", 0), ("acq", "b.0:0", "b", 0), ("acq", "c.0:0", "c", 0),
      ("rel", "a.0:0"), ("acq", "c.0:0", "c", 1)],
     [True, True, False, None, True]),
    ("same lease twice never double-counts", STEP2,
     [("acq", "a.0:0", "a", 0), ("acq", "a.0:0", "a", 0), ("acq", "b.0:0", "b", 0),
      ("acq", "c.0:0", "c", 0)],
     [True, True, True, False]),
    ("expired lease frees its slot before reap", STEP2,
     [("acq", "a.0:0", "a", 0), ("acq", "b.0:0", "b", 0), ("acq", "c.0:0", "c", LEASE - 1),
      ("acq", "c.0:0", "c", LEASE)],
     [True, True, False, True]),
    ("expired lease re-acquired under the same id is refused", STEP2,
     [("acq", "a.0:0", "a", 0), ("acq", "a.0:0", "a", LEASE)],
     [True, False]),
    ("release twice / unknown changes nothing", STEP2,
     [("acq", "a.0:0", "a", 0), ("rel", "a.0:0"), ("rel", "a.0:0"), ("rel", "zzz"),
      ("acq", "b.0:0", "b", 0), ("acq", "c.0:0", "c", 0), ("acq", "d.0:0", "d", 0)],
     [True, None, None, None, True, True, False]),
    ("per=run keeps the slot across steps and sleeps", RUN1,
     [("acq", "a.0:0", "a", 0), ("rel", "a.0:0"), ("acq", "b.0:0", "b", 1),
      ("acq", "a.1:0", "a", 2), ("rel", "a.1:0"), ("reap", 10 * LEASE), ("acq", "b.0:0", "b", 10 * LEASE)],
     [True, None, False, True, None, None, False]),
    ("per=run frees the slot when the run ends", RUN1,
     [("acq", "a.0:0", "a", 0), ("end", "a"), ("acq", "b.0:0", "b", 1), ("end", "a")],
     [True, None, True, None]),
    ("per=step: the next step of a run needs a fresh slot", Concurrency(1),
     [("acq", "a.0:0", "a", 0), ("acq", "a.1:0", "a", 0), ("rel", "a.0:0"), ("acq", "a.1:0", "a", 0)],
     [True, False, None, True]),
]


@pytest.mark.parametrize("name,config,ops,expected", CASES, ids=[c[0] for c in CASES])
def test_sequences(name: str, config: Concurrency, ops: list[tuple], expected: list[bool | None]) -> None:
    lims = limits(config)
    state = EMPTY
    got: list[bool | None] = []
    for op in ops:
        if op[0] == "acq":
            _, lid, run, off = op
            state, ok = take(state, lims, lid, run, NOW + off)
            got.append(ok)
        elif op[0] == "rel":
            state = release(state, op[1])
            got.append(None)
        elif op[0] == "end":
            state = release_run(state, op[1])
            got.append(None)
        else:
            state, _ = reap(state, NOW + op[1])
            got.append(None)
    assert got == expected


# -- invariants -----------------------------------------------------------------------------

def test_otto_case_keys_are_independent() -> None:
    """1,000 items of user A with limit 5 per user never block user B's item."""
    config = Concurrency(5, key="event.data.user_id")
    state = EMPTY
    started_a = 0
    for i in range(1000):
        state, ok = take(state, limits(config, keys=("A",)), f"a{i}.0:0", f"a{i}")
        started_a += ok
    assert started_a == 5
    assert not can_acquire(state, limits(config, keys=("A",)), NOW)
    b = limits(config, keys=("B",))
    assert can_acquire(state, b, NOW)
    state, ok = take(state, b, "b.0:0", "b")
    assert ok and in_use(state, b[0].slot, NOW) == 1 and in_use(state, limits(config, keys=("A",))[0].slot, NOW) == 5


def test_two_limits_both_must_pass_and_acquire_is_all_or_none() -> None:
    per_user = Concurrency(2, key="event.data.user")
    total = Concurrency(3)
    state = EMPTY
    for run, user in [("r1", "A"), ("r2", "A"), ("r3", "B")]:
        state, ok = take(state, limits(per_user, total, keys=(user, None)), f"{run}.0:0", run)
        assert ok
    a3 = limits(per_user, total, keys=("A", None))
    assert blocking(state, a3, NOW) == (a3[0].slot, a3[1].slot)  # A full and total full
    c1 = limits(per_user, total, keys=("C", None))
    assert blocking(state, c1, NOW) == (c1[1].slot,)             # only the total
    before = state
    after = acquire(state, c1, lease_id="r4.0:0", run_id="r4", expires_ms=NOW + LEASE, now_ms=NOW)
    assert not after.acquired and not after.changed and after.state is before
    assert in_use(state, c1[0].slot, NOW) == 0  # none: the C slot was not taken either
    state = release(state, "r3.0:0")
    state, ok = take(state, c1, "r4.0:0", "r4")
    assert ok and in_use(state, c1[0].slot, NOW) == 1 and in_use(state, c1[1].slot, NOW) == 3


def test_step_and_run_limit_together() -> None:
    """A run limit 1 (exclusive runs) plus a step limit: the run's next step reuses its run slot."""
    lims = limits(Concurrency(1, per="run"), Concurrency(5, key='"openai"', scope="account"),
                  keys=(None, "openai"))
    state, ok = take(EMPTY, lims, "a.0:0", "a")
    assert ok
    state = release(state, "a.0:0")
    assert in_use(state, lims[1].slot, NOW) == 0 and in_use(state, lims[0].slot, NOW) == 1
    state, ok = take(state, lims, "a.1:0", "a")
    assert ok and in_use(state, lims[0].slot, NOW) == 1
    state, ok = take(state, lims, "b.0:0", "b")
    assert not ok


def test_shared_key_each_function_compares_with_its_own_limit() -> None:
    """Reference §2: A sets 5 and B sets 50 on the same account key."""
    a = slot_limits([Concurrency(5, key='"openai"', scope="account")], ["openai"],
                    function_key="app/A", app_id="app", account_id="acct")
    b = slot_limits([Concurrency(50, key='"openai"', scope="account")], ["openai"],
                    function_key="app/B", app_id="app", account_id="acct")
    assert a[0].slot == b[0].slot
    state = EMPTY
    for i in range(5):
        state, ok = take(state, a, f"a{i}.0:0", f"a{i}")
        assert ok
    assert not can_acquire(state, a, NOW)
    assert can_acquire(state, b, NOW)


def test_extend_heartbeats_and_never_resurrects() -> None:
    lims = limits(Concurrency(1))
    state, _ = take(EMPTY, lims, "a.0:0", "a")
    r = extend(state, "a.0:0", NOW + 2 * LEASE, now_ms=NOW + LEASE - 1)
    assert r.acquired and r.changed
    state = r.state
    assert in_use(state, lims[0].slot, NOW + LEASE + 5) == 1  # the heartbeat kept it
    assert reap(state, NOW + LEASE + 5)[1] == ()
    earlier = extend(state, "a.0:0", NOW, now_ms=NOW + 1)
    assert earlier.acquired and not earlier.changed and earlier.state is state  # never moves in
    # expired, not reaped: the slot may already be someone else's
    late = extend(state, "a.0:0", NOW + 5 * LEASE, now_ms=NOW + 2 * LEASE)
    assert not late.acquired and late.state is state
    state, ok = take(state, lims, "b.0:0", "b", now=NOW + 2 * LEASE)
    assert ok
    state, expired = reap(state, NOW + 2 * LEASE)
    assert expired == ("a.0:0",)
    gone = extend(state, "a.0:0", NOW + 5 * LEASE, now_ms=NOW + 2 * LEASE)
    assert not gone.acquired and gone.state is state
    assert in_use(state, lims[0].slot, NOW + 2 * LEASE) == 1


def test_reap_returns_expired_leases_oldest_first_and_keeps_live_ones() -> None:
    lims = limits(Concurrency(10))
    state = EMPTY
    for lid, ttl in [("c.0:0", 300), ("a.0:0", 100), ("b.0:0", 100), ("d.0:0", 10_000)]:
        state, _ = take(state, lims, lid, lid[0], ttl=ttl)
    state, expired = reap(state, NOW + 300)
    assert expired == ("a.0:0", "b.0:0", "c.0:0")
    assert set(state.leases) == {"d.0:0"} and state.step_holders == {lims[0].slot: ("d.0:0",)}
    assert reap(state, NOW + 300) == (state, ())
    assert release(state, "a.0:0") is state  # reaped: releasing again changes nothing


def test_item_without_limits_is_tracked_for_reap() -> None:
    state, ok = take(EMPTY, (), "a.0:0", "a")
    assert ok and can_acquire(state, (), NOW)
    assert reap(state, NOW + LEASE)[1] == ("a.0:0",)


def test_inputs_are_not_mutated() -> None:
    lims = limits(Concurrency(2), Concurrency(1, per="run", key="k"), keys=(None, "x"))
    state, _ = take(EMPTY, lims, "a.0:0", "a")
    snapshot = state.model_dump()
    take(state, lims, "a.1:0", "a")
    release(state, "a.0:0")
    release_run(state, "a")
    extend(state, "a.0:0", NOW + 10 * LEASE, NOW)
    reap(state, NOW + 10 * LEASE)
    assert state.model_dump() == snapshot
    assert EMPTY.model_dump() == ConcurrencyState().model_dump()


def test_lowered_limit_evicts_nothing_and_waits_for_the_count_to_fall() -> None:
    state = EMPTY
    for run in "abc":
        state, _ = take(state, limits(Concurrency(3)), f"{run}.0:0", run)
    lower = limits(Concurrency(2))
    assert not can_acquire(state, lower, NOW)
    state = release(state, "a.0:0")
    assert not can_acquire(state, lower, NOW)
    state = release(state, "b.0:0")
    assert can_acquire(state, lower, NOW)


# -- property-style: random sequences never exceed a limit ---------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_random_sequences_never_exceed_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    configs = [Concurrency(rng.randint(1, 3), key="k"), Concurrency(rng.randint(2, 5), per=rng.choice(["step", "run"]))]
    users = ["u1", "u2", "u3"]
    runs = {f"r{i}": rng.choice(users) for i in range(12)}
    step_of: dict[str, int] = defaultdict(int)
    ended: set[str] = set()
    state = EMPTY
    now = NOW
    for _ in range(400):
        now += rng.choice([0, 0, 1, 50, 500, 5_000])
        op = rng.random()
        run = rng.choice(list(runs))
        if op < 0.5 and run not in ended:
            lims = slot_limits(configs, [runs[run], None], function_key=FN, app_id="app")
            lid = f"{run}.{step_of[run]}:0"
            before = can_acquire(state, lims, now, lease_id=lid, run_id=run)
            r = acquire(state, lims, lease_id=lid, run_id=run, expires_ms=now + rng.choice([100, 1_000, 10_000]),
                        now_ms=now)
            assert r.acquired == before or lid in state.leases
            state = r.state
        elif op < 0.7 and state.leases:
            lid = rng.choice(sorted(state.leases))
            state = release(state, lid)
            r0 = lid.split(".")[0]
            step_of[r0] += 1
        elif op < 0.8:
            state = release_run(state, run)
            ended.add(run)
        elif op < 0.9 and state.leases:
            lid = rng.choice(sorted(state.leases))
            state = extend(state, lid, now + 5_000, now).state
        else:
            state, expired = reap(state, now)
            for lid in expired:  # re-dispatch: next attempt is a fresh lease id
                step_of[lid.split(".")[0]] += 1
        # independent count from the leases and runs themselves
        for user in users:
            live_steps = [lid for lid, lease in state.leases.items()
                          if lease.expires_ms > now and runs[lease.run_id] == user]
            assert len(live_steps) <= configs[0].limit
        second = slot_key("fn", FN, configs[1].per, None)
        if configs[1].per == "step":
            held = sum(1 for lease in state.leases.values() if lease.expires_ms > now)
        else:
            held = sum(1 for slots in state.runs.values() if second in slots)
        assert held <= configs[1].limit
        assert in_use(state, second, now) == held


# -- config and layout ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    ({"limit": 0}, "concurrency.limit"),
    ({"limit": 1, "scope": "app"}, "concurrency.key"),
    ({"limit": 1, "scope": "account"}, "concurrency.key"),
    ({"limit": 1, "scope": "env"}, "concurrency.scope"),
    ({"limit": 1, "per": "event"}, "concurrency.per"),
])
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        Concurrency(**kwargs)
    assert exc.value.field == field


def test_at_most_two_limits() -> None:
    with pytest.raises(LimitExceeded):
        limits(Concurrency(1), Concurrency(2), Concurrency(3))


def test_slot_key_layout_is_pinned() -> None:
    assert slot_key("fn", FN, "step", None) == "cc/fn/app/fn/step/"
    assert slot_key("account", "acct", "run", "A") == "cc/account/acct/run/6dcd4ce23d88e2ee9568ba546c007c63d9131c1b"
    lims = limits(Concurrency(1, key="k", scope="app"), keys=("A",))
    assert lims == (SlotLimit("cc/app/app/step/6dcd4ce23d88e2ee9568ba546c007c63d9131c1b", 1, "step"),)
