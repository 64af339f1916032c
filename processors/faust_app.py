"""The faust-streaming app: router, function processor, durable timers, simple dispatcher.

Commit order (why nothing accepted is lost):

1. An agent handles one record: load state → pure decision → write the faust table
   (changelogged, RocksDB) → hand the outputs to faust's producer (acks=all), without
   waiting for each ack, so records flow at the speed of the CPU, not of round trips.
   Records wait in a queue per partition and are handled in turns (``_in_turns``,
   ``processors/fair_intake.py``), out of offset order across lanes; they are acked to faust
   in offset order only (``processors/ordered_acks.py``: faust can commit past a record not
   acked), and records still queued are dropped, unacked, when faust clears its own queues
   at a rebalance (it then seeks back to the last commit and reads them again).
2. Before faust commits a source offset it flushes its producer: every changelog record
   and every output of the records up to that offset is acknowledged first. A send that
   fails for good stops the process before anything else is committed.
3. So a crash anywhere replays records from the last commit; every handler is idempotent
   (deterministic run ids, first result wins per (job, attempt), timers re-checked against
   run state).

Timers: deadlines live in the changelogged ``timers`` table (key: big-endian due ms ‖ id);
each process keeps a heap of its active partitions' timers, rebuilt after each rebalance,
and a 20 ms task sends a ``TimerFired`` command back through ``sg.results`` (a flow or cron
timer through ``sg.commands``; tables may only change inside an agent). The agent re-checks
it against the run.

Topics of the function processor: new work (triggers and what stays in order with them)
comes through ``sg.commands``; what moves started runs (outcomes, heartbeats, run timers,
resolved waits, ticks) through ``sg.results``. One agent reads partition p of both; its
intake gives results every other turn, so a burst of triggers does not hold them back.

Dispatcher (``processors/dispatcher.py``): a ready job waits in its backlog in state and
goes to ``sg.work.<app>`` partition p (p = its command's partition) only inside the app's
bounded in-flight window, in fair order. Run views are sent after the window is refilled,
so each says whether, and why, the run is still waiting.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import json
import logging
import os
import time
import weakref
from typing import Any, Awaitable, Callable, Hashable

import faust
import faust.streams as faust_streams
from faust.types import TP, EventT
from confluent_kafka.admin import NewTopic

from ..expressions import ExpressionError, evaluate
from ..kafka_clients import CompactedView
from ..partitioning import function_key, partition_for
from ..settings import Settings
from ..state.codecs import parse_timer_key, timer_key
from ..state.dispatch_record import ActiveRun
from ..state.run_state import RunState
from ..system_events import FINISHED_EVENT, INVOKED_EVENT
from ..topics import MAX_MESSAGE_BYTES, create_topics, ensure_core_topics
from ..wire import (AnyCommand, CancelRuns, CronSync, DispatchTick, EventRecord, ExpireRuns, FunctionDefinition, Heartbeat,
                    ReplayAck, ReplayCancel, ReplayContinue, ReplayMark, ReplayStart, ReplayTally, RerunRun, StepOutcome,
                    SweepFlow, TimerFired, Trigger, command_adapter)
from .dispatcher import STATS_INTERVAL_MS, DispatchStage, PartitionDispatch
from . import faust_tuning, rdkafka_producer
from .fair_intake import DEFAULT_CAP as INTAKE_CAP, FairIntake
from .ordered_acks import OrderedAcks, Tracked
from .intake_lanes import command_lane, is_background
from .flow_stage import FlowStage
from .routing import TriggerIndex, run_id_for, triggers_for
from .replay_stage import ReplayStage
from . import run_retention as retention
from .flow import expiry as flow_expiry
from .reread_window import RereadWindow
from .retention_stage import RetentionStage
from .run_decisions import (Action, Decision, DeleteTimer, Dispatch, DropWait, EmitEvent,
                            RegisterWait, StartTimer, cancel, decide, rerun, skip_notice, standing_outputs)
from .table_reads import stored
from .wait_router import CONTROL_PREFIX, WaitRouter, control_add, control_drop

log = logging.getLogger("sluicegate.processor")

MAX_RECORD_BYTES = int(MAX_MESSAGE_BYTES)
REGISTRY_WAIT_S = 2.0       # how long an unmatched live event waits for the registry to catch up
LIVE_EVENT_WINDOW_MS = 5000  # only events younger than this wait for the registry
IDLE_FLUSH_AFTER_S = 0.001   # idle this long: the producer's lingering records go at once


def now_ms() -> int:
    return int(time.time() * 1000)


def classify_command(event: EventT, results_topic: str = "") -> tuple[AnyCommand | None, Hashable]:
    """The command (None: undecodable) and its intake lane (``processors/intake_lanes.py``)."""
    from_results = bool(results_topic) and event.message.topic == results_topic
    try:
        cmd = command_adapter.validate_json(event.value)
    except ValueError:
        return None, command_lane(None, from_results)
    return cmd, command_lane(cmd, from_results)


class _ClearWith:
    """Something faust's ``flow_control`` clears along with its own queues at a rebalance."""

    __slots__ = ("clear", "__weakref__")

    def __init__(self, clear: Callable[[], None]) -> None:
        self.clear = clear


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(","))


