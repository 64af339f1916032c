"""B4 — noisy-neighbour fairness (BENCHMARKS.md).

Tenants are keys of ONE function (see ``bench/fairness_common.py``): the function has
``concurrency=[Concurrency(limit=50, key="event.data.tenant")]`` so one tenant alone may use
every executor, and the dispatcher's deficit round-robin across keys is what keeps the
quiet tenants' latency low. Its one step sleeps 50 ms; one worker runs 50 steps at once and
the processor's window (``dispatch_window``) is 50, on ONE partition (all work of the
function shares one window). Capacity = 50 / 0.05 s = 1,000 steps/s.

Phases (each bounded in time; a phase that times out reports how far it got):

1. idle baseline — quiet tenants A1..A9 send 1 event/s each (absolute schedule, staggered),
   no other load. Start latency of a quiet run = the step body's start (``time.time()`` in
   this process) − the event's scheduled send time (carried in the event).
2. burst — tenant M sends 100k events (``--quick``: 10k) as fast as the SDK sends them, in
   lists of 500, while A1..A9 go on at 1/s. Quiet latency over the events sent from the
   burst's start to M's last completion, vs the baseline; M's drain rate (its completions/s
   from its first step start to its last step end) vs the spare capacity
   (1,000 steps/s − the quiet tenants' use).
3. FIFO baseline — the same load on a plain topic (one partition) read by one confluent-kafka
   consumer handing messages in order to a ThreadPoolExecutor of 50 running the same 50 ms
   work: what a user writes without Sluicegate. The Sluicegate worker and processor are
   stopped first so the FIFO phase has the machine to itself. Prints FIFO p99 / Sluicegate p99.

Targets: quiet p99 ≤ 2× the idle baseline p99 and ≤ 50 ms; M keeps ≥ 90% of the spare
capacity. A miss is printed, never a failure. After the runs a stage breakdown of the quiet
events (Kafka CreateTime of event, trigger and job) shows where their time went.

The dispatcher can only choose among runs already in its backlogs: M's events and triggers
pass through ``sg.events`` and ``sg.commands`` (one partition per app / per function, in
order) first. So phase 2 also reports when the processor had committed all of M's events and
then their triggers (±1 s, faust's commit interval), the quiet latency of events sent before
and after that instant, and M's drain rate after it.

Options: ``--duration`` sets the idle baseline's seconds (default 30, ``--quick`` 10);
``--partitions`` overrides the single partition; ``--keep-logs`` keeps the processor log.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from sluicegate.sdk import Sluicegate

from .b1_latency import read_breakdown
from .fairness_common import (EXECUTORS, CpuMeter, FairStack, Ledger, PeriodicSenders, met_text,
                              processor_caught_up, send_in_lists, sleep_work, stats_ms, wait_until)
from .fifo_baseline import FifoClient, FifoConsumer, create_topic
from .harness import emit_json, fmt_ms, print_table

STEP_S = 0.05
QUIET = [f"A{i}" for i in range(1, 10)]
M_SEQ0 = 10_000_000  # M's seqs never collide with the quiet tenants'
CAPACITY = EXECUTORS / STEP_S  # steps/s


def _latency(first: dict[tuple[str, int], tuple[float, float, float]], sent: dict[tuple[str, int], float],
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


def _burst(make_client: Any, make_event: Any, n: int, stop: threading.Event, out: dict[str, Any]) -> threading.Thread:
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


def _watch_ingest(fs: FairStack, burst: threading.Thread, stop: threading.Event, info: dict[str, Any]) -> None:
    """Once the burst is sent: when has the processor handled (committed) all of M's events
    and then all of their triggers — i.e. when is all of M's backlog in the dispatcher's hands."""
    try:
        burst.join()
        s = fs.settings
        if processor_caught_up(s, [s.events_topic, s.commands_topic], 1e9, stop=stop):
            info["ingested_at"] = time.time()
    except Exception as exc:  # the figures stand without it
        print(f"    (ingest watch failed: {exc!r})", flush=True)


def _burst_phase(label: str, ledger: Ledger, senders: PeriodicSenders, make_client: Any, make_event: Any, n: int,
                 timeout: float, alive: Any, cpu: CpuMeter | None, fs: FairStack | None = None) -> dict[str, Any]:
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
    lat, missing = _latency(first, quiet_sent, gave_up)
    ingested = info.get("ingested_at")  # split: quiet events sent before / after M's backlog was in
    split = {name: _latency(first, {k: v for k, v in quiet_sent.items() if (v < ingested) == before}, gave_up)
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
            "ingest_s": ingested - t0 if ingested else None, "split": split, "m_rate_after_ingest": m_rate_after}


def _idle_phase(label: str, ledger: Ledger, senders: PeriodicSenders, t0: float, seconds: float) -> dict[str, Any]:
    time.sleep(max(0.0, t0 + seconds - time.time()))
    sent = senders.sent_between(t0, t0 + seconds - 1.0)
    wait_until(lambda: ledger.has_all(sent), 5.0)
    lat, missing = _latency(ledger.first(), sent, time.time())
    print(f"  {label}: quiet p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms over {lat['n']} runs, "
          f"missing {missing}", flush=True)
    return {"lat": lat, "missing": missing, "quiet_keys": list(sent)}


def _stages(keys: list[tuple[str, int]], bd: dict[int, dict[str, float]], ledger: Ledger) -> dict[str, dict]:
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


def main(quick: bool = False, duration: float | None = None, partitions: int | None = None,
         keep_logs: bool = False, **_: Any) -> list[dict[str, Any]]:
    burst_n = 10_000 if quick else 100_000
    idle_s = duration if duration is not None else (10.0 if quick else 30.0)
    drain_timeout = 90.0 if quick else 480.0
    fifo_idle_s = 5.0 if quick else 10.0
    fifo_timeout = 60.0 if quick else 240.0
    wall0 = time.monotonic()
    print(f"B4: noisy neighbour; step {STEP_S * 1000:g} ms, {EXECUTORS} executors (capacity {CAPACITY:g} steps/s), "
          f"quiet A1..A9 at 1 event/s each, M bursts {burst_n:,} events{' (quick)' if quick else ''}", flush=True)
    ledger, fifo_ledger = Ledger(), Ledger()
    fs = FairStack("B4", key_field="tenant", limit=EXECUTORS, executors=EXECUTORS, partitions=partitions or 1,
                   keep_logs=keep_logs)
    senders: PeriodicSenders | None = None
    fifo: FifoConsumer | None = None
    try:
        fs.start(sleep_work(ledger, STEP_S))
        print("  " + fs.describe(), flush=True)
        print(f"  first event reached its step after {fs.prime(ledger):.1f} s (priming, discarded)", flush=True)
        settings = fs.settings

        def sg_client() -> Sluicegate:
            return Sluicegate(app_id=fs.app_id, settings=settings)

        # phases 1 and 2: the quiet senders run throughout; the baseline is what they sent
        # before the burst (minus the last second, so no baseline run overlaps it)
        senders = PeriodicSenders(sg_client, lambda t, s, w: fs.event(t, s, w), QUIET).start()
        idle = _idle_phase("idle baseline", ledger, senders, time.time() + 0.1, idle_s + 1.0)
        cpu = CpuMeter(fs.pids())
        burst = _burst_phase("burst (Sluicegate)", ledger, senders, sg_client, fs.event, burst_n, drain_timeout,
                             fs.alive, cpu, fs)
        senders.stop()
        senders = None
        fs.stop_worker()
        fs.stop_processor()

        # stage breakdown of the quiet events (CreateTime stamps in the topics)
        stages: dict[str, dict] = {}
        try:
            bd = read_breakdown(settings, fs.app_id)
            stages = {"idle": _stages(idle["quiet_keys"], bd, ledger),
                      "burst": _stages(burst["quiet_keys"], bd, ledger)}
        except Exception as exc:
            print(f"  (stage breakdown unavailable: {exc!r})", flush=True)

        # phase 3: the FIFO baseline, on the same broker with Sluicegate stopped
        topic = f"{settings.topic_prefix}.fifo"
        create_topic(settings, topic, 1)

        def fifo_work(data: dict[str, Any]) -> None:
            start = time.time()
            time.sleep(STEP_S)
            fifo_ledger.add(str(data["tenant"]), int(data["seq"]), float(data.get("sent") or 0.0), start, time.time())

        fifo = FifoConsumer(settings.bootstrap_servers, topic, f"{settings.processor_id}-fifo", fifo_work).start()

        def fifo_alive() -> None:
            if fifo is not None and fifo.errors:
                raise RuntimeError(f"the FIFO consumer failed: {fifo.errors[0]!r}") from fifo.errors[0]

        def fifo_client() -> FifoClient:
            return FifoClient(settings.bootstrap_servers, topic)

        senders = PeriodicSenders(fifo_client, lambda t, s, w: fs.event(t, s, w), QUIET).start()
        fifo_idle = _idle_phase("FIFO idle", fifo_ledger, senders, time.time() + 0.1, fifo_idle_s + 1.0)
        fifo_burst = _burst_phase("burst (FIFO)", fifo_ledger, senders, fifo_client, fs.event, burst_n, fifo_timeout,
                                  fifo_alive, None)
        senders.stop()
        senders = None
        fifo.stop()
        fifo = None

        # -- report ---------------------------------------------------------------------------
        base_p99 = idle["lat"]["p99"]
        p99 = burst["lat"]["p99"]
        lat_ok = burst["missing"] == 0 and p99 <= 2 * base_p99 and p99 <= 50.0
        share = burst["m_rate"] / burst["spare"] if burst["spare"] > 0 else math.nan
        drain_ok = burst["drained"] and share >= 0.9
        ratio = fifo_burst["lat"]["p99"] / p99 if p99 > 0 else math.nan
        print()
        print(f"B4 quiet tenants' start latency, ms (A1..A9 at 1/s each; {EXECUTORS} executors x {STEP_S * 1000:g} ms; "
              f"window {settings.dispatch_window}, {settings.partitions} partition)")
        rows = []
        for name, r in (("Sluicegate idle baseline", idle), ("Sluicegate, M bursting", burst),
                        ("plain FIFO idle", fifo_idle), ("plain FIFO, M bursting", fifo_burst)):
            lb = "≥" if r["missing"] else ""
            rows.append([name, str(r["lat"]["n"]), fmt_ms(r["lat"]["p50"], 0), fmt_ms(r["lat"]["p90"], 0),
                         lb + fmt_ms(r["lat"]["p99"], 0), lb + fmt_ms(r["lat"]["max"], 0), str(r["missing"])])
        for name, (lat, miss) in burst["split"].items():
            lb = "≥" if miss else ""
            rows.insert(2 if name == "before" else 3,
                        [f"  sent {name} M's backlog was in", str(lat["n"]), fmt_ms(lat["p50"], 0),
                         fmt_ms(lat["p90"], 0), lb + fmt_ms(lat["p99"], 0), lb + fmt_ms(lat["max"], 0), str(miss)])
        print_table(["phase", "runs", "p50", "p90", "p99", "max", "missing"], rows)
        if burst["ingest_s"] is not None:
            print(f"(M's {burst_n:,} events and triggers were all handled by the processor {burst['ingest_s']:.1f} s "
                  "after the burst began: until then quiet events queue behind them in sg.events / sg.commands, "
                  "before the dispatcher can choose)")
        print()
        print("M's drain (steps/s; capacity = executors / step time; spare = capacity - quiet use)")
        rows = []
        for name, r in (("Sluicegate", burst), ("plain FIFO", fifo_burst)):
            rows.append([name, f"{r['m_done']:,}/{r['m_n']:,}", "yes" if r["drained"] else "TIMED OUT",
                         f"{r['duration_s']:.1f}", f"{r['m_rate']:.0f}", f"{r['m_rate_from_t0']:.0f}",
                         fmt_ms(r.get("m_rate_after_ingest", math.nan), 0), f"{CAPACITY:.0f}", f"{r['quiet_rate']:.1f}",
                         f"{r['spare']:.0f}", f"{100 * r['m_rate'] / r['spare']:.0f}%"])
        print_table(["", "M done", "drained", "s", "drain rate", "from burst", "once ingested", "capacity",
                     "quiet use", "spare", "of spare"], rows)
        if stages:
            print()
            print("quiet events, where the time goes, p50 / p99 ms (Kafka CreateTime of event, trigger and job; "
                  "trigger->job = commands queue + backlog wait)")
            rows = [[name] + [f"{fmt_ms(s['p50'], 0)} / {fmt_ms(s['p99'], 0)}" for s in st.values()]
                    for name, st in stages.items()]
            print_table(["phase", *next(iter(stages.values())).keys()], rows)
        print()
        print(f"targets: quiet p99 {p99:.1f} ms ≤ 2x idle ({2 * base_p99:.1f} ms) and ≤ 50 ms: {met_text(lat_ok)}; "
              f"M drain {burst['m_rate']:.0f}/s ≥ 90% of spare {burst['spare']:.0f}/s: {met_text(drain_ok)} "
              f"({100 * share:.0f}%)")
        print(f"FIFO p99 / Sluicegate p99 = {fifo_burst['lat']['p99']:.0f} / {p99:.1f} = {ratio:.1f}x")
        print(f"CPU during the Sluicegate burst (% of one core; 2 cores = 200%): {cpu.text()}")
        print(f"(total wall time {time.monotonic() - wall0:.0f} s before shutdown)", flush=True)

        base = {**fs.stack.base_settings_record(), "workers": 1, "worker_concurrency": EXECUTORS,
                "dispatch_window": settings.dispatch_window, "step_ms": STEP_S * 1000, "quiet_tenants": len(QUIET),
                "quiet_rate_per_tenant": 1.0, "burst": burst_n, "send_batch": 500, "concurrency_limit_per_key": EXECUTORS,
                "idle_s": idle_s, "quick": quick}

        def lat_fields(r: dict[str, Any]) -> dict[str, Any]:
            return {"p50_ms": r["lat"]["p50"], "p90_ms": r["lat"]["p90"], "p99_ms": r["lat"]["p99"],
                    "max_ms": r["lat"]["max"], "n": r["lat"]["n"], "missing": r["missing"],
                    "lower_bound": bool(r["missing"])}

        def drain_fields(r: dict[str, Any]) -> dict[str, Any]:
            return {"m_done": r["m_done"], "m_total": r["m_n"], "drained": r["drained"], "m_drain_rate": r["m_rate"],
                    "m_rate_from_burst_start": r["m_rate_from_t0"], "duration_s": r["duration_s"],
                    "capacity": CAPACITY, "quiet_use": r["quiet_rate"], "spare": r["spare"],
                    "share_of_spare": r["m_rate"] / r["spare"], "burst_send_s": r["burst_send_s"]}

        results = [
            {"bench": "B4", "phase": "idle_baseline", **lat_fields(idle),
             "stages_ms": stages.get("idle"), "settings": base},
            {"bench": "B4", "phase": "burst", **lat_fields(burst), **drain_fields(burst),
             "baseline_p99_ms": base_p99, "stages_ms": stages.get("burst"), "cpu_pct": burst["cpu"],
             "m_ingested_after_s": burst["ingest_s"], "m_drain_rate_once_ingested": burst["m_rate_after_ingest"],
             "split_by_ingest": {k: {"p50_ms": v[0]["p50"], "p99_ms": v[0]["p99"], "n": v[0]["n"], "missing": v[1]}
                                 for k, v in burst["split"].items()},
             "target": {"p99_vs_baseline": 2.0, "p99_ms": 50.0, "share_of_spare": 0.9},
             "met": {"latency": lat_ok, "drain": drain_ok}, "settings": base},
            {"bench": "B4", "phase": "fifo_baseline", **lat_fields(fifo_burst), **drain_fields(fifo_burst),
             "idle_p50_ms": fifo_idle["lat"]["p50"], "idle_p99_ms": fifo_idle["lat"]["p99"],
             "ratio_p99_fifo_over_sluicegate": ratio,
             "settings": {**base, "fifo": "1 topic, 1 partition, 1 consumer, ThreadPoolExecutor(50), in order"}},
        ]
        for r in results:
            emit_json(r)
        return results
    finally:
        if senders is not None:
            try:
                senders.stop()
            except Exception as exc:
                print(f"cleanup: senders: {exc!r}")
        if fifo is not None:
            fifo.stop()
        fs.close()
