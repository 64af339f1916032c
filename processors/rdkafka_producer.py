"""The processor's producer: faust's producer interface, librdkafka (confluent-kafka) sending.

Why: under load the processor's main thread is the bottleneck (issue 4, B4's drain), and a
profile of it holding the GIL (``py-spy --gil``, one-step runs through one partition) put
~30 % of its time in faust's and aiokafka's producer path: the ``ProducerBuffer`` task,
faust's ``Topic.publish_message``, aiokafka's accumulator, batch building, request encoding
and response parsing, all in Python, for the ~8 records a run writes (table changelogs, the
job, run views, routed commands). librdkafka does the same work in C on its own threads;
what is left on the loop is one ``produce()`` call per record and its delivery report.

What stays faust's: the aiokafka producer is still started, for what faust does with it
besides sending (declaring topics, metadata, ``key_partition``); it sends nothing.

Guarantees kept (faust_app.py's commit order):

* **Changelog before output.** Table writes (``send_soon``) go to librdkafka at once, in the
  order the agent makes them, instead of through faust's ``ProducerBuffer``; an output
  produced after them is behind them in librdkafka's queues (one partition's order is
  kept by the idempotent producer; across partitions, as before, no broker orders them).
* **Nothing committed past an unacknowledged record.** ``flush`` (faust calls it before
  every commit of source offsets) returns only when librdkafka holds no record that the
  broker has not acknowledged (acks=all, idempotent).
* **A record that cannot be produced stops the process** before anything else is
  committed (exit code 70, as for outputs before); a restart replays from the last commit.
* **Table recovery offsets.** A changelog record's delivery report resolves faust's
  ``FutureMessage`` with its offset and runs its callback, so the table records the
  changelog offset it holds (``set_persisted_offset``), as with aiokafka.

Delivery reports are served by :meth:`poll` on the event loop (``POLL_BUSY_S`` while records
are outstanding, ``POLL_IDLE_S`` otherwise), so futures are resolved on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Awaitable, Callable, Mapping, Optional

from confluent_kafka import KafkaError, Message, Producer as RdProducer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import FutureMessage, RecordMetadata

from ..kafka_clients import PRODUCER_DEFAULTS

log = logging.getLogger("sluicegate.processor")

EXIT_PRODUCE_FAILED = 70
POLL_BUSY_S = 0.002   # delivery reports while records are outstanding
POLL_IDLE_S = 0.02
LINGER_MS = 1         # records of one handled command, and of a busy loop turn, share requests
FLUSH_WARN_S = 10.0


def rd_config(bootstrap: str, client_id: str, max_request_bytes: int) -> dict[str, Any]:
    """librdkafka settings of the processor's producer (pure; tested)."""
    return {
        **PRODUCER_DEFAULTS,
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "linger.ms": LINGER_MS,
        "message.max.bytes": max_request_bytes,
        # the Java client's (and aiokafka's) partitioner, for a record sent without a partition
        "partitioner": "murmur2_random",
    }


def produce_failed(topic: str, err: KafkaError) -> None:
    """Never commit past a lost record: stop now; a restart replays from the last commit."""
    log.critical("a record to %s could not be produced (%s); stopping the processor", topic, err)
    logging.shutdown()
    os._exit(EXIT_PRODUCE_FAILED)


