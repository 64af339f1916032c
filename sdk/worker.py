"""The worker: consumes this app's work queue, runs up to ``concurrency`` jobs at once, one
step per job, and reports each outcome.

Concurrency. One poll loop owns the consumer and hands each job to a pool of ``concurrency``
threads; it never holds more jobs than that. When the pool is full it waits for a slot
(``POLL_S`` at a time, so :meth:`Worker.stop` stays responsive) before polling again; the
group's heartbeats run in librdkafka's own thread. (A loop that does not poll for
``max.poll.interval.ms``, 5 min, still leaves the group: every slot busy that long.)

Offsets. A job's thread produces its outcome (acks=all, idempotent) without waiting. The
delivery report only queues (partition, offset); the poll loop feeds it to an
:class:`OffsetTracker` and stores the offset after the contiguous prefix of jobs whose
outcomes are acknowledged, since jobs finish out of order. A crash re-runs the steps after
that prefix (at-least-once); the engine keeps the first result per (job, attempt). An
outcome that cannot be delivered stops the worker: it never moves past a lost outcome.

Leases. A job with ``lease_ms > 0`` is dispatched again if the engine hears nothing of it
for ``lease_ms``. The outcome echoes ``lease_id``; meanwhile the poll loop checks the running
jobs every ``HEARTBEAT_CHECK_MS`` and sends a :class:`Heartbeat` for each one whose last
heartbeat (or start) is ``lease_ms // 3`` ago. A job's lease runs from its dispatch, so a job
that waited in the work queue that long gets its first heartbeat as it starts.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..kafka_clients import SyncProducer
from ..partitioning import function_key
from ..topics import ensure_core_topics, ensure_work_topic
from ..wire import ErrorInfo, Heartbeat, Job, StepOutcome
from .execution import call_once
from .offset_tracking import LeaseClock, OffsetTracker, due_heartbeats
from .step import Context

if TYPE_CHECKING:
    from .client import Sluicegate

log = logging.getLogger("sluicegate.worker")

# How long the broker may hold a worker's fetch while its work queue is empty. The broker
# answers a held fetch as soon as a record reaches any of its partitions, so this does not
# delay a job; it only sets how often an idle worker asks. At 10 ms (100 fetches/s) the
# broker used 17-30 % of a core with one idle worker on this 2-core VM; at 500 ms
# (librdkafka's default) 5-6 %, as with no worker at all (4-6 %).
FETCH_WAIT_MAX_MS = 500
POLL_S = 0.05  # the longest the poll loop blocks in one call (consumer poll or a wait for a slot)
HEARTBEAT_CHECK_MS = 100  # how often the poll loop looks for jobs due a heartbeat
MAX_CONCURRENCY = 1000  # the same limit as Settings.worker_concurrency

Ack = tuple[int, int, "KafkaError | None"]  # (partition, offset, delivery error) of a job's outcome


_DURABLE_FIELDS = ("duration_ms", "until_ms", "wait_event", "wait_match", "wait_if", "timeout_ms", "invoke_app",
                   "invoke_function", "invoke_data", "results", "planned")


def check_concurrency(value: object) -> int:
    """``value`` if it is a valid worker concurrency, else ``ValueError`` naming the limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, got {value!r}")
    return value


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


@dataclass
class _Running:
    """A job the pool is executing; only the poll loop reads and writes these."""

    job: Job
    last_beat_ms: int  # monotonic ms: the lease's start (see _lease_start_ms) or the last heartbeat


def _lease_start_ms(job: Job, now_ms: int, wall_now_ms: int) -> int:
    """The job's dispatch instant on the monotonic clock ``now_ms`` (never before a whole lease ago).

    ``dispatched_at`` is the engine's wall clock; a skewed clock only moves the first
    heartbeat earlier or back to the job's start.
    """
    waited = min(max(wall_now_ms - job.dispatched_at, 0), max(job.lease_ms, 0))
    return now_ms - waited


