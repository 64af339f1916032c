"""The worker's work-queue consumer settings (sdk/worker.py, ``consumer_config``)."""

from __future__ import annotations

import pytest

from sluicegate.sdk.worker import FETCH_WAIT_MAX_MS, consumer_config


@pytest.mark.parametrize(("key", "expected"), [
    ("bootstrap.servers", "127.0.0.1:9092"),
    ("group.id", "sluicegate-worker.shop"),
    ("enable.auto.offset.store", False),  # an offset is stored only once the job's outcome is acked
    ("enable.auto.commit", True),         # ... and committed from the stored ones
    ("auto.offset.reset", "earliest"),    # a new group reads the jobs dispatched before it joined
    ("session.timeout.ms", 10_000),
    ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS),
])
def test_consumer_config(key: str, expected: object) -> None:
    assert consumer_config("127.0.0.1:9092", "sluicegate-worker.shop", 10_000)[key] == expected


@pytest.mark.parametrize(("session_ms", "heartbeat_ms"), [
    (10_000, 1000),  # at most once a second
    (6_000, 1000),
    (2_400, 800),    # a third of a short session
    (1_500, 500),
])
def test_heartbeat_interval_is_a_third_of_the_session_at_most_a_second(session_ms: int, heartbeat_ms: int) -> None:
    assert consumer_config("b:9092", "g", session_ms)["heartbeat.interval.ms"] == heartbeat_ms


def test_an_idle_worker_asks_the_broker_at_most_a_few_times_a_second() -> None:
    # the broker answers a held fetch when a record arrives, so a long wait costs no latency;
    # a short one cost an idle worker 100 fetches/s (17-30 % of a broker core on this VM)
    assert 200 <= FETCH_WAIT_MAX_MS <= 1000
