"""REPLAY — a live tenant's start latency while a large replay runs (issue 6: "a replay of 20k
events runs while a live tenant's events still start within the B4 bound").

Workload: one app, one function ``work`` (default flow control, ``retries=0``) whose single
``step.run`` sleeps ``STEP_S`` (5 ms); one in-process worker of ``EXECUTORS`` (50) slots and
the processor's dispatch window of the same size, one partition by default (as B4).

1. history: tenant ``hist`` sends N events (20k, ``--quick`` 5k) in ``sg.send`` lists of
   ≤ 5,000; wait until every one ran once.
2. idle baseline: tenant ``live`` sends 1 event/s (open loop, absolute schedule) for
   ``BASELINE_S`` (10 s, quick 5 s); start latency = step start − scheduled send time.
3. replay: a ``ReplayStart`` of the history's time range (``time_ranges`` → offsets of the
   app's ``sg.events`` partition) for function ``work`` goes to ``sg.commands``, as
   ``POST /v1/replays`` sends it; ``live`` keeps sending 1 event/s. The replay is over when
   every history event ran a second time under a new run id (the ledger keeps run ids per
   event, so a step that re-ran in the same run — a lease expiry — is not counted as
   replayed). Live events scheduled from the replay command to that moment are measured.

Target (BENCHMARKS.md B4): live p99 ≤ 2× the idle baseline p99 and ≤ 50 ms. Also printed:
replayed runs/s and the total replay time, the replay's own progress record (``sg.stats``
key ``replay/<id>``: events read, runs created, when reading finished), live latency split
by whether the replay was still reading (its record not yet ``done``) when the event was
sent, a per-stage breakdown of the live runs from Kafka CreateTimes (event -> trigger:
router; trigger -> job: function processor; job -> step start: worker), and CPU per process.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from typing import Any

from sluicegate.events import new_event_id
from sluicegate.ingest.replay_api import time_ranges
from sluicegate.kafka_clients import CompactedView, SyncProducer
from sluicegate.processors.replay_stage import replay_key
from sluicegate.sdk import Sluicegate
from sluicegate.wire import ReplaySpec, ReplayStart

from .durable_common import DurableStack, dist, pair, read_app_records, target_text, wait_progress
from .fairness_common import PeriodicSenders, wait_until
from .harness import emit_json, fmt_ms, print_table

EVENT = "bench/replay"
FUNCTION_ID = "work"
STEP_S = 0.005
EXECUTORS = 50
SEND_BATCH = 5000  # events per sg.send (the per-request limit)
HIST, LIVE = "hist", "live"
TARGET_FACTOR = 2.0
TARGET_P99_MS = 50.0


class RunLedger:
    """(tenant, seq) -> {run_id: (sent, step start)}, written from inside the step (thread-safe).

    An event's first run id is its original run; a later, different run id is a replayed run.
    The same run id again (a step re-run after a lease expiry) keeps its first start."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        self.firsts: Counter[str] = Counter()  # events of a tenant that ran at least once
        self.replayed = 0  # history events that ran under a second run id
        self.extra_runs = 0  # a third (or later) run id for one event
        self.repeats = 0  # the same run's step ran again
        self.replay_starts: list[float] = []

    def add(self, tenant: str, seq: int, sent: float, run_id: str, start: float) -> None:
        with self.lock:
            runs = self.runs.setdefault((tenant, seq), {})
            if run_id in runs:
                self.repeats += 1
                return
            runs[run_id] = (sent, start)
            if len(runs) == 1:
                self.firsts[tenant] += 1
            elif len(runs) == 2:
                self.replayed += 1
                self.replay_starts.append(start)
            else:
                self.extra_runs += 1

    def count(self, tenant: str) -> int:
        with self.lock:
            return self.firsts[tenant]

    def replayed_count(self) -> int:
        with self.lock:
            return self.replayed

    def first_start(self, key: tuple[str, int]) -> float | None:
        with self.lock:
            runs = self.runs.get(key)
            return None if not runs else min(start for _sent, start in runs.values())

    def has_all(self, keys: list[tuple[str, int]]) -> bool:
        with self.lock:
            return all(k in self.runs for k in keys)

    def starts_of(self, tenant: str) -> list[float]:
        with self.lock:
            return [min(s for _x, s in runs.values()) for (t, _seq), runs in self.runs.items() if t == tenant]


def _latency(ledger: RunLedger, sent: dict[tuple[str, int], float], gave_up: float) -> tuple[dict[str, float], int]:
    """Start latency (ms) of the ``sent`` live events; one never started counts as gave_up − sent."""
    lat, missing = [], 0
    for key, t_sent in sent.items():
        start = ledger.first_start(key)
        if start is None:
            missing += 1
            start = gave_up
        lat.append((start - t_sent) * 1000.0)
    return dist(lat), missing


