"""The processor's librdkafka-backed faust producer (processors/rdkafka_producer.py) on a real
broker: table changelog records resolve faust's futures with their offsets and run their
callbacks, ``flush`` returns only when the broker has every record, and a record that
cannot be produced reaches the failure hook (the processor stops there)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import faust
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sluicegate.processors import rdkafka_producer
from sluicegate.processors.rdkafka_producer import RdKafkaProducer


def _topic(bootstrap: str, partitions: int = 2) -> str:
    name = f"sgtest-producer-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(30)
    return name


def _read(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int, bytes, bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[tuple[int, int, bytes, bytes]] = []
        want = sum(ends.values())
        while len(out) < want:
            msg = c.poll(5.0)
            assert msg is not None, f"read {len(out)} of {want} records"
            assert msg.error() is None, msg.error()
            out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
        return out
    finally:
        c.close()


async def _with_producer(bootstrap: str, body: Any) -> Any:
    app = faust.App(f"sgtest-producer-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}",
                    producer_acks=-1, web_enabled=False)
    rdkafka_producer.install(app)
    producer = app.producer
    assert isinstance(producer, RdKafkaProducer)
    await producer.start()
    try:
        return await body(app, producer)
    finally:
        await producer.stop()


def test_changelog_records_resolve_with_their_offsets_and_run_their_callbacks(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    called: list[Any] = []

    async def body(app: faust.App, producer: RdKafkaProducer) -> list[Any]:
        t = app.topic(topic, key_serializer="raw", value_serializer="raw")
        futs = [t.as_future_message(key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 2,
                                    callback=called.append) for i in range(6)]
        for fut in futs:
            producer.send_soon(fut)  # what a table write does
        await producer.flush()
        assert producer.outstanding() == 0
        return [await asyncio.wait_for(fut, 5) for fut in futs]

    results = asyncio.run(_with_producer(kafka_bootstrap, body))
    assert [(r.topic, r.partition, r.offset) for r in results] == \
        [(topic, 0, 0), (topic, 1, 0), (topic, 0, 1), (topic, 1, 1), (topic, 0, 2), (topic, 1, 2)]
    assert all(r.topic_partition == (topic, r.partition) for r in results)
    assert len(called) == 6 and all(f.done() for f in called)
    stored = sorted(_read(kafka_bootstrap, topic, 2))
    assert [(p, o, k) for p, o, k, _v in stored] == \
        [(0, 0, b"k0"), (0, 1, b"k2"), (0, 2, b"k4"), (1, 0, b"k1"), (1, 1, b"k3"), (1, 2, b"k5")]


def test_flush_returns_only_when_the_broker_has_every_record_in_order(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    n = 5000

    async def body(app: faust.App, producer: RdKafkaProducer) -> int:
        for i in range(n):
            producer.produce(topic, b"k", str(i).encode(), i % 2)
        await producer.flush()
        return producer.outstanding()

    assert asyncio.run(_with_producer(kafka_bootstrap, body)) == 0
    stored = _read(kafka_bootstrap, topic, 2)
    assert len(stored) == n
    for p in (0, 1):  # one partition's records keep the order they were produced in
        values = [int(v) for part, _o, _k, v in sorted(stored) if part == p]
        assert values == list(range(p, n, 2))


def test_faust_send_returns_a_future_of_the_record_metadata(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)

    async def body(app: faust.App, producer: RdKafkaProducer) -> Any:
        fut = await producer.send(topic, b"k", b"v", 1, None, {"h": b"1"})
        return await asyncio.wait_for(fut, 10)

    meta = asyncio.run(_with_producer(kafka_bootstrap, body))
    assert (meta.topic, meta.partition, meta.offset) == (topic, 1, 0)


def test_a_record_that_cannot_be_produced_reaches_the_failure_hook(kafka_bootstrap: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    topic = _topic(kafka_bootstrap, partitions=1)
    failures: list[tuple[str, Any]] = []
    monkeypatch.setattr(RdKafkaProducer, "_on_failure", staticmethod(lambda t, err: failures.append((t, err))))

    async def body(app: faust.App, producer: RdKafkaProducer) -> None:
        producer.produce(topic, b"k", b"fine", 0)
        producer.produce(topic, b"k", b"lost", 7)  # the topic has one partition
        await asyncio.wait_for(producer.flush(), 30)

    asyncio.run(_with_producer(kafka_bootstrap, body))
    assert [t for t, _err in failures] == [topic]
    assert "partition" in str(failures[0][1]).lower()
    assert [v for _p, _o, _k, v in _read(kafka_bootstrap, topic, 1)] == [b"fine"]


def test_a_flush_waits_for_the_records_before_it_not_for_those_produced_after(kafka_bootstrap: str) -> None:
    # a busy processor never stops producing; faust flushes before each commit, and a flush
    # that waited for a pause would hold every commit back
    topic = _topic(kafka_bootstrap, partitions=1)

    async def body(app: faust.App, producer: RdKafkaProducer) -> tuple[int, int, bool]:
        for i in range(100):
            producer.produce(topic, b"k", b"before", 0)
        stop = asyncio.Event()
        produced_after = 0

        async def keep_producing() -> None:
            nonlocal produced_after
            while not stop.is_set() and produced_after < 200_000:
                for _ in range(20):
                    producer.produce(topic, b"k", b"after", 0)
                    produced_after += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(keep_producing())
        await asyncio.sleep(0)
        await producer.flush()
        still_producing = not task.done()
        stop.set()
        await task
        await producer.flush()
        return produced_after, producer.outstanding(), still_producing

    produced_after, outstanding, still_producing = asyncio.run(_with_producer(kafka_bootstrap, body))
    assert still_producing, "the flush waited until records stopped coming"
    assert outstanding == 0
    assert len(_read(kafka_bootstrap, topic, 1)) == 100 + produced_after
