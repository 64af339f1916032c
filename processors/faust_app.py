"""The faust-streaming app: router, function processor, durable timers, simple dispatcher.

Commit order (why nothing accepted is lost):

1. An agent handles one record: load state → pure decision → write the faust table
   (changelogged, RocksDB) → hand the outputs to faust's producer (acks=all), without
   waiting for each ack, so records flow at the speed of the CPU, not of round trips.
2. Before faust commits a source offset it flushes its producer: every changelog record
   and every output of the records up to that offset is acknowledged first. A send that
   fails for good stops the process before anything else is committed.
3. So a crash anywhere replays records from the last commit; every handler is idempotent
   (deterministic run ids, first result wins per (job, attempt), timers re-checked against
   run state).

Timers: deadlines live in the changelogged ``timers`` table (key: big-endian due ms ‖ id);
each process keeps a heap of its active partitions' timers, rebuilt after each rebalance,
and a 20 ms task sends a ``TimerFired`` command back through ``sg.commands`` (tables may
only change inside an agent). The agent re-checks it against the run.

Dispatcher (simple for now): the job of a run whose command arrived on partition p goes to
``sg.work.<app>`` partition p — the per-partition work-queue shape of DESIGN.md.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time

import faust

from ..events import RESERVED_PREFIX
from ..expressions import ExpressionError, key_value
from ..kafka_clients import CompactedView
from ..partitioning import function_key, partition_for
from ..settings import Settings
from ..state.codecs import parse_timer_key, timer_key
from ..state.run_state import RunState
from ..topics import MAX_MESSAGE_BYTES, ensure_core_topics, ensure_work_topic
from ..wire import CronSync, EventRecord, FunctionDefinition, StepOutcome, TimerFired, Trigger, command_adapter
from .admission import admit
from .grouping import Grouped, grouping_of, on_event, on_timer
from .routing import TriggerIndex, run_id_for, triggers_for
from .flow import cron, singleton
from .run_decisions import (Decision, DeleteTimer, Dispatch, StartTimer, cancel, decide, queued, release, skip_queued,
                            skipped, start)

log = logging.getLogger("sluicegate.processor")

MAX_RECORD_BYTES = int(MAX_MESSAGE_BYTES)
SKIPPED_EVENT = "sluicegate/run.skipped"
SCHEDULED_EVENT = "sluicegate/scheduled.timer"
REGISTRY_WAIT_S = 2.0       # how long an unmatched live event waits for the registry to catch up
LIVE_EVENT_WINDOW_MS = 5000  # only events younger than this wait for the registry


def now_ms() -> int:
    return int(time.time() * 1000)


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(","))


class Processor:
    """Holds the faust app and its helpers; ``create_app`` builds one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.app = faust.App(
            s.processor_id,
            broker=_broker_url(s.bootstrap_servers),
            store="rocksdb://",
            datadir=str(s.data_dir / "processor"),
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            table_standby_replicas=0,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=1.0,
            broker_commit_interval=s.commit_interval_s,
            consumer_auto_offset_reset="earliest",
            topic_disable_leader=True,
            web_enabled=False,
            producer_acks=-1,
            # jobs and run views carry step outputs (4 MiB each, 32 MiB per run; README limits)
            producer_max_request_size=MAX_RECORD_BYTES,
            consumer_max_fetch_size=MAX_RECORD_BYTES,
        )
        self.events_topic = self.app.topic(s.events_topic, key_serializer="raw", value_serializer="raw")
        self.commands_topic = self.app.topic(s.commands_topic, key_serializer="raw", value_serializer="raw")
        self.runs = self.app.Table("runs", key_type=bytes, value_type=bytes, partitions=s.partitions)
        self.timers = self.app.Table("timers", key_type=bytes, value_type=bytes, partitions=s.partitions)
        # schedule-time flow-control state per (function, key): processors/flow key layouts
        self.flow = self.app.Table("flow", key_type=bytes, value_type=bytes, partitions=s.partitions)
        self.index = TriggerIndex()
        self.registry: CompactedView | None = None
        self._out_topics: dict[str, faust.TopicT] = {}
        self._heap: list[tuple[int, str, bytes]] = []
        self._heap_dirty = True
        self._cron_synced: set[tuple[str, str]] = set()
        self._work_topics: set[str] = set()
        self._wire()

    # -- setup ---------------------------------------------------------------------------

    def _on_registry_change(self, _key: str, _value: object) -> None:
        assert self.registry is not None
        self.index.rebuild([v for v in self.registry.items.values() if isinstance(v, FunctionDefinition)])

    def _wire(self) -> None:
        app = self.app

        @app.on_rebalance_complete.connect
        async def _rebalanced(sender: object = None, **kw: object) -> None:
            self._heap_dirty = True
            self._cron_synced.clear()  # the new owner of each cron function syncs it
            log.info("processor: rebalance complete, active partitions recovered")

        app.agent(self.events_topic, name="sluicegate.router")(self._route)
        app.agent(self.commands_topic, name="sluicegate.functions")(self._functions)
        app.timer(0.02, name="sluicegate.timers")(self._fire_due_timers)
        app.timer(1.0, name="sluicegate.cron_sync")(self._cron_sync)

    def start_registry(self) -> None:
        """Read the registry to its end (blocking; before the event loop starts), then follow it."""
        self.registry = CompactedView(
            self.settings.bootstrap_servers, self.settings.registry_topic,
            FunctionDefinition.model_validate_json, self._on_registry_change,
        )
        self.registry.start()
        self._on_registry_change("", None)

    # -- router: sg.events -> sg.commands --------------------------------------------------

    async def _route(self, stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for value in stream:
            assert self.registry is not None, "start_registry() first"
            try:
                event = EventRecord.model_validate_json(value)
            except ValueError:
                log.warning("router: dropped an undecodable record from %s", self.settings.events_topic)
                continue
            functions = self.index.match(event)
            if not functions and now_ms() - event.received_at < LIVE_EVENT_WINDOW_MS \
                    and self.registry.caught_up_at * 1000 <= event.received_at:
                # A function registered just before this event may not be in our view yet.
                await loop.run_in_executor(None, self.registry.wait_caught_up,
                                           event.received_at / 1000, REGISTRY_WAIT_S)
                functions = self.index.match(event)
            if not functions:
                continue
            for trig in triggers_for(event, functions):
                key = function_key(trig.app_id, trig.function_id)
                await self._send(self.settings.commands_topic, key, trig.dumps(),
                                 partition_for(key, self.settings.partitions))

    # -- function processor: sg.commands -> state, sg.work.<app>, sg.runs ------------------

    async def _functions(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                cmd = command_adapter.validate_json(event.value)
            except ValueError:
                log.warning("functions: dropped an undecodable command")
                continue
            await self._handle(cmd, event.message.partition)

    async def _handle(self, cmd: Trigger | StepOutcome | TimerFired | CronSync, partition: int) -> None:
        now = now_ms()
        if isinstance(cmd, CronSync) or (isinstance(cmd, TimerFired) and (cmd.flow_key or "").startswith("cron/")):
            decisions = self._on_cron(cmd, now)
        elif isinstance(cmd, TimerFired) and cmd.flow_key:
            decisions = self._on_flow_timer(cmd, now)
        else:
            decisions = None
        if decisions is not None:
            for decision in decisions:
                await self._apply(decision, partition)
            return
        assert not isinstance(cmd, CronSync)
        raw = self.runs.get(cmd.run_id.encode())
        run = RunState.model_validate_json(raw) if raw is not None else None
        if isinstance(cmd, Trigger) and run is None:
            for decision in self._schedule(cmd, now):
                await self._apply(decision, partition)
            return
        await self._apply(decide(run, cmd, now), partition)

    async def _apply(self, decision: Decision, partition: int) -> None:
        """Persist one run's decision and forward its actions (the run's partition)."""
        if decision.note and decision.state is not None:
            log.debug("run %s: %s", decision.state.run_id, decision.note)
        if not decision.changed or decision.state is None:
            return
        state = decision.state
        if state.status == "skipped" and not state.events[0]["name"].startswith(RESERVED_PREFIX):
            await self._announce_skip(state)
        self.runs[state.run_id.encode()] = state.model_dump_json().encode()
        work = self.settings.work_topic(state.app_id)
        for action in decision.actions:
            if isinstance(action, Dispatch):
                if work not in self._work_topics:
                    await asyncio.get_running_loop().run_in_executor(
                        None, ensure_work_topic, self.settings, state.app_id)
                    self._work_topics.add(work)
                await self._send(work, state.run_id, action.job.dumps(), partition)
            elif isinstance(action, StartTimer):
                key = timer_key(action.due_ms, action.timer_id)
                value = json.dumps({"app_id": state.app_id, "function_id": state.function_id,
                                    "run_id": state.run_id}).encode()
                self.timers[key] = value
                heapq.heappush(self._heap, (action.due_ms, action.timer_id, value))
            elif isinstance(action, DeleteTimer):
                self.timers.pop(timer_key(action.due_ms, action.timer_id), None)
        await self._send(self.settings.runs_topic, state.run_id, state.view().dumps(),
                         partition_for(state.run_id, self.settings.partitions))
        if state.finished and state.singleton_key is not None:
            for follow_up in self._on_run_end(state, now_ms()):
                await self._apply(follow_up, partition)

    def _flow_state(self, key: str) -> str | None:
        raw = self.flow.get(key.encode())
        return raw.decode() if raw is not None else None

    def _put_flow(self, puts: dict[str, str | None]) -> None:
        for key, value in puts.items():
            if value is None:
                self.flow.pop(key.encode(), None)
            else:
                self.flow[key.encode()] = value.encode()

    def _schedule(self, cmd: Trigger, now: int) -> list[Decision]:
        """Schedule-time flow control for a new trigger: rate limit and idempotency, then
        debounce or batching. A run not admitted is recorded as skipped (and announced)."""
        admission = admit(cmd, self._flow_state, now)
        self._put_flow(admission.puts)
        if not admission.admitted:
            return [skipped(cmd, admission.reason or "skipped", admission.detail, now)]
        if grouping_of(cmd.function) is None:
            return self._start_run(cmd, now)
        grouped = on_event(cmd.function, cmd.events[0], self._flow_state, now)
        if grouped.skipped is not None:
            return [skipped(cmd, grouped.skipped[0], grouped.skipped[1], now)]
        return self._apply_grouped(cmd.function, grouped, now)

    def _on_flow_timer(self, cmd: TimerFired, now: int) -> list[Decision]:
        assert cmd.flow_key is not None and cmd.flow_timer is not None
        if cmd.due_ms is not None:
            self.timers.pop(timer_key(cmd.due_ms, cmd.timer_id), None)
        assert self.registry is not None
        fn = self.registry.items.get(function_key(cmd.app_id, cmd.function_id))
        if not isinstance(fn, FunctionDefinition):
            log.warning("timer %s: function %s/%s is not registered; dropped", cmd.timer_id, cmd.app_id,
                        cmd.function_id)
            return []
        return self._apply_grouped(fn, on_timer(fn, cmd.flow_key, cmd.flow_timer, self._flow_state, now), now)

    def _apply_grouped(self, fn: FunctionDefinition, grouped: Grouped, now: int) -> list[Decision]:
        self._put_flow(grouped.puts)
        for qualified, due in grouped.cancel_timers:
            self.timers.pop(timer_key(due, qualified), None)
        for t in grouped.set_timers:
            value = json.dumps({"app_id": fn.app_id, "function_id": fn.function_id, "due_ms": t.due_ms,
                                "flow_key": t.flow_key, "flow_timer": t.raw_id}).encode()
            self.timers[timer_key(t.due_ms, t.timer_id)] = value
            heapq.heappush(self._heap, (t.due_ms, t.timer_id, value))
        decisions = []
        for event in grouped.replaced:
            replaced = Trigger(app_id=fn.app_id, function_id=fn.function_id,
                               run_id=run_id_for(fn.app_id, fn.function_id, event.id), function=fn, events=[event])
            decisions.append(skipped(replaced, "debounced_replaced", "a newer event of the debounce took its place",
                                     now))
        for seed, events in grouped.runs:
            start = Trigger(app_id=fn.app_id, function_id=fn.function_id,
                            run_id=run_id_for(fn.app_id, fn.function_id, seed), function=fn, events=events)
            if self.runs.get(start.run_id.encode()) is None:
                decisions.extend(self._start_run(start, now))
        return decisions

    def _on_cron(self, cmd: CronSync | TimerFired, now: int) -> list[Decision]:
        """Cron triggers: make sure a timer is pending (``CronSync``) or fire a due tick."""
        if isinstance(cmd, CronSync):
            cron_expr, inp = cmd.cron, cron.Sync()
        else:
            if cmd.due_ms is not None:
                self.timers.pop(timer_key(cmd.due_ms, cmd.timer_id), None)
            tick, _, cron_expr = (cmd.flow_timer or "").partition(" ")
            inp = cron.TickDue(int(tick))
        fkey = function_key(cmd.app_id, cmd.function_id)
        state_key = cron.cron_state_key(fkey, cron_expr)
        assert self.registry is not None
        fn = self.registry.items.get(fkey)
        trigger = next((c for c in fn.crons if c.cron == cron_expr), None) if isinstance(fn, FunctionDefinition) else None
        if not isinstance(fn, FunctionDefinition) or trigger is None:
            self._put_flow({state_key: None})  # the function or this schedule is gone
            return []
        raw = self._flow_state(state_key)
        d = cron.decide(cron.CronState.model_validate_json(raw) if raw else None, inp, now, trigger=trigger, seed=fkey)
        if d.changed:
            self._put_flow({state_key: d.state.model_dump_json()})
        if d.missed:
            log.warning("cron %r of %s: %d tick(s) missed while the engine was down; running only the latest",
                        cron_expr, fkey, len(d.missed))
        if d.set_timer is not None:
            tick_ms, due = d.set_timer
            timer_id = f"{state_key}|{tick_ms}"
            value = json.dumps({"app_id": fn.app_id, "function_id": fn.function_id, "due_ms": due,
                                "flow_key": state_key, "flow_timer": f"{tick_ms} {cron_expr}"}).encode()
            self.timers[timer_key(due, timer_id)] = value
            heapq.heappush(self._heap, (due, timer_id, value))
        if d.fire_tick_ms is None:
            return []
        tick_ms = d.fire_tick_ms
        event = EventRecord(
            app_id=fn.app_id, id=f"cron-{fn.function_id}-{tick_ms}", name=SCHEDULED_EVENT, ts=tick_ms,
            received_at=now, data={"cron": cron_expr, "tick_ms": tick_ms, "missed_ticks": len(d.missed)})
        run = Trigger(app_id=fn.app_id, function_id=fn.function_id, function=fn, events=[event],
                      run_id=run_id_for(fn.app_id, fn.function_id, cron.cron_run_seed(cron_expr, tick_ms)))
        if self.runs.get(run.run_id.encode()) is not None:
            return []
        return self._start_run(run, now)

    async def _cron_sync(self) -> None:
        """Ask the owner partition of every cron function to make sure its next tick is set."""
        if self.app.rebalancing or self.registry is None:
            return
        owned = {tp.partition for tp in self.app.assignor.assigned_actives()
                 if tp.topic == self.settings.commands_topic}
        for fn in list(self.registry.items.values()):
            if not isinstance(fn, FunctionDefinition) or not fn.crons:
                continue
            key = function_key(fn.app_id, fn.function_id)
            partition = partition_for(key, self.settings.partitions)
            if partition not in owned:
                continue
            for trig in fn.crons:
                if (key, trig.cron) not in self._cron_synced:
                    self._cron_synced.add((key, trig.cron))
                    sync = CronSync(app_id=fn.app_id, function_id=fn.function_id, cron=trig.cron)
                    await self._send(self.settings.commands_topic, key, sync.dumps(), partition)

    def _run(self, run_id: str) -> RunState | None:
        raw = self.runs.get(run_id.encode())
        return RunState.model_validate_json(raw) if raw is not None else None

    def _start_run(self, cmd: Trigger, now: int) -> list[Decision]:
        """Create an admitted run: at once, or through its singleton lock."""
        config = cmd.function.flow.singleton if cmd.function.flow is not None else None
        if config is None:
            return [start(cmd, now)]
        try:
            value = key_value(config.key, cmd.events[0].as_payload())
        except ExpressionError:
            return [start(cmd, now)]  # reference §7: a key error ignores the singleton setting
        lock = singleton.singleton_key(function_key(cmd.app_id, cmd.function_id), value)
        if lock is None:
            return [start(cmd, now)]
        raw = self._flow_state(lock)
        sd = singleton.decide(singleton.SingletonState.model_validate_json(raw) if raw else None,
                              singleton.RunArrives(cmd.run_id), config=config)
        return self._apply_singleton(lock, sd, cmd, now)

    def _apply_singleton(self, lock: str, sd: singleton.SingletonDecision, cmd: Trigger | None,
                         now: int) -> list[Decision]:
        if sd.changed:
            self._put_flow({lock: None if sd.state is None else sd.state.model_dump_json()})
        out: list[Decision] = []
        for action in sd.actions:
            new = cmd is not None and action.run_id == cmd.run_id
            other = None if new else self._run(action.run_id)
            if isinstance(action, singleton.Start):
                if new:
                    assert cmd is not None
                    out.append(start(cmd, now, singleton_key=lock))
                elif other is not None:
                    out.append(release(other, now))
            elif isinstance(action, singleton.Wait) and cmd is not None:
                out.append(queued(cmd, now, singleton_key=lock))
            elif isinstance(action, singleton.Skip):
                detail = f"run {action.existing_run_id} holds the singleton lock" \
                    if action.reason == "singleton_skipped" else f"replaced by run {action.existing_run_id}"
                if new:
                    assert cmd is not None
                    out.append(skipped(cmd, action.reason, detail, now))
                elif other is not None:
                    out.append(skip_queued(other, action.reason, detail, now))
            elif isinstance(action, singleton.CancelRun) and other is not None:
                out.append(cancel(other, f"singleton: replaced by run {action.replaced_by_run_id}", now))
        return out

    def _on_run_end(self, run: RunState, now: int) -> list[Decision]:
        """A run with a singleton lock finished: release the lock (maybe to the waiting run)."""
        if run.singleton_key is None or run.function.flow is None or run.function.flow.singleton is None:
            return []
        raw = self._flow_state(run.singleton_key)
        sd = singleton.decide(singleton.SingletonState.model_validate_json(raw) if raw else None,
                              singleton.RunEnds(run.run_id), config=run.function.flow.singleton)
        return self._apply_singleton(run.singleton_key, sd, None, now)

    async def _announce_skip(self, run: RunState) -> None:
        """A ``sluicegate/run.skipped`` event (never for system events, so a function
        triggered by skip notices cannot feed itself)."""
        log.info("run %s of %s/%s skipped: %s", run.run_id, run.app_id, run.function_id, run.skip_reason)
        notice = EventRecord(
            app_id=run.app_id, id=f"skip-{run.run_id}", name=SKIPPED_EVENT, ts=run.created_at,
            received_at=run.created_at,
            data={"function_id": run.function_id, "run_id": run.run_id, "reason": run.skip_reason,
                  "detail": run.skip_detail, "event": run.events[0] if run.events else None})
        await self._send(self.settings.events_topic, run.app_id, notice.dumps(),
                         partition_for(run.app_id, self.settings.partitions))

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        """Hand a record to faust's producer; its flush before each commit awaits the ack."""
        topic = self._out_topics.get(topic_name)
        if topic is None:
            topic = self.app.topic(topic_name, key_serializer="raw", value_serializer="raw")
            self._out_topics[topic_name] = topic
        fut = await topic.send(key=key.encode(), value=value, partition=partition)
        fut.add_done_callback(self._check_sent)  # type: ignore[attr-defined]

    @staticmethod
    def _check_sent(fut: "asyncio.Future[object]") -> None:
        if not fut.cancelled() and fut.exception() is not None:
            # Never commit past a lost output: stop now; a restart replays from the last commit.
            log.critical("a record could not be produced (%r); stopping the processor", fut.exception())
            os._exit(70)

    # -- timers ----------------------------------------------------------------------------

    def _rebuild_heap(self) -> None:
        heap = []
        for key, value in self.timers.items():
            due, timer_id = parse_timer_key(key)
            heap.append((due, timer_id, value))
        heapq.heapify(heap)
        self._heap = heap
        self._heap_dirty = False
        log.info("timers: rebuilt index with %d pending timer(s)", len(heap))

    async def _fire_due_timers(self) -> None:
        if self.app.rebalancing:
            return
        if self._heap_dirty:
            self._rebuild_heap()
        now = now_ms()
        while self._heap and self._heap[0][0] <= now:
            _due, timer_id, value = heapq.heappop(self._heap)
            target = json.loads(value)
            cmd = TimerFired(timer_id=timer_id, **target)
            key = function_key(cmd.app_id, cmd.function_id)
            await self._send(self.settings.commands_topic, key, cmd.dumps(),
                             partition_for(key, self.settings.partitions))


def create_processor(settings: Settings) -> Processor:
    ensure_core_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processor = Processor(settings)
    processor.start_registry()
    return processor


def run_processor(settings: Settings) -> None:
    """Run the processor in the foreground until SIGTERM/SIGINT."""
    processor = create_processor(settings)
    worker = faust.Worker(processor.app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