class Processor(FlowStage, DispatchStage, WaitRouter, ReplayStage, RetentionStage):
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
            # records fetched ahead per agent. One agent reads every partition, so a quiet
            # partition's record waits behind at most this many of a busy one
            stream_buffer_maxsize=s.processor_buffer,
            # jobs and run views carry step outputs (4 MiB each, 32 MiB per run; README limits)
            producer_max_request_size=MAX_RECORD_BYTES,
            # bytes fetched per partition at once (was 48 MiB): bounds how many records of a
            # flooded partition go ahead of a quiet one (B4). A record larger than this still
            # comes whole: the broker always returns a partition's first batch.
            consumer_max_fetch_size=s.processor_fetch_bytes,
            # records one poll hands over: a poll parses only these (in faust's consumer
            # thread, under the GIL), so a quiet partition's record waits for at most this
            # many of a flooded one; a flooded partition is paused at FairIntake's cap
            broker_max_poll_records=INTAKE_CAP,
        )
        rdkafka_producer.install(self.app)  # librdkafka sends; faust's interface (rdkafka_producer.py)
        self.events_topic = self.app.topic(s.events_topic, key_serializer="raw", value_serializer="raw")
        # the function processor reads both, partition p of each together (co-partitioned)
        self.function_topics = self.app.topic(s.commands_topic, s.results_topic, key_serializer="raw",
                                              value_serializer="raw")
        self.runs = self.app.Table("runs", key_type=bytes, value_type=bytes, partitions=s.partitions)
        self.timers = self.app.Table("timers", key_type=bytes, value_type=bytes, partitions=s.partitions)
        # schedule-time flow-control state per (function, key): processors/flow key layouts
        self.flow = self.app.Table("flow", key_type=bytes, value_type=bytes, partitions=s.partitions)
        # the dispatcher's record of every active run: state/dispatch_record.py
        self.dispatch = self.app.Table("dispatch", key_type=bytes, value_type=bytes, partitions=s.partitions)
        # the router's live waiters (wait_for_event, invoke results, cancel_on): processors/wait_router.py
        self.waits = self.app.Table("waits", key_type=bytes, value_type=bytes, partitions=s.partitions)
        # replays' progress: processors/replay_stage.py
        self.replays = self.app.Table("replays", key_type=bytes, value_type=bytes, partitions=s.partitions)
        # ended runs by when they may be deleted: processors/retention_stage.py
        self.expiry = self.app.Table("expiry", key_type=bytes, value_type=bytes, partitions=s.partitions)
        self._expiry_sent = {}
        self._flow_cursor = {}
        self._flow_sweep_sent = {}
        self._replay_readers = {}
        self._wait_index = {}
        self._lookback = {}
        self._waits_dirty = True
        self._swept_at = {}
        self._dispatchers: dict[int, PartitionDispatch] = {}
        self._dispatch_dirty = True
        self._rebalance_ticks_due = True
        self._touched: set[tuple[int, str]] = set()
        self._waiting_shown: set[str] = set()
        self._views: dict[str, RunState] = {}
        self._backlogged: dict[str, bool] = {}  # per agent: it has records to handle
        self._idle_flush: asyncio.TimerHandle | None = None
        self._record_writes: dict[str, ActiveRun | None] = {}
        self._stats_at = 0
        self._gc_frozen = False
        self._stats_sent: dict[str, bytes] = {}
        self.index = TriggerIndex()
        self.registry: CompactedView | None = None
        self._intake_clearers: list[_ClearWith] = []
        self._heap: list[tuple[int, str, bytes]] = []
        self._heap_dirty = True
        self._cron_synced: set[tuple[str, str]] = set()
        self._reread = RereadWindow()
        self._work_topics: set[str] = set()
        self._wire()

    # -- setup ---------------------------------------------------------------------------

    def _on_registry_change(self, _key: str, _value: object) -> None:
        assert self.registry is not None
        self._registry_gen = getattr(self, "_registry_gen", 0) + 1
        self.index.rebuild([v for v in self.registry.items.values() if isinstance(v, FunctionDefinition)])

    def _wire(self) -> None:
        app = self.app

        @app.on_rebalance_complete.connect
        async def _rebalanced(sender: object = None, **kw: object) -> None:
            self._heap_dirty = True
            self._dispatch_dirty = True
            self._waits_dirty = True
            self._rebalance_ticks_due = True
            self._cron_synced.clear()  # the new owner of each cron function syncs it
            self._expiry_sent.clear()  # an ExpireRuns in flight may have been dropped
            self._flow_sweep_sent.clear()
            await self._learn_reread_window()
            if not self._gc_frozen:
                # what exists once the processor is up (faust, aiokafka, modules: ~100k
                # objects) lives as long as the process: out of the cyclic GC's full
                # collections, which took ~50 ms of the event loop every ~15 s under load
                # and now take ~5 ms (B4)
                self._gc_frozen = True
                gc.freeze()
            log.info("processor: rebalance complete, active partitions recovered")

        app.agent(self.events_topic, name="sluicegate.router")(self._route)
        app.agent(self.function_topics, name="sluicegate.functions")(self._functions)
        app.timer(0.02, name="sluicegate.timers")(self._fire_due_timers)
        app.timer(1.0, name="sluicegate.cron_sync")(self._cron_sync)
        app.timer(retention.SWEEP_INTERVAL_S, name="sluicegate.retention")(self._retention_tick)
        app.timer(flow_expiry.FLOW_SWEEP_INTERVAL_S, name="sluicegate.flow_sweep")(self._flow_sweep_tick)

    async def _learn_reread_window(self) -> None:
        """Note where each function partition ended when this process took it over
        (``processors/reread_window.py``); until then every record counts as read again."""
        self._reread.reset()
        topics = (self.settings.commands_topic, self.settings.results_topic)
        tps = [tp for tp in self.app.assignor.assigned_actives() if tp.topic in topics]
        if not tps:
            self._reread.learn({})
            return
        try:
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*tps), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - every duplicate then sends its run's outputs again
            log.warning("processor: end offsets of the assigned partitions unknown (%s): every duplicate command "
                        "sends its run's outputs again until the next rebalance", exc)
            return
        self._reread.learn(ends)

    def start_registry(self) -> None:
        """Read the registry to its end (blocking; before the event loop starts), then follow it."""
        self.registry = CompactedView(
            self.settings.bootstrap_servers, self.settings.registry_topic,
            FunctionDefinition.model_validate_json, self._on_registry_change,
        )
        self.registry.start()
        self._on_registry_change("", None)

    # -- router: sg.events -> sg.commands --------------------------------------------------

    async def _in_turns(self, stream: faust.StreamT, name: str, handle: Callable[[EventT, Any], Awaitable[None]],
                        paused_topic: str,
                        classify: Callable[[EventT], tuple[Any, Hashable]] = lambda _e: (None, ""),
                        background: Callable[[Hashable], bool] = lambda _lane: False) -> None:
        """Run an agent over ``processors/fair_intake.py``: this coroutine moves each record
        into its partition's queue as soon as faust delivers it (``classify`` decodes it and
        names its lane within the partition; ``background`` lanes wait for the others); a task
        handles one record of each partition in turn. Acks go to faust in offset order only
        (``processors/ordered_acks.py``), so a commit never passes a record not handled, or
        one whose outputs are not in the producer yet. A partition with too much queued stops
        being fetched from ``paused_topic`` (its new work; results are bounded by the window).

        When a rebalance revokes partitions, faust suspends its flow, clears its own queues
        (``flow_control.clear()``) and later reads again from the last commit; the intake is
        cleared with them, its records never acked."""
        intake: FairIntake[int, tuple[Tracked[TP, EventT], Any]] = FairIntake(background=background)
        acks: OrderedAcks[TP, EventT] = OrderedAcks()
        ready = asyncio.Event()
        consumer = self.app.consumer
        stream.enable_acks = False

        last_offset: dict[TP, int] = {}  # the last offset read of each partition (a gap is a lost record)

        def clear() -> None:
            if self.app.flow_control.is_active():
                # only a suspended flow (a revoke, a stop) is read again from the last commit
                return
            # a partition paused here would stay unfetched: nothing queued is left to resume it
            for partition in intake.paused:
                consumer.on_buffer_drop(TP(paused_topic, partition))
            dropped = intake.clear()
            acks.clear()
            last_offset.clear()  # read again from the last commit, or by another process
            if dropped:
                log.info("%s: a rebalance dropped %d queued record(s); they are read again", name, dropped)

        clearing = _ClearWith(clear)
        self._intake_clearers.append(clearing)  # flow_control holds queues weakly
        self.app.flow_control.manage_queue(clearing)  # type: ignore[arg-type]

        async def serve() -> None:
            try:
                while True:
                    got = intake.take()
                    if got is None:
                        self._backlogged[name] = False
                        self._went_idle()
                        ready.clear()
                        await ready.wait()
                        continue
                    self._backlogged[name] = True
                    (entry, payload), resume = got
                    if resume is not None:
                        consumer.on_buffer_drop(TP(paused_topic, resume))
                    event = entry.record
                    # table writes go to the changelog partition of the record they follow from
                    faust_streams._current_event.set(weakref.ref(event))
                    await handle(event, payload)
                    for done in acks.handled(entry):
                        await stream.ack(done)
                    # hold no record while idle: faust waits at a rebalance until every
                    # record it delivered is acked or gone
                    del entry, event, payload, got
                    # Hand the GIL to faust's consumer thread, if it waits for it: this thread
                    # does no blocking I/O of its own (librdkafka sends), so that thread got it
                    # only when the interpreter forced a switch, and every step of a fetch
                    # waited for one (B4: quiet records' produce -> our intake p50 40-60 ms
                    # with M bursting; 25-35 ms with this).
                    time.sleep(0)
                    await asyncio.sleep(0)  # let the reader queue what faust fetched meanwhile
            except asyncio.CancelledError:
                raise
            except Exception:
                log.critical("%s: failed on a record; stopping the processor", name, exc_info=True)
                os._exit(70)

        server = asyncio.ensure_future(serve())
        try:
            async for event in stream.events():
                # faust's own per-partition flow control pauses and resumes fetching (its
                # pause_/resume_partitions left a partition unfetched for good here)
                tp, offset = event.message.tp, event.message.offset
                before = last_offset.get(tp)
                if before is not None and offset > before + 1:
                    # our topics are neither compacted nor transactional: a record did not
                    # reach this agent; commits of tp stop before it (faust_tuning._new_offset)
                    log.warning("%s: %s jumped from offset %d to %d; commits stop at the gap until it "
                                "is read again (faust_tuning._held_back)", name, tp, before, offset)
                last_offset[tp] = offset
                payload, lane = classify(event)
                entry = acks.track(tp, event)
                pause = intake.put(event.message.partition, (entry, payload), lane)
                if pause is not None:
                    consumer.on_buffer_full(TP(paused_topic, pause))
                ready.set()
                del event, entry, payload  # (see serve)
        finally:
            server.cancel()

    async def _route(self, stream: faust.StreamT) -> None:
        await self._in_turns(stream, "router", self._route_record, self.settings.events_topic)

    async def _route_record(self, record: EventT, _payload: None) -> None:
        value, partition, offset = record.value, record.message.partition, record.message.offset
        if value.startswith(CONTROL_PREFIX):
            await self._on_wait_control(value, partition, offset)
            return
        try:
            event = EventRecord.model_validate_json(value)
        except ValueError:
            log.warning("router: dropped an undecodable record from %s", self.settings.events_topic)
            return
        await self._match_waits(event, partition, offset)
        await self._route_event(event)

    async def _route_event(self, event: EventRecord) -> None:
        assert self.registry is not None, "start_registry() first"
        if event.name == INVOKED_EVENT:
            await self._route_invoke(event)
            return
        loop = asyncio.get_running_loop()
        functions = self.index.match(event)
        if not functions and now_ms() - event.received_at < LIVE_EVENT_WINDOW_MS \
                and self.registry.caught_up_at * 1000 <= event.received_at:
            # A function registered just before this event may not be in our view yet.
            await loop.run_in_executor(None, self.registry.wait_caught_up,
                                       event.received_at / 1000, REGISTRY_WAIT_S)
            functions = self.index.match(event)
        if not functions:
            return
        for trig in triggers_for(event, functions):
            key = function_key(trig.app_id, trig.function_id)
            await self._send(self.settings.commands_topic, key, trig.dumps(),
                             partition_for(key, self.settings.partitions))

    async def _route_invoke(self, event: EventRecord) -> None:
        """``sluicegate/function.invoked`` starts exactly the function it names (triggers do not
        apply); an unknown function answers the caller at once with a failed ``finished``."""
        assert self.registry is not None
        meta = event.data.get("_sluicegate") if isinstance(event.data.get("_sluicegate"), dict) else {}
        fn_id = str(meta.get("function_id") or "")
        fn = self.registry.items.get(function_key(event.app_id, fn_id))
        if not isinstance(fn, FunctionDefinition) and now_ms() - event.received_at < LIVE_EVENT_WINDOW_MS:
            await asyncio.get_running_loop().run_in_executor(None, self.registry.wait_caught_up,
                                                             event.received_at / 1000, REGISTRY_WAIT_S)
            fn = self.registry.items.get(function_key(event.app_id, fn_id))
        if isinstance(fn, FunctionDefinition):
            trig = Trigger(app_id=fn.app_id, function_id=fn.function_id, function=fn, events=[event],
                           run_id=run_id_for(fn.app_id, fn.function_id, event.id))
            key = function_key(fn.app_id, fn.function_id)
            await self._send(self.settings.commands_topic, key, trig.dumps(), partition_for(key, self.settings.partitions))
            return
        caller = meta.get("caller") or {}
        log.warning("invoke: function %s/%s is not registered; the caller's step fails", event.app_id, fn_id)
        reply = EventRecord(
            app_id=str(caller.get("app_id") or event.app_id), id=f"{event.id}-not-found", name=FINISHED_EVENT,
            ts=now_ms(), received_at=now_ms(),
            data={"function_id": f"{event.app_id}-{fn_id}", "correlation_id": meta.get("correlation_id"),
                  "error": {"name": "FunctionNotFound",
                            "message": f"no function {fn_id!r} is registered in app {event.app_id!r}"},
                  "_sluicegate": {"status": "failed"}})
        await self._emit(reply)

    async def _emit(self, event: EventRecord) -> None:
        await self._send(self.settings.events_topic, event.app_id, event.dumps(),
                         partition_for(event.app_id, self.settings.partitions))

    # -- function processor: sg.commands + sg.results -> state, sg.work.<app>, sg.runs ------

    async def _functions(self, stream: faust.StreamT) -> None:
        # a record that fails stops the processor (_in_turns): faust would mark it processed
        # and move on, which loses it; a restart re-reads it from the last commit (invariant 1)
        results = self.settings.results_topic
        await self._in_turns(stream, "functions", self._function_record, self.settings.commands_topic,
                             lambda event: classify_command(event, results), is_background)

    def _went_idle(self) -> None:
        """An agent has nothing to handle: if none has for ``IDLE_FLUSH_AFTER_S``, send what
        lingers in the producer (``rdkafka_producer.flush_idle``) rather than wait out its linger."""
        if self._idle_flush is None:
            self._idle_flush = asyncio.get_running_loop().call_later(IDLE_FLUSH_AFTER_S, self._flush_if_idle)

    def _flush_if_idle(self) -> None:
        self._idle_flush = None
        if not any(self._backlogged.values()):
            self.app.producer.flush_idle()

    async def _function_record(self, event: EventT, cmd: AnyCommand | None) -> None:
        if cmd is None:
            log.warning("functions: dropped an undecodable command")
            return
        message = event.message
        await self._handle(cmd, message.partition, reread=self._reread.covers(message.tp, message.offset))

    async def _handle(self, cmd: AnyCommand, partition: int, *, reread: bool) -> None:
        now = now_ms()
        await self._decide(cmd, partition, now, reread=reread)
        await self._refill(now)
        self._flush_records()
        await self._send_views(partition)

    async def _decide(self, cmd: AnyCommand, partition: int, now: int, *, reread: bool) -> None:
        """``reread``: the record may have been handled before this process took its partition
        over, and the outputs of that handling lost (``processors/reread_window.py``)."""
        if isinstance(cmd, DispatchTick):
            self._on_tick(cmd, partition, now)
            return
        if isinstance(cmd, Heartbeat):
            self._on_heartbeat(cmd, partition, now)
            return
        if isinstance(cmd, ExpireRuns):
            await self._on_expire_runs(partition, now)
            return
        if isinstance(cmd, SweepFlow):
            self._on_sweep_flow(partition, now)
            return
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
        if isinstance(cmd, CancelRuns):
            await self._cancel_many(cmd, partition, now)
            return
        if isinstance(cmd, (ReplayStart, ReplayContinue, ReplayCancel, ReplayTally)):
            await self._on_replay(cmd, partition, now)
            return
        if isinstance(cmd, (ReplayMark, ReplayAck)):
            await self._on_replay_flow(cmd, partition)
            return
        if isinstance(cmd, RerunRun):
            await self._rerun(cmd, partition, now, reread=reread)
            return
        raw = stored(self.runs, cmd.run_id.encode())
        run = RunState.model_validate_json(raw) if raw is not None else None
        if isinstance(cmd, Trigger) and run is None:
            decisions = self._schedule(cmd, now) if cmd.replay_id is None else await self._schedule_replayed(cmd, now)
            for decision in decisions:
                await self._apply(decision, partition)
            return
        rec = self._dp(partition).records.get(cmd.run_id)
        started = rec.started if rec is not None else (
            run is not None and (run.job_seq > 1 or bool(run.steps) or run.pending is not None))
        decision = decide(run, cmd, now, started=started)
        if isinstance(cmd, TimerFired) and cmd.due_ms is not None:
            self.timers.pop(timer_key(cmd.due_ms, cmd.timer_id), None)  # fired: gone, stale or not
        if isinstance(cmd, StepOutcome):
            self._on_outcome_lease(cmd, decision.changed, partition)
        await self._apply(decision, partition)
        if decision.state is not None:
            self._ensure_enqueued(decision.state, partition, now)
            if not decision.changed:
                # read again after a crash, its state may already be written and its view lost
                # with the process: views are idempotent, send it again (a duplicate is rare)
                self._views.setdefault(decision.state.run_id, decision.state)
                if reread:  # and what it sent to other partitions (waiters, events)
                    await self._send_outputs(standing_outputs(decision.state))
                    if decision.state.finished:
                        self._note_ended(decision.state)  # the same entry, if it was lost

    async def _apply(self, decision: Decision, partition: int) -> None:
        """Persist one run's decision and forward its actions (the run's partition)."""
        if decision.note and decision.state is not None:
            log.debug("run %s: %s", decision.state.run_id, decision.note)
        if not decision.changed or decision.state is None:
            return
        state = decision.state
        if state.status == "skipped":
            await self._announce_skip(state)
        self.runs[state.run_id.encode()] = state.model_dump_json().encode()
        if state.finished:
            self._note_ended(state)  # with the state it follows from, nothing awaited between
        now = now_ms()
        for action in decision.actions:
            if isinstance(action, Dispatch):
                self._enqueue(state, action.job.job_id, action.job.attempt, partition, now, branch=action.job.branch)
            elif isinstance(action, StartTimer):
                key = timer_key(action.due_ms, action.timer_id)
                value = json.dumps({"app_id": state.app_id, "function_id": state.function_id,
                                    "run_id": state.run_id}).encode()
                self.timers[key] = value
                heapq.heappush(self._heap, (action.due_ms, action.timer_id, value))
            elif isinstance(action, DeleteTimer):
                self.timers.pop(timer_key(action.due_ms, action.timer_id), None)
        await self._send_outputs(decision.actions)
        if state.finished:
            self._run_finished(state, partition)
        self._views[state.run_id] = state  # sent after the window refill: _send_views
        if state.finished and state.singleton_key is not None:
            for follow_up in self._on_run_end(state, now_ms()):
                await self._apply(follow_up, partition)

    async def _send_outputs(self, actions: list[Action]) -> None:
        """A decision's records for other partitions: waiters to the routers, events."""
        for action in actions:
            if isinstance(action, RegisterWait):
                app = action.waiter.app_id
                await self._send(self.settings.events_topic, app, control_add(action.waiter),
                                 partition_for(app, self.settings.partitions))
            elif isinstance(action, DropWait):
                await self._send(self.settings.events_topic, action.app_id, control_drop(action.wait_id),
                                 partition_for(action.app_id, self.settings.partitions))
            elif isinstance(action, EmitEvent):
                if self._listened(action.event):
                    await self._emit(action.event)

    async def _schedule_replayed(self, cmd: Trigger, now: int) -> list[Decision]:
        """A replayed run: no admission or grouping (it re-runs what happened); with
        ``only_if_original``, only if the original run ended that way (else tallied)."""
        if cmd.only_if_original is not None:
            original = self._run(cmd.replay_of or "")
            if original is None or original.status not in cmd.only_if_original:
                tally = self._replay_tally_for(cmd)
                if tally is not None:
                    await self._send(self.settings.commands_topic, *tally)
                return []
        return self._start_run(cmd, now)

    async def _rerun(self, cmd: RerunRun, partition: int, now: int, *, reread: bool) -> None:
        raw = stored(self.runs, cmd.new_run_id.encode())
        if raw is not None:  # a repeated command
            if reread:
                await self._send_outputs(standing_outputs(RunState.model_validate_json(raw)))
            return
        original = self._run(cmd.run_id)
        if original is None:
            log.warning("rerun of %s: no such run on this partition; ignored", cmd.run_id)
            return
        assert self.registry is not None
        current = self.registry.items.get(function_key(cmd.app_id, cmd.function_id))
        fn = current if isinstance(current, FunctionDefinition) else original.function
        await self._apply(rerun(original, cmd, fn, now), partition)

    def _listened(self, event: EventRecord) -> bool:
        """``function.finished`` goes out only when an invoking caller or a function listens
        (one more record per run otherwise); every other event always does."""
        if event.name != FINISHED_EVENT or event.data.get("correlation_id"):
            return True
        return bool(self.index.match(event))

    async def _cancel_many(self, cmd: CancelRuns, partition: int, now: int) -> None:
        """Bulk cancellation: every run of the function on this partition that has not ended,
        was created in the range and whose first event passes ``if_exp``; then the count goes
        to ``sg.stats`` (``cancellation/<id>``) for the API."""
        dp = self._dp(partition)
        candidates = [r.run_id for r in list(dp.records.values())
                      if (r.app_id, r.function_id) == (cmd.app_id, cmd.function_id) and not r.run_ended
                      and r.branch is None
                      and (cmd.started_after is None or r.enqueued_at >= cmd.started_after)
                      and r.enqueued_at < cmd.started_before]
        n = 0
        for run_id in candidates:
            run = self._run(run_id)
            if run is None or run.finished:
                continue
            if cmd.if_exp:
                try:
                    if evaluate(cmd.if_exp, {"event": run.events[0] if run.events else {}}) is not True:
                        continue
                except ExpressionError:
                    continue
            decision = cancel(run, f"bulk cancellation {cmd.cancellation_id}", now, by="bulk")
            if decision.changed:
                n += 1
                await self._apply(decision, partition)
        log.info("cancellation %s: cancelled %d run(s) of %s/%s", cmd.cancellation_id, n, cmd.app_id, cmd.function_id)
        body = {"id": cmd.cancellation_id, "app_id": cmd.app_id, "function_id": cmd.function_id, "cancelled": n,
                "at": now_ms()}
        await self._send(self.settings.topic("stats"), f"cancellation/{cmd.cancellation_id}",
                         json.dumps(body).encode(), 0)

    async def _send_views(self, partition: int) -> None:
        """Publish the run views of this command, each with why it still waits, if it does."""
        views, self._views = self._views, {}
        for run_id, state in views.items():
            view = state.view()
            view.waiting = None if state.finished else self.waiting_reason(partition, run_id)
            if view.waiting is not None:
                self._waiting_shown.add(run_id)
            else:
                self._waiting_shown.discard(run_id)
            await self._send(self.settings.runs_topic, run_id, view.dumps(),
                             partition_for(run_id, self.settings.partitions))

    async def _announce_skip(self, run: RunState) -> None:
        """A ``sluicegate/run.skipped`` event (``run_decisions.skip_notice``)."""
        notice = skip_notice(run)
        if notice is None:
            return
        log.info("run %s of %s/%s skipped: %s", run.run_id, run.app_id, run.function_id, run.skip_reason)
        await self._send(self.settings.events_topic, run.app_id, notice.dumps(),
                         partition_for(run.app_id, self.settings.partitions))

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        """Hand a record to the producer; its flush before each commit awaits the ack, and a
        record that cannot be produced stops the process (``processors/rdkafka_producer.py``).

        Table writes went to the producer when they were made (``send_soon``), so an output
        never reaches the broker ahead of the state it follows from (a crash between the two
        would replay the command against older state and, say, run a step twice)."""
        self.app.producer.produce(topic_name, key.encode(), value, partition)

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

    async def _retention_tick(self) -> None:
        if not self.app.rebalancing:
            await self._sweep_expired(now_ms())

    async def _flow_sweep_tick(self) -> None:
        if not self.app.rebalancing:
            await self._sweep_flow_partitions(now_ms())

    async def _fire_due_timers(self) -> None:
        if self.app.rebalancing:
            return
        if self._heap_dirty:
            self._rebuild_heap()
        now = now_ms()
        if self._rebalance_ticks_due:
            # let each assigned partition rebuild its dispatcher and refill its windows
            self._rebalance_ticks_due = False
            for tp in self.app.assignor.assigned_actives():
                if tp.topic == self.settings.commands_topic:
                    await self._send(self.settings.results_topic, f"tick/{tp.partition}",
                                     DispatchTick(at_ms=now).dumps(), tp.partition)
        else:
            await self._dispatch_due(now)
        if now - self._stats_at >= STATS_INTERVAL_MS:
            self._stats_at = now
            await self._publish_stats()
        while self._heap and self._heap[0][0] <= now:
            _due, timer_id, value = heapq.heappop(self._heap)
            target = json.loads(value)
            target.setdefault("due_ms", _due)
            if "replay_id" in target:
                await self._on_replay_timer(target)
                continue
            cmd = TimerFired(timer_id=timer_id, **target)
            key = function_key(cmd.app_id, cmd.function_id)
            # a run's timer moves a started run (results); a flow or cron timer stays in order
            # with the triggers it groups (commands)
            topic = self.settings.commands_topic if cmd.flow_key else self.settings.results_topic
            await self._send(topic, key, cmd.dumps(), partition_for(key, self.settings.partitions))


    async def _publish_stats(self) -> None:
        """Per-function backlog, in-flight and waiting counts to the compacted ``sg.stats``
        (what the API's ``/v1/functions/{app}/{fn}/queue`` shows); only what changed."""
        current: dict[str, bytes] = {}
        for s in self.dispatch_stats():
            s["at"] = now_ms()
            key = function_key(s["app_id"], s["function_id"])
            body = {k: v for k, v in s.items() if k != "at"}
            current[key] = json.dumps(body, sort_keys=True).encode()
            if self._stats_sent.get(key) != current[key]:
                await self._send(self.settings.topic("stats"), key, json.dumps(s).encode(), 0)
        for key, old in self._stats_sent.items():
            if key not in current:  # drained: publish zeros once
                body = json.loads(old)
                body.update(backlog=0, in_flight=0, waiting={}, at=now_ms())
                await self._send(self.settings.topic("stats"), key, json.dumps(body).encode(), 0)
        self._stats_sent = current


