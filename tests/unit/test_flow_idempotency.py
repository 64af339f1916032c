"""``processors.flow.idempotency``: first-seen records for function idempotency and event-id
dedup, driven by hand. Times are offsets in ms from ``NOW``; ``T0`` is a record's first sight.
"""

from __future__ import annotations

from typing import Callable

import pytest

from sluicegate.flow_config import DAY, EVENT_DEDUP_PERIOD_MS, IDEMPOTENCY_PERIOD_MS
from sluicegate.processors.flow.idempotency import (
    IdempotencyDecision,
    IdempotencyState,
    decide_event_dedup,
    decide_idempotency,
    event_dedup_expires_at,
    event_dedup_key,
    idempotency_expires_at,
    idempotency_key,
)

NOW = 1_700_000_000_000
T0 = NOW - 1_000
SEEN = IdempotencyState(first_seen_ms=T0)

Decide = Callable[[IdempotencyState | None, int], IdempotencyDecision]
BOTH: list[tuple[str, Decide, int]] = [
    ("idempotency", decide_idempotency, IDEMPOTENCY_PERIOD_MS),
    ("event_dedup", lambda state, now: decide_event_dedup(state, now), EVENT_DEDUP_PERIOD_MS),
]


def test_both_windows_are_24_hours() -> None:
    assert IDEMPOTENCY_PERIOD_MS == EVENT_DEDUP_PERIOD_MS == DAY == 86_400_000


# (case, state, now as an offset from T0 in units of the period plus ms, expected decision)
WINDOW = [
    ("no record: admitted and recorded", None, (0, 0),
     lambda now: IdempotencyDecision(IdempotencyState(first_seen_ms=now), duplicate=False, changed=True)),
    ("same instant: duplicate", SEEN, (0, 0), lambda now: IdempotencyDecision(SEEN, duplicate=True)),
    ("1 ms later: duplicate", SEEN, (0, 1), lambda now: IdempotencyDecision(SEEN, duplicate=True)),
    ("1 ms before expiry: duplicate", SEEN, (1, -1), lambda now: IdempotencyDecision(SEEN, duplicate=True)),
    ("exactly at expiry: admitted, new record", SEEN, (1, 0),
     lambda now: IdempotencyDecision(IdempotencyState(first_seen_ms=now), duplicate=False, changed=True)),
    ("1 ms after expiry: admitted, new record", SEEN, (1, 1),
     lambda now: IdempotencyDecision(IdempotencyState(first_seen_ms=now), duplicate=False, changed=True)),
    ("long after expiry: admitted, new record", SEEN, (30, 0),
     lambda now: IdempotencyDecision(IdempotencyState(first_seen_ms=now), duplicate=False, changed=True)),
    ("clock stepped back before first sight: duplicate", SEEN, (0, -5_000),
     lambda now: IdempotencyDecision(SEEN, duplicate=True)),
    ("clock stepped back a whole period: still a duplicate", SEEN, (-1, 0),
     lambda now: IdempotencyDecision(SEEN, duplicate=True)),
]


@pytest.mark.parametrize(("decide", "period"), [(d, p) for _, d, p in BOTH], ids=[n for n, _, _ in BOTH])
@pytest.mark.parametrize(("state", "at", "expected"), [c[1:] for c in WINDOW], ids=[c[0] for c in WINDOW])
def test_window(decide: Decide, period: int, state: IdempotencyState | None, at: tuple[int, int],
                expected: Callable[[int], IdempotencyDecision]) -> None:
    now = T0 + at[0] * period + at[1]
    decision = decide(state, now)
    assert decision == expected(now)
    if decision.duplicate:
        assert decision.state is state  # a duplicate never changes (or extends) the record


