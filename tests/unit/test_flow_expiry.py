"""Which flow-control records the processor may delete, and the bounded sweep that finds them
(``processors/flow/expiry.py``): each record kind's expiry, records never judged by time,
undecodable ones, the slice limit and the cursor."""

from __future__ import annotations

import pytest

from sluicegate.processors.flow import idempotency as idem
from sluicegate.processors.flow import rate_limit as rl
from sluicegate.processors.flow.expiry import expires_at, sweep
from sluicegate.processors.intake_lanes import HOUSEKEEPING, command_lane
from sluicegate.wire import SweepFlow

NOW = 1_700_000_000_000
DAY = 24 * 3600 * 1000
FK = "shop/checkout"


def gcra(tat_ms: int, rem: int = 0) -> bytes:
    return rl.GcraState(tat_ms=tat_ms, tat_rem=rem).model_dump_json().encode()


def seen(at: int) -> bytes:
    return idem.IdempotencyState(first_seen_ms=at).model_dump_json().encode()


@pytest.mark.parametrize(("key", "value", "expected"), [
    pytest.param(f"rl/{FK}/".encode(), gcra(NOW), NOW, id="rate-limit-at-its-tat"),
    pytest.param(f"rl/{FK}/{'a' * 40}".encode(), gcra(NOW, 3), NOW + 1, id="rate-limit-tat-rounded-up"),
    pytest.param(f"th/{FK}/".encode(), gcra(NOW + 500), NOW + 500, id="throttle"),
    pytest.param(f"idem/{FK}/{'b' * 40}".encode(), seen(NOW), NOW + DAY, id="idempotency-24h"),
    pytest.param(f"dedup/{FK}/ev-1".encode(), seen(NOW), NOW + DAY, id="event-dedup-24h"),
    pytest.param(f"deb/{FK}/{'c' * 40}".encode(), b'{"anything": 1}', None, id="debounce-group-never"),
    pytest.param(f"batch/{FK}/{'c' * 40}".encode(), b"{}", None, id="batch-group-never"),
    pytest.param(f"seen/deb/{FK}/{'c' * 40}".encode(), b'{"at": %d, "ids": ["e1"]}' % NOW, NOW + DAY,
                 id="seen-ids-a-day-after-the-last"),
    pytest.param(f"seen/batch/{FK}/{'c' * 40}".encode(), b'["e1"]', None, id="seen-ids-without-a-time-never"),
    pytest.param(f"seen/deb/{FK}/x".encode(), b'{"ids": ["e1"]}', None, id="seen-ids-time-missing-never"),
    pytest.param(f"singleton/{FK}/".encode(), b'{"run_id": "r"}', None, id="singleton-lock-never"),
    pytest.param(f"cron/{FK}/{'d' * 40}".encode(), b"{}", None, id="cron-never"),
    pytest.param(b"__faust\x00offset__", b"17", None, id="fausts-offset-key"),
    pytest.param(f"rl/{FK}/".encode(), b"not json", None, id="undecodable-left-alone"),
    pytest.param(f"idem/{FK}/x".encode(), b'{"first_seen_ms": "soon"}', None, id="invalid-left-alone"),
])
def test_expires_at(key: bytes, value: bytes, expected: int | None) -> None:
    assert expires_at(key, value) == expected


def test_an_expired_gcra_state_decides_exactly_like_no_state() -> None:
    """Why deleting it is safe: from its expiry on, the next decision is the same either way."""
    config = rl.RateLimit(limit=3, period_ms=60_000, mode="window")
    state = rl.GcraState(tat_ms=NOW, tat_rem=2)
    at = rl.state_expires_at(state)
    for now in (at, at + 1, at + 59_999):
        assert rl.decide(state, now, config) == rl.decide(None, now, config)
    assert rl.decide(state, at - 1, config) != rl.decide(None, at - 1, config)


def test_an_expired_idempotency_record_decides_exactly_like_no_record() -> None:
    state = idem.IdempotencyState(first_seen_ms=NOW)
    at = idem.idempotency_expires_at(state)
    assert idem.decide_idempotency(state, at) == idem.decide_idempotency(None, at)
    assert idem.decide_idempotency(state, at - 1).duplicate is True


ITEMS = [
    (b"cron/x", b"{}"),                       # never
    (b"idem/a", seen(NOW - DAY)),             # expired
    (b"idem/b", seen(NOW)),                   # not yet
    (b"rl/c", gcra(NOW - 1)),                 # expired
    (b"rl/d", gcra(NOW + 1)),                 # not yet
    (b"th/e", gcra(NOW)),                     # expired (at now)
]


@pytest.mark.parametrize(("items", "limit", "deletes", "cursor"), [
    pytest.param([], 10, [], None, id="empty"),
    pytest.param(ITEMS, 10, [b"idem/a", b"rl/c", b"th/e"], None, id="whole-table-then-start-again"),
    pytest.param(ITEMS, 6, [b"idem/a", b"rl/c", b"th/e"], None, id="exactly-the-limit"),
    pytest.param(ITEMS, 3, [b"idem/a"], b"rl/c", id="a-slice-continues-at-the-first-unexamined-key"),
    pytest.param(ITEMS[3:], 3, [b"rl/c", b"th/e"], None, id="the-next-slice"),
    pytest.param(ITEMS, 1, [], b"idem/a", id="one-record-a-slice"),
])
def test_sweep(items: list[tuple[bytes, bytes]], limit: int, deletes: list[bytes], cursor: bytes | None) -> None:
    assert sweep(iter(items), NOW, limit) == (deletes, cursor)


def test_sweep_reads_no_more_than_the_slice_and_one_key() -> None:
    read: list[bytes] = []

    def items():  # type: ignore[no-untyped-def]
        for k, v in ITEMS:
            read.append(k)
            yield k, v
    sweep(items(), NOW, 2)
    assert read == [b"cron/x", b"idem/a", b"idem/b"]


def test_sweeping_waits_behind_live_new_work() -> None:
    assert command_lane(SweepFlow(partition=0)) == HOUSEKEEPING
