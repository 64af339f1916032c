"""B2 — step → next step gap (BENCHMARKS.md: median gap ≤ 15 ms).

Workload: a function of ``STEPS`` sequential ``step.run`` steps that return at once, started
by events sent at a modest open-loop rate (10 runs/s by default, one event every 1/rate s at
absolute scheduled times) for a warm-up and a measured window.

Measurement: each step records ``time.time()`` as it starts and as it ends into a ledger
keyed by the run (the event's ``data.seq``). gap = start of step i+1 − end of step i, inside
the same run: the step's outcome to the processor, its decision, the next job through
``sg.work.<app>``, the worker's fetch and the replay of the handler. Runs counted are those
whose event was scheduled inside the measured window; runs/s = those that finished / window.

Breakdown (Kafka CreateTime, ms): worker out = step end → its outcome produced (includes the
worker's look-ahead call); processor = outcome → next job produced; worker in = job → next
step start (fetch, thread hand-off, replay).
"""

from __future__ import annotations

import time
from typing import Any

from sluicegate.sdk import Sluicegate

from .durable_common import DurableStack, Marks, dist, first_ts, print_notes, read_app_records, stage_fields, target_text
from .fairness_common import PeriodicSenders
from .harness import emit_json, fmt_ms, print_table

EVENT = "bench/b2"
FUNCTION_ID = "b2-steps"
STEPS = 10
RATE = 10.0
TARGET_P50_MS = 15.0


def _step(marks: Marks, seq: int, i: int, run_id: str) -> None:
    marks.put(seq, ("start", i))
    if i == 0:
        marks.put(seq, "run", run_id)
    marks.put(seq, ("end", i))


