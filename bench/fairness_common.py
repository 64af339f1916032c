"""Shared pieces of the fairness benchmarks B4, B5 and B6 (BENCHMARKS.md).

Semantics. A "tenant" of a function is the value of its concurrency (or fairness) key: the
dispatcher does weighted deficit round-robin across the keys of one function of one app
(``processors/dispatch/fair_selection.py``), so the benchmarks' tenants are keys of ONE
function: ``concurrency=[Concurrency(limit=L, key="event.data.<field>")]``. With ``L`` = the
executors' capacity one tenant alone can use every executor. (B4's ``--tenants apps`` models
tenants as separate apps instead: ``bench/b4_apps.py``.)

Capacity. One in-process worker runs ``concurrency=EXECUTORS`` jobs at once, and the
processor's in-flight window (``dispatch_window``, per app per work partition) is set to the
same number, so jobs never queue in ``sg.work.<app>`` behind more than the executors can
take. The runs use ``partitions=1`` by default so all the function's work shares ONE window
(with more partitions each work partition has its own window of that size).

Measurement. Every step appends ``(tenant, seq, sent, start, end)`` to an in-process
:class:`Ledger` (``time.time()`` on this machine's clock; ``sent`` travels in the event), so
completions are counted where they happen, never by polling the HTTP API.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from confluent_kafka import Consumer, TopicPartition

from sluicegate.sdk import Concurrency, Sluicegate
from sluicegate.settings import Settings

from .harness import BenchStack, percentile

EXECUTORS = 50
SEND_BATCH = 500  # events per sg.send call for bursts


# -- the ledger -----------------------------------------------------------------------------------


class Ledger:
    """Rows ``(tenant, seq, sent, start, end)`` written from inside steps (thread-safe).

    A step that runs twice (a retry or a lease expiry) keeps its first row in :meth:`first`.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[str, int, float, float, float]] = []
        self.done: Counter[str] = Counter()

    def add(self, tenant: str, seq: int, sent: float, start: float, end: float) -> None:
        with self.lock:
            self.rows.append((tenant, seq, sent, start, end))
            self.done[tenant] += 1

    def count(self, tenant: str) -> int:
        with self.lock:
            return self.done[tenant]

    def snapshot(self) -> list[tuple[str, int, float, float, float]]:
        with self.lock:
            return list(self.rows)

    def has_all(self, keys: Iterable[tuple[str, int]]) -> bool:
        with self.lock:
            seen = {(r[0], r[1]) for r in self.rows}
        return all(k in seen for k in keys)

    def first(self) -> dict[tuple[str, int], tuple[float, float, float]]:
        """(tenant, seq) -> (sent, start, end) of the first execution."""
        out: dict[tuple[str, int], tuple[float, float, float]] = {}
        for tenant, seq, sent, start, end in self.snapshot():
            prev = out.get((tenant, seq))
            if prev is None or start < prev[1]:
                out[(tenant, seq)] = (sent, start, end)
        return out


def sleep_work(ledger: Ledger, seconds: float, gate: threading.Event | None = None) -> Callable[..., Any]:
    """A one-step handler: the step records its start, sleeps ``seconds`` and records its end.
    With a ``gate`` the step waits for it first (its start is taken after the gate)."""

    def handler(ctx: Any, step: Any) -> None:
        d = ctx.event["data"]

        def work() -> None:
            if gate is not None:
                gate.wait()
            start = time.time()
            if seconds > 0:
                time.sleep(seconds)
            ledger.add(str(d["tenant"]), int(d["seq"]), float(d.get("sent") or 0.0), start, time.time())

        step.run("work", work)

    return handler


# -- the stack: broker, processor with the window, one worker --------------------------------------


def stop_worker_quietly(w: Any, timeout: float) -> None:
    """Stop a worker for good; a cleanup error is printed, never raised."""
    try:
        if w._thread is not None:
            w.stop(timeout)
        w._producer.flush(5)
    except Exception as exc:
        print(f"cleanup: worker: {exc!r}", file=sys.stderr)
    w._producer = None  # destroy the librdkafka handle before the broker stops


