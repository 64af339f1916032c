"""confluent-kafka producer and compacted-topic views shared by the SDK, ingest and processors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from .errors import BrokerUnavailable
from .partitioning import partition_for

log = logging.getLogger(__name__)


PRODUCER_DEFAULTS: dict[str, object] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 0,  # latency first; batches still form while requests are in flight
    "message.max.bytes": 48 * 1024 * 1024,
    "log_level": 3,
}


def make_producer(bootstrap: str, **extra: object) -> Producer:
    """Idempotent producer: acks=all and safe retries (invariant 1)."""
    conf: dict[str, object] = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS}
    conf.update(extra)
    return Producer(conf)


class SyncProducer:
    """A producer whose ``send_many`` returns only after the broker acknowledged every record."""

    def __init__(self, bootstrap: str) -> None:
        self._p = make_producer(bootstrap)

    def send_many(self, topic: str, records: list[tuple[str, bytes]], partitions: int, timeout: float = 30.0) -> None:
        errors: list[KafkaError] = []
        pending = [len(records)]

        def done(err: KafkaError | None, _msg: object) -> None:
            pending[0] -= 1
            if err is not None:
                errors.append(err)

        for key, value in records:
            self.produce(topic, key, value, partitions, on_delivery=done)
        deadline = time.monotonic() + timeout
        while pending[0] > 0:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"the broker did not acknowledge {pending[0]} record(s) within {timeout:.0f} s")
            self._p.poll(0.05)
        if errors:
            raise BrokerUnavailable(f"the broker refused a record: {errors[0].str()}")

    def produce(self, topic: str, key: str, value: bytes, partitions: int,
                on_delivery: Callable[[KafkaError | None, object], None]) -> None:
        """Produce without waiting; ``on_delivery`` runs in a later ``raw.poll()``."""
        while True:
            try:
                self._p.produce(topic, value=value, key=key.encode(),
                                partition=partition_for(key, partitions), on_delivery=on_delivery)
                return
            except BufferError:
                self._p.poll(0.05)

    @property
    def raw(self) -> Producer:
        return self._p

    def flush(self, timeout: float = 10.0) -> None:
        self._p.flush(timeout)


class AsyncProducer:
    """Idempotent producer for asyncio code: ``await send_many(...)`` resolves on broker ack.

    A background thread polls delivery reports and resolves futures on the loop. (The
    library's AIOProducer buffers a lone message for up to ~1 s, see the reference.)
    """

    def __init__(self, bootstrap: str) -> None:
        self._p = make_producer(bootstrap)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="sg-producer-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._p.poll(0.05)

    async def send_many(self, topic: str, records: list[tuple[str, bytes]], partitions: int, timeout: float = 30.0) -> None:
        """Send keyed records (partition chosen from the key) and wait for every ack."""
        await self.send_to(topic, [(k, v, partition_for(k, partitions)) for k, v in records], timeout)

    async def send_to(self, topic: str, records: list[tuple[str, bytes | None, int]], timeout: float = 30.0) -> None:
        """Send (key, value, partition) records and wait until the broker acknowledged all."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []

        def make_cb(fut: asyncio.Future[None]) -> Callable[[KafkaError | None, object], None]:
            def cb(err: KafkaError | None, _msg: object) -> None:
                def resolve() -> None:
                    if fut.done():
                        return
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(BrokerUnavailable(f"the broker refused a record: {err.str()}"))
                loop.call_soon_threadsafe(resolve)
            return cb

        for key, value, partition in records:
            fut: asyncio.Future[None] = loop.create_future()
            futures.append(fut)
            while True:
                try:
                    self._p.produce(topic, value=value, key=key.encode(),
                                    partition=partition, on_delivery=make_cb(fut))
                    break
                except BufferError:
                    await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except asyncio.TimeoutError as exc:
            raise BrokerUnavailable(f"the broker did not acknowledge within {timeout:.0f} s") from exc

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._p.flush(5)
        del self._p  # release librdkafka's handle now (it would keep reconnecting)


class CompactedView:
    """Reads a (small, compacted) topic from the beginning into a dict and follows it.

    Used for the function registry and the event keys. ``caught_up_at`` is the wall-clock
    time (s) at the start of the last poll that found every partition at its end: anything
    produced and acknowledged before that instant is in the view.
    """

    def __init__(self, bootstrap: str, topic: str, decode: Callable[[bytes], object],
                 on_change: Callable[[str, object | None], None] | None = None) -> None:
        self.topic = topic
        self.items: dict[str, object] = {}
        self.caught_up_at = 0.0
        self._decode = decode
        self._on_change = on_change
        self._bootstrap = bootstrap
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sg-view-{topic}", daemon=True)

    def start(self, wait: float = 30.0) -> "CompactedView":
        self._thread.start()
        if not self._ready.wait(wait):
            raise BrokerUnavailable(f"could not read {self.topic} within {wait:.0f} s")
        return self

    def _run(self) -> None:
        c = Consumer({
            "bootstrap.servers": self._bootstrap,
            "group.id": "sg-view-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
            "log_level": 3,
        })
        try:
            md = c.list_topics(self.topic, timeout=30)
            parts = list(md.topics[self.topic].partitions)
            c.assign([TopicPartition(self.topic, p, -2) for p in parts])  # -2: beginning
            at_end: set[int] = set()
            while not self._stop.is_set():
                started = time.time()
                msg = c.poll(0.02)
                if msg is None:
                    if len(at_end) == len(parts):
                        self.caught_up_at = started
                        self._ready.set()
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        if len(at_end) == len(parts):
                            self.caught_up_at = started
                            self._ready.set()
                    else:
                        log.warning("view %s: %s", self.topic, msg.error())
                    continue
                at_end.discard(msg.partition())
                key = msg.key().decode()
                value = msg.value()
                if value is None:
                    self.items.pop(key, None)
                    decoded = None
                else:
                    decoded = self._decode(value)
                    self.items[key] = decoded
                if self._on_change:
                    self._on_change(key, decoded)
        finally:
            c.close()

    def wait_caught_up(self, since: float, timeout: float = 5.0) -> bool:
        """Block until the view has caught up after wall-clock instant ``since`` (seconds)."""
        deadline = time.monotonic() + timeout
        while self.caught_up_at <= since:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
