"""B9 — timer accuracy (BENCHMARKS.md: lateness p99 ≤ 250 ms).

Workload: N runs (100k; --quick 10k), sent at once with ``sg.send`` in lists of 5000. Each run
does ``t0 = step.run("t0", lambda: time.time() * 1000)``, then ``step.sleep("s", d)`` with
``d`` drawn uniformly from 1–60 s (--quick 1–20 s), then ``step.run("woke", ...)`` which
records the wall time.

Lateness = woke − (t0 + d): what a user sees — it includes the trip from the end of step t0
to the sleep being planned (one more job), the timer, and the dispatch of the step after it.
Also printed: the engine's own reference (the processor sets due = the sleep outcome's
``ended_at`` + d; here: woke − (the moment the worker handed the sleep op over + d)), and from
Kafka: when the ``TimerFired`` command was produced vs its ``due_ms`` (the timer alone), then
TimerFired → the next job (processor) and job → woke step start (worker).

At rest? The runs are started as fast as the engine goes; a timer due while runs are still
being started fires under that load. Timers due after the start-up load (the last sleep
planned and every earlier-due timer woken) fire with nothing else going on but the other
timers: both groups are printed separately.
"""

from __future__ import annotations

import random
import time
from typing import Any

from sluicegate.sdk import Sluicegate

from .durable_common import (DurableStack, Marks, dist, first_ts, noting_op, print_notes, read_app_records,
                             pair, stage_fields, target_text, wait_progress)
from .fairness_common import send_in_lists
from .harness import emit_json, fmt_ms, print_table

EVENT = "bench/b9"
FUNCTION_ID = "b9-sleep"
TARGET_P99_MS = 250.0
EXECUTORS = 64
SEND_LIST = 5000
STALL_S = 60.0  # give up when no run moves on for this long
FULL = (100_000, 60_000)  # runs, longest sleep ms (the shortest is 1 s)
QUICK = (10_000, 20_000)


