"""B4's phases (bench/b4_noisy_neighbour.py): the idle baseline, M's burst and its drain, the
stage breakdown. The same code serves both tenant models (keys of one function, or apps) and
the FIFO baseline: what differs is passed in (the clients, the stack, the ledger).

Start latency of a quiet run = the step body's start (``time.time()`` in this process) − the
event's scheduled send time (carried in the event).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from .fairness_common import (EXECUTORS, CpuMeter, Ledger, PeriodicSenders, cpu_seconds, processor_caught_up,
                              send_in_lists, stats_ms, wait_until)

STEP_S = 0.05
QUIET = [f"A{i}" for i in range(1, 10)]
M_SEQ0 = 10_000_000  # M's seqs never collide with the quiet tenants'
CAPACITY = EXECUTORS / STEP_S  # steps/s M's executors can run

Sent = dict[tuple[str, int], float]


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, keyed ``name[tid]`` (the main thread: faust's event loop)."""
    import os

    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out["main (event loop)" if tid == str(pid) else f"{name}[{tid}]"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return out


class CpuTimeline(CpuMeter):
    """A :class:`CpuMeter` that also samples every ``every`` s, so any interval of the phase
    can be reported (:meth:`between`), with the busiest threads of the ``threads_of`` process."""

    def __init__(self, pids: dict[str, int], every: float = 0.5, threads_of: str = "processor") -> None:
        super().__init__(pids)
        self.every, self.threads_of = every, threads_of
        self.samples: list[tuple[float, dict[str, float | None], dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        tpid = self.pids.get(self.threads_of)
        self.samples.append((time.time(), {k: cpu_seconds(p) for k, p in self.pids.items()},
                             _thread_cpu(tpid) if tpid else {}))

    def start(self) -> "CpuTimeline":
        super().start()
        self._stop.clear()
        self._sample()

        def loop() -> None:
            while not self._stop.wait(self.every):
                self._sample()

        self._thread = threading.Thread(target=loop, name="cpu-timeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()
        return super().stop()

    def between(self, t0: float, t1: float, top_threads: int = 2) -> dict[str, float]:
        """% of one core per process from the sample nearest ``t0`` to the one nearest ``t1``,
        plus the ``top_threads`` busiest threads of the ``threads_of`` process."""
        if len(self.samples) < 2:
            return {}
        a = min(self.samples, key=lambda r: abs(r[0] - t0))
        b = min(self.samples, key=lambda r: abs(r[0] - t1))
        dt = b[0] - a[0]
        if dt <= 0:
            return {}
        out = {k: 100.0 * (b[1][k] - a[1][k]) / dt for k in self.pids
               if a[1].get(k) is not None and b[1].get(k) is not None}
        threads = sorted(((100.0 * (v - a[2][k]) / dt, k) for k, v in b[2].items() if k in a[2]), reverse=True)
        for pct, k in threads[:top_threads]:
            out[f"  {self.threads_of} thread {k}"] = pct
        return out


def cpu_text(result: dict[str, float]) -> str:
    return ", ".join(f"{k.strip()} {v:.0f}%" for k, v in result.items())


def latency(first: dict[tuple[str, int], tuple[float, float, float]], sent: Sent,
            gave_up: float) -> tuple[dict[str, float], int]:
    """Start latency stats of the ``sent`` events; a run not started counts as (gave_up - sent)."""
    lat, missing = [], 0
    for k, t_sent in sent.items():
        row = first.get(k)
        if row is None:
            missing += 1
            lat.append(gave_up - t_sent)
        else:
            lat.append(row[1] - t_sent)
    return stats_ms(lat), missing


def _by_group(first: dict, sent: Sent, gave_up: float, groups: dict[str, set[str]] | None) -> dict[str, Any]:
    """Latency of each group of tenants (``groups``: name -> tenants), groups without events left out."""
    out = {}
    for name, tenants in (groups or {}).items():
        part = {k: v for k, v in sent.items() if k[0] in tenants}
        if part:
            out[name] = latency(first, part, gave_up)
    return out


def _burst(make_client: Callable[[], Any], make_event: Any, n: int, stop: threading.Event,
           out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        client = make_client()
        try:
            events = [make_event("M", M_SEQ0 + i, 0.0) for i in range(n)]
            t0 = time.time()
            out["sent"] = send_in_lists(client, events, stop=stop)
            out["send_s"] = time.time() - t0
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc
        finally:
            try:
                client.close()
            except Exception:
                pass
            if hasattr(client, "_producer"):
                client._producer = None

    th = threading.Thread(target=run, name="burst-M", daemon=True)
    th.start()
    return th


def _drain(ledger: Ledger, n: int, t0: float, timeout: float, alive: Any, label: str) -> tuple[bool, float]:
    """Wait for M's n completions (progress every 10 s); returns (drained, end time)."""
    next_report = time.monotonic() + 10
    deadline = time.monotonic() + timeout
    while ledger.count("M") < n and time.monotonic() < deadline:
        if alive is not None:
            alive()
        time.sleep(0.05)
        if time.monotonic() >= next_report:
            next_report += 10
            print(f"    {label}: M completed {ledger.count('M')}/{n} after {time.time() - t0:.0f} s", flush=True)
    done = ledger.count("M") >= n
    if done:
        end = max(r[4] for r in ledger.snapshot() if r[0] == "M")
    else:
        end = time.time()
    return done, end


def _watch_ingest(fs: Any, burst: threading.Thread, stop: threading.Event, info: dict[str, Any]) -> None:
    """Once the burst is sent: when has the processor handled (committed) all of M's events
    and then all of their triggers — i.e. when is all of M's backlog in the dispatcher's hands."""
    try:
        burst.join()
        s = fs.settings
        if processor_caught_up(s, [s.events_topic, s.commands_topic, s.results_topic], 1e9, stop=stop):
            info["ingested_at"] = time.time()
    except Exception as exc:  # the figures stand without it
        print(f"    (ingest watch failed: {exc!r})", flush=True)


def burst_phase(label: str, ledger: Ledger, senders: PeriodicSenders, make_client: Callable[[], Any],
                make_event: Any, n: int, timeout: float, alive: Any, cpu: CpuMeter | None, fs: Any = None,
                groups: dict[str, set[str]] | None = None) -> dict[str, Any]:
    """M sends ``n`` events (``make_client()`` is M's client) while the quiet senders go on;
    ``fs`` (a stack with ``settings``) adds the ingest watch; ``groups`` adds latency per group."""
    stop = threading.Event()
    info: dict[str, Any] = {}
    if cpu is not None:
        cpu.start()
    t0 = time.time()
    th = _burst(make_client, make_event, n, stop, info)
    watch = None
    if fs is not None:
        watch = threading.Thread(target=_watch_ingest, args=(fs, th, stop, info), name="ingest-watch", daemon=True)
        watch.start()
    drained, end = _drain(ledger, n, t0, timeout, alive, label)
    stop.set()
    th.join(30)
    if watch is not None:
        watch.join(15)
    if cpu is not None:
        cpu.stop()
    if "error" in info:
        raise RuntimeError(f"{label}: the burst send failed: {info['error']!r}") from info["error"]
    quiet_sent = senders.sent_between(t0, end)
    wait_until(lambda: ledger.has_all(quiet_sent), 5.0)
    gave_up = time.time()
    first = ledger.first()
    lat, missing = latency(first, quiet_sent, gave_up)
    ingested = info.get("ingested_at")  # split: quiet events sent before / after M's backlog was in
    split = {name: latency(first, {k: v for k, v in quiet_sent.items() if (v < ingested) == before}, gave_up)
             for name, before in (("before", True), ("after", False))} if ingested else {}
    m_rows = [v for k, v in first.items() if k[0] == "M"]
    m_done = len(m_rows)
    m_first = min((r[1] for r in m_rows), default=math.nan)
    m_last = max((r[2] for r in m_rows), default=math.nan)
    span = (m_last - m_first) if m_done > 1 else math.nan
    quiet_rate = len(quiet_sent) / max(end - t0, 1e-6)  # quiet steps/s offered during the drain
    spare = CAPACITY - quiet_rate  # each quiet run is one step
    m_rate = m_done / span if span and span > 0 else math.nan
    m_after = sum(1 for r in m_rows if ingested and r[2] > ingested)
    m_rate_after = m_after / (m_last - ingested) if ingested and m_last > ingested else math.nan
    print(f"  {label}: M {m_done}/{n} done in {end - t0:.1f} s ({'drained' if drained else 'TIMED OUT'}; "
          f"sent {info.get('sent', 0)} in {info.get('send_s', math.nan):.1f} s), drain rate {m_rate:.0f}/s, "
          f"quiet p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms over {lat['n']} runs, missing {missing}"
          + (f"; CPU {cpu.text()}" if cpu is not None else ""), flush=True)
    return {"lat": lat, "missing": missing, "drained": drained, "m_done": m_done, "m_n": n, "m_rate": m_rate,
            "m_rate_from_t0": m_done / max(end - t0, 1e-6), "duration_s": end - t0, "quiet_rate": quiet_rate,
            "spare": spare, "burst_sent": info.get("sent", 0), "burst_send_s": info.get("send_s"),
            "quiet_keys": list(quiet_sent), "cpu": dict(cpu.result) if cpu is not None else {},
            "ingest_s": ingested - t0 if ingested else None, "split": split, "m_rate_after_ingest": m_rate_after,
            "groups": _by_group(first, quiet_sent, gave_up, groups),
            "cpu_split": ({"until ingested": cpu.between(t0, ingested), "after": cpu.between(ingested, end)}
                          if isinstance(cpu, CpuTimeline) and ingested else {})}


def idle_phase(label: str, ledger: Ledger, senders: PeriodicSenders, t0: float, seconds: float,
               groups: dict[str, set[str]] | None = None) -> dict[str, Any]:
    time.sleep(max(0.0, t0 + seconds - time.time()))
    sent = senders.sent_between(t0, t0 + seconds - 1.0)
    wait_until(lambda: ledger.has_all(sent), 5.0)
    gave_up = time.time()
    first = ledger.first()
    lat, missing = latency(first, sent, gave_up)
    print(f"  {label}: quiet p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms over {lat['n']} runs, "
          f"missing {missing}", flush=True)
    return {"lat": lat, "missing": missing, "quiet_keys": list(sent), "groups": _by_group(first, sent, gave_up, groups)}


def stages(keys: list[tuple[str, int]], bd: dict[int, dict[str, float]], ledger: Ledger) -> dict[str, dict]:
    """event->trigger, trigger->job (Kafka CreateTimes) and job->step start of the ``keys``
    (``bd``: seq -> CreateTime ms of event, trigger, job; seqs are unique across tenants)."""
    first = ledger.first()
    st: dict[str, list[float]] = {"event->trigger": [], "trigger->job": [], "job->start": []}
    for k in keys:
        rec = bd.get(k[1], {})
        if "event" in rec and "trigger" in rec:
            st["event->trigger"].append((rec["trigger"] - rec["event"]) / 1000)
        if "trigger" in rec and "job" in rec:
            st["trigger->job"].append((rec["job"] - rec["trigger"]) / 1000)
        if "job" in rec and k in first:
            st["job->start"].append(first[k][1] - rec["job"] / 1000)
    return {name: stats_ms(v) for name, v in st.items()}