@dataclass
class FairStack:
    """BenchStack plus one app, one keyed function, one worker of ``executors`` slots."""

    name: str
    key_field: str = "tenant"
    limit: int = EXECUTORS
    executors: int = EXECUTORS
    partitions: int = 1
    keep_logs: bool = False
    stack: BenchStack = field(init=False)
    settings: Settings = field(init=False)
    sg: Sluicegate = field(init=False)
    worker: Any = None
    app_id: str = ""
    event_name: str = ""
    function_id: str = ""

    def __post_init__(self) -> None:
        self.stack = BenchStack(self.name, partitions=self.partitions, keep_logs=self.keep_logs)

    def start(self, handler: Callable[..., Any], *, start_worker: bool = True) -> "FairStack":
        settings = self.stack.start_broker()
        # the processor child gets dispatch_window from these settings (ProcessorProcess.env)
        self.settings = self.stack.settings = settings.model_copy(update={"dispatch_window": self.executors})
        lower = self.name.lower()
        self.app_id = f"bench-{lower}-{self.stack.run_id}"
        self.event_name = f"bench/{lower}"
        self.function_id = f"{lower}-work"
        self.sg = Sluicegate(app_id=self.app_id, settings=self.settings)
        self.sg.function(id=self.function_id, trigger=self.event_name, retries=0,
                         concurrency=[Concurrency(limit=self.limit, key=f"event.data.{self.key_field}")])(handler)
        self.worker = self.sg.worker(concurrency=self.executors)
        if start_worker:
            self.worker.start()
        else:
            self.worker.register()  # the processor must know the function before events arrive
        self.stack.start_processor()
        return self

    def describe(self) -> str:
        s = self.settings
        return (f"broker {s.bootstrap_servers} (kafka {self.stack.kafka}, {self.stack.timings['broker_s']:.1f} s), "
                f"processor ready in {self.stack.timings['processor_s']:.1f} s; partitions {s.partitions}, "
                f"dispatch_window {s.dispatch_window}, worker concurrency {self.executors}, "
                f"concurrency limit {self.limit} per event.data.{self.key_field}")

    def event(self, tenant: str, seq: int, sent: float | None = None, **extra: Any) -> dict[str, Any]:
        return {"name": self.event_name, "data": {self.key_field: tenant, "tenant": tenant, "seq": seq,
                                                  "sent": sent, **extra}}

    def alive(self) -> None:
        self.stack.check_processor()
        w = self.worker
        if w is not None and w._thread is not None and not w._thread.is_alive():
            raise RuntimeError("the worker thread died (see the log above)")

    def prime(self, ledger: Ledger, timeout: float = 60.0) -> float:
        """One event all the way through (registry read, groups joined, topics warm)."""
        t0 = time.monotonic()
        self.sg.send(self.event("prime", -100, time.time()))
        while ledger.count("prime") < 1:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the first event did not reach its step within {timeout:.0f} s:\n"
                                   f"{self.stack.processor.tail() if self.stack.processor else ''}")
            self.alive()
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop_worker(self, timeout: float = 5.0) -> None:
        w, self.worker = self.worker, None
        if w is not None:
            stop_worker_quietly(w, timeout)

    def stop_processor(self) -> None:
        self.stack.stop_processor()

    def close(self) -> None:
        self.stop_worker()
        try:
            self.sg.close()
        except Exception:
            pass
        self.sg._producer = None
        gc.collect()
        self.stack.stop()

    def pids(self) -> dict[str, int]:
        out = {"bench (worker + senders)": os.getpid()}
        out.update(self.stack.child_pids())
        return out