TABLES = ("runs", "timers", "flow", "dispatch", "waits", "replays", "expiry")


def changelog_topics(settings: Settings) -> list[NewTopic]:
    """faust's changelog topics of our tables, created before faust starts: when faust
    declares one itself, the first write can race the creation (PartitionsMismatch: "has
    0 partitions") and the agent would drop that record."""
    return [NewTopic(f"{settings.processor_id}-{name}-changelog", settings.partitions, settings.replication_factor,
                     config={"cleanup.policy": "compact", "max.message.bytes": MAX_MESSAGE_BYTES})
            for name in TABLES]


def create_processor(settings: Settings) -> Processor:
    faust_tuning.apply(settings.processor_fetch_wait_ms)
    if settings.run_retention_ms < retention.MIN_SAFE_RETENTION_MS:
        log.warning("SLUICEGATE_RUN_RETENTION_MS=%d is under 24 h: a repeated event id can start a second run "
                    "once the first run is deleted", settings.run_retention_ms)
    ensure_core_topics(settings)
    create_topics(settings, changelog_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processor = Processor(settings)
    processor.start_registry()
    return processor


def run_processor(settings: Settings) -> None:
    """Run the processor in the foreground until SIGTERM/SIGINT."""
    processor = create_processor(settings)
    worker = faust.Worker(processor.app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
