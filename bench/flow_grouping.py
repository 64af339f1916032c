"""FLOW — debounce and batching: events/s absorbed per function with many distinct keys, and
the lateness of a debounced run's start after its quiet period.

Three measurements against one broker, one processor (child process) and one in-process
worker, each on its own function of one app (so their flow state never mixes):

1. **Debounce absorption.** ``Debounce(period_ms=2000, key="event.data.k")``; N events over
   K distinct keys (3 per key, interleaved in groups of 20 keys: k1..k20 k1..k20 k1..k20),
   sent as fast as one SDK client sends (500 events per acknowledged ``sg.send``). *Absorbed* = the processor has
   consumed every trigger of these events, seen two ways: (a) the committed offsets of the
   processor's consumer group (``settings.processor_id``) on ``sg.events`` and then on
   ``sg.commands`` reach the end offsets (resolution: the commit interval), and (b) exactly,
   read back afterwards: the CreateTime of the last ``seen/`` record the function processor
   wrote to its ``flow`` table changelog for this function (one per absorbed event). Every
   run's step appends ``time.time()`` in this process; the run count must equal K.
2. **Debounce lateness.** At rest, 200 other keys get 3 events each, 300 ms apart, keys
   started 30 ms apart (~100 events/s, one event per ``sg.send``, within what the processor
   absorbs); lateness = start of the run carrying the key's last event − (send call of that
   event + period), split at the write of the key's ``seen/`` state (absorbed) into
   send → absorbed and absorbed + period → step start (timer, dispatch, worker).
3. **Batching.** ``Batch(max_size=100, timeout_ms=1000, key="event.data.k")`` over K keys and
   the same without a key: events/s absorbed, runs started (runs/s), and every event id
   must land in exactly one run (the step records ``ctx.events``' ids).

Where time goes is shown from the topics' CreateTime stamps (router: last trigger written;
function processor: last ``seen/`` state written) and from the CPU seconds each process used
in each phase (processor from /proc, this process = SDK sender + worker).
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from sluicegate.partitioning import function_key
from sluicegate.sdk import Batch, Debounce, Sluicegate
from sluicegate.settings import Settings

from .harness import BenchStack, emit_json, fmt_ms, percentile, print_table

PERIOD_MS = 2000
EVENTS_PER_KEY = 3
SEND_BATCH = 500
INTERLEAVE_KEYS = 20        # a key's events are interleaved with those of 19 other keys
LATENCY_KEYS = 200
LATENCY_KEY_GAP_S = 0.03    # lateness phase: keys start 30 ms apart ...
LATENCY_EVENT_GAP_S = 0.3   # ... and a key's events are 300 ms apart: ~100 events/s, one per sg.send
BATCH_MAX = 100
BATCH_TIMEOUT_MS = 1000

FN_DEB = "flow-debounce"
FN_LAT = "flow-debounce-lat"
FN_BATK = "flow-batch-key"
FN_BATN = "flow-batch-nokey"
EV_DEB, EV_LAT, EV_BATK, EV_BATN = "bench/flow.deb", "bench/flow.lat", "bench/flow.batk", "bench/flow.batn"


# -- what the runs did (recorded by the step, in this process) ------------------------------------


class RunLog:
    """run id -> (function, first step start, key, event ids); step executions per run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[str, dict[str, Any]] = {}
        self.executions: Counter[str] = Counter()
        self.count: Counter[str] = Counter()  # function -> distinct runs started
        self.events_in: Counter[str] = Counter()  # function -> events in those runs

    def mark(self, fn: str, run_id: str, key: Any, event_ids: list[str]) -> None:
        t = time.time()
        with self._lock:
            self.executions[run_id] += 1
            if run_id not in self.runs:
                self.runs[run_id] = {"fn": fn, "t": t, "key": key, "ids": event_ids}
                self.count[fn] += 1
                self.events_in[fn] += len(event_ids)

    def of(self, fn: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(rid, r) for rid, r in self.runs.items() if r["fn"] == fn]


# -- the processor's consumer-group lag -----------------------------------------------------------


