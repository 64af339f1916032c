"""B5 — many-tenant fairness (BENCHMARKS.md).

Tenants are keys of ONE function (see ``bench/fairness_common.py``):
``concurrency=[Concurrency(limit=50, key="event.data.tenant")]``, one step of ~20 ms, one
worker of 50 executors, the processor's window 50, ONE partition (one shared window).

Workload: 100 tenants T000..T099, each with 100 events (``--quick``: 30) queued up front.
So that the dispatcher sees every backlog at once, the window is first filled with 50
"blocker" runs whose step waits on a gate; the 100 tenants' events are then sent in the
order that is worst for a FIFO (tenant by tenant: all of T000's, then all of T001's, ...),
the bench waits until the processor has committed everything it read (so all runs are in
their backlogs), and only then opens the gate. From that instant completions are counted
per tenant per 10 s window (``--quick``: 5 s), by each step's end time, from the
in-process ledger.

Figure: Jain's fairness index ``(Σx)² / (n·Σx²)`` of the per-tenant completions in each
window, over the windows in which every tenant still had backlog at the window's end (its
last run started after it); target ≥ 0.95 in every such window, its minimum is reported.
A FIFO would score about 1/100 here (one or two tenants per window).

Options: ``--duration`` sets the window length in seconds; ``--partitions`` overrides the
single partition; ``--keep-logs`` keeps the processor log.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from .fairness_common import (EXECUTORS, CpuMeter, FairStack, Ledger, jain, met_text, processor_caught_up,
                              send_in_lists, wait_until)
from .harness import emit_json, print_table

TENANTS = 100
STEP_S = 0.02
TARGET = 0.95


def main(quick: bool = False, duration: float | None = None, partitions: int | None = None,
         keep_logs: bool = False, **_: Any) -> list[dict[str, Any]]:
    per_tenant = 30 if quick else 100
    window_s = duration if duration is not None else (5.0 if quick else 10.0)
    drain_timeout = 75.0 if quick else 300.0
    wall0 = time.monotonic()
    tenants = [f"T{i:03d}" for i in range(TENANTS)]
    total = TENANTS * per_tenant
    print(f"B5: many-tenant fairness; {TENANTS} tenants x {per_tenant} events queued up front, step "
          f"{STEP_S * 1000:g} ms, {EXECUTORS} executors, {window_s:g} s windows{' (quick)' if quick else ''}",
          flush=True)
    ledger = Ledger()
    gate = threading.Event()
    entered = [0]
    lock = threading.Lock()

    def handler(ctx: Any, step: Any) -> None:
        d = ctx.event["data"]

        def work() -> None:
            if d["tenant"] == "blocker":
                with lock:
                    entered[0] += 1
                gate.wait()
            start = time.time()
            time.sleep(STEP_S)
            ledger.add(d["tenant"], int(d["seq"]), 0.0, start, time.time())

        step.run("work", work)

    fs = FairStack("B5", key_field="tenant", limit=EXECUTORS, executors=EXECUTORS, partitions=partitions or 1,
                   keep_logs=keep_logs)
    try:
        fs.start(handler)
        print("  " + fs.describe(), flush=True)
        print(f"  first event reached its step after {fs.prime(ledger):.1f} s (priming, discarded)", flush=True)
        s = fs.settings
        # 1. fill the window with blockers
        fs.sg.send([fs.event("blocker", i) for i in range(s.dispatch_window)])
        if not wait_until(lambda: entered[0] >= s.dispatch_window, 30.0, fs.alive):
            raise RuntimeError(f"only {entered[0]} of {s.dispatch_window} blocker steps started within 30 s")
        # 2. every tenant's backlog, tenant by tenant
        events = [fs.event(t, i * per_tenant + j) for i, t in enumerate(tenants) for j in range(per_tenant)]
        t_send = time.time()
        send_in_lists(fs.sg, events, stamp=False)
        send_s = time.time() - t_send
        caught = processor_caught_up(s, [s.events_topic, s.commands_topic, s.results_topic], 120.0, fs.alive)
        queued_s = time.time() - t_send
        print(f"  sent {total:,} events in {send_s:.1f} s; processor {'caught up' if caught else 'NOT caught up'} "
              f"after {queued_s:.1f} s (all runs in their backlogs, window full of blockers)", flush=True)
        # 3. open the gate and count
        cpu = CpuMeter(fs.pids()).start()
        t_open = time.time()
        gate.set()
        done_all = wait_until(lambda: sum(ledger.count(t) for t in tenants) >= total, drain_timeout, fs.alive, 0.1)
        t_end = time.time()
        cpu.stop()
        first = ledger.first()
        rows = [(k[0], v[1], v[2]) for k, v in first.items() if k[0] in set(tenants)]
        n_done = len(rows)
        last_start = {t: 0.0 for t in tenants}
        for t, st, _en in rows:
            last_start[t] = max(last_start[t], st)
        if not done_all:  # a tenant not finished still had backlog at the end
            for t in tenants:
                if ledger.count(t) < per_tenant:
                    last_start[t] = math.inf
        end_of_work = max((en for _t, _s, en in rows), default=t_end)
        n_windows = max(1, math.ceil((end_of_work - t_open) / window_s))
        counts = [{t: 0 for t in tenants} for _ in range(n_windows)]
        for t, _st, en in rows:
            w = int((en - t_open) // window_s)
            if 0 <= w < n_windows:
                counts[w][t] += 1
        windows = []
        for w in range(n_windows):
            w_end = t_open + (w + 1) * window_s
            xs = list(counts[w].values())
            backlogged = all(last_start[t] >= w_end for t in tenants)
            windows.append({"window": w, "start_s": w * window_s, "completions": sum(xs), "min": min(xs),
                            "max": max(xs), "mean": sum(xs) / len(xs), "jain": jain(xs),
                            "all_backlogged": backlogged})
        measured = [w for w in windows if w["all_backlogged"]]
        jmin = min((w["jain"] for w in measured), default=math.nan)
        ok = bool(measured) and jmin >= TARGET
        rate = n_done / max(end_of_work - t_open, 1e-6)

        print()
        print(f"B5 completions per tenant per {window_s:g} s window ({TENANTS} tenants, {EXECUTORS} executors x "
              f"{STEP_S * 1000:g} ms, window {s.dispatch_window}, {s.partitions} partition; * = every tenant still "
              "had backlog at the window's end)")
        print_table(["window", "from s", "completions", "per tenant min", "mean", "max", "Jain", "measured"],
                    [[str(w["window"]), f"{w['start_s']:.0f}", str(w["completions"]), str(w["min"]),
                      f"{w['mean']:.1f}", str(w["max"]), f"{w['jain']:.3f}", "*" if w["all_backlogged"] else ""]
                     for w in windows])
        print()
        print(f"completed {n_done:,}/{total:,} in {end_of_work - t_open:.1f} s ({rate:.0f} runs/s; "
              f"{'all done' if done_all else 'TIMED OUT'}); CPU {cpu.text()}")
        print(f"target: Jain's index ≥ {TARGET} in every measured window: min {jmin:.3f} over {len(measured)} "
              f"window(s): {met_text(ok) if measured else 'no window had every tenant backlogged'}")
        print(f"(total wall time {time.monotonic() - wall0:.0f} s before shutdown)", flush=True)
        result = {
            "bench": "B5", "jain_min": jmin, "jain_mean": (sum(w["jain"] for w in measured) / len(measured)
                                                           if measured else math.nan),
            "windows_measured": len(measured), "windows": windows, "completed": n_done, "total": total,
            "drained": done_all, "runs_per_s": rate, "cpu_pct": dict(cpu.result), "target": {"jain_min": TARGET},
            "met": ok if measured else None,
            "settings": {**fs.stack.base_settings_record(), "workers": 1, "worker_concurrency": EXECUTORS,
                         "dispatch_window": s.dispatch_window, "tenants": TENANTS, "events_per_tenant": per_tenant,
                         "step_ms": STEP_S * 1000, "window_s": window_s, "concurrency_limit_per_key": EXECUTORS,
                         "send_order": "tenant by tenant, all queued before the gate opens", "quick": quick},
        }
        emit_json(result)
        return [result]
    finally:
        gate.set()
        fs.close()
