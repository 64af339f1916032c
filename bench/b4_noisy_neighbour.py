"""B4 — noisy-neighbour fairness (BENCHMARKS.md).

Two tenant models, chosen with ``--tenants``:

``keys`` (default) — tenants are keys of ONE function of ONE app (see
``bench/fairness_common.py``): the function has
``concurrency=[Concurrency(limit=50, key="event.data.tenant")]`` so one tenant alone may use
every executor, and the dispatcher's deficit round-robin across keys is what keeps the
quiet tenants' latency low. One worker runs 50 steps at once and the processor's window
(``dispatch_window``) is 50, on ONE partition (all work of the function shares one window).

``apps`` — M and A1..A9 are separate apps (``bench/b4_apps.py``), the primary tenant in
Sluicegate: each has its own work topic, window and worker. Same one-step function, no
concurrency key; M's worker runs 50 jobs at once, each quiet app's worker 5. 8 partitions by
default; the quiet apps' ids are chosen so that neither their ``sg.events`` partition nor
their function's ``sg.commands`` partition is M's (``--allow-collisions``: first ids kept,
colliding apps reported apart).

Either way the step sleeps 50 ms and M's executors are 50: capacity 50 / 0.05 s = 1,000
steps/s. Phases (each bounded in time; a phase that times out reports how far it got):

1. idle baseline — quiet tenants A1..A9 send 1 event/s each (absolute schedule, staggered),
   no other load. Start latency of a quiet run = the step body's start (``time.time()`` in
   this process) − the event's scheduled send time (carried in the event).
2. burst — tenant M sends 100k events (``--quick``: 10k) as fast as the SDK sends them, in
   lists of 500, while A1..A9 go on at 1/s. Quiet latency over the events sent from the
   burst's start to M's last completion, vs the baseline; M's drain rate (its completions/s
   from its first step start to its last step end) vs the spare capacity
   (1,000 steps/s − the quiet tenants' use; in ``apps`` M's executors are its own, so that
   spare understates what M may use by the quiet use, ~9 steps/s).
3. FIFO baseline — the same load on a plain topic (one partition) read by one confluent-kafka
   consumer handing messages in order to a ThreadPoolExecutor of 50 running the same 50 ms
   work, all tenants mixed: what a user writes without Sluicegate. The Sluicegate workers and
   processor are stopped first so the FIFO phase has the machine to itself. Prints FIFO p99 /
   Sluicegate p99.

Targets: quiet p99 ≤ 2× the idle baseline p99 and ≤ 50 ms; M keeps ≥ 90% of the spare
capacity. A miss is printed, never a failure. After the runs a stage breakdown of the quiet
events (Kafka CreateTime of event, trigger and job) shows where their time went.

The dispatcher can only choose among runs already in its backlogs: M's events and triggers
pass through ``sg.events`` and ``sg.commands`` (one partition per app / per function, in
order) first. So phase 2 also reports when the processor had committed all of M's events and
then their triggers (±1 s, faust's commit interval), the quiet latency of events sent before
and after that instant, and M's drain rate after it. CPU per process during the burst says
what limits the figures (2 cores here).

Options: ``--tenants keys|apps``; ``--duration`` sets the idle baseline's seconds (default 30,
``--quick`` 10); ``--partitions`` overrides the partitions (keys: 1, apps: 8);
``--allow-collisions`` (apps); ``--keep-logs`` keeps the processor log.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sluicegate.sdk import Sluicegate

from .b1_latency import read_breakdown
from .b4_apps import AppsStack
from .b4_phases import CAPACITY, QUIET, STEP_S, CpuTimeline, burst_phase, cpu_text, idle_phase, stages
from .fairness_common import EXECUTORS, CpuMeter, FairStack, Ledger, PeriodicSenders, met_text, sleep_work
from .fifo_baseline import FifoClient, FifoConsumer, create_topic
from .harness import emit_json, fmt_ms, print_table

TENANT_MODELS = ("keys", "apps")
GROUP_LABELS = {"none": "sharing no partition with M", "sg.events": "sharing M's sg.events partition",
                "sg.commands": "sharing M's sg.commands partition", "both": "sharing both of M's partitions"}


def _model_text(tenants: str, fs: Any) -> str:
    if tenants == "keys":
        return (f"tenants = keys: M and A1..A9 are values of event.data.tenant of ONE function of ONE app "
                f"(concurrency limit {EXECUTORS} per key), one worker of {EXECUTORS}")
    return (f"tenants = apps: M and A1..A9 are separate apps, one function each, no concurrency key; "
            f"M's worker {fs.executors} at once, each quiet app's own worker {fs.quiet_executors}")


def _lat_row(name: str, lat: dict[str, float], missing: int) -> list[str]:
    lb = "≥" if missing else ""
    return [name, str(lat["n"]), fmt_ms(lat["p50"], 0), fmt_ms(lat["p90"], 0), lb + fmt_ms(lat["p99"], 0),
            lb + fmt_ms(lat["max"], 0), str(missing)]


def main(quick: bool = False, duration: float | None = None, partitions: int | None = None,
         keep_logs: bool = False, tenants: str = "keys", allow_collisions: bool = False,
         **_: Any) -> list[dict[str, Any]]:
    if tenants not in TENANT_MODELS:
        raise ValueError(f"--tenants must be one of {', '.join(TENANT_MODELS)}, not {tenants!r}")
    apps = tenants == "apps"
    burst_n = 10_000 if quick else 100_000
    idle_s = duration if duration is not None else (10.0 if quick else 30.0)
    drain_timeout = 90.0 if quick else 480.0
    fifo_idle_s = 5.0 if quick else 10.0
    fifo_timeout = 60.0 if quick else 240.0
    wall0 = time.monotonic()
    print(f"B4: noisy neighbour [tenants = {tenants}]; step {STEP_S * 1000:g} ms, {EXECUTORS} executors for M "
          f"(capacity {CAPACITY:g} steps/s), quiet A1..A9 at 1 event/s each, M bursts {burst_n:,} events"
          f"{' (quick)' if quick else ''}", flush=True)
    ledger, fifo_ledger = Ledger(), Ledger()
    fs: Any
    if apps:
        fs = AppsStack("B4", QUIET, partitions=partitions or 8, avoid_collisions=not allow_collisions,
                       keep_logs=keep_logs)
    else:
        fs = FairStack("B4", key_field="tenant", limit=EXECUTORS, executors=EXECUTORS, partitions=partitions or 1,
                       keep_logs=keep_logs)
    senders: PeriodicSenders | None = None
    fifo: FifoConsumer | None = None
    try:
        fs.start(sleep_work(ledger, STEP_S))
        print("  " + _model_text(tenants, fs), flush=True)
        print("  " + fs.describe(), flush=True)
        groups = fs.groups() if apps else None
        if apps:
            print("  " + fs.placement_text().replace("\n", "\n  "), flush=True)
        print(f"  first event reached its step after {fs.prime(ledger):.1f} s (priming, discarded)", flush=True)
        settings = fs.settings

        def sg_client(tenant: str = "M") -> Sluicegate:
            return fs.client(tenant) if apps else Sluicegate(app_id=fs.app_id, settings=settings)

        # phases 1 and 2: the quiet senders run throughout; the baseline is what they sent
        # before the burst (minus the last second, so no baseline run overlaps it)
        senders = PeriodicSenders(sg_client, lambda t, s, w: fs.event(t, s, w), QUIET, per_tenant=True).start()
        idle = idle_phase("idle baseline", ledger, senders, time.time() + 0.1, idle_s + 1.0, groups)
        cpu = CpuTimeline(fs.pids())
        burst = burst_phase("burst (Sluicegate)", ledger, senders, sg_client, fs.event, burst_n, drain_timeout,
                            fs.alive, cpu, fs, groups)
        senders.stop()
        senders = None
        fs.stop_worker()
        fs.stop_processor()

        # stage breakdown of the quiet events (CreateTime stamps in the topics)
        stage_rows: dict[str, dict] = {}
        try:
            bd = (read_breakdown(settings, [fs.app_of[t] for t in QUIET]) if apps
                  else read_breakdown(settings, fs.app_id))
            stage_rows = {"idle": stages(idle["quiet_keys"], bd, ledger),
                          "burst": stages(burst["quiet_keys"], bd, ledger)}
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
        fifo_idle = idle_phase("FIFO idle", fifo_ledger, senders, time.time() + 0.1, fifo_idle_s + 1.0)
        fifo_burst = burst_phase("burst (FIFO)", fifo_ledger, senders, fifo_client, fs.event, burst_n, fifo_timeout,
                                 fifo_alive, None)
        senders.stop()
        senders = None
        fifo.stop()
        fifo = None
        return _report(tenants, fs, settings, burst_n, idle_s, quick, idle, burst, fifo_idle, fifo_burst, stage_rows,
                       cpu, wall0)
    finally:
        if senders is not None:
            try:
                senders.stop()
            except Exception as exc:
                print(f"cleanup: senders: {exc!r}")
        if fifo is not None:
            fifo.stop()
        fs.close()


def _report(tenants: str, fs: Any, settings: Any, burst_n: int, idle_s: float, quick: bool, idle: dict, burst: dict,
            fifo_idle: dict, fifo_burst: dict, stage_rows: dict, cpu: CpuMeter, wall0: float) -> list[dict[str, Any]]:
    apps = tenants == "apps"
    base_p99 = idle["lat"]["p99"]
    p99 = burst["lat"]["p99"]
    lat_ok = burst["missing"] == 0 and p99 <= 2 * base_p99 and p99 <= 50.0
    share = burst["m_rate"] / burst["spare"] if burst["spare"] > 0 else math.nan
    drain_ok = burst["drained"] and share >= 0.9
    ratio = fifo_burst["lat"]["p99"] / p99 if p99 > 0 else math.nan
    n_part = settings.partitions
    print()
    print(f"B4 [tenants = {tenants}] — {_model_text(tenants, fs)}")
    print(f"quiet tenants' start latency, ms (A1..A9 at 1/s each; M: {EXECUTORS} executors x {STEP_S * 1000:g} ms; "
          f"window {settings.dispatch_window}, {n_part} partition{'s' if n_part != 1 else ''}, "
          f"processor_buffer {settings.processor_buffer})")
    rows = [_lat_row("Sluicegate idle baseline", idle["lat"], idle["missing"]),
            _lat_row("Sluicegate, M bursting", burst["lat"], burst["missing"])]
    for name in ("before", "after"):
        if name in burst["split"]:
            rows.append(_lat_row(f"  sent {name} M's backlog was in", *burst["split"][name]))
    if apps and set(burst["groups"]) != {"none"}:  # some quiet apps share a partition with M: each group apart
        for g, (lat, miss) in burst["groups"].items():
            rows.append(_lat_row(f"  apps {GROUP_LABELS[g]}", lat, miss))
    rows += [_lat_row("plain FIFO idle", fifo_idle["lat"], fifo_idle["missing"]),
             _lat_row("plain FIFO, M bursting", fifo_burst["lat"], fifo_burst["missing"])]
    print_table(["phase", "runs", "p50", "p90", "p99", "max", "missing"], rows)
    if apps:
        n_coll = sum(1 for t in QUIET if fs.placement[t].group != "none")
        print(f"({'no quiet app shares' if n_coll == 0 else f'{n_coll} quiet app(s) share'} M's sg.events or "
              f"sg.commands partition" + (": the rows above are collision-free" if n_coll == 0 else "") + ")")
    if burst["ingest_s"] is not None:
        print(f"(M's {burst_n:,} events and triggers were all handled by the processor {burst['ingest_s']:.1f} s "
              "after the burst began: until then quiet events on the same partitions queue behind them in "
              "sg.events / sg.commands, before the dispatcher can choose)")
    print()
    print("M's drain (steps/s; capacity = M's executors / step time; spare = capacity - quiet use"
          + ("; apps: M's executors are its own, quiet apps run on theirs)" if apps else ")"))
    rows = []
    for name, r in (("Sluicegate", burst), ("plain FIFO", fifo_burst)):
        rows.append([name, f"{r['m_done']:,}/{r['m_n']:,}", "yes" if r["drained"] else "TIMED OUT",
                     f"{r['duration_s']:.1f}", f"{r['m_rate']:.0f}", f"{r['m_rate_from_t0']:.0f}",
                     fmt_ms(r.get("m_rate_after_ingest", math.nan), 0), f"{CAPACITY:.0f}", f"{r['quiet_rate']:.1f}",
                     f"{r['spare']:.0f}", f"{100 * r['m_rate'] / r['spare']:.0f}%"])
    print_table(["", "M done", "drained", "s", "drain rate", "from burst", "once ingested", "capacity",
                 "quiet use", "spare", "of spare"], rows)
    if stage_rows:
        print()
        print("quiet events, where the time goes, p50 / p99 ms (Kafka CreateTime of event, trigger and job; "
              "trigger->job = commands queue + backlog wait)")
        rows = [[name] + [f"{fmt_ms(s['p50'], 0)} / {fmt_ms(s['p99'], 0)}" for s in st.values()]
                for name, st in stage_rows.items()]
        print_table(["phase", *next(iter(stage_rows.values())).keys()], rows)
    print()
    print(f"targets: quiet p99 {p99:.1f} ms ≤ 2x idle ({2 * base_p99:.1f} ms) and ≤ 50 ms: {met_text(lat_ok)}; "
          f"M drain {burst['m_rate']:.0f}/s ≥ 90% of spare {burst['spare']:.0f}/s: {met_text(drain_ok)} "
          f"({100 * share:.0f}%)")
    print(f"FIFO p99 / Sluicegate p99 = {fifo_burst['lat']['p99']:.0f} / {p99:.1f} = {ratio:.1f}x")
    print(f"CPU during the Sluicegate burst (% of one core; 2 cores = 200%): {cpu.text()}")
    for name, res in burst["cpu_split"].items():
        print(f"  {name} M's backlog was in: {cpu_text(res)}")
    print(f"(total wall time {time.monotonic() - wall0:.0f} s before shutdown)", flush=True)

    base = {**fs.stack.base_settings_record(), "tenant_model": tenants,
            "dispatch_window": settings.dispatch_window, "processor_buffer": settings.processor_buffer,
            "step_ms": STEP_S * 1000, "quiet_tenants": len(QUIET), "quiet_rate_per_tenant": 1.0, "burst": burst_n,
            "send_batch": 500, "idle_s": idle_s, "quick": quick}
    if apps:
        base.update({"workers": len(fs.app_of), "worker_concurrency": EXECUTORS,
                     "quiet_worker_concurrency": fs.quiet_executors, "concurrency_limit_per_key": None,
                     "avoid_collisions": fs.avoid_collisions,
                     "placement": {t: {"app": p.app_id, "events_partition": p.events_p,
                                       "commands_partition": p.commands_p, "shares_with_m": p.group}
                                   for t, p in fs.placement.items()}})
    else:
        base.update({"workers": 1, "worker_concurrency": EXECUTORS, "concurrency_limit_per_key": EXECUTORS})

    def lat_fields(r: dict[str, Any]) -> dict[str, Any]:
        return {"p50_ms": r["lat"]["p50"], "p90_ms": r["lat"]["p90"], "p99_ms": r["lat"]["p99"],
                "max_ms": r["lat"]["max"], "n": r["lat"]["n"], "missing": r["missing"],
                "lower_bound": bool(r["missing"])}

    def drain_fields(r: dict[str, Any]) -> dict[str, Any]:
        return {"m_done": r["m_done"], "m_total": r["m_n"], "drained": r["drained"], "m_drain_rate": r["m_rate"],
                "m_rate_from_burst_start": r["m_rate_from_t0"], "duration_s": r["duration_s"],
                "capacity": CAPACITY, "quiet_use": r["quiet_rate"], "spare": r["spare"],
                "share_of_spare": r["m_rate"] / r["spare"], "burst_send_s": r["burst_send_s"]}

    def by_group(r: dict[str, Any]) -> dict[str, Any]:
        return {g: {"p50_ms": v[0]["p50"], "p99_ms": v[0]["p99"], "n": v[0]["n"], "missing": v[1]}
                for g, v in r.get("groups", {}).items()}

    results = [
        {"bench": "B4", "tenants": tenants, "phase": "idle_baseline", **lat_fields(idle),
         "by_collision": by_group(idle), "stages_ms": stage_rows.get("idle"), "settings": base},
        {"bench": "B4", "tenants": tenants, "phase": "burst", **lat_fields(burst), **drain_fields(burst),
         "baseline_p99_ms": base_p99, "stages_ms": stage_rows.get("burst"), "cpu_pct": burst["cpu"],
         "cpu_pct_by_ingest": {k: {n.strip(): p for n, p in v.items()} for k, v in burst["cpu_split"].items()},
         "m_ingested_after_s": burst["ingest_s"], "m_drain_rate_once_ingested": burst["m_rate_after_ingest"],
         "split_by_ingest": {k: {"p50_ms": v[0]["p50"], "p99_ms": v[0]["p99"], "n": v[0]["n"], "missing": v[1]}
                             for k, v in burst["split"].items()},
         "by_collision": by_group(burst),
         "target": {"p99_vs_baseline": 2.0, "p99_ms": 50.0, "share_of_spare": 0.9},
         "met": {"latency": lat_ok, "drain": drain_ok}, "settings": base},
        {"bench": "B4", "tenants": tenants, "phase": "fifo_baseline", **lat_fields(fifo_burst),
         **drain_fields(fifo_burst), "idle_p50_ms": fifo_idle["lat"]["p50"], "idle_p99_ms": fifo_idle["lat"]["p99"],
         "ratio_p99_fifo_over_sluicegate": ratio,
         "settings": {**base, "fifo": "1 topic, 1 partition, 1 consumer, ThreadPoolExecutor(50), in order"}},
    ]
    for r in results:
        emit_json(r)
    return results
