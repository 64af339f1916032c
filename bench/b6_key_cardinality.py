"""B6 — key cardinality (BENCHMARKS.md).

One function with ``concurrency=[Concurrency(limit=50, key="event.data.user")]`` — the same
limit per key in both cases, 50, so that the single key of case 2 can fill every executor
(see ``bench/fairness_common.py`` for the semantics: each distinct ``user`` is one key, one
backlog and one counter of the dispatcher's deficit round-robin). One step of 5 ms, one
worker of 50 executors, the processor's window 50, ONE partition (one shared window).

* case 1 — 10,000 distinct users × 3 events (``--quick``: 2,000 × 3), sent user after user
  in three passes (u0..uN, u0..uN, u0..uN);
* case 2 — one user × 30,000 events (``--quick``: 6,000), the same number of runs.

Each case sends all its events as fast as the SDK sends them (lists of 500) and waits for
every run to complete (bounded in time). Throughput = completed runs / (last step end −
first send); the steady rate between the 10th and the 90th percentile completion is shown
too. Both cases run side by side in the same stack, case 1 first. Target: throughput
ratio case 1 / case 2 ≥ 0.8.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .fairness_common import (EXECUTORS, CpuMeter, FairStack, Ledger, met_text, send_in_lists, sleep_work,
                              wait_until)
from .harness import emit_json, print_table

STEP_S = 0.005
TARGET = 0.8


def _case(fs: FairStack, ledger: Ledger, label: str, users: list[str], total: int, timeout: float) -> dict[str, Any]:
    events = [fs.event(label, i, user=users[i % len(users)]) for i in range(total)]
    cpu = CpuMeter(fs.pids()).start()
    t0 = time.time()
    send_in_lists(fs.sg, events)
    send_s = time.time() - t0
    next_report = time.monotonic() + 10

    def done() -> bool:
        nonlocal next_report
        if time.monotonic() >= next_report:
            next_report += 10
            print(f"    {label}: {ledger.count(label):,}/{total:,} after {time.time() - t0:.0f} s", flush=True)
        return ledger.count(label) >= total

    drained = wait_until(done, timeout, fs.alive, 0.05)
    cpu.stop()
    ends = sorted(v[2] for k, v in ledger.first().items() if k[0] == label)
    n = len(ends)
    last = ends[-1] if ends else time.time()
    rate = n / max(last - t0, 1e-6)
    steady = math.nan
    if n >= 20:
        a, b = ends[int(n * 0.1)], ends[int(n * 0.9) - 1]
        steady = (int(n * 0.9) - int(n * 0.1) - 1) / max(b - a, 1e-6)
    print(f"  {label}: {len(set(users)):,} key(s), {n:,}/{total:,} done in {last - t0:.1f} s "
          f"({'drained' if drained else 'TIMED OUT'}; sent in {send_s:.1f} s): {rate:.0f} runs/s, steady {steady:.0f}/s; "
          f"CPU {cpu.text()}", flush=True)
    return {"keys": len(set(users)), "events": total, "done": n, "drained": drained, "duration_s": last - t0,
            "send_s": send_s, "runs_per_s": rate, "steady_runs_per_s": steady, "cpu_pct": dict(cpu.result)}


def main(quick: bool = False, partitions: int | None = None, keep_logs: bool = False,
         **_: Any) -> list[dict[str, Any]]:
    n_users = 2_000 if quick else 10_000
    total = 3 * n_users
    timeout = 90.0 if quick else 450.0
    wall0 = time.monotonic()
    print(f"B6: key cardinality; {n_users:,} keys x 3 events vs 1 key x {total:,} events, limit {EXECUTORS} per key, "
          f"step {STEP_S * 1000:g} ms, {EXECUTORS} executors{' (quick)' if quick else ''}", flush=True)
    ledger = Ledger()
    fs = FairStack("B6", key_field="user", limit=EXECUTORS, executors=EXECUTORS, partitions=partitions or 1,
                   keep_logs=keep_logs)
    try:
        fs.start(sleep_work(ledger, STEP_S))
        print("  " + fs.describe(), flush=True)
        print(f"  first event reached its step after {fs.prime(ledger):.1f} s (priming, discarded)", flush=True)
        c1 = _case(fs, ledger, "many", [f"u{i}" for i in range(n_users)], total, timeout)
        c2 = _case(fs, ledger, "one", ["solo"], total, timeout)
        ratio = c1["runs_per_s"] / c2["runs_per_s"] if c2["runs_per_s"] > 0 else math.nan
        steady_ratio = (c1["steady_runs_per_s"] / c2["steady_runs_per_s"]
                        if c2["steady_runs_per_s"] and c2["steady_runs_per_s"] > 0 else math.nan)
        ok = c1["drained"] and c2["drained"] and ratio >= TARGET
        s = fs.settings
        print()
        print(f"B6 throughput by key cardinality (completed runs/s from the first send to the last step end; "
              f"{EXECUTORS} executors x {STEP_S * 1000:g} ms, limit {EXECUTORS} per key, window {s.dispatch_window}, "
              f"{s.partitions} partition)")
        print_table(["case", "keys", "runs", "done", "s", "runs/s", "steady runs/s", "processor CPU"],
                    [[name, f"{c['keys']:,}", f"{c['events']:,}", f"{c['done']:,}", f"{c['duration_s']:.1f}",
                      f"{c['runs_per_s']:.0f}", f"{c['steady_runs_per_s']:.0f}",
                      f"{c['cpu_pct'].get('processor', math.nan):.0f}%"]
                     for name, c in (("1: many keys", c1), ("2: one key", c2))])
        print()
        print(f"target: throughput ratio case 1 / case 2 = {ratio:.2f} (steady {steady_ratio:.2f}) ≥ {TARGET}: "
              f"{met_text(ok)}")
        print(f"(total wall time {time.monotonic() - wall0:.0f} s before shutdown)", flush=True)
        base = {**fs.stack.base_settings_record(), "workers": 1, "worker_concurrency": EXECUTORS,
                "dispatch_window": s.dispatch_window, "step_ms": STEP_S * 1000, "concurrency_limit_per_key": EXECUTORS,
                "send_batch": 500, "quick": quick}
        results = [
            {"bench": "B6", "case": "many_keys", **c1, "settings": base},
            {"bench": "B6", "case": "one_key", **c2, "settings": base},
            {"bench": "B6", "case": "ratio", "ratio": ratio, "steady_ratio": steady_ratio,
             "target": {"ratio": TARGET}, "met": ok, "settings": base},
        ]
        for r in results:
            emit_json(r)
        return results
    finally:
        fs.close()