@pytest.mark.parametrize(("decide", "period"), [(d, p) for _, d, p in BOTH], ids=[n for n, _, _ in BOTH])
def test_a_stream_of_duplicates_does_not_extend_the_window(decide: Decide, period: int) -> None:
    state: IdempotencyState | None = None
    seen: list[bool] = []
    for now in (T0, T0 + 1, T0 + period // 2, T0 + period - 1, T0 + period, T0 + period + 1, T0 + 2 * period):
        decision = decide(state, now)
        seen.append(decision.duplicate)
        state = decision.state
    assert seen == [False, True, True, True, False, True, False]
    assert state == IdempotencyState(first_seen_ms=T0 + 2 * period)


@pytest.mark.parametrize(("state", "expected"), [
    (None, IdempotencyDecision(None, duplicate=False)),
    (SEEN, IdempotencyDecision(SEEN, duplicate=False)),
    (IdempotencyState(first_seen_ms=T0 - 2 * DAY), IdempotencyDecision(IdempotencyState(first_seen_ms=T0 - 2 * DAY),
                                                                      duplicate=False)),
])
def test_replay_bypasses_event_dedup_and_records_nothing(state: IdempotencyState | None,
                                                         expected: IdempotencyDecision) -> None:
    decision = decide_event_dedup(state, NOW, replay=True)
    assert decision == expected
    assert decision.state is state and not decision.changed


def test_a_replay_does_not_make_a_later_delivery_a_duplicate() -> None:
    after_replay = decide_event_dedup(None, T0, replay=True).state
    assert decide_event_dedup(after_replay, T0 + 1) == IdempotencyDecision(
        IdempotencyState(first_seen_ms=T0 + 1), duplicate=False, changed=True)


def test_expiry_helpers() -> None:
    assert idempotency_expires_at(SEEN) == T0 + DAY
    assert event_dedup_expires_at(SEEN) == T0 + DAY
    assert decide_idempotency(SEEN, idempotency_expires_at(SEEN)) == decide_idempotency(None, T0 + DAY)
    assert decide_event_dedup(SEEN, event_dedup_expires_at(SEEN)) == decide_event_dedup(None, T0 + DAY)
    assert decide_idempotency(SEEN, idempotency_expires_at(SEEN) - 1).duplicate


@pytest.mark.parametrize("call", [
    lambda s: decide_idempotency(s, NOW),
    lambda s: decide_idempotency(s, NOW + 2 * DAY),
    lambda s: decide_event_dedup(s, NOW),
    lambda s: decide_event_dedup(s, NOW + 2 * DAY),
    lambda s: decide_event_dedup(s, NOW, replay=True),
], ids=["idem-dup", "idem-expired", "dedup-dup", "dedup-expired", "dedup-replay"])
def test_decide_never_mutates_the_state_passed_in(call: Callable[[IdempotencyState], IdempotencyDecision]) -> None:
    state = IdempotencyState(first_seen_ms=T0)
    before = state.model_dump()
    call(state)
    assert state.model_dump() == before == {"first_seen_ms": T0}
    with pytest.raises(Exception):
        state.first_seen_ms = 0  # type: ignore[misc]  # frozen


def test_state_is_json() -> None:
    assert SEEN.model_dump_json() == f'{{"first_seen_ms":{T0}}}'
    assert IdempotencyState.model_validate_json(SEEN.model_dump_json()) == SEEN


@pytest.mark.parametrize(("function_key", "key_value", "expected"), [
    ("shop/welcome", None, None),    # no idempotency expression
    ("shop/welcome", "false", None),  # evaluated to false: off for this event
    ("shop/welcome", "true", "idem/shop/welcome/5ffe533b830f08a0326348a9160afafc8ada44db"),
    ("shop/welcome", "user-1", "idem/shop/welcome/9dfffe450852c20c8876f6e5a37da6e469bf2c9c"),
    ("shop/welcome", "", "idem/shop/welcome/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ("shop/welcome", "日本", "idem/shop/welcome/44da6bbcf285cdb317aa91174217990d1b94d64d"),
])
def test_idempotency_key_layout(function_key: str, key_value: str | None, expected: str | None) -> None:
    assert idempotency_key(function_key, key_value) == expected


@pytest.mark.parametrize(("function_key", "event_id", "expected"), [
    ("shop/welcome", "01HZX0000000000000000000AB", "dedup/shop/welcome/01HZX0000000000000000000AB"),
    ("shop/welcome", "order-7", "dedup/shop/welcome/order-7"),
    ("shop/welcome", "a/b", "dedup/shop/welcome/a/b"),
    ("shop/other", "order-7", "dedup/shop/other/order-7"),  # per function: fan-out still works
])
def test_event_dedup_key_layout(function_key: str, event_id: str, expected: str) -> None:
    assert event_dedup_key(function_key, event_id) == expected


def test_function_idempotency_admits_exactly_like_a_rate_limit_of_1_per_24h() -> None:
    """Inngest rewrites ``idempotency`` as ``rateLimit(1, 24h, key)``: same admissions."""
    from sluicegate.flow_config import RateLimit
    from sluicegate.processors.flow import rate_limit

    config = RateLimit(limit=1, period_ms=DAY)
    idem: IdempotencyState | None = None
    gcra: rate_limit.GcraState | None = None
    offsets = [0, 1, DAY - 1, DAY, DAY, DAY + 5, 3 * DAY + 7, 4 * DAY + 6, 4 * DAY + 7, 9 * DAY]
    for offset in offsets:
        a, b = decide_idempotency(idem, T0 + offset), rate_limit.decide(gcra, T0 + offset, config)
        assert a.duplicate is not b.admitted, offset
        idem, gcra = a.state, b.state