def _breakdown(ds: DurableStack, ledger: RunLedger,
               windows: dict[str, dict[tuple[str, int], float]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per window of live events: event -> trigger (router), trigger -> job (function processor:
    the commands partition and the dispatcher), job -> step start (worker), from Kafka CreateTimes."""
    s = ds.settings
    try:
        ev: dict[int, int] = {}
        for ts, rec in read_app_records(s, s.events_topic, ds.app_id,
                                        lambda r: (r.get("data") or {}).get("tenant") == LIVE):
            ev.setdefault(rec["data"]["seq"], ts)
        trig: dict[int, int] = {}
        run_seq: dict[str, int] = {}
        for ts, rec in read_app_records(s, s.commands_topic, ds.app_id, lambda r: r.get("kind") == "trigger"):
            events = rec.get("events") or []
            d = (events[0].get("data") or {}) if events else {}
            if d.get("tenant") == LIVE and isinstance(d.get("seq"), int):
                run_seq[rec["run_id"]] = d["seq"]
                trig.setdefault(d["seq"], ts)
        job: dict[int, int] = {}
        for ts, rec in read_app_records(s, s.work_topic(ds.app_id), ds.app_id):
            seq = run_seq.get(rec.get("run_id"))
            if seq is not None and not rec.get("memos") and (seq not in job or ts < job[seq]):
                job[seq] = ts
    except Exception as exc:  # the figures above stand without it
        print(f"  (breakdown unavailable: {exc!r})")
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, sent in windows.items():
        parts: dict[str, list[float]] = {"event->trigger": [], "trigger->job": [], "job->start": []}
        for key in sent:
            seq = key[1]
            start = ledger.first_start(key)
            if seq in ev and seq in trig:
                parts["event->trigger"].append(float(trig[seq] - ev[seq]))
            if seq in trig and seq in job:
                parts["trigger->job"].append(float(job[seq] - trig[seq]))
            if seq in job and start is not None:
                parts["job->start"].append(start * 1000.0 - job[seq])
        out[name] = {k: dist(v) for k, v in parts.items()}
    return out


def _stats_decode(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None


def main(quick: bool = False, duration: float | None = None, partitions: int | None = None,
         keep_logs: bool = False, pace: float | None = None, **_: Any) -> list[dict[str, Any]]:
    n = 5_000 if quick else 20_000
    baseline_s = duration if duration is not None else (5.0 if quick else 10.0)
    parts = 1 if partitions is None else partitions
    ledger = RunLedger()
    ds = DurableStack("REPLAY", executors=EXECUTORS, partitions=parts, keep_logs=keep_logs)
    senders: PeriodicSenders | None = None
    view: CompactedView | None = None
    producer: SyncProducer | None = None
    try:
        print(f"REPLAY: live start latency while a replay of {n:,} events runs; one function, one "
              f"{STEP_S * 1000:g} ms step, {EXECUTORS} executors, live tenant at 1 event/s, "
              f"{baseline_s:g} s idle baseline{' (quick)' if quick else ''}", flush=True)

        def define(sg: Sluicegate) -> None:
            @sg.function(id=FUNCTION_ID, trigger=EVENT, retries=0)
            def work(ctx: Any, step: Any) -> None:
                d = ctx.event["data"]
                run_id = ctx.run_id

                def body() -> None:
                    start = time.time()
                    time.sleep(STEP_S)
                    ledger.add(str(d["tenant"]), int(d["seq"]), float(d.get("sent") or 0.0), run_id, start)

                step.run("work", body)

        settings = ds.start(define)
        print("  " + ds.describe(), flush=True)
        primed = ds.prime({"name": EVENT, "data": {"tenant": "prime", "seq": -100, "sent": time.time()}},
                          lambda: ledger.count("prime") >= 1)
        print(f"  priming run done after {primed:.1f} s (discarded)", flush=True)
        assert ds.sg is not None

        # -- 1. history ---------------------------------------------------------------------
        time.sleep(0.05)
        since_ms = int(time.time() * 1000)
        t_h0 = time.time()
        for i in range(0, n, SEND_BATCH):
            now = time.time()
            ds.sg.send([{"name": EVENT, "data": {"tenant": HIST, "seq": s, "sent": now}}
                        for s in range(i, min(n, i + SEND_BATCH))])
        t_h_sent = time.time()
        until_ms = int(t_h_sent * 1000) + 1
        print(f"  history: {n:,} events sent in {t_h_sent - t_h0:.1f} s; waiting for their runs", flush=True)
        cpu_h = ds.cpu()
        ok, _ = wait_progress(lambda: ledger.count(HIST), n, ds.alive, stall_s=120.0, label="history runs")
        cpu_h.stop()
        if not ok:
            raise RuntimeError(f"history stalled at {ledger.count(HIST):,} of {n:,} runs")
        hist_starts = ledger.starts_of(HIST)
        hist_s = max(hist_starts) - t_h0
        hist_rate = n / hist_s
        print(f"  history: all {n:,} ran {hist_s:.1f} s after the first send ({hist_rate:.0f} runs/s); "
              f"CPU {cpu_h.text()}", flush=True)
        time.sleep(0.2)

        # -- 2. idle baseline ------------------------------------------------------------------
        senders = PeriodicSenders(lambda: Sluicegate(app_id=ds.app_id, settings=settings),
                                  lambda tenant, seq, when: {"name": EVENT, "data": {"tenant": tenant, "seq": seq,
                                                                                     "sent": when}},
                                  [LIVE], rate=1.0).start()
        t_b0 = time.time()
        cpu_b = ds.cpu()
        time.sleep(baseline_s)
        cpu_b.stop()
        base_sent = senders.sent_between(t_b0, t_b0 + baseline_s)
        wait_until(lambda: ledger.has_all(list(base_sent)), 5.0, ds.alive)
        base, base_missing = _latency(ledger, base_sent, time.time())
        print(f"  idle baseline: live p50 {base['p50']:.1f} / p99 {base['p99']:.1f} ms over {base['n']} runs, "
              f"missing {base_missing}; CPU {cpu_b.text()}", flush=True)

        # -- 3. replay ------------------------------------------------------------------------
        ranges = time_ranges(settings, ds.app_id, since_ms, until_ms)
        total = sum(end - start for start, end in ranges.values())
        if total != n:
            print(f"WARNING: the time range [{since_ms}, {until_ms}) covers {total:,} offsets, not {n:,}")
        replay_id = new_event_id()
        view = CompactedView(settings.bootstrap_servers, settings.topic("stats"), _stats_decode).start()
        producer = SyncProducer(settings.bootstrap_servers)
        key = replay_key(replay_id)
        spec = ReplaySpec(replay_id=replay_id, app_id=ds.app_id, functions=[FUNCTION_ID], ranges=ranges,
                          created_at=int(time.time() * 1000), pace_per_s=pace)
        read_done_at: list[float] = []

        def watch_progress() -> None:  # when the replay finished reading (its record says done)
            while not read_done_at and not stop_watch.is_set():
                rec = view.items.get(key) if view is not None else None
                if isinstance(rec, dict) and rec.get("status") != "running":
                    read_done_at.append(time.time())
                    return
                time.sleep(0.05)

        stop_watch = threading.Event()
        watcher = threading.Thread(target=watch_progress, name="replay-progress", daemon=True)
        cpu_r = ds.cpu()
        t_r0 = time.time()
        producer.send_many(settings.commands_topic, [(key, ReplayStart(spec=spec).dumps())], settings.partitions)
        watcher.start()
        print(f"  replay {replay_id} of offsets {ranges} started", flush=True)
        ok, _ = wait_progress(ledger.replayed_count, n, ds.alive, stall_s=120.0, label="replayed runs")
        t_r1 = time.time()
        cpu_r.stop()
        with ledger.lock:
            replay_starts = list(ledger.replay_starts)
        replayed = len(replay_starts)
        t_done = max(replay_starts) if ok else t_r1
        live_sent = senders.sent_between(t_r0, t_done)
        wait_until(lambda: ledger.has_all(list(live_sent)), 10.0, ds.alive)
        gave_up = time.time()
        senders.stop()
        senders = None
        stop_watch.set()
        watcher.join(2)
        live, live_missing = _latency(ledger, live_sent, gave_up)
        progress = view.items.get(key) if view is not None else None
        progress = progress if isinstance(progress, dict) else {}
        read_at = read_done_at[0] if read_done_at else None
        split: dict[str, tuple[dict[str, float], int]] = {}
        if read_at is not None:
            for name, before in (("while reading", True), ("after reading", False)):
                sub = {k: v for k, v in live_sent.items() if (v < read_at) == before}
                split[name] = _latency(ledger, sub, gave_up)

        stages = _breakdown(ds, ledger, {"idle": base_sent, "replay": live_sent})
        replay_s = t_done - t_r0
        replay_rate = replayed / replay_s if replay_s > 0 else math.nan
        first_replayed = min(replay_starts) if replay_starts else math.nan
        ratio = live["p99"] / base["p99"] if base["p99"] > 0 else math.nan
        met = (ok and live_missing == 0 and live["p99"] <= TARGET_FACTOR * base["p99"]
               and live["p99"] <= TARGET_P99_MS)

        # -- report ---------------------------------------------------------------------------
        print()
        paced = f", paced at {pace:g} events/s" if pace else ""
        print(f"REPLAY live start latency, ms (1 event/s; replay of {n:,} history events through '{FUNCTION_ID}'{paced})")
        rows = [["idle baseline", str(base["n"]), fmt_ms(base["p50"], 0), fmt_ms(base["p95"], 0),
                 fmt_ms(base["p99"], 0), fmt_ms(base["max"], 0), str(base_missing)],
                ["during replay", str(live["n"]), fmt_ms(live["p50"], 0), fmt_ms(live["p95"], 0),
                 target_text(live["p99"], round(min(TARGET_FACTOR * base["p99"], TARGET_P99_MS), 1)), fmt_ms(live["max"], 0),
                 str(live_missing)]]
        for name, (d, miss) in split.items():
            rows.append([f"  {name}", str(d["n"]), fmt_ms(d["p50"], 0), fmt_ms(d["p95"], 0), fmt_ms(d["p99"], 0),
                         fmt_ms(d["max"], 0), str(miss)])
        print_table(["phase", "runs", "p50", "p95", "p99", "max", "missing"], rows)
        print(f"  live p99 / idle p99 = {ratio:.2f} (target ≤ {TARGET_FACTOR:g} and ≤ {TARGET_P99_MS:g} ms): "
              f"{'met' if met else 'MISSED'}")
        print(f"  replay: {replayed:,} of {n:,} replayed runs in {replay_s:.1f} s after the command "
              f"({replay_rate:.0f} runs/s; first replayed step {first_replayed - t_r0:.2f} s in)"
              + ("" if ok else " — STALLED"))
        if progress:
            fin = progress.get("finished_at")
            print(f"  replay record: status {progress.get('status')}, events read {progress.get('events_read')}, "
                  f"runs created {progress.get('runs_created')}, skipped {progress.get('skipped')}"
                  + (f", reading finished {fin / 1000.0 - t_r0:.1f} s after the command" if fin else ""))
        for name, st in stages.items():
            print(f"  live {name}, p50 / p99 ms (Kafka CreateTime, whole ms): "
                  + ", ".join(f"{k} {pair(v)}" for k, v in st.items()))
        print(f"  history (first runs of the same events): {hist_rate:.0f} runs/s")
        print(f"  CPU (% of a core): history {cpu_h.text()}; idle {cpu_b.text()}; replay {cpu_r.text()}")
        if ledger.repeats or ledger.extra_runs:
            print(f"NOTE: {ledger.repeats} step(s) ran again in the same run, {ledger.extra_runs} event(s) ran "
                  "under a third run id")
        for line in ds.processor_errors():
            print(f"processor log: {line}")

        def lat_fields(d: dict[str, float]) -> dict[str, float]:
            return {"n": d["n"], "p50_ms": d["p50"], "p95_ms": d["p95"], "p99_ms": d["p99"], "max_ms": d["max"]}

        result = {
            "bench": "REPLAY", "events": n, "pace_per_s": pace, "p50_ms": live["p50"], "p99_ms": live["p99"],
            "baseline": {**lat_fields(base), "missing": base_missing},
            "during_replay": {**lat_fields(live), "missing": live_missing},
            "split": {k: {**lat_fields(d), "missing": m} for k, (d, m) in split.items()},
            "p99_ratio": ratio, "replayed": replayed, "replay_s": replay_s, "replay_runs_per_s": replay_rate,
            "replay_read_s": (progress["finished_at"] / 1000.0 - t_r0) if progress.get("finished_at") else None,
            "replay_record": {k: progress.get(k) for k in ("status", "events_read", "runs_created", "skipped")},
            "stages_p50_ms": {w: {k: v["p50"] for k, v in st.items()} for w, st in stages.items()},
            "stages_p99_ms": {w: {k: v["p99"] for k, v in st.items()} for w, st in stages.items()},
            "history_runs_per_s": hist_rate, "repeats": ledger.repeats, "extra_runs": ledger.extra_runs,
            "cpu": {"history": cpu_h.result, "idle": cpu_b.result, "replay": cpu_r.result},
            "target": {"p99_factor": TARGET_FACTOR, "p99_ms": TARGET_P99_MS}, "met": met,
            "settings": ds.record(step_ms=STEP_S * 1000, baseline_s=baseline_s, live_rate=1.0, quick=quick,
                                  retries=0, send_batch=SEND_BATCH),
        }
        emit_json(result)
        return [result]
    finally:
        if senders is not None:
            try:
                senders.stop()
            except Exception:
                pass
        if view is not None:
            view.stop()
        if producer is not None:
            try:
                producer.flush(5)
            except Exception:
                pass
            producer._p = None  # type: ignore[assignment]  # destroy the handle before the broker stops
        ds.close()
