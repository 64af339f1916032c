"""Run retention on a real broker, with an engine of its own whose runs are kept 3 s after
they end: an ended run disappears from the processor's state (a tombstone in its changelog)
and from the API (its view, listing entries, event lookup and counters), while a run that
has not ended stays however old it is. Rate-limit state that is worth nothing any more is
deleted too."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from sluicegate.devstack import ApiServer, ProcessorProcess
from sluicegate.local_broker import free_port
from sluicegate.partitioning import function_key
from sluicegate.sdk import RateLimit, Sluicegate, TriggerEvent
from sluicegate.settings import Settings
from sluicegate.topics import ensure_core_topics

from polling import wait_until as _wait

RETENTION_MS = 3000


@dataclass
class Stack:
    settings: Settings
    processor: ProcessorProcess
    http: httpx.Client

    def run(self, run_id: str) -> dict[str, Any] | None:
        r = self.http.get(f"/v1/runs/{run_id}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return r.json()

    def run_of(self, event_id: str) -> dict[str, Any] | None:
        r = self.http.get(f"/v1/events/{event_id}/runs")
        assert r.status_code == 200, r.text
        runs = r.json()["data"]
        assert len(runs) <= 1, runs
        return runs[0] if runs else None

    def counts(self, app_id: str, function_id: str) -> dict[str, int]:
        r = self.http.get("/v1/functions", params={"app": app_id})
        assert r.status_code == 200, r.text
        return next(f["runs"] for f in r.json()["data"] if f["function_id"] == function_id)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"sgret{uuid.uuid4().hex[:8]}"
    data_dir: Path = tmp_path_factory.mktemp("retention")
    settings = Settings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=2, data_dir=data_dir,
        processor_id=f"{prefix}-processor", session_timeout_s=6.0, commit_interval_s=0.5,
        http_port=free_port(), dev_mode=False, lease_ms=3000, run_retention_ms=RETENTION_MS,
    )
    ensure_core_topics(settings)
    processor = ProcessorProcess(settings, data_dir / "processor.log").start()
    api = ApiServer(settings).start()
    http = httpx.Client(base_url=api.url, timeout=10)
    try:
        yield Stack(settings, processor, http)
    finally:
        http.close()
        api.stop()
        processor.stop()


def _changelog_values(stack: Stack, key: bytes, table: str = "runs") -> list[bytes | None]:
    """Every value written for ``key`` to the changelog of one of the processor's tables, in order."""
    topic = f"{stack.settings.processor_id}-{table}-changelog"
    c = Consumer({"bootstrap.servers": stack.settings.bootstrap_servers, "group.id": "sgtest-changelog",
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        out: list[bytes | None] = []
        for p in parts:
            end = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            if end == 0:
                continue
            c.assign([TopicPartition(topic, p, 0)])
            offset = -1
            while offset < end - 1:
                msg = c.poll(5.0)
                assert msg is not None and msg.error() is None, f"{topic}[{p}] read to {offset} of {end}"
                offset = msg.offset()
                if msg.key() == key:
                    out.append(msg.value())
        return out
    finally:
        c.close()


def test_an_ended_run_is_deleted_after_the_retention_and_a_running_one_is_kept(stack: Stack) -> None:
    sg = Sluicegate(app_id=f"ret-{uuid.uuid4().hex[:8]}", settings=stack.settings)

    @sg.function(id="quick", trigger=TriggerEvent(event="quick"))
    def quick(ctx: Any, step: Any) -> str:
        return step.run("only", lambda: "done")

    @sg.function(id="napper", trigger=TriggerEvent(event="nap"))
    def napper(ctx: Any, step: Any) -> str:
        step.sleep("long-nap", 8000)  # outlives the retention several times over, unended
        return step.run("after", lambda: "rested")

    worker = sg.worker(session_timeout_ms=6000).start()
    try:
        [napping] = sg.send({"name": "nap"})
        [event_id] = sg.send({"name": "quick"})
        _wait(lambda: (stack.run_of(event_id) or {}).get("status") == "completed", 60, "the quick run to complete")
        run_id = stack.run_of(event_id)["run_id"]  # type: ignore[index]
        assert stack.run(run_id) is not None
        assert stack.counts(sg.app_id, "quick")["completed"] == 1
        ended_at = time.time()

        _wait(lambda: stack.run(run_id) is None, 60, "the ended run to be deleted")
        gone_after = time.time() - ended_at
        print(f"deleted {gone_after:.1f} s after it ended (retention {RETENTION_MS / 1000:.0f} s)")
        assert gone_after >= RETENTION_MS / 1000 - 0.5  # not before its retention
        assert stack.run_of(event_id) is None
        listed = stack.http.get("/v1/runs", params={"app": sg.app_id}).json()["data"]
        assert run_id not in [r["run_id"] for r in listed]
        _wait(lambda: stack.counts(sg.app_id, "quick")["completed"] == 0, 10, "the counter to drop")
        # the processor deleted its state too, durably: the last changelog record is a tombstone
        values = _changelog_values(stack, run_id.encode())
        assert len(values) >= 2 and values[-1] is None and all(v is not None for v in values[:-1])

        # the sleeping run started before the quick one and is older than the retention: kept
        sleeping = stack.run_of(napping)
        assert sleeping is not None and sleeping["status"] == "running"
        _wait(lambda: (stack.run_of(napping) or {}).get("status") == "completed", 60, "the nap to end")
        nap_id = sleeping["run_id"]
        assert stack.run(nap_id)["output"] == "rested"  # type: ignore[index]
        _wait(lambda: stack.run(nap_id) is None, 60, "the nap's run to be deleted once ended")
    finally:
        worker.stop()
        sg.close()


def test_rate_limit_state_is_deleted_once_it_is_worth_nothing(stack: Stack) -> None:
    """One GCRA record per key value ever seen would grow the processor's state without end;
    a record whose bucket is full again decides like no record, and the sweep deletes it."""
    sg = Sluicegate(app_id=f"rlgc-{uuid.uuid4().hex[:8]}", settings=stack.settings)

    lock = threading.Lock()
    ran: list[str] = []

    def pong(user: str) -> str:
        with lock:
            ran.append(user)
        return "pong"

    @sg.function(id="per-user", trigger=TriggerEvent(event="ping"),
                 rate_limit=RateLimit(limit=1, period_ms=1000, key="event.data.user"))
    def per_user(ctx: Any, step: Any) -> str:
        return step.run("pong", lambda: pong(ctx.event["data"]["user"]))

    users = [f"u{i}" for i in range(5)]
    fkey = function_key(sg.app_id, "per-user")
    keys = [f"rl/{fkey}/{hashlib.sha1(u.encode()).hexdigest()}".encode() for u in users]
    worker = sg.worker(session_timeout_ms=6000).start()
    try:
        sg.send([{"name": "ping", "data": {"user": u}} for u in users])
        _wait(lambda: sorted(ran) == users, 60, "one run per user")  # (runs go 3 s after they end)

        def deleted() -> bool:
            return all((v := _changelog_values(stack, k, "flow")) and v[-1] is None for k in keys)
        _wait(deleted, 60, "every user's rate-limit record to be deleted", interval=1.0)
        for k in keys:  # written once when the run was admitted, then deleted
            values = _changelog_values(stack, k, "flow")
            assert len(values) == 2 and values[0] is not None, (k, values)
        # and the limit still holds afterwards: the next event of a user is admitted once
        [_again, dropped] = sg.send([{"name": "ping", "data": {"user": "u0"}}, {"name": "ping", "data": {"user": "u0"}}])
        _wait(lambda: ran.count("u0") == 2, 60, "u0 admitted again")
        _wait(lambda: (stack.run_of(dropped) or {}).get("status") == "skipped", 60, "u0's second event dropped")
        assert ran.count("u0") == 2
    finally:
        worker.stop()
        sg.close()
