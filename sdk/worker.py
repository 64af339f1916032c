"""The worker: consumes this app's work queue, runs one step per job, reports the outcome.

A job's offset is stored for commit only in the delivery report of its outcome (acks=all),
so a crash re-runs the step (at-least-once); the engine keeps the first result per
(job, attempt). Outcomes are not awaited one by one: the next job starts at once.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
import socket
import threading
import time

from confluent_kafka import Consumer, KafkaError

from ..kafka_clients import SyncProducer
from ..partitioning import function_key
from ..topics import ensure_core_topics, ensure_work_topic
from ..wire import ErrorInfo, Job, StepOutcome
from .execution import call_once
from .step import Context

if TYPE_CHECKING:
    from .client import Sluicegate

log = logging.getLogger("sluicegate.worker")

FETCH_WAIT_MAX_MS = 10  # how long the broker may hold a fetch when the work queue is empty


class Worker:
    def __init__(self, client: "Sluicegate", *, group_id: str | None = None,
                 session_timeout_ms: int = 10_000) -> None:
        self.client = client
        self.settings = client.settings
        self.group_id = group_id or f"sluicegate-worker.{client.app_id}"
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{id(self) % 10000}"
        self._session_timeout_ms = session_timeout_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = SyncProducer(self.settings.bootstrap_servers)
        self.jobs_done = 0

    def register(self) -> None:
        """Create the app's work topic and publish every function's definition (sg.registry)."""
        ensure_core_topics(self.settings)
        ensure_work_topic(self.settings, self.client.app_id)
        definitions = [fn.definition() for fn in self.client.functions.values()]
        records = [(d.key, d.dumps()) for d in definitions]
        if records:
            self._producer.send_many(self.settings.registry_topic, records, 1)

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
            result = call_once(fn, ctx, job.memos)
        error = result.get("error")
        return StepOutcome(
            app_id=job.app_id, function_id=job.function_id, run_id=job.run_id, job_id=job.job_id,
            attempt=job.attempt, op=result["op"], step_hash=result.get("step_hash"),
            step_id=result.get("step_id"), data=result.get("data"),
            error=ErrorInfo(**error) if error else None, no_retry=bool(result.get("no_retry")),
            retry_after_ms=result.get("retry_after_ms"), run_done=bool(result.get("run_done")),
            run_output=result.get("run_output"), started_at=started,
            ended_at=int(time.time() * 1000), worker_id=self.worker_id,
        )

    def run(self, register: bool = True) -> None:
        """Consume and execute until :meth:`stop` is called."""
        if register:
            self.register()
        consumer = Consumer({
            "bootstrap.servers": self.settings.bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 200,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self._session_timeout_ms,
            "heartbeat.interval.ms": min(1000, self._session_timeout_ms // 3),
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "log_level": 3,
        })
        consumer.subscribe([self.settings.work_topic(self.client.app_id)])
        producer = self._producer.raw
        failed: list[str] = []

        def delivered(job_msg: object) -> object:
            def report(err: KafkaError | None, _msg: object) -> None:
                if err is None:
                    consumer.store_offsets(message=job_msg)
                else:
                    failed.append(err.str())
            return report

        try:
            while not self._stop.is_set():
                producer.poll(0)
                if failed:
                    # never move past a job whose outcome was lost: stop; a restart re-runs it
                    raise RuntimeError(f"worker: an outcome could not be delivered: {failed[0]}")
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("worker: %s", msg.error())
                    continue
                try:
                    job = Job.model_validate_json(msg.value())
                except ValueError:
                    log.error("worker: dropped an undecodable job at offset %s", msg.offset())
                    consumer.store_offsets(message=msg)
                    continue
                outcome = self.handle(job)
                key = function_key(job.app_id, job.function_id)
                self._producer.produce(self.settings.commands_topic, key, outcome.dumps(),
                                       self.settings.partitions, on_delivery=delivered(msg))
                self.jobs_done += 1
        finally:
            producer.flush(10)
            consumer.close()

    def start(self) -> "Worker":
        """Run in a background thread (returns once the functions are registered)."""
        self.register()
        self._thread = threading.Thread(target=self.run, kwargs={"register": False},
                                        name=f"sg-worker-{self.client.app_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._producer.flush(5)