class RdKafkaProducer(faust_aiokafka.Producer):
    """faust's aiokafka ``Producer`` whose records go through a confluent-kafka producer."""

    _rd: Optional[RdProducer] = None
    _on_failure: Callable[[str, KafkaError], None] = staticmethod(produce_failed)

    def _new_rd(self) -> RdProducer:
        transport: Any = self.transport
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        bootstrap = ",".join(servers) if isinstance(servers, list) else str(servers)
        return RdProducer(rd_config(bootstrap, f"{self.client_id}-rd", self.max_request_size))

    async def on_start(self) -> None:
        await super().on_start()
        self._rd = self._new_rd()
        self.add_future(self._serve_reports())

    async def on_stop(self) -> None:
        if self._rd is not None:
            await self._wait_delivered()
        await super().on_stop()
        self._rd = None

    def _ensure_rd(self) -> RdProducer:
        if self._rd is None:
            raise RuntimeError("the processor's producer is not started")
        return self._rd

    # -- sending ---------------------------------------------------------------------------

    def produce(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: int) -> None:
        """Hand one record to librdkafka; its delivery is checked, nobody waits for it."""
        self._produce(topic, key, value, partition, None, None, self._checked(topic))

    def _checked(self, topic: str) -> Callable[[Optional[KafkaError], Message], None]:
        def delivered(err: Optional[KafkaError], _msg: Message) -> None:
            if err is not None:
                self._on_failure(topic, err)
        return delivered

    def _produce(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: Optional[int],
                 timestamp: Optional[float], headers: Any,
                 on_delivery: Callable[[Optional[KafkaError], Message], None]) -> None:
        rd = self._ensure_rd()
        kwargs: dict[str, Any] = {"key": key, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp:
            kwargs["timestamp"] = int(timestamp * 1000)
        if headers:
            kwargs["headers"] = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        while True:
            try:
                rd.produce(topic, value, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: serve reports, then retry
                rd.poll(0.05)

    def send_soon(self, fut: FutureMessage) -> None:
        """A table's changelog record: produced now (not via faust's buffer), in order."""
        message = fut.message
        topic = message.channel.get_topic_name()  # type: ignore[attr-defined]
        self._produce(topic, message.key, message.value, message.partition, message.timestamp,
                      message.headers, self._resolving(topic, fut))

    def _resolving(self, topic: str, fut: FutureMessage) -> Callable[[Optional[KafkaError], Message], None]:
        def delivered(err: Optional[KafkaError], msg: Message) -> None:
            if err is not None:
                self._on_failure(topic, err)
                return
            if fut.done():
                return
            fut.set_result(_metadata(msg))
            callback = fut.message.callback
            if callback is not None:
                callback(fut)
        return delivered

    async def send(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: Optional[int],
                   timestamp: Optional[float], headers: Any, *,
                   transactional_id: Optional[str] = None) -> Awaitable[RecordMetadata]:
        """faust's ``send``: a future of the record's metadata (resolved by a delivery report)."""
        if transactional_id:
            raise NotImplementedError("the processor does not use Kafka transactions")
        future: asyncio.Future = self.loop.create_future()

        def delivered(err: Optional[KafkaError], msg: Message) -> None:
            if err is not None:
                self._on_failure(topic, err)
            elif not future.done():
                future.set_result(_metadata(msg))

        self._produce(topic, key, value, partition, timestamp, headers, delivered)
        return future

    # -- delivery reports and flushing -----------------------------------------------------

    def outstanding(self) -> int:
        """Records handed to librdkafka and not yet acknowledged (with reports not served)."""
        return len(self._rd) if self._rd is not None else 0

    async def _serve_reports(self) -> None:
        while not self.should_stop:
            rd = self._rd
            if rd is None:
                return
            busy = len(rd) > 0
            if busy:
                rd.poll(0)
            await asyncio.sleep(POLL_BUSY_S if busy else POLL_IDLE_S)

    async def _wait_delivered(self) -> None:
        rd = self._ensure_rd()
        waited = 0.0
        warned = False
        while len(rd) > 0:
            rd.poll(0)
            if not len(rd):
                break
            await asyncio.sleep(0.001)
            waited += 0.001
            if not warned and waited > FLUSH_WARN_S:
                warned = True
                log.warning("producer: %d record(s) still unacknowledged after %.0f s; commits wait for them",
                            len(rd), FLUSH_WARN_S)

    async def flush(self) -> None:
        """Before a commit: every record handed over so far is acknowledged by the broker."""
        if self._rd is not None:
            await self._wait_delivered()
        if self._producer is not None:
            await self._producer.flush()


def _metadata(msg: Message) -> RecordMetadata:
    topic, partition = msg.topic(), msg.partition()
    ts_type, ts = msg.timestamp()
    return RecordMetadata(topic=topic, partition=partition, topic_partition=TP(topic, partition),
                          offset=msg.offset(), timestamp=ts / 1000.0 if ts else None, timestamp_type=ts_type)


def install(app: Any) -> None:
    """Make ``app`` create an :class:`RdKafkaProducer` (before anything touches ``app.producer``)."""
    app._new_producer = lambda: RdKafkaProducer(app.transport, loop=app.loop, beacon=app.beacon)
