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
  every commit of source offsets) returns only when every record produced before it began
  is acknowledged by the broker (acks=all, idempotent; :class:`AckMarks`). Records produced
  meanwhile do not hold it up: a busy processor never stops producing.
* **A record that cannot be produced stops the process** before anything else is
  committed (exit code 70, as for outputs before); a restart replays from the last commit.
* **Table recovery offsets.** A changelog record's delivery report resolves faust's
  ``FutureMessage`` with its offset and runs its callback, so the table records the
  changelog offset it holds (``set_persisted_offset``), as with aiokafka.

Latency and batching: records linger ``LINGER_MS`` in librdkafka, so a busy processor sends
few, large produce requests; when the processor has nothing left to handle it calls
:meth:`flush_idle`, which sends everything lingering at once (librdkafka's ``flush`` treats
the linger as over while it runs) and gives the acknowledgements up to ``IDLE_FLUSH_S``.

Delivery reports are served by :meth:`poll` on the event loop (``POLL_BUSY_S`` while records
are outstanding, ``POLL_IDLE_S`` otherwise), so futures are resolved on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from functools import partial
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
# librdkafka sends one partition per produce request (librdkafka#1700), and a run writes to
# ~5 partitions: without a linger the broker, not the processor, became the bottleneck
# (one-step runs, 1 partition: linger 0 -> ~430 runs/s with the broker at 98 % of a core;
# 5 ms -> ~650 runs/s, broker 84 %). The linger costs nothing when the processor goes idle:
# ``flush_idle`` sends what lingers at once (B1's latency at a low rate).
LINGER_MS = 5
IDLE_FLUSH_S = 0.002  # how long flush_idle may hold an idle loop waiting for acks
FLUSH_WARN_S = 10.0
STOP_WAIT_S = 30.0


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


