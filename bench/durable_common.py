"""Shared pieces of the durable-step benchmarks B2 (step gap), B9 (timers) and B10 (event
matching): one app whose functions the benchmark defines, one in-process worker, a ledger the
steps write, and read-back of Kafka CreateTime stamps for a per-stage breakdown.

Every time is ``time.time()`` on this machine (broker, processor, worker and senders share
one clock); Kafka CreateTime is set by the producing client at ``produce()`` (ms).
"""

from __future__ import annotations

import gc
import json
import math
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Hashable, Iterable

from sluicegate.sdk import Sluicegate
from sluicegate.sdk.errors import StepInterrupt
from sluicegate.settings import Settings

from .b1_latency import _read_topic
from .fairness_common import CpuMeter, stop_worker_quietly
from .harness import BenchStack, fmt_ms, percentile


class Marks:
    """key -> {name: value}, written from inside steps (thread-safe). The first value of a
    name wins, so a step that runs twice (a retry or a lease expiry) keeps its first mark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_key: dict[Hashable, dict[Hashable, Any]] = {}
        self._counts: Counter[Hashable] = Counter()
        self.repeats = 0  # marks written again for a name that already had one

    def put(self, key: Hashable, name: Hashable, value: Any = None) -> None:
        value = time.time() if value is None else value
        with self._lock:
            d = self.by_key.setdefault(key, {})
            if name in d:
                self.repeats += 1
            else:
                d[name] = value
                self._counts[name] += 1

    def count(self, name: Hashable) -> int:
        with self._lock:
            return self._counts[name]

    def get(self, key: Hashable, name: Hashable) -> Any:
        with self._lock:
            return self.by_key.get(key, {}).get(name)

    def column(self, name: Hashable, keys: Iterable[Hashable] | None = None) -> dict[Hashable, Any]:
        with self._lock:
            keys = list(self.by_key) if keys is None else keys
            return {k: self.by_key[k][name] for k in keys if name in self.by_key.get(k, {})}


def noting_op(marks: Marks, key: Hashable, name: str, call: Callable[[], Any]) -> Any:
    """Call a durable step (``step.sleep`` / ``step.wait_for_event``). When this call is the
    one that hands the op to the engine (not a look-ahead, not a replay), mark ``name`` now:
    the worker produces the op's outcome right after this returns."""
    try:
        return call()
    except StepInterrupt as stop:
        if stop.outcome.get("op") in ("sleep", "wait"):
            marks.put(key, name)
        raise


class DurableStack:
    """BenchStack plus one app (the benchmark defines its functions) and one worker of
    ``executors`` slots; with ``executors`` the processor's dispatch window is the same."""

    def __init__(self, name: str, *, executors: int | None = None, partitions: int | None = None,
                 keep_logs: bool = False) -> None:
        self.name = name
        self.executors = executors
        self.stack = BenchStack(name, partitions=partitions, keep_logs=keep_logs)
        self.sg: Sluicegate | None = None
        self.worker: Any = None
        self.app_id = ""

    def start(self, define: Callable[[Sluicegate], None]) -> Settings:
        settings = self.stack.start_broker()
        if self.executors is not None:
            settings = self.stack.settings = settings.model_copy(update={"dispatch_window": self.executors})
        self.settings = settings
        self.app_id = f"bench-{self.name.lower()}-{self.stack.run_id}"
        self.sg = Sluicegate(app_id=self.app_id, settings=settings)
        define(self.sg)
        self.worker = self.sg.worker(concurrency=self.executors).start()
        self.stack.start_processor()
        return settings

    def describe(self) -> str:
        s, w = self.settings, self.worker
        return (f"broker {s.bootstrap_servers} (kafka {self.stack.kafka}, {self.stack.timings['broker_s']:.1f} s), "
                f"processor ready in {self.stack.timings['processor_s']:.1f} s; partitions {s.partitions}, "
                f"dispatch_window {s.dispatch_window}, 1 worker of concurrency {w.concurrency}")

    def alive(self) -> None:
        self.stack.check_processor()
        w = self.worker
        if w is not None and w._thread is not None and not w._thread.is_alive():
            raise RuntimeError("the worker thread died (see the log above)")

    def prime(self, event: dict[str, Any], done: Callable[[], bool], timeout: float = 90.0) -> float:
        """One run all the way through (groups joined, registry read, topics warm)."""
        assert self.sg is not None
        t0 = time.monotonic()
        self.sg.send(event)
        if not wait_progress(lambda: int(done()), 1, self.alive, stall_s=timeout)[0]:
            raise RuntimeError(f"the priming run did not finish within {timeout:.0f} s:\n{self.stack.processor.tail() if self.stack.processor else ''}")
        return time.monotonic() - t0

    def cpu(self) -> CpuMeter:
        """CPU per process (this one runs the worker and the senders) from now to ``.stop()``."""
        return CpuMeter({"bench+worker": os.getpid(), **self.stack.child_pids()}).start()

    def record(self, **extra: Any) -> dict[str, Any]:
        return {**self.stack.base_settings_record(), "workers": 1, "worker_concurrency": self.worker.concurrency,
                "dispatch_window": self.settings.dispatch_window, **extra}

    def processor_errors(self, limit: int = 5) -> list[str]:
        """WARNING / ERROR / CRITICAL / Traceback lines of the processor log (every benchmark prints them)."""
        try:
            lines = self.stack.processor_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        bad = [ln for ln in lines if any(w in ln for w in ("[WARNING]", "[ERROR]", "[CRITICAL]", "Traceback"))]
        return bad[:limit] + ([f"... and {len(bad) - limit} more"] if len(bad) > limit else [])

    def close(self) -> None:
        w, self.worker = self.worker, None
        if w is not None:
            stop_worker_quietly(w, 5.0)
        if self.sg is not None:
            try:
                self.sg.close()
            except Exception:
                pass
            self.sg._producer = None  # destroy the librdkafka handle before the broker stops
        gc.collect()
        self.stack.stop()


