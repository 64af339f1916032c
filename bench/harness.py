"""Shared pieces of the benchmarks: the stack they run against, percentiles, output."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

from sluicegate.devstack import ProcessorProcess, external_bootstrap
from sluicegate.kafka_clients import PRODUCER_DEFAULTS
from sluicegate.sdk.worker import FETCH_WAIT_MAX_MS
from sluicegate.local_broker import KAFKA_VERSION, LocalBroker
from sluicegate.settings import Settings
from sluicegate.topics import ensure_core_topics

# What the SDK producer and worker are configured with (sluicegate/kafka_clients.py
# make_producer, sdk/worker.py); recorded with every result.
PRODUCER_ACKS = PRODUCER_DEFAULTS["acks"]
PRODUCER_LINGER_MS = PRODUCER_DEFAULTS["linger.ms"]
WORKER_FETCH_WAIT_MAX_MS = FETCH_WAIT_MAX_MS


class BenchStack:
    """A broker (local unless one is given by env), topics, and a processor child process.

    Every run gets a fresh data dir, topic prefix and processor id, so runs never collide
    (also on a shared external broker). ``stop()`` is safe to call at any point.
    """

    def __init__(self, name: str, *, partitions: int | None = None, keep_logs: bool = False) -> None:
        self.name = name
        self.run_id = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sluicegate-bench-{name.lower()}-"))
        self.partitions = partitions
        self.keep_logs = keep_logs
        self.broker: LocalBroker | None = None
        self.processor: ProcessorProcess | None = None
        self.settings: Settings | None = None
        self.kafka = "external"
        self.timings: dict[str, float] = {}
        self._created_topics = False

    @property
    def processor_log(self) -> Path:
        return self.tmp / "processor.log"

    def start_broker(self) -> Settings:
        t0 = time.monotonic()
        bootstrap = external_bootstrap()
        if bootstrap is None:
            self.broker = LocalBroker(data_dir=self.tmp / "kafka").start()
            bootstrap = self.broker.bootstrap_servers
            self.kafka = KAFKA_VERSION
        self.timings["broker_s"] = time.monotonic() - t0
        update: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "topic_prefix": f"sgbench-{self.name.lower()}-{self.run_id}",
            "processor_id": f"sluicegate-bench-{self.name.lower()}-{self.run_id}",
            "data_dir": self.tmp / "state",
            "session_timeout_s": 6.0,
            "dev_mode": False,
        }
        if self.partitions is not None:
            update["partitions"] = self.partitions
        # Settings() reads SLUICEGATE_* from the environment; the per-run fields override.
        self.settings = Settings().model_copy(update=update)
        ensure_core_topics(self.settings)
        self._created_topics = True
        return self.settings

    def start_processor(self) -> ProcessorProcess:
        assert self.settings is not None
        t0 = time.monotonic()
        self.processor = ProcessorProcess(self.settings, self.processor_log).start()
        self.timings["processor_s"] = time.monotonic() - t0
        return self.processor

    def stop_processor(self) -> None:
        if self.processor is not None:
            self.processor.stop()
            self.processor = None

    def child_pids(self) -> dict[str, int]:
        """The processor's and the local broker's pids, for CPU figures."""
        out: dict[str, int] = {}
        p = self.processor
        if p is not None and p.proc is not None:
            out["processor"] = p.proc.pid
        b = self.broker
        if b is not None and getattr(b, "_proc", None) is not None:
            out["broker"] = b._proc.pid
        return out

    def check_processor(self) -> None:
        """Raise if the processor child died (a real error)."""
        p = self.processor
        if p is not None and p.proc is not None and p.proc.poll() is not None:
            raise RuntimeError(f"the processor exited with {p.proc.returncode}:\n{p.tail()}")

    def stop(self) -> None:
        errors: list[str] = []
        if self.processor is not None:
            try:
                self.processor.stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(f"processor: {exc}")
            self.processor = None
        if self.keep_logs and self.processor_log.exists():
            dest = Path.cwd() / f"bench-{self.name}-processor.log"
            shutil.copyfile(self.processor_log, dest)
            print(f"processor log kept at {dest}", file=sys.stderr)
        if self.broker is None and self._created_topics:
            try:
                self.delete_topics()
            except Exception as exc:
                errors.append(f"topics: {exc}")
        if self.broker is not None:
            try:
                self.broker.stop()
            except Exception as exc:
                errors.append(f"broker: {exc}")
            self.broker = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            print("cleanup problems: " + "; ".join(errors), file=sys.stderr)

    def delete_topics(self, timeout: float = 30.0) -> None:
        """On an external broker: delete this run's topics (ours and faust's changelogs)."""
        from confluent_kafka.admin import AdminClient

        s = self.settings
        assert s is not None
        admin = AdminClient({"bootstrap.servers": s.bootstrap_servers, "log_level": 3})
        names = [t for t in admin.list_topics(timeout=timeout).topics
                 if t.startswith(s.topic_prefix + ".") or t.startswith(s.processor_id + "-")]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=timeout).values():
                fut.result(timeout)

    def base_settings_record(self) -> dict[str, Any]:
        s = self.settings
        assert s is not None
        return {
            "partitions": s.partitions,
            "acks": PRODUCER_ACKS,
            "linger_ms": PRODUCER_LINGER_MS,
            "kafka": self.kafka,
            "commit_interval_s": s.commit_interval_s,
            "worker_fetch_wait_max_ms": WORKER_FETCH_WAIT_MAX_MS,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values; NaN if empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def fmt_ms(value: float | None, width: int = 8) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    if value >= 1000:
        return f"{value:,.0f}".rjust(width)
    return f"{value:.1f}".rjust(width)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def clean_json(value: Any) -> Any:
    """Round floats, NaN -> None, so every result line is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 3)
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def emit_json(result: dict[str, Any]) -> None:
    print(json.dumps(clean_json(result), separators=(", ", ": ")), flush=True)