def main(quick: bool = False, partitions: int | None = None, keep_logs: bool = False,
         **_: Any) -> list[dict[str, Any]]:
    n, hi_ms = QUICK if quick else FULL
    lo_ms = 1_000
    marks = Marks()
    ds = DurableStack("B9", executors=EXECUTORS, partitions=partitions, keep_logs=keep_logs)
    try:
        print(f"B9: timer accuracy; {n:,} runs each t0 step -> step.sleep(d, uniform {lo_ms / 1000:g}-"
              f"{hi_ms / 1000:g} s) -> woke step{' (quick)' if quick else ''}", flush=True)

        def define(sg: Sluicegate) -> None:
            @sg.function(id=FUNCTION_ID, trigger=EVENT, retries=0)
            def sleeper(ctx: Any, step: Any) -> None:
                seq, d = ctx.event["data"]["seq"], ctx.event["data"]["d"]
                t0 = step.run("t0", lambda: time.time() * 1000)
                noting_op(marks, seq, "sleep_op", lambda: step.sleep("s", d))

                def woke() -> None:
                    marks.put(seq, "run", ctx.run_id)
                    marks.put(seq, "due_ms", t0 + d)
                    marks.put(seq, "woke")
                step.run("woke", woke)

        ds.start(define)
        print("  " + ds.describe(), flush=True)
        primed = ds.prime({"name": EVENT, "data": {"seq": -1, "d": 1}}, lambda: marks.get(-1, "woke") is not None)
        print(f"  priming run done after {primed:.1f} s (discarded)", flush=True)

        rng = random.Random(9)
        events = [{"name": EVENT, "data": {"seq": i, "d": rng.randint(lo_ms, hi_ms)}} for i in range(n)]
        durations = {e["data"]["seq"]: e["data"]["d"] for e in events}
        cpu_setup = ds.cpu()
        t_send = time.time()
        send_in_lists(ds.sg, events, batch=SEND_LIST, stamp=False)
        t_sent = time.time()
        print(f"  sent {n:,} events in {t_sent - t_send:.1f} s", flush=True)
        wait_progress(lambda: marks.count("sleep_op") - 1, n, ds.alive, stall_s=STALL_S, label="sleeps planned")
        cpu_setup.stop()
        cpu_rest = ds.cpu()
        ops = marks.column("sleep_op", range(n))
        t_planned = max(ops.values()) if ops else float("nan")
        print(f"  {len(ops):,} sleeps planned; the last {t_planned - t_send:.1f} s after sending began "
              f"({len(ops) / max(t_planned - t_send, 1e-9):.0f} runs/s to reach the sleep); CPU {cpu_setup.text()}", flush=True)
        wait_progress(lambda: marks.count("woke") - 1, n, ds.alive, stall_s=STALL_S, label="runs woke")
        cpu_rest.stop()
        gave_up = time.time()
        woke = marks.column("woke", range(n))
        print(f"  {len(woke):,} of {n:,} runs woke; the last {gave_up - t_send:.1f} s after sending began; "
              f"CPU since the last sleep was planned {cpu_rest.text()}", flush=True)

        # lateness per run (runs that never woke are counted as missing, not in the figures)
        due = marks.column("due_ms", woke)
        late = {k: woke[k] * 1000 - v for k, v in due.items() if k in ops}
        from_op = {k: (woke[k] - ops[k]) * 1000 - durations[k] for k in late}
        missing = n - len(late)
        # at rest = due once the start-up load is over: the last sleep planned AND every timer
        # due before that woke (the wakes it left queued behind it are done too)
        rest_ms = max([t_planned * 1000] + [woke[k] * 1000 for k in late if due[k] < t_planned * 1000])
        groups = {"all": list(late), f"at rest (due after +{rest_ms / 1000 - t_send:.0f} s)":
                  [k for k in late if due[k] >= rest_ms], "during the start-up load": [k for k in late if due[k] < rest_ms]}
        per_run = _breakdown(ds, marks, list(late))
        figs = {g: {"late": dist(late[k] for k in keys), "from_op": dist(from_op[k] for k in keys),
                    "stages": {p: dist(v[k] for k in keys if k in v) for p, v in per_run.items()}}
                for g, keys in groups.items()}
        total = figs["all"]["late"]

        # -- report -------------------------------------------------------------------------
        print()
        print(f"B9 timer lateness, ms = woke step start - (t0 step end + d); {len(late):,} of {n:,} runs completed")
        print("  'from sleep op' = woke - (sleep op handed to the engine + d), the engine's own reference")
        rows = []
        for g, f in figs.items():
            la, fo = f["late"], f["from_op"]
            rows.append([g, str(la["n"]), fmt_ms(la["p50"], 0), target_text(la["p99"], TARGET_P99_MS),
                         fmt_ms(la["max"], 0), pair(fo)])
        print_table(["timers", "n", "p50", "p99", "max", "from sleep op p50 / p99"], rows)
        if missing:
            print(f"WARNING: {missing:,} run(s) never woke (no progress for {STALL_S:g} s); not in the figures")
        for g, f in figs.items():
            print_notes(ds, marks, f["stages"], f"where the time after due goes, {g}", log=False)
        print_notes(ds, marks, {}, "")

        result = {
            "bench": "B9", "runs": n, "completed": len(late), "missing": missing,
            **_fields(figs["all"]), **dict(zip(("at_rest", "startup_load"), map(_fields, list(figs.values())[1:]))),
            "cpu_pct_setup": cpu_setup.result, "cpu_pct_after_setup": cpu_rest.result,
            "send_s": t_sent - t_send, "last_sleep_planned_s": t_planned - t_send,
            "at_rest_from_s": rest_ms / 1000 - t_send,
            "target": {"p99_ms": TARGET_P99_MS}, "met": total["p99"] <= TARGET_P99_MS and missing == 0,
            "settings": ds.record(sleep_ms=[lo_ms, hi_ms], send_list=SEND_LIST, quick=quick, retries=0),
        }
        emit_json(result)
        return [result]
    finally:
        ds.close()


def _fields(f: dict[str, Any]) -> dict[str, Any]:
    la, fo = f["late"], f["from_op"]
    return {"n": la["n"], "p50_ms": la["p50"], "p99_ms": la["p99"], "max_ms": la["max"],
            "from_sleep_op_p50_ms": fo["p50"], "from_sleep_op_p99_ms": fo["p99"], **stage_fields(f["stages"])}


def _breakdown(ds: DurableStack, marks: Marks, seqs: list[int]) -> dict[str, dict[int, float]]:
    """Per run, ms: timer = TimerFired produced − its due_ms; processor = TimerFired → the
    woke job produced; worker = that job → woke step start."""
    try:
        s = ds.settings
        fired_recs = read_app_records(s, s.results_topic, ds.app_id, lambda r: r.get("kind") == "timer")
        jobs = first_ts(read_app_records(s, s.work_topic(ds.app_id), ds.app_id,
                                         lambda r: len(r.get("memos") or {}) == 2), lambda r: r["run_id"])
    except Exception as exc:  # the figures above stand without it
        print(f"  (breakdown unavailable: {exc!r})")
        return {}
    fired = first_ts(fired_recs, lambda r: r["run_id"])
    due = {r["run_id"]: r.get("due_ms") for _ts, r in fired_recs}
    parts: dict[str, dict[int, float]] = {"timer fired late": {}, "processor": {}, "worker": {}}
    for seq in seqs:
        run = marks.get(seq, "run")
        if run in fired and run in jobs and due.get(run) is not None:
            parts["timer fired late"][seq] = fired[run] - due[run]
            parts["processor"][seq] = jobs[run] - fired[run]
            parts["worker"][seq] = marks.get(seq, "woke") * 1000 - jobs[run]
    return parts
