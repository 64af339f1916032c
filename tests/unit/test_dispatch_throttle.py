"""``processors.dispatch.throttle``: GCRA on run starts driven by hand, no clock.

Times are offsets in ms from ``NOW``. A sequence case threads the state through every start
and lists, per start, ``OK`` (allowed) or the ``next_at_ms`` offset of the refusal.
"""

from __future__ import annotations

import pytest

from sluicegate.errors import InvalidInput
from sluicegate.flow_config import DAY, MINUTE, SECOND
from sluicegate.processors.dispatch.throttle import Throttle, ThrottleDecision, decide, throttle_key
from sluicegate.processors.flow.rate_limit import GcraState

NOW = 1_700_000_000_000
OK = "ok"


def run(config: Throttle, offsets: list[int]) -> list[object]:
    state: GcraState | None = None
    out: list[object] = []
    for off in offsets:
        before = state
        d = decide(state, NOW + off, config)
        if d.allowed:
            assert d.changed and d.next_at_ms >= NOW + off
            state = d.state
            out.append(OK)
        else:
            assert d.state is before and not d.changed  # a refusal changes nothing
            out.append(d.next_at_ms - NOW)
    return out


CASES = [
    # (name, config, start offsets, expected)
    ("30/min: 30 at once, the 31st waits 2 s",
     Throttle(30, MINUTE), [0] * 31, [OK] * 30 + [2 * SECOND]),
    ("reference: limit 2 / 6 s, burst 1 → 3 at once, then 1 every 3 s",
     Throttle(2, 6 * SECOND, burst=1), [0, 0, 0, 0, 2999, 3000, 3000, 6000],
     [OK, OK, OK, 3000, 3000, OK, 6000, OK]),
    ("limit 1 / s: exact boundary is inclusive",
     Throttle(1, SECOND), [0, 999, 1000, 1000], [OK, 1000, OK, 2000]),
    ("burst adds starts at once",
     Throttle(1, SECOND, burst=2), [0, 0, 0, 0], [OK, OK, OK, 1000]),
    ("idle key refills fully",
     Throttle(3, 3 * SECOND), [0, 0, 0, 0, 10 * SECOND, 10 * SECOND, 10 * SECOND, 10 * SECOND],
     [OK, OK, OK, 1000, OK, OK, OK, 11 * SECOND]),
    ("T not a whole ms (3 per s): exact in ticks",
     Throttle(3, SECOND), [0, 0, 0, 0, 333, 334], [OK, OK, OK, 334, 334, OK]),
    ("refusals never push the next start out",
     Throttle(1, SECOND), [0, 1, 2, 500, 999, 1000], [OK, 1000, 1000, 1000, 1000, OK]),
]


@pytest.mark.parametrize("name,config,offsets,expected", CASES, ids=[c[0] for c in CASES])
def test_sequences(name: str, config: Throttle, offsets: list[int], expected: list[object]) -> None:
    assert run(config, offsets) == expected


def test_thirty_per_minute_spreads_starts_two_seconds_apart_after_the_burst() -> None:
    config = Throttle(30, MINUTE)
    state: GcraState | None = None
    starts: list[int] = []
    t = NOW
    while len(starts) < 60:  # a backlog of 60 runs, each retried at next_at_ms
        d = decide(state, t, config)
        if d.allowed:
            state = d.state
            starts.append(t - NOW)
        else:
            assert d.next_at_ms > t
            t = d.next_at_ms
    assert starts[:30] == [0] * 30
    assert starts[30:] == [2 * SECOND * i for i in range(1, 31)]


def test_next_at_after_allowed_start_says_when_the_key_has_room() -> None:
    config = Throttle(2, 2 * SECOND)
    d1 = decide(None, NOW, config)
    assert d1.allowed and d1.next_at_ms == NOW        # room for one more now
    d2 = decide(d1.state, NOW, config)
    assert d2.allowed and d2.next_at_ms == NOW + SECOND
    d3 = decide(d2.state, NOW + SECOND, config)
    assert d3.allowed


def test_keys_are_independent() -> None:
    config = Throttle(1, MINUTE, key="event.data.user")
    states: dict[str, GcraState | None] = {}
    a = throttle_key("app/fn", "A")
    b = throttle_key("app/fn", "B")
    for _ in range(5):
        d = decide(states.get(a), NOW, config)
        states[a] = d.state
    d = decide(states.get(b), NOW, config)
    assert d.allowed  # A's backlog never delays B


def test_inputs_are_not_mutated() -> None:
    config = Throttle(1, SECOND)
    state = GcraState(tat_ms=NOW + 500, tat_rem=0)
    snapshot = state.model_dump()
    refused = decide(state, NOW, config)
    assert not refused.allowed and refused.state is state
    allowed = decide(state, NOW + 500, config)
    assert allowed.allowed and allowed.state is not state
    assert state.model_dump() == snapshot
    assert config == Throttle(1, SECOND)


def test_stale_state_is_idle_and_clock_backwards_never_adds_a_start() -> None:
    config = Throttle(1, SECOND)
    d = decide(GcraState(tat_ms=NOW - DAY), NOW, config)
    assert d.allowed and d.state == GcraState(tat_ms=NOW + SECOND)
    back = decide(d.state, NOW - 5 * SECOND, config)
    assert not back.allowed and back.next_at_ms == NOW + SECOND  # the wait lengthens by 5 s


def test_state_written_under_a_larger_limit_rounds_up() -> None:
    # tat_rem 5 is >= the new limit 2: the TAT is read as the next whole ms
    d = decide(GcraState(tat_ms=NOW, tat_rem=5), NOW, Throttle(2, SECOND))
    assert d.allowed  # tolerance 500 ms >= 1 ms


def test_decision_unpacks_as_a_tuple() -> None:
    state, allowed, next_at_ms, changed = decide(None, NOW, Throttle(1, SECOND))
    assert allowed and changed and next_at_ms == NOW + SECOND
    assert isinstance(decide(None, NOW, Throttle(1, SECOND)), ThrottleDecision)


@pytest.mark.parametrize("kwargs,field", [
    ({"limit": 0, "period_ms": SECOND}, "throttle.limit"),
    ({"limit": 1, "period_ms": 999}, "throttle.period_ms"),
    ({"limit": 1, "period_ms": 7 * DAY + 1}, "throttle.period_ms"),
    ({"limit": 1, "period_ms": SECOND, "burst": -1}, "throttle.burst"),
])
def test_bad_config_names_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        Throttle(**kwargs)
    assert exc.value.field == field


def test_state_key_layout_is_pinned() -> None:
    assert throttle_key("app/fn", None) == "th/app/fn/"
    assert throttle_key("app/fn", "A") == "th/app/fn/6dcd4ce23d88e2ee9568ba546c007c63d9131c1b"
    assert throttle_key("app/f1", "A") != throttle_key("app/f2", "A")  # per function