def consumer_config(bootstrap_servers: str, group_id: str, session_timeout_ms: int) -> dict[str, object]:
    """The work queue consumer's librdkafka settings. Offsets are stored by hand once a job's
    outcome is acknowledged, and committed from those every 200 ms."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 200,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": min(1000, session_timeout_ms // 3),
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "log_level": 3,
    }


class Worker:
    def __init__(self, client: "Sluicegate", *, group_id: str | None = None,
                 session_timeout_ms: int = 10_000, concurrency: int | None = None) -> None:
        self.client = client
        self.settings = client.settings
        self.concurrency = check_concurrency(self.settings.worker_concurrency if concurrency is None else concurrency)
        self.group_id = group_id or f"sluicegate-worker.{client.app_id}"
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{id(self) % 10000}"
        self._session_timeout_ms = session_timeout_ms
        self._stop = threading.Event()
        self._stop_deadline: float | None = None  # monotonic s: when stop() stops waiting for jobs
        self._finished = threading.Event()  # set while no run() is in progress
        self._finished.set()
        self._thread: threading.Thread | None = None
        self._producer = SyncProducer(self.settings.bootstrap_servers)
        self._count_lock = threading.Lock()
        self.jobs_done = 0

    def register(self) -> None:
        """Create the app's work topic and publish every function's definition (sg.registry)."""
        ensure_core_topics(self.settings)
        ensure_work_topic(self.settings, self.client.app_id)
        definitions = [fn.definition() for fn in self.client.functions.values()]
        records = [(d.key, d.dumps()) for d in definitions]
        if records:
            self._producer.send_many(self.settings.registry_topic, records, 1)

    def _send_events(self, events: list[dict[str, object]]) -> list[str]:
        """``step.send_event``: produce through the app's client (acks=all) and return the ids."""
        return self.client.send(events)

    def handle(self, job: Job) -> StepOutcome:
        started = int(time.time() * 1000)
        fn = self.client.functions.get(job.function_id)
        if fn is None:
            result = {"op": "step_error", "no_retry": False, "error": {
                "name": "FunctionNotFound",
                "message": f"worker {self.worker_id} has no function {job.function_id!r}"}}
        else:
            events = job.events
            ctx = Context(event=events[0] if events else {}, events=events, run_id=job.run_id,
                          attempt=job.attempt, max_attempts=job.max_attempts,
                          function_id=job.function_id, app_id=job.app_id)
            result = call_once(fn, ctx, job.memos, sender=self._send_events, target=job.target_step)
        error = result.get("error")
        return StepOutcome(
            app_id=job.app_id, function_id=job.function_id, run_id=job.run_id, job_id=job.job_id,
            attempt=job.attempt, op=result["op"], step_hash=result.get("step_hash"),
            step_id=result.get("step_id"), data=result.get("data"),
            error=ErrorInfo(**error) if error else None, no_retry=bool(result.get("no_retry")),
            retry_after_ms=result.get("retry_after_ms"), run_done=bool(result.get("run_done")),
            run_output=result.get("run_output"), started_at=started,
            **{k: result[k] for k in _DURABLE_FIELDS if k in result},
            ended_at=int(time.time() * 1000), worker_id=self.worker_id, lease_id=job.lease_id,
        )

    def run(self, register: bool = True) -> None:
        """Consume and execute until :meth:`stop` is called."""
        self._finished.clear()
        try:
            if register:
                self.register()
            self._run()
        finally:
            self._finished.set()

    def _run(self) -> None:
        consumer = Consumer(consumer_config(self.settings.bootstrap_servers, self.group_id, self._session_timeout_ms))
        topic = self.settings.work_topic(self.client.app_id)
        tracker = OffsetTracker()  # the poll loop's alone: delivery reports reach it through `acks`
        acks: queue.SimpleQueue[Ack] = queue.SimpleQueue()
        running: dict[Future[None], _Running] = {}
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"sg-job-{self.client.app_id}")

        def revoked(_consumer: object, partitions: list[TopicPartition]) -> None:
            # another worker takes over from the last commit; our late outcomes must not store offsets
            for tp in partitions:
                tracker.forget(tp.partition)

        consumer.subscribe([topic], on_revoke=revoked, on_lost=revoked)
        producer = self._producer.raw
        next_check_ms = 0

        def settle() -> None:
            """Deliver reports, store offsets, drop finished jobs, send the heartbeats due."""
            nonlocal next_check_ms
            producer.poll(0)
            self._store_acked(consumer, topic, tracker, acks)
            self._reap(running)
            now_ms = _monotonic_ms()
            if now_ms >= next_check_ms:
                self._send_heartbeats(running, now_ms)
                next_check_ms = now_ms + HEARTBEAT_CHECK_MS

        clean = False
        try:
            while not self._stop.is_set():
                settle()
                if len(running) >= self.concurrency:
                    wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                    continue
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("worker: %s", msg.error())
                    continue
                partition, offset = msg.partition(), msg.offset()
                tracker.started(partition, offset)
                try:
                    job = Job.model_validate_json(msg.value())
                except ValueError:
                    log.error("worker: dropped an undecodable job at offset %s", offset)
                    self._store(consumer, topic, partition, tracker.done(partition, offset))
                    continue
                future = pool.submit(self._execute, job, partition, offset, acks)
                running[future] = _Running(job, _lease_start_ms(job, _monotonic_ms(), int(time.time() * 1000)))
            clean = True
        finally:
            try:
                if clean:
                    # let the running jobs finish (heartbeats go on), then flush and store their offsets
                    deadline = self._stop_deadline or time.monotonic() + 15.0
                    jobs_until = deadline - min(2.0, max(deadline - time.monotonic(), 0.0) / 4)
                    while running and time.monotonic() < jobs_until:
                        wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                        settle()
                    if running:
                        log.warning("worker: stopping with %d job(s) still running; they run again "
                                    "after a restart", len(running))
                    producer.flush(max(deadline - time.monotonic(), 1.0))
                    self._store_acked(consumer, topic, tracker, acks)
                else:
                    producer.flush(5)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
                consumer.close()

    def _execute(self, job: Job, partition: int, offset: int, acks: queue.SimpleQueue[Ack]) -> None:
        """In a pool thread: run the step, produce its outcome; the ack goes back through ``acks``."""
        outcome = self.handle(job)

        def report(err: KafkaError | None, _msg: object) -> None:
            acks.put((partition, offset, err))  # runs in whichever thread polls the producer

        key = function_key(job.app_id, job.function_id)
        self._producer.produce(self.settings.results_topic, key, outcome.dumps(),
                               self.settings.partitions, on_delivery=report)
        with self._count_lock:
            self.jobs_done += 1

    def _store_acked(self, consumer: Consumer, topic: str, tracker: OffsetTracker,
                     acks: queue.SimpleQueue[Ack]) -> None:
        failed: list[str] = []
        while True:
            try:
                partition, offset, err = acks.get_nowait()
            except queue.Empty:
                break
            if err is not None:
                failed.append(err.str())  # its offset stays running: the tracker never moves past it
            else:
                self._store(consumer, topic, partition, tracker.done(partition, offset))
        if failed:
            # never move past a job whose outcome was lost: stop; a restart re-runs it
            raise RuntimeError(f"worker: an outcome could not be delivered: {failed[0]}")

    @staticmethod
    def _store(consumer: Consumer, topic: str, partition: int, next_offset: int | None) -> None:
        if next_offset is None:
            return
        try:
            consumer.store_offsets(offsets=[TopicPartition(topic, partition, next_offset)])
        except KafkaException as exc:
            # the partition is no longer ours: its new owner re-runs from the last commit
            log.info("worker: offset %d of partition %d not stored: %s", next_offset, partition, exc)

    @staticmethod
    def _reap(running: dict[Future[None], _Running]) -> None:
        for future in [f for f in running if f.done()]:
            entry = running.pop(future)
            exc = future.exception()
            if exc is not None:
                # its outcome was never produced: stop rather than commit past it
                raise RuntimeError(f"worker: job {entry.job.job_id} failed outside the function: {exc!r}") from exc

    def _send_heartbeats(self, running: dict[Future[None], _Running], now_ms: int) -> None:
        leases = {f: LeaseClock(r.job.lease_ms, r.last_beat_ms) for f, r in running.items() if not f.done()}
        for future in due_heartbeats(leases, now_ms):
            entry = running[future]
            job = entry.job
            beat = Heartbeat(app_id=job.app_id, function_id=job.function_id, run_id=job.run_id,
                             lease_id=job.lease_id, worker_id=self.worker_id)
            self._producer.produce(self.settings.results_topic, function_key(job.app_id, job.function_id),
                                   beat.dumps(), self.settings.partitions, on_delivery=_heartbeat_report(job))
            entry.last_beat_ms = now_ms

    def start(self) -> "Worker":
        """Run in a background thread (returns once the functions are registered)."""
        self.register()
        self._finished.clear()
        self._thread = threading.Thread(target=self.run, kwargs={"register": False},
                                        name=f"sg-worker-{self.client.app_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop polling; wait up to ``timeout`` s for the running jobs and their outcomes."""
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._finished.wait(timeout)  # also a run() in a thread of the caller's (`sluicegate worker`)
        if self._thread is not None:
            self._thread.join(max(self._stop_deadline - time.monotonic(), 0.0))
        self._producer.flush(5)


def _heartbeat_report(job: Job) -> Callable[[KafkaError | None, object], None]:
    def report(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            # not fatal: a late heartbeat at worst lets the engine dispatch the step again
            log.warning("worker: a heartbeat for run %s was not delivered: %s", job.run_id, err.str())
    return report