class AckMarks:
    """Which produced records have been reported, by number (pure; tested).

    Records are numbered in produce order. Reports come in produce order within a
    partition but interleave across partitions, so a report may overtake an older record's.
    ``all_reported_up_to(n)`` is what a flush waits for: records produced after it started
    do not hold it up."""

    __slots__ = ("produced", "_unreported", "_early")

    def __init__(self) -> None:
        self.produced = 0
        self._unreported: deque[int] = deque()  # in produce order, from the oldest unreported
        self._early: set[int] = set()            # reported while an older record was not

    def add(self) -> int:
        self.produced += 1
        self._unreported.append(self.produced)
        return self.produced

    def reported(self, seq: int) -> None:
        unreported = self._unreported
        if unreported and unreported[0] == seq:
            unreported.popleft()
            early = self._early
            while unreported and unreported[0] in early:
                early.discard(unreported.popleft())
        else:
            self._early.add(seq)

    def all_reported_up_to(self, seq: int) -> bool:
        return not self._unreported or self._unreported[0] > seq

    def outstanding(self) -> int:
        return len(self._unreported) - len(self._early)


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

    def __post_init__(self) -> None:
        super().__post_init__()
        self._marks = AckMarks()

    async def on_start(self) -> None:
        await super().on_start()
        self._rd = self._new_rd()
        self.add_future(self._serve_reports())

    async def on_stop(self) -> None:
        if self._rd is not None:
            # not forever (a broker gone at shutdown): what is not acknowledged now was not
            # committed either, and is produced again when its input is read again
            try:
                await asyncio.wait_for(self._wait_reported(self._marks.produced), STOP_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("producer: %d record(s) unacknowledged at shutdown; their inputs are read again",
                            self._marks.outstanding())
        await super().on_stop()
        self._rd = None

    def _ensure_rd(self) -> RdProducer:
        if self._rd is None:
            raise RuntimeError("the processor's producer is not started")
        return self._rd

    # -- sending ---------------------------------------------------------------------------

    def produce(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: int) -> None:
        """Hand one record to librdkafka; its delivery is checked, nobody waits for it."""
        self._produce(topic, key, value, partition, None, None, None, None)

    def send_soon(self, fut: FutureMessage) -> None:
        """A table's changelog record: produced now (not via faust's buffer), in order; its
        delivery resolves ``fut`` and runs the table's callback (the offset it persisted)."""
        message = fut.message
        topic = message.channel.get_topic_name()  # type: ignore[attr-defined]
        self._produce(topic, message.key, message.value, message.partition, message.timestamp,
                      message.headers, fut, message.callback)

    async def send(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: Optional[int],
                   timestamp: Optional[float], headers: Any, *,
                   transactional_id: Optional[str] = None) -> Awaitable[RecordMetadata]:
        """faust's ``send``: a future of the record's metadata (resolved by a delivery report)."""
        if transactional_id:
            raise NotImplementedError("the processor does not use Kafka transactions")
        future: asyncio.Future = self.loop.create_future()
        self._produce(topic, key, value, partition, timestamp, headers, future, None)
        return future

    def _produce(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: Optional[int],
                 timestamp: Optional[float], headers: Any, fut: Optional[asyncio.Future],
                 callback: Optional[Callable[[Any], None]]) -> None:
        rd = self._ensure_rd()
        # numbered now, counted only once librdkafka took it: a record produce() refused
        # (too large) must not leave a mark that every later flush would wait for
        seq = self._marks.produced + 1
        kwargs: dict[str, Any] = {"key": key, "on_delivery": partial(self._report, seq, topic, fut, callback)}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp:
            kwargs["timestamp"] = int(timestamp * 1000)
        if headers:
            kwargs["headers"] = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        while True:
            try:
                rd.produce(topic, value, **kwargs)
                break
            except BufferError:  # librdkafka's queue is full: serve reports, then retry
                rd.poll(0.05)
        self._marks.add()

    def _report(self, seq: int, topic: str, fut: Optional[asyncio.Future], callback: Optional[Callable[[Any], None]],
                err: Optional[KafkaError], msg: Message) -> None:
        """A delivery report (served on the loop's thread by ``poll``)."""
        if err is not None:
            self._on_failure(topic, err)
        elif fut is not None and not fut.done():
            fut.set_result(_metadata(msg))
            if callback is not None:
                callback(fut)
        self._marks.reported(seq)

    # -- delivery reports and flushing -----------------------------------------------------

    def outstanding(self) -> int:
        """Records handed to librdkafka whose delivery report has not been served."""
        return self._marks.outstanding()

    async def _serve_reports(self) -> None:
        while not self.should_stop:
            rd = self._rd
            if rd is None:
                return
            busy = self._marks.outstanding() > 0
            if busy:
                rd.poll(0)
            await asyncio.sleep(POLL_BUSY_S if busy else POLL_IDLE_S)

    async def _wait_reported(self, seq: int) -> None:
        """Until every record up to ``seq`` is acknowledged (not those produced meanwhile:
        a busy processor never stops producing, and its commits must not wait for a pause)."""
        rd = self._ensure_rd()
        started = time.monotonic()
        warned = False
        while not self._marks.all_reported_up_to(seq):
            rd.poll(0)
            if self._marks.all_reported_up_to(seq):
                break
            await asyncio.sleep(0.001)
            if not warned and time.monotonic() - started > FLUSH_WARN_S:
                warned = True
                log.warning("producer: records still unacknowledged after %.0f s; commits wait for them",
                            FLUSH_WARN_S)

    def flush_idle(self) -> None:
        """The processor is idle: send what lingers now. Blocks the (idle) loop for at most
        ``IDLE_FLUSH_S``; records still unacknowledged then are left to the report task."""
        rd = self._rd
        if rd is not None and self._marks.outstanding():
            rd.flush(IDLE_FLUSH_S)

    async def flush(self) -> None:
        """Before a commit: every record handed over so far is acknowledged by the broker."""
        if self._rd is not None:
            await self._wait_reported(self._marks.produced)
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
