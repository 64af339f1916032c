"""``processors.flow.rate_limit``: GCRA admissions driven by hand, no clock.

Times are offsets in ms from ``NOW``. A sequence case threads the state through every
event and lists, per event, ``OK`` (admitted) or the ``retry_at_ms`` offset of the drop.
"""

from __future__ import annotations

from typing import Literal

import pytest

from sluicegate.flow_config import DAY, HOUR, MINUTE, SECOND, RateLimit
from sluicegate.processors.flow.rate_limit import (
    GcraState,
    RateDecision,
    burst,
    decide,
    rate_limit_key,
    state_expires_at,
)

NOW = 1_700_000_000_000
OK = "ok"
H4_8 = 17_280_000  # 24 h / 5


def gcra(limit: int, period_ms: int) -> RateLimit:
    return RateLimit(limit=limit, period_ms=period_ms)


def window(limit: int, period_ms: int) -> RateLimit:
    return RateLimit(limit=limit, period_ms=period_ms, mode="window")


def run(config: RateLimit, offsets: list[int], state: GcraState | None = None
        ) -> tuple[list[object], GcraState | None]:
    """Decide each event in turn; per event ``OK`` or the drop's retry offset."""
    out: list[object] = []
    for offset in offsets:
        decision = decide(state, NOW + offset, config)
        if decision.admitted:
            assert decision.retry_at_ms is None and decision.changed
            out.append(OK)
        else:
            assert decision.retry_at_ms is not None and not decision.changed
            assert decision.state is state  # a drop never changes the state
            out.append(decision.retry_at_ms - NOW)
        state = decision.state
    return out, state


@pytest.mark.parametrize(("limit", "mode", "expected"), [
    (1, "gcra", 0),
    (5, "gcra", 0),
    (9, "gcra", 0),
    (10, "gcra", 1),
    (25, "gcra", 2),
    (100, "gcra", 10),
    (1_000_000, "gcra", 100_000),
    (1, "window", 0),
    (5, "window", 4),
    (1_000_000, "window", 999_999),
])
def test_burst_by_mode(limit: int, mode: Literal["gcra", "window"], expected: int) -> None:
    assert burst(RateLimit(limit=limit, period_ms=HOUR, mode=mode)) == expected


SEQUENCES = [
    # Password reset: 1 per hour, 5 requests within seconds → 1 admitted, 4 dropped until +1 h.
    ("password reset", gcra(1, HOUR), [0, 1 * SECOND, 2 * SECOND, 3 * SECOND, 4 * SECOND, HOUR],
     [OK, HOUR, HOUR, HOUR, HOUR, OK], GcraState(tat_ms=NOW + 2 * HOUR)),
    ("1/h: 1 ms before the hour is dropped, the hour admits", gcra(1, HOUR), [0, HOUR - 1, HOUR],
     [OK, HOUR, OK], GcraState(tat_ms=NOW + 2 * HOUR)),
    ("1/h: idle longer than the period starts afresh", gcra(1, HOUR), [0, 5 * HOUR, 5 * HOUR + 1],
     [OK, OK, 6 * HOUR], GcraState(tat_ms=NOW + 6 * HOUR)),
    # inngest/inngest#1460: gcra with a small limit spaces single admissions evenly.
    ("gcra 5/24h: one, then one every 4.8 h", gcra(5, DAY), [0, 0, H4_8 - 1, H4_8, H4_8, 2 * H4_8],
     [OK, H4_8, H4_8, OK, 2 * H4_8, OK], GcraState(tat_ms=NOW + 3 * H4_8)),
    ("gcra 10/min: burst 1, capacity 2, then one per 6 s", gcra(10, MINUTE), [0, 0, 0, 6_000, 6_000],
     [OK, OK, 6_000, OK, 12_000], GcraState(tat_ms=NOW + 18_000)),
    ("gcra 20/min: capacity 3 at once", gcra(20, MINUTE), [0, 0, 0, 0],
     [OK, OK, OK, 3_000], GcraState(tat_ms=NOW + 9_000)),
    ("gcra 9/min: burst 0", gcra(9, MINUTE), [0, 0], [OK, 6_667], GcraState(tat_ms=NOW + 6_666, tat_rem=6)),
    # "N per window": N at one instant, the N+1th dropped, all N again after period_ms.
    ("window 5/24h: 5 at once, 6th dropped; after 24 h 5 again",
     window(5, DAY), [0, 0, 0, 0, 0, 0, DAY, DAY, DAY, DAY, DAY, DAY],
     [OK, OK, OK, OK, OK, H4_8, OK, OK, OK, OK, OK, DAY + H4_8], GcraState(tat_ms=NOW + 2 * DAY)),
    ("window 5/24h: capacity refills one per 4.8 h", window(5, DAY), [0, 0, 0, 0, 0, H4_8, H4_8],
     [OK, OK, OK, OK, OK, OK, 2 * H4_8], GcraState(tat_ms=NOW + DAY + H4_8)),
    ("window 1/h equals gcra 1/h", window(1, HOUR), [0, 1, HOUR], [OK, HOUR, OK],
     GcraState(tat_ms=NOW + 2 * HOUR)),
    # T = 333⅓ ms: exact ticks; a whole-ms TAT rounded up per admission would drop the 3rd.
    ("window 3/s, fractional T", window(3, SECOND), [0, 0, 0, 0, 333, 334, 334],
     [OK, OK, OK, 334, 334, OK, 667], GcraState(tat_ms=NOW + 1_333, tat_rem=1)),
    ("window 3/s: after one period all 3 again", window(3, SECOND), [0, 0, 0, 1_000, 1_000, 1_000, 1_000],
     [OK, OK, OK, OK, OK, OK, 1_334], GcraState(tat_ms=NOW + 2_000)),
    # The boundary is inclusive: TAT - now == burst * T admits.
    ("gcra 10/min: TAT - now == burst*T admits, 1 ms earlier drops", gcra(10, MINUTE), [0, 0, 5_999, 6_000],
     [OK, OK, 6_000, OK], GcraState(tat_ms=NOW + 18_000)),
    ("clock steps back: dropped, the wait lengthens by the step", gcra(1, HOUR), [0, -10 * SECOND, HOUR],
     [OK, HOUR, OK], GcraState(tat_ms=NOW + 2 * HOUR)),
]


