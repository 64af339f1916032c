"""Event input rules (``sluicegate.events``) and the partition a key maps to."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluicegate import limits
from sluicegate.errors import InvalidInput, LimitExceeded
from sluicegate.events import validate_events
from sluicegate.partitioning import function_key, murmur2, partition_for

NOW = 1_700_000_000_000
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SMALL_MAX = 100


def compact_size(item: dict[str, Any]) -> int:
    """Bytes of the event as compact UTF-8 JSON: what a sender sends and what sg.events stores."""
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())


def ulid_ms(ulid: str) -> int:
    value = 0
    for ch in ulid:
        value = value * 32 + CROCKFORD.index(ch)
    return value >> 80


# -- bad input -------------------------------------------------------------------------------

BIG = {"name": "a", "data": {"s": "x" * SMALL_MAX}}

BAD = [
    # (raw, error type, field, limit)
    pytest.param({}, InvalidInput, "name", None, id="missing-name"),
    pytest.param({"data": {}}, InvalidInput, "name", None, id="only-data"),
    pytest.param({"name": ""}, InvalidInput, "name", 1, id="empty-name"),
    pytest.param({"name": "n" * 513}, InvalidInput, "name", 512, id="name-over-512"),
    pytest.param({"name": 5}, InvalidInput, "name", None, id="name-not-a-string"),
    pytest.param({"name": "sluicegate/cron"}, InvalidInput, "name", None, id="reserved-prefix"),
    pytest.param({"name": "a\nb"}, InvalidInput, "name", None, id="control-char-in-name"),
    pytest.param({"name": "a", "data": [1, 2]}, InvalidInput, "data", None, id="data-list"),
    pytest.param({"name": "a", "data": "text"}, InvalidInput, "data", None, id="data-string"),
    pytest.param({"name": "a", "data": None}, InvalidInput, "data", None, id="data-null"),
    pytest.param({"name": "a", "user": [1]}, InvalidInput, "user", None, id="user-not-object"),
    pytest.param({"name": "a", "id": ""}, InvalidInput, "id", 1, id="empty-id"),
    pytest.param({"name": "a", "id": "i" * 129}, InvalidInput, "id", 128, id="id-over-128"),
    pytest.param({"name": "a", "id": "a b"}, InvalidInput, "id", None, id="space-in-id"),
    pytest.param({"name": "a", "id": "a\x00b"}, InvalidInput, "id", None, id="nul-in-id"),
    pytest.param({"name": "a", "ts": -1}, InvalidInput, "ts", 0, id="negative-ts"),
    pytest.param({"name": "a", "ts": "soon"}, InvalidInput, "ts", None, id="ts-not-a-number"),
    pytest.param({"name": "a", "extra": 1}, InvalidInput, "extra", None, id="unknown-field"),
    pytest.param([], InvalidInput, "body", None, id="empty-list"),
    pytest.param([{"name": "a"}] * (limits.MAX_EVENTS_PER_REQUEST + 1), LimitExceeded, "body",
                 limits.MAX_EVENTS_PER_REQUEST, id="list-over-5000"),
    pytest.param("name=a", InvalidInput, "body", None, id="string-body"),
    pytest.param(None, InvalidInput, "body", None, id="null-body"),
    pytest.param([{"name": "a"}, "b"], InvalidInput, "[1]", None, id="non-object-item"),
    pytest.param([{"name": "a"}, {"name": "b"}, {"nam": "c"}], InvalidInput, "[2].name", None,
                 id="list-missing-name"),
    pytest.param([{"name": "a"}, {"name": "a", "data": 1}], InvalidInput, "[1].data", None, id="list-bad-data"),
    pytest.param([{"name": "a", "x": 1}], InvalidInput, "[0].x", None, id="list-unknown-field"),
    pytest.param(BIG, LimitExceeded, "event", SMALL_MAX, id="event-over-max-bytes"),
    pytest.param([{"name": "a"}, BIG], LimitExceeded, "[1]", SMALL_MAX, id="list-item-over-max-bytes"),
]


@pytest.mark.parametrize(("raw", "error", "field", "limit"), BAD)
def test_bad_input_names_the_field(raw: Any, error: type[InvalidInput], field: str, limit: int | None) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_events(raw, "shop", max_event_bytes=SMALL_MAX, now_ms=NOW)
    exc = info.value
    assert type(exc) is error
    assert (exc.field, exc.limit) == (field, limit)
    assert exc.message.startswith(f"{field}: ")
    assert exc.to_dict() == {"code": error.code, "message": exc.message, "field": field, "limit": limit}


def test_limit_exceeded_is_invalid_input_with_its_own_code() -> None:
    assert issubclass(LimitExceeded, InvalidInput)
    assert (InvalidInput.code, LimitExceeded.code) == ("invalid_input", "limit_exceeded")


@pytest.mark.parametrize("name", ["a", "n" * 512, "sluicegate", "sluicegate.cron", "app/sluicegate/x", "é"])
def test_good_names(name: str) -> None:
    assert [r.name for r in validate_events({"name": name}, "shop", now_ms=NOW)] == [name]


@pytest.mark.parametrize("extra", [0, 1])
def test_event_size_boundary_is_inclusive(extra: int) -> None:
    item = {"name": "a", "data": {"s": "x" * 40}}
    size = compact_size(item)
    if extra == 0:
        assert len(validate_events(item, "shop", max_event_bytes=size, now_ms=NOW)) == 1
    else:
        with pytest.raises(LimitExceeded) as info:
            validate_events(item, "shop", max_event_bytes=size - 1, now_ms=NOW)
        assert f"event is {size} bytes" in info.value.message


@pytest.mark.parametrize("text", ["é" * 30, "日本" * 10, "😀" * 15], ids=["latin", "cjk", "emoji"])
def test_event_size_counts_utf8_bytes_not_ascii_escapes(text: str) -> None:
    # Under the limit as UTF-8 JSON (what is sent and stored), but 2-3x over it if non-ASCII
    # characters are counted as their \\uXXXX escapes.
    item = {"name": "a", "data": {"s": text}}
    assert compact_size(item) <= SMALL_MAX < len(json.dumps(item, separators=(",", ":")))
    records = validate_events(item, "shop", max_event_bytes=SMALL_MAX, now_ms=NOW)
    assert records[0].data == {"s": text}


# -- good input ------------------------------------------------------------------------------


def test_single_event_gets_ulid_and_now_as_ts() -> None:
    [rec] = validate_events({"name": "user.created", "data": {"id": 1}}, "shop", now_ms=NOW)
    assert (rec.app_id, rec.name, rec.data, rec.ts, rec.received_at, rec.user, rec.v) == (
        "shop", "user.created", {"id": 1}, NOW, NOW, None, None)
    assert len(rec.id) == 26 and set(rec.id) <= set(CROCKFORD)
    assert ulid_ms(rec.id) == NOW


def test_list_gets_distinct_ids() -> None:
    records = validate_events([{"name": "a"}] * 50, "shop", now_ms=NOW)
    assert len({r.id for r in records}) == 50
    assert all(len(r.id) == 26 and ulid_ms(r.id) == NOW for r in records)


@pytest.mark.parametrize(("given", "expected_id", "expected_ts"), [
    ({"id": "order-42"}, "order-42", NOW),
    ({"ts": 0}, None, 0),
    ({"ts": 1_600_000_000_000}, None, 1_600_000_000_000),
    ({"id": "x", "ts": 5}, "x", 5),
    ({"id": "i" * 128}, "i" * 128, NOW),
])
def test_given_id_and_ts_are_kept(given: dict[str, Any], expected_id: str | None, expected_ts: int) -> None:
    [rec] = validate_events({"name": "a", **given}, "shop", now_ms=NOW)
    assert rec.ts == expected_ts and rec.received_at == NOW
    if expected_id is None:
        assert len(rec.id) == 26
    else:
        assert rec.id == expected_id


def test_user_and_version_are_kept() -> None:
    [rec] = validate_events({"name": "a", "user": {"email": "a@b"}, "v": "2024-01"}, "shop", now_ms=NOW)
    assert (rec.user, rec.v) == ({"email": "a@b"}, "2024-01")
    assert rec.as_payload() == {"id": rec.id, "name": "a", "data": {}, "ts": NOW, "user": {"email": "a@b"},
                                "v": "2024-01"}


def test_list_is_all_or_nothing() -> None:
    good = [{"name": "a", "id": f"e{i}"} for i in range(4)]
    assert [r.id for r in validate_events(good, "shop", now_ms=NOW)] == ["e0", "e1", "e2", "e3"]
    with pytest.raises(InvalidInput) as info:
        validate_events([*good[:2], {"name": ""}, *good[2:]], "shop", now_ms=NOW)
    assert info.value.field == "[2].name"


def test_list_of_5000_is_accepted() -> None:
    assert len(validate_events([{"name": "a"}] * limits.MAX_EVENTS_PER_REQUEST, "shop", now_ms=NOW)) == 5000


# -- partitioning ----------------------------------------------------------------------------

# Kafka's own UtilsTest values for org.apache.kafka.common.utils.Utils.murmur2 (signed int).
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


def signed32(value: int) -> int:
    assert 0 <= value < 2**32
    return value - 2**32 if value >= 2**31 else value


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2)
def test_murmur2_matches_kafka_java(key: bytes, java: int) -> None:
    assert signed32(murmur2(key)) == java


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2)
@pytest.mark.parametrize("partitions", [1, 3, 4, 12, 100])
def test_partition_for_matches_java_default_partitioner(key: bytes, java: int, partitions: int) -> None:
    expected = (java & 0x7FFFFFFF) % partitions  # Utils.toPositive(murmur2(key)) % numPartitions
    assert partition_for(key, partitions) == expected
    assert partition_for(key.decode(), partitions) == expected


@pytest.mark.parametrize(("key", "partitions", "expected"), [
    ("21", 100, 40),
    ("foobar", 4, 2),
    ("foobar", 12, 6),
    ("abc", 4, 3),
    ("a-little-bit-longer-string", 4, 3),
])
def test_partition_for_pinned(key: str, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected


def test_function_key() -> None:
    assert function_key("shop", "welcome") == "shop/welcome"
