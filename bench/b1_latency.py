"""B1 — event → first step start latency (BENCHMARKS.md).

Workload: open-loop Poisson arrivals at 10, 100 and 500 events/s from one tenant (one app),
a function with ONE no-op step. The step records ``time.time()`` when it starts, keyed by
the event's ``data.seq``; latency = step start − the event's *scheduled* send time (same
machine clock). Sends are paced by absolute scheduled times and never wait for runs; when a
send falls behind schedule the scheduled time stays the reference (no coordinated
omission), and the lag is reported separately.

Pieces: a local broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` / ``SLUICEGATE_BOOTSTRAP_SERVERS``
is set), ``sluicegate processor`` as a child process, one in-process SDK worker, and a few
sender threads, each with its own SDK client (``sg.send`` waits for the broker's ack, and a
shared producer would let one thread's poll() swallow another's delivery report).

After the runs a stage breakdown is read back from the topics (Kafka CreateTime of the event
in ``sg.events``, of the trigger in ``sg.commands`` and of the first job in ``sg.work.<app>``)
to show where the time goes: sender lag, send→ack, router, function processor, worker.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from sluicegate.sdk import Sluicegate
from sluicegate.settings import Settings

from .harness import BenchStack, emit_json, fmt_ms, percentile, print_table

EVENT_NAME = "bench/b1"
FUNCTION_ID = "b1-noop"
DEFAULT_RATES = [10.0, 100.0, 500.0]
SENDER_THREADS = 8
# rate -> (p50 target ms, p99 target ms)
TARGETS: dict[float, tuple[float, float]] = {100.0: (10.0, 40.0), 500.0: (15.0, 60.0)}


class StepStarts:
    """seq -> step start (time.time()), first start wins (a retried step keeps its first)."""

    def __init__(self) -> None:
        self.starts: dict[int, float] = {}
        self.run_ids: dict[int, str] = {}

    def mark(self, seq: int, run_id: str) -> None:
        t = time.time()
        self.starts.setdefault(seq, t)
        self.run_ids.setdefault(seq, run_id)

    def missing(self, seqs: range) -> list[int]:
        return [s for s in seqs if s not in self.starts]


@dataclass
class Sent:
    sched: dict[int, float] = field(default_factory=dict)
    call: dict[int, float] = field(default_factory=dict)
    acked: dict[int, float] = field(default_factory=dict)
    phase: dict[int, str] = field(default_factory=dict)


class PoissonSender:
    """Open-loop sender: K threads take the next (seq, scheduled time) in order, sleep until
    it, and ``sg.send`` the event. Up to K sends are in flight; beyond that, sends lag."""

    def __init__(self, settings: Settings, app_id: str, threads: int = SENDER_THREADS) -> None:
        self.clients = [Sluicegate(app_id=app_id, settings=settings) for _ in range(threads)]
        self.sent = Sent()
        self.next_seq = 0
        self.errors: list[BaseException] = []

    def send_one(self, client: Sluicegate, seq: int, sched: float, phase: str, rate: float) -> None:
        call = time.time()
        client.send({"name": EVENT_NAME, "data": {"seq": seq, "sent": sched, "rate": rate, "phase": phase}})
        acked = time.time()
        self.sent.call[seq] = call
        self.sent.acked[seq] = acked

    def run(self, rate: float, warmup_s: float, window_s: float, seed: int) -> tuple[range, range]:
        """Send for warmup_s + window_s at ``rate``; return (warm-up seqs, measured seqs)."""
        rng = random.Random(seed)
        start = time.time() + 0.2
        t = start
        schedule: list[tuple[int, float, str]] = []
        seq = self.next_seq
        first_measured = None
        while True:
            t += rng.expovariate(rate)
            if t >= start + warmup_s + window_s:
                break
            phase = "warmup" if t < start + warmup_s else "measure"
            if phase == "measure" and first_measured is None:
                first_measured = seq
            schedule.append((seq, t, phase))
            self.sent.sched[seq] = t
            self.sent.phase[seq] = phase
            seq += 1
        begin, end = self.next_seq, seq
        self.next_seq = seq
        if first_measured is None:
            first_measured = end
        lock = threading.Lock()
        items = iter(schedule)

        def loop(client: Sluicegate) -> None:
            try:
                while not self.errors:
                    with lock:
                        item = next(items, None)
                    if item is None:
                        return
                    s, when, phase = item
                    delay = when - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    self.send_one(client, s, when, phase, rate)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                self.errors.append(exc)

        threads = [threading.Thread(target=loop, args=(c,), name=f"b1-sender-{i}", daemon=True)
                   for i, c in enumerate(self.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if self.errors:
            raise RuntimeError(f"sending failed: {self.errors[0]!r}") from self.errors[0]
        return range(begin, first_measured), range(first_measured, end)

    def prime(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        now = time.time()
        self.sent.sched[seq] = now
        self.sent.phase[seq] = "prime"
        self.send_one(self.clients[0], seq, now, "prime", 0.0)
        return seq

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
            c._producer = None  # destroy the librdkafka handle now, before the broker goes away
        self.clients = []


# -- breakdown read back from the topics ---------------------------------------------------------


def _read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """(CreateTime ms, value) of every record of ``topic`` from the beginning to its end."""
    c = Consumer({
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": "sg-bench-readback-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "log_level": 3,
    })
    out: list[tuple[int, bytes]] = []
    try:
        md = c.list_topics(topic, timeout=10)
        parts = list(md.topics[topic].partitions)
        remaining = set()
        assign = []
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                remaining.add(p)
                assign.append(TopicPartition(topic, p, lo))
        if not assign:
            return out
        c.assign(assign)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition())
                continue
            out.append((msg.timestamp()[1], msg.value()))
    finally:
        c.close()
    return out


def read_breakdown(settings: Settings, app_ids: str | Iterable[str]) -> dict[int, dict[str, float]]:
    """seq -> Kafka CreateTime (ms) of its event, trigger and first job, for one app or
    several (each topic is read once)."""
    apps = {app_ids} if isinstance(app_ids, str) else set(app_ids)
    by_seq: dict[int, dict[str, float]] = {}
    for ts, value in _read_topic(settings, settings.events_topic):
        rec = json.loads(value)
        seq = (rec.get("data") or {}).get("seq")
        if rec.get("app_id") in apps and isinstance(seq, int):
            by_seq.setdefault(seq, {})["event"] = ts
    run_seq: dict[str, int] = {}
    for ts, value in _read_topic(settings, settings.commands_topic):
        cmd = json.loads(value)
        if cmd.get("kind") != "trigger" or cmd.get("app_id") not in apps:
            continue
        events = cmd.get("events") or []
        seq = (events[0].get("data") or {}).get("seq") if events else None
        if isinstance(seq, int):
            run_seq[cmd["run_id"]] = seq
            by_seq.setdefault(seq, {}).setdefault("trigger", ts)
    for app in sorted(apps):
        for ts, value in _read_topic(settings, settings.work_topic(app)):
            job = json.loads(value)
            seq = run_seq.get(job.get("run_id"))
            if seq is None or job.get("memos"):
                continue
            rec = by_seq.setdefault(seq, {})
            if "job" not in rec or ts < rec["job"]:
                rec["job"] = ts
    return by_seq


# -- the benchmark --------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99),
            "max": v[-1] if v else math.nan, "mean": sum(v) / len(v) if v else math.nan}


def _target_text(value: float, target: float | None) -> str:
    text = fmt_ms(value, 0)
    if target is None:
        return text
    mark = "ok" if value <= target else "MISS"
    return f"{text} (≤{target:g} {mark})"


def main(quick: bool = False, rates: list[float] | None = None, duration: float | None = None,
         partitions: int | None = None, keep_logs: bool = False) -> list[dict[str, Any]]:
    rates = rates or DEFAULT_RATES
    window_s = duration if duration is not None else (8.0 if quick else 30.0)
    warmup_s = 3.0 if quick else 5.0
    drain_timeout_s = 15.0 if quick else 60.0
    wall0 = time.monotonic()

    stack = BenchStack("B1", partitions=partitions, keep_logs=keep_logs)
    worker = None
    sender: PoissonSender | None = None
    try:
        print(f"B1: event -> first step start latency; rates {', '.join(f'{r:g}' for r in rates)} events/s, "
              f"{warmup_s:g} s warm-up + {window_s:g} s measured per rate{' (quick)' if quick else ''}",
              flush=True)
        settings = stack.start_broker()
        app_id = f"bench-b1-{stack.run_id}"
        starts = StepStarts()
        sg = Sluicegate(app_id=app_id, settings=settings)

        @sg.function(id=FUNCTION_ID, trigger=EVENT_NAME)
        def noop(ctx: Any, step: Any) -> None:
            seq = ctx.event["data"]["seq"]
            step.run("noop", lambda: starts.mark(seq, ctx.run_id))

        worker = sg.worker().start()
        stack.start_processor()
        sender = PoissonSender(settings, app_id)
        print(f"  broker {settings.bootstrap_servers} (kafka {stack.kafka}, {stack.timings['broker_s']:.1f} s), "
              f"processor ready in {stack.timings['processor_s']:.1f} s, partitions {settings.partitions}",
              flush=True)

        def alive() -> None:
            stack.check_processor()
            if worker is not None and (worker._thread is None or not worker._thread.is_alive()):
                raise RuntimeError("the worker thread died (see the log above)")

        def wait_for(seqs: range, timeout: float) -> float:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if not starts.missing(seqs):
                    break
                alive()
                time.sleep(0.05)
            return time.monotonic() - t0

        # prime: one event all the way through (worker group joined, registry read, topics warm)
        prime_seq = sender.prime()
        waited = wait_for(range(prime_seq, prime_seq + 1), 60.0)
        if starts.missing(range(prime_seq, prime_seq + 1)):
            raise RuntimeError(f"the first event did not start a step within 60 s:\n{stack.processor.tail() if stack.processor else ''}")
        print(f"  first event reached its step after {waited:.1f} s (priming, discarded)", flush=True)

        per_rate: list[dict[str, Any]] = []
        for i, rate in enumerate(rates):
            warm, measured = sender.run(rate, warmup_s, window_s, seed=1000 + i)
            drained = wait_for(range(warm.start, measured.stop), drain_timeout_s)
            missing = starts.missing(measured)
            gave_up = time.time()
            # a run that has not started yet counts with a lower bound of its latency (the time
            # we stopped waiting), so missing runs never make the percentiles look better
            lat = [((starts.starts[s] if s in starts.starts else gave_up) - sender.sent.sched[s]) * 1000
                   for s in measured]
            lag = [(sender.sent.call[s] - sender.sent.sched[s]) * 1000 for s in measured]
            ack = [(sender.sent.acked[s] - sender.sent.call[s]) * 1000 for s in measured]
            first = sender.sent.sched[measured.start] if len(measured) else 0.0
            last = sender.sent.sched[measured.stop - 1] if len(measured) else 0.0
            per_rate.append({
                "rate": rate, "sent": len(measured), "warmup_sent": len(warm), "measured": measured,
                "lat": _stats(lat), "lag": _stats(lag), "ack": _stats(ack), "n": len(measured) - len(missing),
                "missing": len(missing), "missing_seqs": missing[:20],
                "offered_rate": (len(measured) - 1) / (last - first) if len(measured) > 1 and last > first else math.nan,
                "drain_s": drained,
            })
            st = per_rate[-1]["lat"]
            print(f"  {rate:g}/s: sent {len(measured)} (+{len(warm)} warm-up), p50 {st['p50']:.1f} ms, "
                  f"p99 {st['p99']:.1f} ms, missing {len(missing)}, drained {drained:.1f} s after the last send",
                  flush=True)

        # stage breakdown, from the topics' CreateTime stamps (ms resolution)
        try:
            bd = read_breakdown(settings, app_id)
        except Exception as exc:  # the figures above stand without it
            print(f"  (stage breakdown unavailable: {exc!r})", file=sys.stderr)
            bd = {}
        for r in per_rate:
            stages: dict[str, list[float]] = {"router": [], "function": [], "worker": []}
            for s in r["measured"]:
                rec = bd.get(s, {})
                if "event" in rec and "trigger" in rec:
                    stages["router"].append(rec["trigger"] - rec["event"])
                if "trigger" in rec and "job" in rec:
                    stages["function"].append(rec["job"] - rec["trigger"])
                if "job" in rec and s in starts.starts:
                    stages["worker"].append(starts.starts[s] * 1000 - rec["job"])
            r["stages"] = {k: _stats(v) for k, v in stages.items()}

        # -- report -----------------------------------------------------------------------
        print()
        print(f"B1 event -> first step start latency, ms (from scheduled send time; window {window_s:g} s "
              f"per rate after {warmup_s:g} s warm-up; 1 worker, {settings.partitions} partitions, acks=all)")
        rows = []
        for r in per_rate:
            t50, t99 = TARGETS.get(r["rate"], (None, None))
            st = r["lat"]
            lb = "≥" if r["missing"] else ""
            rows.append([f"{r['rate']:g}/s", str(r["sent"]), lb + _target_text(st["p50"], t50),
                         lb + fmt_ms(st["p90"], 0), lb + _target_text(st["p99"], t99), lb + fmt_ms(st["max"], 0),
                         str(r["missing"])])
        print_table(["rate", "sent", "p50", "p90", "p99", "max", "missing"], rows)
        print()
        print("where the time goes, p50 / p99 ms (sender lag = send call - scheduled time; send->ack = sg.send; "
              "router = event -> trigger CreateTime; function = trigger -> job; worker = job -> step start)")
        rows = []
        for r in per_rate:
            def pair(st: dict[str, float]) -> str:
                return f"{fmt_ms(st['p50'], 0)} / {fmt_ms(st['p99'], 0)}"
            rows.append([f"{r['rate']:g}/s", pair(r["lag"]), pair(r["ack"]), pair(r["stages"]["router"]),
                         pair(r["stages"]["function"]), pair(r["stages"]["worker"])])
        print_table(["rate", "sender lag", "send->ack", "router", "function", "worker"], rows)
        print()
        for r in per_rate:
            if r["missing"]:
                print(f"WARNING: {r['missing']} measured event(s) at {r['rate']:g}/s had no step start within "
                      f"{drain_timeout_s:g} s after sending ended (late or lost; first seqs: {r['missing_seqs']}); "
                      "their latencies count as the time waited, so the figures marked ≥ are lower bounds",
                      flush=True)

        results = []
        base = stack.base_settings_record()
        for r in per_rate:
            t50, t99 = TARGETS.get(r["rate"], (None, None))
            st = r["lat"]
            result = {
                "bench": "B1", "rate": r["rate"], "p50_ms": st["p50"], "p90_ms": st["p90"], "p99_ms": st["p99"],
                "max_ms": st["max"], "mean_ms": st["mean"], "n": r["n"], "sent": r["sent"], "missing": r["missing"],
                "lower_bound": bool(r["missing"]),
                "offered_rate": r["offered_rate"],
                "target": {"p50_ms": t50, "p99_ms": t99} if t50 is not None else None,
                "met": (st["p50"] <= t50 and st["p99"] <= t99 and r["missing"] == 0) if t50 is not None else None,
                "stages_p50_ms": {"sender_lag": r["lag"]["p50"], "send_ack": r["ack"]["p50"],
                                  **{k: v["p50"] for k, v in r["stages"].items()}},
                "stages_p99_ms": {"sender_lag": r["lag"]["p99"], "send_ack": r["ack"]["p99"],
                                  **{k: v["p99"] for k, v in r["stages"].items()}},
                "settings": {**base, "workers": 1, "tenants": 1, "sender_threads": SENDER_THREADS,
                             "window_s": window_s, "warmup_s": warmup_s, "quick": quick,
                             "arrivals": "poisson, open loop, latency from scheduled time"},
            }
            results.append(result)
        print(f"(total wall time {time.monotonic() - wall0:.0f} s before shutdown)", flush=True)
        for result in results:
            emit_json(result)
        return results
    finally:
        if sender is not None:
            sender.close()
        if worker is not None:
            try:
                worker.stop()
                worker._producer.flush(5)
            except Exception as exc:
                print(f"cleanup: worker: {exc!r}", file=sys.stderr)
            worker._producer = None  # destroy the librdkafka handle before the broker stops
            worker = None
        gc.collect()
        stack.stop()