@pytest.mark.parametrize(("config", "offsets", "expected", "final"),
                         [case[1:] for case in SEQUENCES], ids=[case[0] for case in SEQUENCES])
def test_sequences(config: RateLimit, offsets: list[int], expected: list[object], final: GcraState) -> None:
    assert run(config, offsets) == (expected, final)


def test_window_2000_per_second_sub_ms_emission() -> None:
    """T = 0.5 ms: a whole-ms TAT cannot count these; ticks of 1/limit ms can."""
    config = window(2000, SECOND)
    out, state = run(config, [0] * 2001)
    assert out == [OK] * 2000 + [1]
    assert state == GcraState(tat_ms=NOW + 1_000)
    assert run(config, [1, 1, 1], state) == ([OK, OK, 2], GcraState(tat_ms=NOW + 1_001))


def test_window_limit_per_window_from_empty_for_many_limits() -> None:
    for limit in (1, 2, 3, 7, 10, 99, 1000):
        for period in (1, 7, SECOND, HOUR, DAY):
            out, _ = run(window(limit, period), [0] * (limit + 1))
            assert out[:limit] == [OK] * limit and out[limit] != OK, (limit, period)
            out, state = run(window(limit, period), [0] * limit)
            assert run(window(limit, period), [period] * limit, state)[0] == [OK] * limit, (limit, period)