class GroupLag:
    """Committed offsets of the processor's group vs the end offsets of its input topics."""

    def __init__(self, settings: Settings) -> None:
        self.group = settings.processor_id
        self.admin: Any = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 3})
        # only for watermarks: never subscribes, never joins a group
        self.consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                                  "group.id": "sg-bench-flow-watermarks-unused", "enable.auto.commit": False,
                                  "log_level": 3})
        self.topics = [settings.events_topic, settings.commands_topic, settings.results_topic]
        md = self.consumer.list_topics(timeout=10)
        self.parts = {t: sorted(md.topics[t].partitions) for t in self.topics}

    def ends(self, topic: str) -> dict[int, int]:
        return {p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in self.parts[topic]}

    def committed(self, topic: str) -> dict[int, int]:
        req = ConsumerGroupTopicPartitions(self.group, [TopicPartition(topic, p) for p in self.parts[topic]])
        res = self.admin.list_consumer_group_offsets([req], request_timeout=10)[self.group].result(15)
        return {tp.partition: tp.offset for tp in res.topic_partitions}

    def lag(self, topic: str) -> int:
        ends, done = self.ends(topic), self.committed(topic)
        return sum(max(0, e - max(done.get(p, 0), 0)) for p, e in ends.items())

    def caught_up(self, topic: str, target: dict[int, int]) -> bool:
        done = self.committed(topic)
        return all(done.get(p, -1) >= off for p, off in target.items())

    def wait_absorbed(self, events_before: dict[int, int], commands_before: dict[int, int],
                      events_target: dict[int, int], timeout: float,
                      alive: Callable[[], None]) -> tuple[float | None, float | None]:
        """Wall times at which the group's commits passed (a) ``events_target`` on sg.events and
        then (b) the end of sg.commands as it was at (a). Only partitions that grew count."""
        ev_target = {p: o for p, o in events_target.items() if o > events_before.get(p, 0)}
        t_events: float | None = None
        cmd_target: dict[int, int] | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.time()
            if t_events is None and self.caught_up(self.topics[0], ev_target):
                t_events = now
                ends = self.ends(self.topics[1])
                cmd_target = {p: o for p, o in ends.items() if o > commands_before.get(p, 0)}
            if cmd_target is not None and self.caught_up(self.topics[1], cmd_target):
                return t_events, now
            alive()
            time.sleep(0.1)
        return t_events, None

    def wait_idle(self, timeout: float, alive: Callable[[], None]) -> float:
        """Until both inputs have no lag (the processor is idle); returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.lag(self.topics[0]) == 0 and self.lag(self.topics[1]) == 0:
                break
            alive()
            time.sleep(0.2)
        return time.monotonic() - t0

    def close(self) -> None:
        self.consumer.close()


# -- read-back of topics (CreateTime stamps) ------------------------------------------------------


def _scan(settings: Settings, topic: str, visit: Callable[[int, bytes | None, bytes | None], None],
          timeout: float = 60.0) -> None:
    """Call ``visit(CreateTime ms, key, value)`` for every record of ``topic`` up to its end."""
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "sg-bench-readback-unused",
                  "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return
        remaining, assign = set(), []
        for p in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                remaining.add(p)
                assign.append(TopicPartition(topic, p, lo))
        if not assign:
            return
        c.assign(assign)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in c.consume(1000, 0.2):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        remaining.discard(msg.partition())
                    continue
                visit(msg.timestamp()[1], msg.key(), msg.value())
    finally:
        c.close()


class Readback:
    """From the topics' CreateTime stamps, per function: when each event was written to
    sg.events, when the router wrote its trigger to sg.commands, when the function processor
    wrote the key's ``seen/`` state (one write per absorbed event) to its ``flow`` changelog;
    timer and outcome commands; bytes of group state written; the skip notices the processor
    wrote back to sg.events."""

    def __init__(self, settings: Settings, app_id: str, functions: list[str]) -> None:
        self.fkeys = {function_key(app_id, f).encode(): f for f in functions}
        self.state_prefix: dict[bytes, str] = {}
        for f in functions:
            fk = function_key(app_id, f)
            for kind in ("deb", "batch"):
                self.state_prefix[f"{kind}/{fk}/".encode()] = f
        self.event_ts: dict[str, int] = {}
        self.trigger_ts: dict[str, int] = {}
        self.seen_ts: dict[str, int] = {}
        self.timers: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.state_writes: Counter[str] = Counter()
        self.state_bytes: Counter[str] = Counter()
        self.seen_bytes: Counter[str] = Counter()
        self.skip_notices: list[int] = []
        self.ok = True
        try:
            _scan(settings, settings.events_topic, self._event)
            _scan(settings, settings.commands_topic, self._command)
            _scan(settings, settings.results_topic, self._command)  # step outcomes, run timers
            _scan(settings, f"{settings.processor_id}-flow-changelog", self._flow)
        except Exception as exc:  # the live figures stand without it
            print(f"  (read-back unavailable: {exc!r})", file=sys.stderr)
            self.ok = False

    @staticmethod
    def _json(value: bytes) -> Any:
        out: Any = json.loads(value)
        while isinstance(out, str):  # a serializer may have wrapped it once more
            out = json.loads(out)
        return out

    def _event(self, ts: int, _key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        if b'"name":"sluicegate/run.skipped"' in value:
            self.skip_notices.append(ts)
        elif b'"name":"bench/flow.' in value:
            self.event_ts[json.loads(value)["id"]] = ts

    def _command(self, ts: int, key: bytes | None, value: bytes | None) -> None:
        f = self.fkeys.get(key or b"")
        if f is None or value is None:
            return
        head = value[:24]
        if head.startswith(b'{"kind":"trigger"'):
            for e in json.loads(value).get("events") or []:
                self.trigger_ts.setdefault(e["id"], ts)
        elif head.startswith(b'{"kind":"timer"'):
            self.timers[f] += 1
        elif head.startswith(b'{"kind":"outcome"'):
            self.outcomes[f] += 1

    def _flow(self, ts: int, key: bytes | None, value: bytes | None) -> None:
        if not key:
            return
        seen = key.startswith(b"seen/")
        bare = key[5:] if seen else key
        for prefix, f in self.state_prefix.items():
            if bare.startswith(prefix):
                break
        else:
            return
        if seen:
            self.seen_bytes[f] += len(value or b"")
            try:
                ids = self._json(value) if value else None
            except ValueError:
                ids = None
            if isinstance(ids, dict):  # {"at", "ids"} (a bare list before stop 18)
                ids = ids.get("ids")
            if isinstance(ids, list) and ids:
                self.seen_ts.setdefault(ids[-1], ts)
        else:
            self.state_writes[f] += 1
            self.state_bytes[f] += len(value or b"")


# -- CPU accounting -------------------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return math.nan
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return math.nan


class Cpu:
    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack

    def sample(self) -> dict[str, float]:
        proc = self.stack.processor.proc if self.stack.processor is not None else None
        broker = self.stack.broker._proc if self.stack.broker is not None else None  # noqa: SLF001
        return {"t": time.monotonic(), "processor": _proc_cpu(proc.pid if proc else None),
                "bench": time.process_time(), "broker": _proc_cpu(broker.pid if broker else None)}

    @staticmethod
    def share(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """CPU used between two samples, as a fraction of one core."""
        wall = max(b["t"] - a["t"], 1e-9)
        return {"wall_s": wall, **{k: (b[k] - a[k]) / wall for k in ("processor", "bench", "broker")}}


# -- sending ---------------------------------------------------------------------------------------


def _keyed_events(name: str, keys: list[str], per_key: int, tag: str) -> list[dict[str, Any]]:
    """Groups of INTERLEAVE_KEYS keys, each group's events interleaved (k1 k2 .. k20 k1 k2 .. k20 ..)."""
    block = INTERLEAVE_KEYS
    out = []
    for b in range(0, len(keys), block):
        chunk = keys[b:b + block]
        for r in range(per_key):
            out += [{"name": name, "data": {"k": k, "r": r, "t": tag}} for k in chunk]
    return out


