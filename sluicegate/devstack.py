"""Start the pieces of a local Sluicegate: broker, processor process, HTTP server, worker.

Used by ``sluicegate dev``, the integration and end-to-end tests, and ``bench/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .local_broker import LocalBroker, free_port
from .settings import Settings
from .topics import ensure_core_topics


def external_bootstrap() -> str | None:
    return os.environ.get("SLUICEGATE_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")


class ProcessorProcess:
    """``sluicegate processor`` as a child process (so tests can kill and restart it)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.as_env())  # every setting, so the child runs with exactly these
        return env

    def start(self, timeout: float = 90.0) -> "ProcessorProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "sluicegate.cli", "processor"], env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the processor exited with {self.proc.returncode}:\n{self.tail()}")
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            # logged by the processor once its partitions are assigned and tables recovered
            if "rebalance complete" in text:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the processor was not ready within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a crash, as in production."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                # faust may take long to shut down; escalate (reference: kafka-and-faust.md)
                self.kill()
        self.proc = None


class ApiServer:
    """The HTTP bridge in a background thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.http_port or free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ApiServer":
        import httpx
        import uvicorn

        from .ingest.http_api import create_api

        config = uvicorn.Config(create_api(self.settings), host="127.0.0.1", port=self.port,
                                access_log=False, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sg-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the HTTP server did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


class DevStack:
    """Everything ``sluicegate dev`` runs, in one object."""

    def __init__(self, app_spec: str = "examples/hello.py:sg", http_port: int = 8288) -> None:
        self.app_spec = app_spec
        self.http_port = http_port
        self.broker: LocalBroker | None = None
        self.processor: ProcessorProcess | None = None
        self.api: ApiServer | None = None
        self.worker: Any = None
        self.app_id = ""
        self.function_ids: list[str] = []
        self.bootstrap_servers = ""
        self._tmp = Path(tempfile.mkdtemp(prefix="sluicegate-dev-"))

    def start(self) -> "DevStack":
        from .app_loader import load_app

        bootstrap = external_bootstrap()
        if bootstrap is None:
            print("starting a local Kafka broker (first run downloads it with Maven)...", flush=True)
            self.broker = LocalBroker(data_dir=self._tmp / "kafka").start()
            bootstrap = self.broker.bootstrap_servers
        self.bootstrap_servers = bootstrap
        sg = load_app(self.app_spec)
        self.app_id = sg.app_id
        self.function_ids = sorted(sg.functions)
        base = Settings()
        settings = base.model_copy(update={
            "bootstrap_servers": bootstrap, "data_dir": self._tmp / "state", "http_port": self.http_port,
            "dev_mode": True, "dev_app_id": sg.app_id, "session_timeout_s": 6.0,
        })
        ensure_core_topics(settings)
        sg.settings = settings
        self.worker = sg.worker().start()
        print("starting the processor...", flush=True)
        self.processor = ProcessorProcess(settings, self._tmp / "processor.log").start()
        self.api = ApiServer(settings).start()
        self.http_port = self.api.port
        return self

    def stop(self) -> None:
        for part in (self.api, self.worker, self.processor, self.broker):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # keep stopping the rest
                    pass
        shutil.rmtree(self._tmp, ignore_errors=True)