SINGLE = [
    ("no state admits", None, 0, gcra(1, HOUR),
     RateDecision(GcraState(tat_ms=NOW + HOUR), admitted=True, changed=True)),
    ("stale state (TAT < now) is the same as none", GcraState(tat_ms=NOW - 5), 0, gcra(1, HOUR),
     RateDecision(GcraState(tat_ms=NOW + HOUR), admitted=True, changed=True)),
    ("TAT == now is the same as none", GcraState(tat_ms=NOW), 0, gcra(1, HOUR),
     RateDecision(GcraState(tat_ms=NOW + HOUR), admitted=True, changed=True)),
    ("TAT 1 tick past now, burst 0: dropped, retry at ceil(TAT)", GcraState(tat_ms=NOW, tat_rem=1), 0,
     gcra(3, SECOND), RateDecision(GcraState(tat_ms=NOW, tat_rem=1), admitted=False, retry_at_ms=NOW + 1)),
    ("TAT in the future: admitted adds T to the TAT, not to now", GcraState(tat_ms=NOW + 3_000), 0,
     gcra(10, MINUTE), RateDecision(GcraState(tat_ms=NOW + 9_000), admitted=True, changed=True)),
    # limit lowered from 3 to 2 since the state was written: tat_rem=2 no longer fits → round up.
    ("tat_rem >= limit rounds the TAT up to the next ms (admit)", GcraState(tat_ms=NOW + 100, tat_rem=2), 101,
     gcra(2, SECOND), RateDecision(GcraState(tat_ms=NOW + 601), admitted=True, changed=True)),
    ("tat_rem >= limit rounds the TAT up to the next ms (drop)", GcraState(tat_ms=NOW + 100, tat_rem=2), 100,
     gcra(2, SECOND), RateDecision(GcraState(tat_ms=NOW + 100, tat_rem=2), admitted=False,
                                   retry_at_ms=NOW + 101)),
    # period shortened 24 h → 1 min: the TAT written under the old config is honoured as written.
    ("a TAT from an older, longer period is honoured", GcraState(tat_ms=NOW + DAY), 1, gcra(1, MINUTE),
     RateDecision(GcraState(tat_ms=NOW + DAY), admitted=False, retry_at_ms=NOW + DAY)),
]


@pytest.mark.parametrize(("state", "offset", "config", "expected"),
                         [case[1:] for case in SINGLE], ids=[case[0] for case in SINGLE])
def test_single_decisions(state: GcraState | None, offset: int, config: RateLimit,
                          expected: RateDecision) -> None:
    assert decide(state, NOW + offset, config) == expected


@pytest.mark.parametrize(("state", "expected"), [
    (GcraState(tat_ms=NOW), NOW),
    (GcraState(tat_ms=NOW, tat_rem=1), NOW + 1),
    (GcraState(tat_ms=NOW, tat_rem=999_999), NOW + 1),
])
def test_state_expires_at_is_ceil_of_the_tat(state: GcraState, expected: int) -> None:
    assert state_expires_at(state) == expected


@pytest.mark.parametrize("config", [gcra(1, HOUR), gcra(3, SECOND), gcra(25, MINUTE), window(3, SECOND),
                                    window(2000, SECOND)])
def test_state_at_its_expiry_decides_like_no_state(config: RateLimit) -> None:
    _, state = run(config, [0, 0, 0])
    assert state is not None
    at = state_expires_at(state)
    assert decide(state, at, config) == decide(None, at, config)
    assert decide(state, at - 1, config) != decide(None, at - 1, config)


@pytest.mark.parametrize(("config", "offset"), [(gcra(1, HOUR), 0), (gcra(1, HOUR), 1), (window(3, SECOND), 0)])
def test_decide_never_mutates_the_state_passed_in(config: RateLimit, offset: int) -> None:
    state = GcraState(tat_ms=NOW + 1, tat_rem=0)
    before = state.model_dump()
    for now in (NOW, NOW + offset, NOW + HOUR):
        decide(state, now, config)
    assert state.model_dump() == before
    with pytest.raises(Exception):
        state.tat_ms = 0  # type: ignore[misc]  # frozen


def test_state_is_json() -> None:
    state = GcraState(tat_ms=NOW + 1_333, tat_rem=1)
    assert state.model_dump_json() == f'{{"tat_ms":{NOW + 1_333},"tat_rem":1}}'
    assert GcraState.model_validate_json(state.model_dump_json()) == state
    assert GcraState.model_validate_json(f'{{"tat_ms":{NOW}}}') == GcraState(tat_ms=NOW, tat_rem=0)


@pytest.mark.parametrize(("function_key", "key_value", "expected"), [
    ("shop/welcome", None, "rl/shop/welcome/"),
    ("shop/welcome", "false", None),
    ("shop/welcome", "true", "rl/shop/welcome/5ffe533b830f08a0326348a9160afafc8ada44db"),
    ("shop/welcome", "user-1", "rl/shop/welcome/9dfffe450852c20c8876f6e5a37da6e469bf2c9c"),
    ("shop/welcome", "", "rl/shop/welcome/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ("shop/welcome", "日本", "rl/shop/welcome/44da6bbcf285cdb317aa91174217990d1b94d64d"),
    ("shop/welcome", "a/b", "rl/shop/welcome/3ec69c85a4ff96830024afeef2d4e512181c8f7b"),
])
def test_rate_limit_key_layout(function_key: str, key_value: str | None, expected: str | None) -> None:
    assert rate_limit_key(function_key, key_value) == expected
