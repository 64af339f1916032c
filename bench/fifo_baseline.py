"""The baseline a user would write without Sluicegate (B4's phase 3): JSON events on one plain
topic, read by one confluent-kafka consumer that hands each message, in order, to a
ThreadPoolExecutor. Same producer settings as the SDK (acks=all, idempotent, linger 0)."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

from confluent_kafka import Consumer

from sluicegate.kafka_clients import SyncProducer
from sluicegate.settings import Settings

from .fairness_common import EXECUTORS


class FifoClient:
    """What a user without Sluicegate sends with: JSON events on one plain topic (same producer
    settings as the SDK: acks=all, idempotent, linger 0), keyed by tenant."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._p: SyncProducer | None = SyncProducer(bootstrap)

    def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = events if isinstance(events, list) else [events]
        assert self._p is not None
        self._p.send_many(self.topic, [(str(e["data"]["tenant"]), json.dumps(e).encode()) for e in items], 1)

    def close(self) -> None:
        if self._p is not None:
            self._p.flush(5)
        self._p = None


class FifoConsumer:
    """One consumer on one topic handing each message, in order, to a pool of ``executors``
    threads (at most ``executors`` in flight), each running ``work(data)``."""

    def __init__(self, bootstrap: str, topic: str, group: str, work: Callable[[dict[str, Any]], None],
                 executors: int = EXECUTORS) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.topic, self.work = topic, work
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                                  "enable.auto.commit": True, "fetch.wait.max.ms": 10, "log_level": 3})
        self.pool = ThreadPoolExecutor(max_workers=executors, thread_name_prefix="fifo")
        self.slots = threading.BoundedSemaphore(executors)
        self.assigned = threading.Event()
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="fifo-consumer", daemon=True)

    def start(self, timeout: float = 30.0) -> "FifoConsumer":
        self.consumer.subscribe([self.topic], on_assign=lambda _c, _p: self.assigned.set())
        self._thread.start()
        if not self.assigned.wait(timeout):
            raise RuntimeError(f"the FIFO consumer got no partition of {self.topic} within {timeout:.0f} s")
        return self

    def _run_one(self, data: dict[str, Any]) -> None:
        try:
            self.work(data)
        finally:
            self.slots.release()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self.consumer.poll(0.05)
                if msg is None or msg.error():
                    continue
                data = json.loads(msg.value())["data"]
                while not self.slots.acquire(timeout=0.05):
                    if self._stop.is_set():
                        return
                self.pool.submit(self._run_one, data)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.consumer.close()


def create_topic(settings: Settings, name: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 3})
    for fut in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                   operation_timeout=30).values():
        fut.result(30)
