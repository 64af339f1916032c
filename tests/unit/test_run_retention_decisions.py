"""Run retention decisions (``processors/run_retention.py``): when an ended run may go, which
expiry entries are due (in their RocksDB key order, bounded per command), the entry's key
layout, and the lane its housekeeping command waits in."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.processors.intake_lanes import HOUSEKEEPING, command_lane, is_background
from sluicegate.processors.run_retention import due_entries, expires_at
from sluicegate.state import codecs
from sluicegate.state.run_state import RunState
from sluicegate.wire import EventTrigger, ExpireRuns, FunctionDefinition

NOW = 1_700_000_000_000
DAY = 24 * 3600 * 1000
FN = FunctionDefinition(app_id="shop", function_id="f", name="f", triggers=[EventTrigger(event="e")], retries=0,
                        version="v1")
OFFSET_KEY = b"__faust\x00offset__"  # faust's own key in every partition's RocksDB


def run(status: str, ended_at: int | None = None, created_at: int = NOW - 5 * DAY) -> RunState:
    return RunState(run_id="r1", app_id="shop", function_id="f", function=FN, status=status,  # type: ignore[arg-type]
                    events=[], event_ids=[], created_at=created_at, ended_at=ended_at)


@pytest.mark.parametrize(("state", "retention", "expected"), [
    pytest.param(run("completed", NOW), DAY, NOW + DAY, id="completed-a-day-after-it-ended"),
    pytest.param(run("failed", NOW), 7 * DAY, NOW + 7 * DAY, id="failed"),
    pytest.param(run("cancelled", NOW), 1000, NOW + 1000, id="cancelled-short-retention"),
    pytest.param(run("skipped", NOW), DAY, NOW + DAY, id="skipped"),
    pytest.param(run("skipped", None, created_at=NOW), DAY, NOW + DAY, id="no-end-time-counts-from-creation"),
    pytest.param(run("running"), 1000, None, id="running-never-however-old"),
    pytest.param(run("queued"), 1000, None, id="queued-never"),
])
def test_expires_at(state: RunState, retention: int, expected: int | None) -> None:
    assert expires_at(state, retention) == expected


def key(at: int, run_id: str) -> bytes:
    return codecs.expiry_key(at, run_id)


ENTRIES = sorted([key(NOW - 10, "a"), key(NOW - 10, "b"), key(NOW, "c"), key(NOW + 1, "d"), key(NOW + DAY, "e")])


@pytest.mark.parametrize(("keys", "now", "limit", "due", "more"), [
    pytest.param([], NOW, 10, [], False, id="none"),
    pytest.param([OFFSET_KEY], NOW, 10, [], False, id="only-fausts-offset-key"),
    pytest.param(ENTRIES, NOW - 11, 10, [], False, id="all-later"),
    pytest.param(ENTRIES, NOW, 10, ["a", "b", "c"], False, id="due-at-or-before-now-in-key-order"),
    pytest.param(ENTRIES, NOW, 2, ["a", "b"], True, id="more-due-than-the-limit"),
    pytest.param(ENTRIES, NOW, 3, ["a", "b", "c"], False, id="exactly-the-limit"),
    pytest.param(ENTRIES, NOW + DAY, 10, ["a", "b", "c", "d", "e"], False, id="all-due"),
    pytest.param([*ENTRIES, OFFSET_KEY], NOW + DAY, 10, ["a", "b", "c", "d", "e"], False, id="offset-key-skipped"),
    pytest.param(ENTRIES, NOW, 1, ["a"], True, id="peek-one"),
])
def test_due_entries(keys: list[bytes], now: int, limit: int, due: list[str], more: bool) -> None:
    got, got_more = due_entries(iter(keys), now, limit)
    assert [run_id for _k, run_id in got] == due
    assert all(k == codecs.expiry_key(codecs.parse_expiry_key(k)[0], r) for k, r in got)  # type: ignore[index]
    assert got_more is more


def test_due_entries_stops_reading_at_the_first_later_entry() -> None:
    read: list[bytes] = []

    def keys() -> Any:
        for k in ENTRIES:
            read.append(k)
            yield k
    due_entries(keys(), NOW, 10)
    assert read == ENTRIES[:4]  # a, b, c due; d is later: nothing after it is read


@pytest.mark.parametrize(("at", "run_id", "expected"), [
    (0, "r", b"\x00" * 8 + b"r"),
    (NOW, "01ABC", NOW.to_bytes(8, "big") + b"01ABC"),
])
def test_expiry_key_layout(at: int, run_id: str, expected: bytes) -> None:
    assert codecs.expiry_key(at, run_id) == expected
    assert codecs.parse_expiry_key(expected) == (at, run_id)


def test_expiry_keys_sort_by_time_first() -> None:
    assert codecs.expiry_key(NOW, "zzz") < codecs.expiry_key(NOW + 1, "aaa") < OFFSET_KEY


@pytest.mark.parametrize("other", [OFFSET_KEY, b"", b"\x00" * 8])
def test_a_key_of_another_layout_is_not_an_expiry_entry(other: bytes) -> None:
    assert codecs.parse_expiry_key(other) is None


def test_expiry_key_rejects_negative_time() -> None:
    with pytest.raises(ValueError):
        codecs.expiry_key(-1, "r")


def test_expiring_runs_waits_behind_live_new_work() -> None:
    assert command_lane(ExpireRuns(partition=2)) == HOUSEKEEPING
    assert is_background(HOUSEKEEPING)
