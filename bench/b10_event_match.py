"""B10 — event matching (BENCHMARKS.md: match p99 ≤ 10 ms with 100k live waiters at 2k events/s).

Workload: W runs (100k; --quick 10k), each started by an event with a unique ``data.id``, do
``step.run("started")`` (notes that the run started), then ``step.wait_for_event("w",
event="bench/match", match="data.id", timeout=...)``, then ``step.run("resumed")`` which
records the wall time. Once every run waits, matching events are sent open loop at 2k/s (in
lists every 10 ms; ``data.sent_ms`` = the event's scheduled send time), each targeting one
waiter, in random order.

"All waiting" is decided, not guessed: (1) the handler counts the calls that hand a wait op
to the engine (not look-aheads) until all W did, then (2) the processor group's committed
offsets must reach the end of ``sg.commands`` (the wait outcomes) and then of ``sg.events``
(a registration is a control record there, read by the router). faust commits every
``commit_interval_s``, so this errs late by up to that.

Match latency = resumed − sent: it includes the send, the router's lookup, the function
processor and the dispatch of the next job to the worker — what a user sees.
Throughput = runs resumed / (last resume − first scheduled send).
"""

from __future__ import annotations

import random
import time
from typing import Any

from sluicegate.sdk import Sluicegate

from .durable_common import (DurableStack, Marks, dist, first_ts, noting_op, print_notes, read_app_records,
                             stage_fields, target_text, wait_progress)
from .fairness_common import processor_caught_up, send_in_lists
from .harness import emit_json, fmt_ms, print_table

TRIGGER = "bench/b10"
MATCH = "bench/match"
FUNCTION_ID = "b10-wait"
RATE = 2000.0
TARGET_P99_MS = 10.0
EXECUTORS = 64
SEND_LIST = 5000
STALL_S = 60.0
WAITERS = {False: 100_000, True: 10_000}  # by quick


def paced_send(sg: Sluicegate, ids: list[int], rate: float, tick_s: float = 0.01) -> tuple[float, float, list[float]]:
    """Open loop: event j is due at start + j/rate; every tick, send (one list) all that are due.
    Returns (start, end, sender lag in ms per event: the time its list was sent − its due time)."""
    start = time.time() + 0.1
    i, lags = 0, []
    while i < len(ids):
        now = time.time()
        upto = min(len(ids), int((now - start) * rate) + 1, i + SEND_LIST)
        if upto <= i:
            time.sleep(max(0.0, min(tick_s, start + i / rate - now)))
            continue
        sg.send([{"name": MATCH, "data": {"id": ids[j], "sent_ms": (start + j / rate) * 1000}} for j in range(i, upto)])
        lags += [(now - (start + j / rate)) * 1000 for j in range(i, upto)]
        i = upto
    return start, time.time(), lags