def _send_all(sg: Sluicegate, events: list[dict[str, Any]]) -> tuple[float, float, list[str]]:
    """Send in batches of SEND_BATCH, each acknowledged before the next; (start, end, ids)."""
    ids: list[str] = []
    t0 = time.time()
    for i in range(0, len(events), SEND_BATCH):
        ids += sg.send(events[i:i + SEND_BATCH])
    return t0, time.time(), ids


def _stats(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99),
            "max": v[-1] if v else math.nan, "min": v[0] if v else math.nan,
            "mean": sum(v) / len(v) if v else math.nan, "n": len(v)}


def _rate(n: int, seconds: float | None) -> float:
    return n / seconds if seconds and seconds > 0 else math.nan


def _stamp_stages(ph: dict[str, Any], ids: list[str], rb: "Readback") -> None:
    """Per event of ``ids``: router delay (event written -> trigger written) and function
    processor delay (trigger written -> the key's seen/ state written); the phase's last ones."""
    trig = [rb.trigger_ts[i] for i in ids if i in rb.trigger_ts]
    seen = [rb.seen_ts[i] for i in ids if i in rb.seen_ts]
    t0 = ph.get("t_first")
    ph["triggers"], ph["seen_writes"] = len(trig), len(seen)
    ph["router_done_s"] = (max(trig) / 1000 - t0) if trig and t0 else None
    ph["fp_done_s"] = (max(seen) / 1000 - t0) if seen and t0 else None
    ph["router_delay"] = _stats([rb.trigger_ts[i] - rb.event_ts[i] for i in ids
                                 if i in rb.trigger_ts and i in rb.event_ts])
    ph["fp_delay"] = _stats([rb.seen_ts[i] - rb.trigger_ts[i] for i in ids if i in rb.seen_ts and i in rb.trigger_ts])


def _agent_crashes(stack: BenchStack) -> list[str]:
    """faust agents that crashed (and were restarted by its supervisor), from the processor log."""
    try:
        text = stack.processor_log.read_text(errors="replace")
    except OSError:
        return []
    return [line.split("Crashed reason=", 1)[1][:200] for line in text.splitlines() if "Crashed reason=" in line]


# -- the benchmark ---------------------------------------------------------------------------------