def wait_progress(count: Callable[[], int], target: int, alive: Callable[[], None], *, stall_s: float,
                  every: float = 0.1, label: str = "", report_s: float = 15.0) -> tuple[bool, float]:
    """Wait until ``count() >= target``; give up after ``stall_s`` without any progress.
    With a ``label``, print the count and its rate every ``report_s``. Returns (reached, seconds)."""
    t0 = last_change = last_report = time.monotonic()
    last, reported = -1, count()
    while True:
        n = count()
        now = time.monotonic()
        if n >= target:
            return True, now - t0
        if n != last:
            last, last_change = n, now
        elif now - last_change > stall_s:
            return False, now - t0
        if label and now - last_report >= report_s:
            print(f"    {label}: {n:,} of {target:,} ({(n - reported) / (now - last_report):.0f}/s over the last "
                  f"{now - last_report:.0f} s)", flush=True)
            last_report, reported = now, n
        alive()
        time.sleep(every)


def read_app_records(settings: Settings, topic: str, app_id: str,
                     keep: Callable[[dict[str, Any]], bool] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(CreateTime ms, record) of every JSON record of ``app_id`` in ``topic``."""
    out = []
    needle = app_id.encode()
    for ts, value in _read_topic(settings, topic, timeout=300.0):
        if not value or needle not in value:
            continue
        rec = json.loads(value)
        if rec.get("app_id") == app_id and (keep is None or keep(rec)):
            out.append((ts, rec))
    return out


def first_ts(records: Iterable[tuple[int, dict[str, Any]]], key: Callable[[dict[str, Any]], Hashable]) -> dict:
    """key(record) -> the earliest CreateTime among the records with that key."""
    out: dict[Hashable, int] = {}
    for ts, rec in records:
        k = key(rec)
        if k not in out or ts < out[k]:
            out[k] = ts
    return out


def dist(values: Iterable[float]) -> dict[str, float]:
    v = sorted(values)
    nan = math.nan
    return {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99),
            "max": v[-1] if v else nan, "mean": sum(v) / len(v) if v else nan}


def target_text(value: float, target: float | None) -> str:
    text = fmt_ms(value, 0)
    if target is None or math.isnan(value):
        return text
    return f"{text} (≤{target:g} {'ok' if value <= target else 'MISS'})"


def pair(d: dict[str, float]) -> str:
    return f"{fmt_ms(d['p50'], 0)} / {fmt_ms(d['p99'], 0)}"


def print_notes(ds: DurableStack, marks: Marks, stages: dict[str, dict[str, float]], what: str,
                log: bool = True) -> None:
    """The stage breakdown, then (``log``) steps that ran twice and what the processor log
    complained of."""
    if stages:
        print(f"  {what}, p50 / p99 ms (Kafka CreateTime, whole ms): "
              + ", ".join(f"{k} {pair(v)}" for k, v in stages.items()))
    if not log:
        return
    if marks.repeats:
        print(f"NOTE: {marks.repeats} ledger mark(s) written again (a step ran twice: retry or lease expiry); "
              "the first is kept")
    for line in ds.processor_errors():
        print(f"processor log: {line}")


def stage_fields(stages: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {"stages_p50_ms": {k: v["p50"] for k, v in stages.items()},
            "stages_p99_ms": {k: v["p99"] for k, v in stages.items()}}
