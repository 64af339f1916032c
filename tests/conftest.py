"""Shared fixtures. The Kafka broker comes from, in order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` (or ``SLUICEGATE_BOOTSTRAP_SERVERS``) if set;
2. testcontainers' Kafka module if a Docker engine answers;
3. the project's own launcher (:mod:`sluicegate.local_broker`), which fetches Apache Kafka
   from Maven Central once and runs it as a local Java process.

One broker per test session; each session uses its own topic prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("SLUICEGATE_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if _docker_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.kafka import KafkaContainer

        # cp-kafka 7.9 is Apache Kafka 3.9, the version the launcher runs (see README)
        container = KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft()
        container.with_env("KAFKA_MESSAGE_MAX_BYTES", "52428800")
        with container:
            yield container.get_bootstrap_server()
        return
    from sluicegate.local_broker import LocalBroker

    broker = LocalBroker().start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def session_prefix() -> str:
    return f"sgtest{uuid.uuid4().hex[:8]}"
