"""Topic layout and creation (confluent-kafka AdminClient)."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import KafkaException

from .settings import Settings

MAX_MESSAGE_BYTES = str(48 * 1024 * 1024)


def core_topics(s: Settings) -> list[NewTopic]:
    rf = s.replication_factor
    return [
        NewTopic(s.events_topic, s.partitions, rf, config={
            "retention.ms": str(s.events_retention_ms), "max.message.bytes": MAX_MESSAGE_BYTES}),
        NewTopic(s.commands_topic, s.partitions, rf, config={"max.message.bytes": MAX_MESSAGE_BYTES}),
        NewTopic(s.results_topic, s.partitions, rf, config={"max.message.bytes": MAX_MESSAGE_BYTES}),
        NewTopic(s.runs_topic, s.partitions, rf, config={
            "cleanup.policy": "compact", "max.message.bytes": MAX_MESSAGE_BYTES}),
        NewTopic(s.registry_topic, 1, rf, config={"cleanup.policy": "compact"}),
        NewTopic(s.keys_topic, 1, rf, config={"cleanup.policy": "compact"}),
        # per-function backlog / in-flight figures from the dispatchers (the API's queue view)
        NewTopic(s.topic("stats"), 1, rf, config={"cleanup.policy": "compact"}),
    ]


def work_topic(s: Settings, app_id: str) -> NewTopic:
    return NewTopic(s.work_topic(app_id), s.partitions, s.replication_factor,
                    config={"max.message.bytes": MAX_MESSAGE_BYTES})


def admin(s: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": s.bootstrap_servers, "log_level": 3})


def create_topics(s: Settings, topics: list[NewTopic], timeout: float = 30.0) -> None:
    """Create what is missing; an existing topic must have the expected partition count."""
    client = admin(s)
    existing = client.list_topics(timeout=timeout).topics
    missing = [t for t in topics if t.topic not in existing]
    for t in topics:
        if t.topic in existing and len(existing[t.topic].partitions) != t.num_partitions:
            raise RuntimeError(
                f"topic {t.topic} has {len(existing[t.topic].partitions)} partitions, "
                f"expected {t.num_partitions} (SLUICEGATE_PARTITIONS must match every topic)"
            )
    if not missing:
        return
    for name, fut in client.create_topics(missing, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise


def ensure_core_topics(s: Settings) -> None:
    create_topics(s, core_topics(s))
    apply_events_retention(s)


def apply_events_retention(s: Settings, timeout: float = 30.0) -> bool:
    """Make ``sg.events`` keep events for ``SLUICEGATE_EVENTS_RETENTION_MS`` (the replay
    window) even if the topic existed with another value; True when it was changed."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    client = admin(s)
    resource = ConfigResource(ConfigResource.Type.TOPIC, s.events_topic)
    current = client.describe_configs([resource])[resource].result(timeout)
    wanted = str(s.events_retention_ms)
    entry = current.get("retention.ms")
    if entry is not None and entry.value == wanted:
        return False
    change = ConfigResource(ConfigResource.Type.TOPIC, s.events_topic, incremental_configs=[
        ConfigEntry("retention.ms", wanted, incremental_operation=AlterConfigOpType.SET)])
    client.incremental_alter_configs([change])[change].result(timeout)
    return True


def ensure_work_topic(s: Settings, app_id: str) -> None:
    create_topics(s, [work_topic(s, app_id)])
