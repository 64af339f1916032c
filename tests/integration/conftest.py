"""An engine for integration tests: one processor child process and one HTTP server per
session, on a real broker; each test defines its own app (unique app id) and worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.devstack import ApiServer, ProcessorProcess
from sluicegate.local_broker import free_port
from sluicegate.sdk import Sluicegate
from sluicegate.settings import Settings
from sluicegate.topics import ensure_core_topics

FINAL = ("completed", "failed", "cancelled", "skipped")


@dataclass
class Engine:
    settings: Settings
    processor: ProcessorProcess
    api: ApiServer
    http: httpx.Client
    workers: list[Any] = field(default_factory=list)
    apps: list[Sluicegate] = field(default_factory=list)

    def app(self, prefix: str = "app") -> Sluicegate:
        sg = Sluicegate(app_id=f"{prefix}-{uuid.uuid4().hex[:8]}", settings=self.settings)
        self.apps.append(sg)
        return sg

    def start_worker(self, sg: Sluicegate, concurrency: int = 8) -> Any:
        worker = sg.worker(session_timeout_ms=6000, concurrency=concurrency).start()
        self.workers.append(worker)
        return worker

    def runs_for_event(self, event_id: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/v1/events/{event_id}/runs")
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def wait_run(self, event_id: str, timeout: float = 60.0,
                 until: Callable[[dict[str, Any]], bool] = lambda run: run["status"] in FINAL) -> dict[str, Any]:
        """Poll the runs API until the event's single run satisfies ``until``; return the run."""
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            runs = self.runs_for_event(event_id)
            if runs and until(runs[0]):
                r = self.http.get(f"/v1/runs/{runs[0]['run_id']}")
                assert r.status_code == 200, r.text
                return r.json()
            time.sleep(0.1)
        raise AssertionError(f"no run of event {event_id} reached the expected state in {timeout} s: {runs}\n"
                             f"processor log:\n{self.processor.tail(3000)}")


@pytest.fixture(scope="session")
def engine(kafka_bootstrap: str, session_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    data_dir: Path = tmp_path_factory.mktemp("engine")
    settings = Settings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=session_prefix, partitions=4, data_dir=data_dir,
        processor_id=f"{session_prefix}-processor", session_timeout_s=6.0, commit_interval_s=0.5,
        http_port=free_port(), dev_mode=False, lease_ms=3000,
    )
    ensure_core_topics(settings)
    processor = ProcessorProcess(settings, data_dir / "processor.log").start()
    api = ApiServer(settings).start()
    http = httpx.Client(base_url=api.url, timeout=10)
    eng = Engine(settings, processor, api, http)
    try:
        yield eng
    finally:
        for w in eng.workers:
            w.stop()
        eng.workers.clear()
        for sg in eng.apps:
            sg.close()
        http.close()
        api.stop()
        processor.stop()


@pytest.fixture
def engine_cleanup(engine: Engine) -> Iterator[Engine]:
    """The engine, with this test's workers stopped afterwards."""
    before = len(engine.workers)
    yield engine
    for w in engine.workers[before:]:
        w.stop()
    del engine.workers[before:]
    for sg in engine.apps:
        sg.close()
    engine.apps.clear()
