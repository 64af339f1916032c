"""Key layouts of ``sluicegate.state.codecs``, pinned byte for byte.

These bytes live on disk and in changelogs: if one of these tests fails, the change needs a
migration, not a new expected value.
"""

from __future__ import annotations

import random

import pytest

from sluicegate.state import codecs


@pytest.mark.parametrize(("due_ms", "timer_id", "expected"), [
    (0, "", b"\x00" * 8),
    (1, "a", b"\x00" * 7 + b"\x01a"),
    (255, "t", b"\x00" * 7 + b"\xfft"),
    (256, "t", b"\x00" * 6 + b"\x01\x00t"),
    (2**32, "t", b"\x00\x00\x00\x01\x00\x00\x00\x00t"),
    (1_700_000_000_000, "run-1.0:1", bytes.fromhex("0000018bcfe56800") + b"run-1.0:1"),
    (2**64 - 1, "x", b"\xff" * 8 + b"x"),
    (5, "é", b"\x00" * 7 + b"\x05\xc3\xa9"),  # the id is UTF-8
])
def test_timer_key_layout(due_ms: int, timer_id: str, expected: bytes) -> None:
    assert codecs.timer_key(due_ms, timer_id) == expected
    assert codecs.parse_timer_key(expected) == (due_ms, timer_id)


@pytest.mark.parametrize("due_ms", [-1, -1_700_000_000_000])
def test_timer_key_rejects_negative_time(due_ms: int) -> None:
    with pytest.raises(ValueError, match="due_ms"):
        codecs.timer_key(due_ms, "t")


def test_sorting_timer_keys_by_bytes_sorts_by_due_time() -> None:
    # Times chosen so that decimal-string order, or id order, would give a different answer.
    timers = [(9, "z"), (10, "a"), (255, "y"), (256, "b"), (99_999, "x"), (100_000, "c"),
              (2**40, "w"), (1_700_000_000_000, "d"), (1_700_000_000_000, "e"), (2**63, "v")]
    shuffled = timers[:]
    random.Random(7).shuffle(shuffled)
    keys = sorted(codecs.timer_key(t, i) for t, i in shuffled)
    assert [codecs.parse_timer_key(k) for k in keys] == timers


@pytest.mark.parametrize(("key", "expected"), [
    (codecs.run_key("run-1"), b"r/run-1"),
    (codecs.run_key("01HZ"), b"r/01HZ"),
    (codecs.event_run_key("ev1", "run-1"), b"e/ev1\x00run-1"),
    (codecs.event_runs_prefix("ev1"), b"e/ev1\x00"),
    (codecs.offset_key(0), b"o/\x00\x00\x00\x00"),
    (codecs.offset_key(258), b"o/\x00\x00\x01\x02"),
    (codecs.offset_key(2**32 - 1), b"o/\xff\xff\xff\xff"),
    (codecs.encode_offset(0), b"\x00" * 8),
    (codecs.encode_offset(1), b"\x00" * 7 + b"\x01"),
    (codecs.encode_offset(2**40 + 5), b"\x00\x00\x01\x00\x00\x00\x00\x05"),
])
def test_run_view_key_layouts(key: bytes, expected: bytes) -> None:
    assert key == expected


@pytest.mark.parametrize(("event_id", "run_id"), [
    ("ev1", "run-1"),
    ("01HZX3", "shop.welcome.abc=="),
    ("e", "r/with/slashes"),
])
def test_event_run_key_round_trip_and_prefix(event_id: str, run_id: str) -> None:
    key = codecs.event_run_key(event_id, run_id)
    assert key.startswith(codecs.event_runs_prefix(event_id))
    assert codecs.run_id_from_event_run_key(key) == run_id


@pytest.mark.parametrize(("event_id", "other_event_id"), [("ev1", "ev10"), ("ab", "abc"), ("a", "a/")])
def test_event_prefix_does_not_match_an_event_id_it_prefixes(event_id: str, other_event_id: str) -> None:
    other = codecs.event_run_key(other_event_id, "run-1")
    assert not other.startswith(codecs.event_runs_prefix(event_id))


@pytest.mark.parametrize("offset", [0, 1, 255, 256, 2**31, 2**63 - 1])
def test_offset_round_trip(offset: int) -> None:
    assert codecs.decode_offset(codecs.encode_offset(offset)) == offset


def test_local_broker_cluster_ids_never_look_like_an_option() -> None:
    from sluicegate.local_broker import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]
    assert all(len(c) == 22 and not c.startswith("-") for c in ids)
    assert len(set(ids)) == len(ids)