def main(quick: bool = False, rates: list[float] | None = None, duration: float | None = None,
         partitions: int | None = None, keep_logs: bool = False) -> list[dict[str, Any]]:
    rate = rates[0] if rates else RATE
    window_s = duration if duration is not None else (8.0 if quick else 20.0)
    warmup_s = 2.0 if quick else 3.0
    marks = Marks()
    ds = DurableStack("B2", partitions=partitions, keep_logs=keep_logs)
    senders: PeriodicSenders | None = None
    try:
        print(f"B2: step -> next step gap; {STEPS} no-op steps per run, {rate:g} runs/s open loop, "
              f"{warmup_s:g} s warm-up + {window_s:g} s measured{' (quick)' if quick else ''}", flush=True)

        def define(sg: Sluicegate) -> None:
            @sg.function(id=FUNCTION_ID, trigger=EVENT, retries=0)
            def steps(ctx: Any, step: Any) -> None:
                seq = ctx.event["data"]["seq"]
                for i in range(STEPS):
                    step.run(f"s{i}", _step, marks, seq, i, ctx.run_id)

        settings = ds.start(define)
        print("  " + ds.describe(), flush=True)
        last = ("end", STEPS - 1)
        primed = ds.prime({"name": EVENT, "data": {"seq": -100}}, lambda: marks.get(-100, last) is not None)
        print(f"  priming run done after {primed:.1f} s (discarded)", flush=True)

        senders = PeriodicSenders(lambda: Sluicegate(app_id=ds.app_id, settings=settings),
                                  lambda _t, seq, when: {"name": EVENT, "data": {"seq": seq, "sent": when}},
                                  ["b2"], rate=rate).start()
        t_start = time.time()
        time.sleep(warmup_s + window_s)
        senders.stop()
        w0, w1 = t_start + warmup_s, t_start + warmup_s + window_s
        measured = sorted(seq for (_t, seq) in senders.sent_between(w0, w1))
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and any(marks.get(s, last) is None for s in measured):
            ds.alive()
            time.sleep(0.1)
        done = [s for s in measured if marks.get(s, last) is not None]
        missing = len(measured) - len(done)

        gaps: list[float] = []
        by_pos: list[list[float]] = [[] for _ in range(STEPS - 1)]
        spans: list[float] = []
        for s in done:
            m = marks.by_key[s]
            spans.append((m[last] - m[("start", 0)]) * 1000)
            for i in range(STEPS - 1):
                g = (m[("start", i + 1)] - m[("end", i)]) * 1000
                gaps.append(g)
                by_pos[i].append(g)
        gap = dist(gaps)
        runs_per_s = len(done) / window_s  # the measured runs that finished, per second of window

        stages = _breakdown(ds, marks, done)
        # -- report -------------------------------------------------------------------------
        print()
        print(f"B2 step -> next step gap, ms ({len(done)} runs x {STEPS - 1} gaps = {gap['n']} gaps; "
              f"{rate:g} runs/s offered, {runs_per_s:.1f} runs/s finished)")
        print_table(["gaps", "p50", "p95", "p99", "max", "mean", "runs missing"],
                    [[str(gap["n"]), target_text(gap["p50"], TARGET_P50_MS), fmt_ms(gap["p95"], 0),
                      fmt_ms(gap["p99"], 0), fmt_ms(gap["max"], 0), fmt_ms(gap["mean"], 0), str(missing)]])
        pos = [dist(v)["p50"] for v in by_pos]
        print(f"  p50 gap by position (after step 0..{STEPS - 2}): " + " ".join(f"{p:.1f}" for p in pos))
        run_d = dist(spans)
        print(f"  whole run (step 0 start -> step {STEPS - 1} end): p50 {run_d['p50']:.1f} ms, p99 {run_d['p99']:.1f} ms")
        if missing:
            print(f"WARNING: {missing} measured run(s) did not finish within 30 s after sending ended")
        print_notes(ds, marks, stages, "where a gap goes")

        result = {
            "bench": "B2", "rate": rate, "steps": STEPS, "p50_ms": gap["p50"], "p95_ms": gap["p95"],
            "p99_ms": gap["p99"], "max_ms": gap["max"], "mean_ms": gap["mean"], "gaps": gap["n"], "runs": len(done),
            "missing": missing, "runs_per_s": runs_per_s, "run_p50_ms": run_d["p50"], "run_p99_ms": run_d["p99"],
            "target": {"p50_ms": TARGET_P50_MS}, "met": gap["p50"] <= TARGET_P50_MS and missing == 0,
            **stage_fields(stages),
            "settings": ds.record(window_s=window_s, warmup_s=warmup_s, quick=quick, retries=0),
        }
        emit_json(result)
        return [result]
    finally:
        if senders is not None:
            try:
                senders.stop()
            except Exception:
                pass
        ds.close()


def _breakdown(ds: DurableStack, marks: Marks, seqs: list[int]) -> dict[str, dict[str, float]]:
    """worker out / processor / worker in per gap, from the outcome and job CreateTimes."""
    try:
        s = ds.settings
        outs = first_ts(read_app_records(s, s.results_topic, ds.app_id,
                                         lambda r: r.get("kind") == "outcome" and r.get("op") == "step_ok"),
                        lambda r: (r["run_id"], r["step_id"]))
        jobs = first_ts(read_app_records(s, s.work_topic(ds.app_id), ds.app_id),
                        lambda r: (r["run_id"], len(r.get("memos") or {})))
    except Exception as exc:  # the figures above stand without it
        print(f"  (breakdown unavailable: {exc!r})")
        return {}
    parts: dict[str, list[float]] = {"worker out": [], "processor": [], "worker in": []}
    for seq in seqs:
        m = marks.by_key[seq]
        run = m["run"]
        for i in range(STEPS - 1):
            out, job = outs.get((run, f"s{i}")), jobs.get((run, i + 1))
            if out is None or job is None:
                continue
            parts["worker out"].append(out - m[("end", i)] * 1000)
            parts["processor"].append(job - out)
            parts["worker in"].append(m[("start", i + 1)] * 1000 - job)
    return {k: dist(v) for k, v in parts.items()}