def main(quick: bool = False, rates: list[float] | None = None, partitions: int | None = None,
         keep_logs: bool = False, **_: Any) -> list[dict[str, Any]]:
    w = WAITERS[quick]
    rate = rates[0] if rates else RATE
    timeout = "10m" if quick else "30m"  # the full setup can take longer than 10 minutes here
    marks = Marks()
    ds = DurableStack("B10", executors=EXECUTORS, partitions=partitions, keep_logs=keep_logs)
    try:
        print(f"B10: event matching; {w:,} live waiters (match=data.id, timeout {timeout}), matching events at "
              f"{rate:g}/s{' (quick)' if quick else ''}", flush=True)

        def define(sg: Sluicegate) -> None:
            @sg.function(id=FUNCTION_ID, trigger=TRIGGER, retries=0)
            def waiter(ctx: Any, step: Any) -> None:
                key = ctx.event["data"]["id"]
                step.run("started", lambda: marks.put(key, "started"))
                ev = noting_op(marks, key, "wait_op", lambda: step.wait_for_event(
                    "w", event=MATCH, match="data.id", timeout=timeout))

                def resumed() -> None:
                    marks.put(key, "run", ctx.run_id)
                    marks.put(key, "sent_ms", ev["data"]["sent_ms"] if ev else -1.0)
                    marks.put(key, "resumed")
                step.run("resumed", resumed)

        settings = ds.start(define)
        print("  " + ds.describe(), flush=True)
        primed = ds.prime({"name": TRIGGER, "data": {"id": -1}}, lambda: marks.get(-1, "wait_op") is not None)
        cpu_setup = ds.cpu()
        t_send0 = time.time()
        send_in_lists(ds.sg, [{"name": TRIGGER, "data": {"id": i}} for i in range(w)], batch=SEND_LIST, stamp=False)
        ds.sg.send({"name": MATCH, "data": {"id": -1, "sent_ms": time.time() * 1000}})  # resumes the priming run
        print(f"  priming run waiting after {primed:.1f} s; sent {w:,} trigger events in {time.time() - t_send0:.1f} s",
              flush=True)
        ok, t_ops = wait_progress(lambda: marks.count("wait_op") - 1, w, ds.alive, stall_s=STALL_S,
                                  label="wait ops handed to the engine")
        if not ok:
            raise RuntimeError(f"only {marks.count('wait_op') - 1:,} of {w:,} runs reached their wait")
        t0 = time.monotonic()
        if not processor_caught_up(settings, [settings.commands_topic, settings.results_topic, settings.events_topic],
                                   300.0, ds.alive):
            raise RuntimeError("the processor did not catch up with sg.commands / sg.events within 300 s")
        t_idle = time.monotonic() - t0
        setup_s = time.time() - t_send0
        cpu_setup.stop()
        print(f"  all {w:,} waiting: the last wait op left the worker {t_ops:.1f} s after the triggers were sent "
              f"({w / max(t_ops, 1e-9):.0f} runs/s); the processor's commits reached the end of sg.commands then "
              f"sg.events {t_idle:.1f} s later; CPU {cpu_setup.text()}", flush=True)

        ids = list(range(w))
        random.Random(10).shuffle(ids)
        cpu_match = ds.cpu()
        s_start, s_end, lags = paced_send(ds.sg, ids, rate)
        print(f"  sent {w:,} matching events in {s_end - s_start:.1f} s ({w / (s_end - s_start):.0f}/s)", flush=True)
        wait_progress(lambda: marks.count("resumed") - 1, w, ds.alive, stall_s=STALL_S, label="runs resumed")
        cpu_match.stop()
        resumed = marks.column("resumed", ids)
        sent = marks.column("sent_ms", ids)
        timed_out = sum(1 for k in resumed if sent[k] < 0)
        lat = dist(resumed[k] * 1000 - sent[k] for k in resumed if sent[k] >= 0)
        missing = w - len(resumed)
        span = max(resumed.values()) - s_start if resumed else float("nan")
        throughput = len(resumed) / span if resumed else float("nan")
        lag = dist(lags)
        stages = _breakdown(ds, marks, [k for k in resumed if sent[k] >= 0])

        # -- report -------------------------------------------------------------------------
        print()
        print(f"B10 match latency, ms = resumed step start - scheduled send ({w:,} waiters; includes the dispatch "
              f"of the step after the wait)")
        print_table(["matched", "p50", "p99", "max", "resumed/s", "offered/s", "timed out", "missing"],
                    [[str(lat["n"]), fmt_ms(lat["p50"], 0), target_text(lat["p99"], TARGET_P99_MS), fmt_ms(lat["max"], 0),
                      f"{throughput:.0f}", f"{rate:g}", str(timed_out), str(missing)]])
        print(f"  CPU from the first matching event to the last resume: {cpu_match.text()}")
        print(f"  sender lag (send call - the event's scheduled time) p50 {lag['p50']:.1f} / p99 {lag['p99']:.1f} ms")
        if missing:
            print(f"WARNING: {missing:,} waiter(s) never resumed (no progress for {STALL_S:g} s); not in the figures")
        print_notes(ds, marks, stages, "where it goes")

        result = {
            "bench": "B10", "waiters": w, "rate": rate, "matched": lat["n"], "timed_out": timed_out,
            "missing": missing, "p50_ms": lat["p50"], "p99_ms": lat["p99"], "max_ms": lat["max"],
            "mean_ms": lat["mean"], "resumed_per_s": throughput, "setup_s": setup_s, "idle_wait_s": t_idle,
            "sender_lag_p99_ms": lag["p99"], "cpu_pct_setup": cpu_setup.result, "cpu_pct_matching": cpu_match.result,
            **stage_fields(stages),
            "target": {"p99_ms": TARGET_P99_MS}, "met": lat["p99"] <= TARGET_P99_MS and missing == 0,
            "settings": ds.record(wait_timeout=timeout, send_list=SEND_LIST, quick=quick, retries=0),
        }
        emit_json(result)
        return [result]
    finally:
        ds.close()


def _breakdown(ds: DurableStack, marks: Marks, keys: list[int]) -> dict[str, dict[str, float]]:
    """send = scheduled → event CreateTime; router = event → WaitResolved; processor =
    WaitResolved → next job; worker = job → resumed step start."""
    try:
        s = ds.settings
        evs = first_ts(read_app_records(s, s.events_topic, ds.app_id, lambda r: r.get("name") == MATCH),
                       lambda r: r["data"]["id"])
        res = first_ts(read_app_records(s, s.results_topic, ds.app_id, lambda r: r.get("kind") == "wait_resolved"),
                       lambda r: r["run_id"])
        jobs = first_ts(read_app_records(s, s.work_topic(ds.app_id), ds.app_id,
                                         lambda r: len(r.get("memos") or {}) == 2), lambda r: r["run_id"])
    except Exception as exc:  # the figures above stand without it
        print(f"  (breakdown unavailable: {exc!r})")
        return {}
    parts: dict[str, list[float]] = {"send": [], "router": [], "processor": [], "worker": []}
    for k in keys:
        run, ev = marks.get(k, "run"), evs.get(k)
        r, j = res.get(run), jobs.get(run)
        if ev is None or r is None or j is None:
            continue
        parts["send"].append(ev - marks.get(k, "sent_ms"))
        parts["router"].append(r - ev)
        parts["processor"].append(j - r)
        parts["worker"].append(marks.get(k, "resumed") * 1000 - j)
    return {k: dist(v) for k, v in parts.items()}