def main(quick: bool = False, partitions: int | None = None, keep_logs: bool = False,
         **_unused: Any) -> list[dict[str, Any]]:
    keys_n = 1000 if quick else 10_000
    bat_events = keys_n * EVENTS_PER_KEY
    phase_timeout = 40.0 if quick else 300.0
    wall0 = time.monotonic()

    stack = BenchStack("FLOW", partitions=partitions, keep_logs=keep_logs)
    worker = None
    sg: Sluicegate | None = None
    lagmon: GroupLag | None = None
    try:
        print(f"FLOW: debounce and batching with {keys_n:,} distinct keys, {EVENTS_PER_KEY} events per key, "
              f"sg.send batches of {SEND_BATCH}{' (quick)' if quick else ''}", flush=True)
        settings = stack.start_broker()
        app_id = f"bench-flow-{stack.run_id}"
        log = RunLog()
        sg = Sluicegate(app_id=app_id, settings=settings)

        def ids_of(ctx: Any) -> list[str]:
            return [e["id"] for e in ctx.events]

        @sg.function(id=FN_DEB, trigger=EV_DEB, debounce=Debounce(period_ms=PERIOD_MS, key="event.data.k"))
        def deb(ctx: Any, step: Any) -> None:
            step.run("mark", lambda: log.mark(FN_DEB, ctx.run_id, ctx.event["data"]["k"], ids_of(ctx)))

        @sg.function(id=FN_LAT, trigger=EV_LAT, debounce=Debounce(period_ms=PERIOD_MS, key="event.data.k"))
        def deb_lat(ctx: Any, step: Any) -> None:
            step.run("mark", lambda: log.mark(FN_LAT, ctx.run_id, ctx.event["data"]["k"], ids_of(ctx)))

        @sg.function(id=FN_BATK, trigger=EV_BATK,
                     batch=Batch(max_size=BATCH_MAX, timeout_ms=BATCH_TIMEOUT_MS, key="event.data.k"))
        def bat_key(ctx: Any, step: Any) -> None:
            step.run("mark", lambda: log.mark(FN_BATK, ctx.run_id, ctx.event["data"]["k"], ids_of(ctx)))

        @sg.function(id=FN_BATN, trigger=EV_BATN, batch=Batch(max_size=BATCH_MAX, timeout_ms=BATCH_TIMEOUT_MS))
        def bat_nokey(ctx: Any, step: Any) -> None:
            step.run("mark", lambda: log.mark(FN_BATN, ctx.run_id, None, ids_of(ctx)))

        worker = sg.worker().start()
        stack.start_processor()
        lagmon = GroupLag(settings)
        cpu = Cpu(stack)
        print(f"  broker {settings.bootstrap_servers} (kafka {stack.kafka}, {stack.timings['broker_s']:.1f} s), "
              f"processor ready in {stack.timings['processor_s']:.1f} s, partitions {settings.partitions}",
              flush=True)

        def alive() -> None:
            stack.check_processor()
            if worker is not None and (worker._thread is None or not worker._thread.is_alive()):  # noqa: SLF001
                raise RuntimeError("the worker thread died (see the log above)")

        def wait_runs(fn: str, done: Callable[[], bool], timeout: float) -> float | None:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if done():
                    return time.time()
                alive()
                time.sleep(0.05)
            return None

        # prime: one event through each debounce/batch path would take seconds; one batch of
        # the no-key function (closes by timeout) proves the whole path and warms it up
        t = time.monotonic()
        sg.send([{"name": EV_BATN, "data": {"prime": True}}])
        if wait_runs(FN_BATN, lambda: log.count[FN_BATN] >= 1, 20.0) is None:
            crashes = _agent_crashes(stack)
            if not crashes:
                raise RuntimeError("the priming event did not start a run within 20 s:\n"
                                   + (stack.processor.tail() if stack.processor else ""))
            # a processor agent crashed and was restarted by faust: say so, then prime once more
            print(f"WARNING: a processor agent crashed on the priming event and its run never started "
                  f"(the event is lost): {crashes[0]}; priming again", flush=True)
            sg.send([{"name": EV_BATN, "data": {"prime": True}}])
            if wait_runs(FN_BATN, lambda: log.count[FN_BATN] >= 1, 40.0) is None:
                raise RuntimeError("the priming events did not start a run within 60 s:\n"
                                   + (stack.processor.tail() if stack.processor else ""))
        print(f"  priming batch run started after {time.monotonic() - t:.1f} s (discarded)", flush=True)
        prime_runs = {rid for rid, _ in log.of(FN_BATN)}
        lagmon.wait_idle(15.0, alive)

        def throughput_phase(label: str, fn: str, events: list[dict[str, Any]],
                             done: Callable[[], bool],
                             on_sent: Callable[[list[str]], None] | None = None) -> dict[str, Any]:
            ev_before, cmd_before = lagmon.ends(settings.events_topic), lagmon.ends(settings.commands_topic)
            c0 = cpu.sample()
            t_first, t_last, ids = _send_all(sg, events)
            if on_sent is not None:
                on_sent(ids)
            c_send = cpu.sample()
            ev_target = lagmon.ends(settings.events_topic)
            t_ev, t_cmd = lagmon.wait_absorbed(ev_before, cmd_before, ev_target, phase_timeout, alive)
            c_abs = cpu.sample()
            t_runs = wait_runs(fn, done, phase_timeout)
            c_runs = cpu.sample()
            r = {
                "label": label, "fn": fn, "events": len(ids), "ids": ids, "t_first": t_first, "t_last": t_last,
                "send_s": t_last - t_first, "events_absorbed_s": None if t_ev is None else t_ev - t_first,
                "absorbed_s": None if t_cmd is None else t_cmd - t_first,
                "runs_done_s": None if t_runs is None else t_runs - t_first,
                "cpu_send": Cpu.share(c0, c_send), "cpu_absorb": Cpu.share(c_send, c_abs),
                "cpu_runs": Cpu.share(c_abs, c_runs), "cpu_all": Cpu.share(c0, c_runs),
                "cpu_until_absorbed": Cpu.share(c0, c_abs),
                "processor_cpu_ms_per_event": (c_abs["processor"] - c0["processor"]) * 1000 / max(len(ids), 1),
            }
            print(f"  {label}: sent {len(ids):,} in {r['send_s']:.1f} s; absorbed (group commits) after "
                  f"{'-' if t_cmd is None else f'{t_cmd - t_first:.1f} s'}; runs "
                  f"{log.count[fn]:,} started, all after "
                  f"{'-' if t_runs is None else f'{t_runs - t_first:.1f} s'}", flush=True)
            waited = lagmon.wait_idle(phase_timeout, alive)
            r["idle_after_s"] = waited
            return r

        # 1. debounce absorption ----------------------------------------------------------------
        deb_keys = [f"d{i:05d}" for i in range(keys_n)]
        deb_list = _keyed_events(EV_DEB, deb_keys, EVENTS_PER_KEY, "deb")

        def deb_last_ran() -> int:
            ran = {i for _rid, rec in log.of(FN_DEB) for i in rec["ids"]}
            return sum(1 for i in deb_last.values() if i in ran)

        deb_last: dict[str, str] = {}

        def deb_sent(ids: list[str]) -> None:
            for ev, eid in zip(deb_list, ids):
                deb_last[ev["data"]["k"]] = eid

        ph_deb = throughput_phase("debounce", FN_DEB, deb_list,
                                  lambda: log.count[FN_DEB] >= keys_n and deb_last_ran() >= keys_n, deb_sent)

        # 2. debounce lateness, at rest --------------------------------------------------------
        lat_keys = [f"l{i:03d}" for i in range(LATENCY_KEYS)]
        last_call: dict[str, float] = {}
        last_ack: dict[str, float] = {}
        last_id: dict[str, str] = {}
        schedule = sorted((i * LATENCY_KEY_GAP_S + r_ * LATENCY_EVENT_GAP_S, r_, k)
                          for i, k in enumerate(lat_keys) for r_ in range(EVENTS_PER_KEY))
        lat_t0 = time.time()
        for offset, r_, k in schedule:
            delay = lat_t0 + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            t_call = time.time()
            [eid] = sg.send({"name": EV_LAT, "data": {"k": k, "r": r_}})
            last_call[k], last_ack[k], last_id[k] = t_call, time.time(), eid
        lat_send_s = time.time() - lat_t0

        def run_of_last() -> dict[str, float]:
            """key -> start of the run that carries the key's last event."""
            by_id = {i: rec["t"] for _rid, rec in log.of(FN_LAT) for i in rec["ids"]}
            return {k: by_id[last_id[k]] for k in lat_keys if last_id[k] in by_id}

        wait_runs(FN_LAT, lambda: len(run_of_last()) >= LATENCY_KEYS, PERIOD_MS / 1000 + 30.0)
        start_of_last = run_of_last()
        lat_runs_per_key = Counter(rec["key"] for _rid, rec in log.of(FN_LAT))
        lat_split = sum(1 for n in lat_runs_per_key.values() if n > 1)
        done_keys = [k for k in lat_keys if k in start_of_last]
        lateness = [(start_of_last[k] - last_call[k]) * 1000 - PERIOD_MS for k in done_keys]
        lateness_ack = [(start_of_last[k] - last_ack[k]) * 1000 - PERIOD_MS for k in done_keys]
        raw = [(start_of_last[k] - last_call[k]) * 1000 for k in done_keys]
        lat_missing = [k for k in lat_keys if k not in start_of_last]
        lat_early = sum(1 for x in lateness_ack if x < 0)
        print(f"  debounce lateness: {len(lateness)}/{LATENCY_KEYS} keys' last events ran (sent at "
              f"{len(schedule) / lat_send_s:.0f} events/s); lateness p50 "
              f"{percentile(sorted(lateness), 50):.0f} ms, p99 {percentile(sorted(lateness), 99):.0f} ms "
              f"beyond the {PERIOD_MS} ms period; {lat_split} key(s) split into more than one run", flush=True)
        lagmon.wait_idle(15.0, alive)

        # 3. batching, keyed and not ------------------------------------------------------------
        bat_keys = [f"b{i:05d}" for i in range(keys_n)]
        ph_batk = throughput_phase("batch key", FN_BATK, _keyed_events(EV_BATK, bat_keys, EVENTS_PER_KEY, "batk"),
                                   lambda: log.events_in[FN_BATK] >= bat_events)
        nokey = [{"name": EV_BATN, "data": {"n": i}} for i in range(bat_events)]
        ph_batn = throughput_phase("batch no key", FN_BATN, nokey,
                                   lambda: log.events_in[FN_BATN] - len(prime_runs) >= bat_events)

        # -- read-back and checks --------------------------------------------------------------
        rb = Readback(settings, app_id, [FN_DEB, FN_LAT, FN_BATK, FN_BATN])
        phases = [ph_deb, ph_batk, ph_batn]
        for ph in phases:
            fn = ph["fn"]
            runs = [(rid, r) for rid, r in log.of(fn) if rid not in prime_runs]
            ph["runs"] = len(runs)
            ph["run_starts"] = sorted(r["t"] for _rid, r in runs)
            ph["dup_executions"] = sum(1 for rid, _r in runs if log.executions[rid] > 1)
            sent = set(ph["ids"])
            got = Counter(i for _rid, r in runs for i in r["ids"])
            ph["events_in_runs"] = sum(got.values())
            ph["events_twice"] = sum(1 for _i, n in got.items() if n > 1)
            ph["events_missing"] = len(sent - set(got))
            ph["events_foreign"] = len(set(got) - sent)
            ph["batch_sizes"] = _stats([len(r["ids"]) for _rid, r in runs])
            if fn == FN_DEB:
                per_key = Counter(r["key"] for _rid, r in runs)
                ph["keys_with_run"] = len(per_key)
                ph["keys_multi_run"] = sum(1 for n in per_key.values() if n > 1)
                ph["expected_runs"] = keys_n
                ph["last_events_ran"] = sum(1 for i in deb_last.values() if got.get(i) == 1)
                # why keys split: the spread of each split key's events at each stage (ms)
                split_keys = {k for k, n in per_key.items() if n > 1}
                key_ids: dict[str, list[str]] = {}
                for ev, eid in zip(deb_list, ph["ids"]):
                    if ev["data"]["k"] in split_keys:
                        key_ids.setdefault(ev["data"]["k"], []).append(eid)

                def spread(stamps: dict[str, int]) -> dict[str, float]:
                    return _stats([max(stamps[i] for i in v) - min(stamps[i] for i in v)
                                   for v in key_ids.values() if all(i in stamps for i in v)])
                ph["split_spread"] = {"event": spread(rb.event_ts), "router": spread(rb.trigger_ts),
                                      "function": spread(rb.seen_ts)}
                ph["exact"] = (ph["runs"] == keys_n and len(per_key) == keys_n and ph["last_events_ran"] == keys_n
                               and not ph["events_twice"] and not ph["events_foreign"])
            else:
                ph["exact"] = (ph["events_in_runs"] == len(sent) and not ph["events_twice"]
                               and not ph["events_missing"] and not ph["events_foreign"])
            ph["first_run_s"] = ph["run_starts"][0] - ph["t_first"] if runs else None
            ph["last_run_s"] = ph["run_starts"][-1] - ph["t_first"] if runs else None
            span = (ph["run_starts"][-1] - ph["run_starts"][0]) if len(runs) > 1 else None
            ph["runs_per_s_span"] = _rate(len(runs) - 1, span) if span else math.nan
            ph["runs_per_s"] = _rate(len(runs), ph["last_run_s"])
            # exact absorption, from the topics' stamps of this phase's events
            _stamp_stages(ph, ph["ids"], rb)
            ph["timer_cmds"] = rb.timers.get(fn, 0)
            ph["outcomes"] = rb.outcomes.get(fn, 0)
            ph["state_writes"] = rb.state_writes.get(fn, 0)
            ph["state_mb"] = rb.state_bytes.get(fn, 0) / 1e6
            ph["seen_mb"] = rb.seen_bytes.get(fn, 0) / 1e6
        # skip notices (debounce only), by the phase window they were written in
        bounds = [ph_deb["t_first"], lat_t0, ph_batk["t_first"], math.inf]
        notices = [sum(1 for t in rb.skip_notices if lo * 1000 <= t < hi * 1000) for lo, hi in zip(bounds, bounds[1:])]
        ph_deb["skip_notices"], lat_notices = notices[0], notices[1]
        ph_batk["skip_notices"] = ph_batn["skip_notices"] = None
        lat_stage: dict[str, Any] = {"ids": [last_id[k] for k in lat_keys]}
        _stamp_stages(lat_stage, lat_stage["ids"], rb)
        # lateness split: (a) last event sent -> its seen/ state written (the debounce moved its
        # fire time to about then + period), (b) from there + period -> run start (timer, dispatch, worker)
        lat_absorb = [rb.seen_ts[last_id[k]] - last_call[k] * 1000 for k in done_keys if last_id[k] in rb.seen_ts]
        lat_fire = [start_of_last[k] * 1000 - rb.seen_ts[last_id[k]] - PERIOD_MS for k in done_keys
                    if last_id[k] in rb.seen_ts]

        # -- report ----------------------------------------------------------------------------
        print()
        print(f"FLOW throughput (one SDK client, sg.send batches of {SEND_BATCH} acked; {settings.partitions} "
              f"partitions; 1 processor, 1 worker; debounce period {PERIOD_MS} ms; batch max {BATCH_MAX}, "
              f"timeout {BATCH_TIMEOUT_MS} ms; times from the first send)")
        rows = []
        for ph in phases:
            exp = f"/{ph['expected_runs']:,}" if "expected_runs" in ph else ""
            rows.append([
                ph["label"], f"{keys_n if ph['fn'] != FN_BATN else 1:,}", f"{ph['events']:,}",
                f"{_rate(ph['events'], ph['send_s']):,.0f}",
                f"{_rate(ph['events'], ph['absorbed_s']):,.0f}",
                f"{_rate(ph['events'], ph['fp_done_s']):,.0f}",
                f"{ph['router_done_s']:.1f}" if ph["router_done_s"] is not None else "-",
                f"{ph['fp_done_s']:.1f}" if ph["fp_done_s"] is not None else "-",
                f"{ph['runs']:,}{exp}",
                f"{ph['last_run_s']:.1f}" if ph["last_run_s"] is not None else "-",
                f"{ph['runs_per_s']:,.0f}",
                "yes" if ph["exact"] else "NO",
            ])
        print_table(["function", "keys", "events", "sent/s", "absorbed/s lag", "absorbed/s exact",
                     "router done s", "absorbed s", "runs", "all started s", "runs/s", "exact"], rows)
        print("  absorbed/s lag = events / time until the processor group's committed offsets passed every "
              "trigger (commit interval "
              f"{settings.commit_interval_s:g} s); exact = until the last seen/ state write of the function "
              "(flow changelog CreateTime); router done = last trigger written to sg.commands; runs/s = runs / "
              "(last run start - first send)")
        print()
        print("CPU, fraction of one core (processor process / this process = sender + worker / broker)")
        rows = []
        for ph in phases:
            def c(d: dict[str, float]) -> str:
                if d["wall_s"] < 0.5:
                    return "-"
                return f"{d['processor']:.2f} / {d['bench']:.2f} / {d['broker']:.2f} ({d['wall_s']:.0f} s)"
            rows.append([ph["label"], c(ph["cpu_send"]), c(ph["cpu_absorb"]), c(ph["cpu_runs"])])
        print_table(["function", "while sending", "until absorbed", "until all runs started"], rows)
        print()
        print("what the processor wrote, read back from the topics (timer cmds include stale timers of moved "
              "debounces; skip notices go back through the router)")
        rows = []
        for ph in phases:
            rows.append([ph["label"], f"{ph['events']:,}", f"{ph['triggers']:,}", f"{ph['seen_writes']:,}",
                         f"{ph['state_writes']:,}", f"{ph['state_mb']:.1f}", f"{ph['seen_mb']:.1f}",
                         f"{ph['timer_cmds']:,}", f"{ph['outcomes']:,}",
                         "-" if ph["skip_notices"] is None else f"{ph['skip_notices']:,}",
                         f"{ph['batch_sizes']['mean']:.1f}" if ph["runs"] else "-",
                         f"{ph['processor_cpu_ms_per_event']:.2f}"])
        print_table(["function", "events", "triggers", "seen/ writes", "group state writes", "state MB", "seen/ MB",
                     "timer cmds", "outcomes", "skip notices", "events/run", "processor CPU ms/event"], rows)
        print()
        print("per event, ms: router = event written -> trigger written; function processor = trigger written -> "
              "its key's seen/ state written (p50 / p99 / max)")
        rows = []
        for label, st in [(ph["label"], ph) for ph in phases] + [("debounce lateness (last events)", lat_stage)]:
            def trio(d: dict[str, float]) -> str:
                return f"{fmt_ms(d['p50'], 0)} / {fmt_ms(d['p99'], 0)} / {fmt_ms(d['max'], 0)}"
            rows.append([label, trio(st["router_delay"]), trio(st["fp_delay"])])
        print_table(["phase", "router", "function processor"], rows)
        print()
        ls, la, rw = _stats(lateness), _stats(lateness_ack), _stats(raw)
        lab, lfi = _stats(lat_absorb), _stats(lat_fire)
        print(f"debounce lateness, ms beyond the {PERIOD_MS} ms period ({len(lateness)} keys x {EVENTS_PER_KEY} "
              f"events {LATENCY_EVENT_GAP_S * 1000:.0f} ms apart, keys {LATENCY_KEY_GAP_S * 1000:.0f} ms apart "
              f"= {len(schedule) / lat_send_s:.0f} events/s; from the send call of the key's last event | from its "
              "ack; a) + b) split it at the write of the key's seen/ state)")
        print_table(["", "p50", "p90", "p99", "max", "min", "missing"], [
            ["lateness (send call)", fmt_ms(ls["p50"], 0), fmt_ms(ls["p90"], 0), fmt_ms(ls["p99"], 0),
             fmt_ms(ls["max"], 0), fmt_ms(ls["min"], 0), str(len(lat_missing))],
            ["lateness (ack)", fmt_ms(la["p50"], 0), fmt_ms(la["p90"], 0), fmt_ms(la["p99"], 0),
             fmt_ms(la["max"], 0), fmt_ms(la["min"], 0), str(len(lat_missing))],
            ["start - last event", fmt_ms(rw["p50"], 0), fmt_ms(rw["p90"], 0), fmt_ms(rw["p99"], 0),
             fmt_ms(rw["max"], 0), fmt_ms(rw["min"], 0), str(len(lat_missing))],
            ["  a) send -> absorbed", fmt_ms(lab["p50"], 0), fmt_ms(lab["p90"], 0), fmt_ms(lab["p99"], 0),
             fmt_ms(lab["max"], 0), fmt_ms(lab["min"], 0), ""],
            ["  b) absorbed+period -> start", fmt_ms(lfi["p50"], 0), fmt_ms(lfi["p90"], 0), fmt_ms(lfi["p99"], 0),
             fmt_ms(lfi["max"], 0), fmt_ms(lfi["min"], 0), ""],
        ])
        print(f"  the run measured is the one carrying the key's last event; {lat_split} of {LATENCY_KEYS} keys were "
              f"split into more than one run (an earlier run fired before the last event was absorbed); "
              f"{lat_notices:,} skip notices written in this phase")
        print()
        warnings = []
        for ph in phases:
            if not ph["exact"]:
                warnings.append(
                    f"{ph['label']}: runs {ph['runs']}, events in runs {ph['events_in_runs']} of {ph['events']}, "
                    f"twice {ph['events_twice']}, missing {ph['events_missing']}, foreign {ph['events_foreign']}"
                    + (f", keys with a run {ph['keys_with_run']}, keys with >1 run {ph['keys_multi_run']}, "
                       f"keys whose last event ran {ph['last_events_ran']} (a key splits when the processor "
                       f"handles its events more than {PERIOD_MS} ms apart: its backlog, not the sender)"
                       if ph["fn"] == FN_DEB else ""))
            if ph["absorbed_s"] is None:
                warnings.append(f"{ph['label']}: the processor group did not commit past every trigger within "
                                f"{phase_timeout:g} s")
            if ph["runs_done_s"] is None:
                warnings.append(f"{ph['label']}: not every run started within {phase_timeout:g} s after absorption")
        sp = ph_deb.get("split_spread")
        if ph_deb.get("keys_multi_run") and sp:
            print(f"debounce: {ph_deb['keys_multi_run']} key(s) split; spread of a split key's {EVENTS_PER_KEY} events, "
                  f"p50 / max ms: written to sg.events {fmt_ms(sp['event']['p50'], 0)} / {fmt_ms(sp['event']['max'], 0)}, "
                  f"triggers written by the router {fmt_ms(sp['router']['p50'], 0)} / {fmt_ms(sp['router']['max'], 0)}, "
                  f"absorbed by the function processor {fmt_ms(sp['function']['p50'], 0)} / "
                  f"{fmt_ms(sp['function']['max'], 0)}")
        if lat_missing:
            warnings.append(f"debounce lateness: {len(lat_missing)} key(s) had no run (first: {lat_missing[:5]})")
        if lat_early:
            warnings.append(f"debounce lateness: {lat_early} run(s) started before ack + period (clock/ack order)")
        crashes = _agent_crashes(stack)
        if crashes:
            warnings.append(f"the processor log shows {len(crashes)} agent crash(es) (restarted by faust; the "
                            f"record being handled is not retried): {crashes[0]}")
        for w in warnings:
            print("WARNING: " + w, flush=True)

        base = stack.base_settings_record()
        common = {**base, "workers": 1, "processors": 1, "sender": "1 SDK client, sequential acked batches",
                  "send_batch": SEND_BATCH, "quick": quick, "processor_agent_crashes": len(crashes)}
        results: list[dict[str, Any]] = []
        for ph in phases:
            is_deb = ph["fn"] == FN_DEB
            cfg = ({"debounce_period_ms": PERIOD_MS, "key": "event.data.k"} if is_deb else
                   {"batch_max_size": BATCH_MAX, "batch_timeout_ms": BATCH_TIMEOUT_MS,
                    "key": "event.data.k" if ph["fn"] == FN_BATK else None})
            results.append({
                "bench": "FLOW", "result": {FN_DEB: "debounce_absorb", FN_BATK: "batch_keyed",
                                            FN_BATN: "batch_nokey"}[ph["fn"]],
                "events": ph["events"], "keys": keys_n if ph["fn"] != FN_BATN else 1,
                "send_rate": _rate(ph["events"], ph["send_s"]),
                "absorb_rate_lag": _rate(ph["events"], ph["absorbed_s"]),
                "absorb_rate_exact": _rate(ph["events"], ph["fp_done_s"]),
                "absorbed_s_lag": ph["absorbed_s"], "absorbed_s_exact": ph["fp_done_s"],
                "router_done_s": ph["router_done_s"],
                "runs": ph["runs"], "expected_runs": keys_n if is_deb else None,
                "keys_split": ph.get("keys_multi_run"), "last_events_ran": ph.get("last_events_ran"),
                "first_run_s": ph["first_run_s"], "all_runs_started_s": ph["last_run_s"],
                "runs_per_s": ph["runs_per_s"], "runs_per_s_between_first_and_last": ph["runs_per_s_span"],
                "events_in_runs": ph["events_in_runs"], "events_twice": ph["events_twice"],
                "events_missing": ph["events_missing"], "exact": ph["exact"],
                "run_size_mean": ph["batch_sizes"]["mean"], "run_size_max": ph["batch_sizes"]["max"],
                "triggers": ph["triggers"], "timer_commands": ph["timer_cmds"], "skip_notices": ph["skip_notices"],
                "group_state_writes": ph["state_writes"], "group_state_mb": ph["state_mb"],
                "seen_state_mb": ph["seen_mb"],
                "router_delay_ms": {k: ph["router_delay"][k] for k in ("p50", "p99", "max")},
                "function_processor_delay_ms": {k: ph["fp_delay"][k] for k in ("p50", "p99", "max")},
                "processor_cpu_ms_per_event": ph["processor_cpu_ms_per_event"],
                "cpu_cores": {"until_absorbed": ph["cpu_until_absorbed"], "until_all_runs": ph["cpu_all"]},
                "settings": {**common, **cfg, "events_per_key": EVENTS_PER_KEY if ph["fn"] != FN_BATN else None,
                             "interleave_keys": INTERLEAVE_KEYS if ph["fn"] != FN_BATN else None,
                             "window": "from the first send until the last run started"},
            })
        results.append({
            "bench": "FLOW", "result": "debounce_latency",
            "p50_ms": ls["p50"], "p90_ms": ls["p90"], "p99_ms": ls["p99"], "max_ms": ls["max"],
            "p50_ms_from_ack": la["p50"], "p99_ms_from_ack": la["p99"],
            "start_minus_last_event_p50_ms": rw["p50"], "start_minus_last_event_p99_ms": rw["p99"],
            "n": len(lateness), "missing": len(lat_missing), "keys": LATENCY_KEYS, "keys_split": lat_split,
            "send_to_absorbed_p50_ms": lab["p50"], "send_to_absorbed_p99_ms": lab["p99"],
            "absorbed_plus_period_to_start_p50_ms": lfi["p50"], "absorbed_plus_period_to_start_p99_ms": lfi["p99"],
            "router_delay_p99_ms": lat_stage["router_delay"]["p99"], "skip_notices": lat_notices,
            "settings": {**common, "debounce_period_ms": PERIOD_MS, "key": "event.data.k",
                         "events_per_key": EVENTS_PER_KEY, "key_gap_s": LATENCY_KEY_GAP_S,
                         "event_gap_s": LATENCY_EVENT_GAP_S, "send_rate": len(schedule) / lat_send_s,
                         "send_s": lat_send_s, "load": "at rest (paced ~100 events/s, one event per sg.send)",
                         "latency": "step start - (send call of the key's last event + period)"},
        })
        print(f"(total wall time {time.monotonic() - wall0:.0f} s before shutdown)", flush=True)
        for result in results:
            emit_json(result)
        return results
    finally:
        if lagmon is not None:
            try:
                lagmon.close()
            except Exception:
                pass
            lagmon.admin = None  # destroy the librdkafka handle before the broker stops
            lagmon = None
        if sg is not None:
            try:
                sg.close()
            except Exception:
                pass
        if worker is not None:
            try:
                worker.stop()
                worker._producer.flush(5)  # noqa: SLF001
            except Exception as exc:
                print(f"cleanup: worker: {exc!r}", file=sys.stderr)
            worker._producer = None  # noqa: SLF001 - destroy the librdkafka handle before the broker stops
            worker = None
        gc.collect()
        stack.stop()
