"""The processor's producer (processors/rdkafka_producer.py): its librdkafka settings, and
which records a flush waits for."""

from __future__ import annotations

import pytest

from sluicegate.processors.rdkafka_producer import LINGER_MS, AckMarks, rd_config


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


@pytest.mark.parametrize(("produced", "reports", "flush_mark", "done", "outstanding"), [
    pytest.param(3, [1, 2, 3], 3, True, 0, id="in-order"),
    pytest.param(3, [], 3, False, 3, id="none-reported"),
    pytest.param(3, [2, 3], 3, False, 1, id="oldest-still-out"),
    pytest.param(3, [2, 3], 0, True, 1, id="nothing-before-the-mark"),
    pytest.param(4, [3, 1], 1, True, 2, id="another-partition-overtook"),
    pytest.param(4, [3, 1], 3, False, 2, id="gap-at-2"),
    pytest.param(4, [3, 1, 2], 3, True, 1, id="gap-filled-early-ones-drop-out"),
    pytest.param(5, [1, 2], 2, True, 3, id="later-records-do-not-hold-a-flush"),
])
def test_ack_marks(produced: int, reports: list[int], flush_mark: int, done: bool, outstanding: int) -> None:
    marks = AckMarks()
    assert [marks.add() for _ in range(produced)] == list(range(1, produced + 1))
    for seq in reports:
        marks.reported(seq)
    assert marks.all_reported_up_to(flush_mark) is done
    assert marks.outstanding() == outstanding
