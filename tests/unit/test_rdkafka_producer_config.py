"""The librdkafka settings of the processor's producer (processors/rdkafka_producer.py)."""

from __future__ import annotations

import pytest

from sluicegate.processors.rdkafka_producer import LINGER_MS, rd_config


@pytest.mark.parametrize(("key", "expected"), [
    ("bootstrap.servers", "127.0.0.1:9092,127.0.0.1:9093"),
    ("client.id", "proc-rd"),
    ("enable.idempotence", True),    # no duplicates or reordering on retries
    ("acks", "all"),                  # invariant 1: nothing committed past an unreplicated record
    ("message.max.bytes", 5 * 1024 * 1024),
    ("linger.ms", LINGER_MS),
    ("partitioner", "murmur2_random"),  # the Java client's partitioner, as aiokafka's
])
def test_rd_config(key: str, expected: object) -> None:
    conf = rd_config("127.0.0.1:9092,127.0.0.1:9093", "proc-rd", 5 * 1024 * 1024)
    assert conf[key] == expected


def test_linger_is_short_enough_for_the_latency_targets() -> None:
    # one hop's share of B1's p50 target (10 ms over three hops) must stay small
    assert 0 <= LINGER_MS <= 2