def wait_until(cond: Callable[[], bool], timeout: float, alive: Callable[[], None] | None = None,
               every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        if alive is not None:
            alive()
        time.sleep(every)
    return True


# -- senders --------------------------------------------------------------------------------------


def send_in_lists(client: Any, events: list[dict[str, Any]], batch: int = SEND_BATCH,
                  stop: threading.Event | None = None, stamp: bool = True) -> int:
    """``client.send`` the events in lists of ``batch`` (stamping ``sent`` at each call);
    returns how many were sent (stops early when ``stop`` is set)."""
    n = 0
    for i in range(0, len(events), batch):
        if stop is not None and stop.is_set():
            break
        chunk = events[i:i + batch]
        if stamp:
            now = time.time()
            for e in chunk:
                e["data"]["sent"] = now
        client.send(chunk)
        n += len(chunk)
    return n


class PeriodicSenders:
    """One thread per tenant, each with its own client, sending one event every ``1/rate`` s
    at absolute scheduled times (tenant i offset by i/n of a period). The event carries its
    scheduled time as ``sent``; if a send falls behind, the scheduled time stays the
    reference (no coordinated omission). With ``per_tenant`` the client is
    ``make_client(tenant)`` (e.g. tenants that are apps, each with its own ``Sluicegate``)."""

    def __init__(self, make_client: Callable[..., Any], make_event: Callable[[str, int, float], dict[str, Any]],
                 tenants: list[str], rate: float = 1.0, per_tenant: bool = False) -> None:
        self.make_client, self.make_event, self.per_tenant = make_client, make_event, per_tenant
        self.tenants, self.period = tenants, 1.0 / rate
        self.sent: dict[tuple[str, int], float] = {}
        self.errors: list[BaseException] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[Any] = []

    def start(self) -> "PeriodicSenders":
        """Each client first sends one warm-up event (tenant ``warmup``, not measured): a new
        producer's first record waits for its connection and idempotent-producer id (~0.5 s)."""
        self._stop.clear()
        for i, tenant in enumerate(self.tenants):
            client = self.make_client(tenant) if self.per_tenant else self.make_client()
            client.send(self.make_event("warmup", -1 - i, time.time()))
            self._clients.append(client)
        t0 = time.time() + 0.1
        for i, (tenant, client) in enumerate(zip(self.tenants, self._clients)):
            th = threading.Thread(target=self._loop, args=(client, tenant, t0 + i * self.period / len(self.tenants)),
                                  name=f"sender-{tenant}", daemon=True)
            self._threads.append(th)
            th.start()
        return self

    def _loop(self, client: Any, tenant: str, when: float) -> None:
        try:
            while not self._stop.is_set():
                delay = when - time.time()
                if delay > 0 and self._stop.wait(delay):
                    return
                with self._lock:
                    seq = self._seq
                    self._seq += 1
                client.send(self.make_event(tenant, seq, when))
                with self._lock:
                    self.sent[(tenant, seq)] = when
                when += self.period
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(30)
        self._threads = []
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
            if hasattr(c, "_producer"):
                c._producer = None
        self._clients = []
        if self.errors:
            raise RuntimeError(f"a periodic sender failed: {self.errors[0]!r}") from self.errors[0]

    def sent_between(self, t0: float, t1: float) -> dict[tuple[str, int], float]:
        with self._lock:
            return {k: v for k, v in self.sent.items() if t0 <= v < t1}


def processor_caught_up(settings: Settings, topics: Iterable[str], timeout: float,
                        alive: Callable[[], None] | None = None, stop: threading.Event | None = None) -> bool:
    """Wait until the processor group has committed every record of ``topics`` that existed
    when that topic's turn came (in order: the end of a later topic is read once the earlier
    one is committed, so it includes what the processor wrote there meanwhile; newer records
    never hold it back). faust commits every ``commit_interval_s``: up to that much late."""
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.processor_id,
                  "enable.auto.commit": False, "log_level": 3})
    deadline = time.monotonic() + timeout
    try:
        for t in topics:
            parts = [TopicPartition(t, p) for p in c.list_topics(t, timeout=10).topics[t].partitions]
            marks = {tp.partition: c.get_watermark_offsets(tp, timeout=10) for tp in parts}
            # a partition that never had a record (or whose records all expired) has no
            # commit (offset -1001): nothing to wait for there
            parts = [tp for tp in parts if marks[tp.partition][1] > marks[tp.partition][0]]
            while parts and any(tp.offset < marks[tp.partition][1] for tp in c.committed(parts, timeout=10)):
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    return False
                if alive is not None:
                    alive()
                time.sleep(0.2)
        return True
    finally:
        c.close()


# -- CPU per process ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU use (% of one core) of some processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = 0.0
        self.c0: dict[str, float | None] = {}
        self.result: dict[str, float] = {}

    def start(self) -> "CpuMeter":
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        dt = max(time.monotonic() - self.t0, 1e-6)
        for k, p in self.pids.items():
            c1, c0 = cpu_seconds(p), self.c0.get(k)
            if c1 is not None and c0 is not None:
                self.result[k] = 100.0 * (c1 - c0) / dt
        return self.result

    def text(self) -> str:
        return ", ".join(f"{k} {v:.0f}%" for k, v in self.result.items())


# -- statistics -----------------------------------------------------------------------------------


def stats_ms(values_s: Iterable[float]) -> dict[str, float]:
    v = sorted(x * 1000.0 for x in values_s)
    nan = float("nan")
    return {"n": len(v), "p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99),
            "max": v[-1] if v else nan, "mean": sum(v) / len(v) if v else nan}


def jain(values: list[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 = equal, 1/n = one takes all."""
    sq = sum(x * x for x in values)
    return (sum(values) ** 2) / (len(values) * sq) if sq > 0 else float("nan")


def met_text(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")
