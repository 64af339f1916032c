"""Schedule-time flow control inside the function processor (a mixin of ``Processor``).

Thin: each method loads flow state from the changelogged ``flow`` table, calls a pure
decision (:mod:`.admission`, :mod:`.grouping`, :mod:`.flow.singleton`, :mod:`.flow.cron`),
writes the state back and returns the run decisions for ``Processor._apply`` to persist
and forward. Everything here runs inside the ``sg.commands`` agent, one command at a time
per partition (one writer per function), so read-modify-write needs no locks.
"""

from __future__ import annotations

import heapq
import json
import logging
from typing import Any

from ..expressions import ExpressionError, key_value
from ..partitioning import function_key, partition_for
from ..settings import Settings
from ..state.codecs import timer_key
from ..state.run_state import RunState
from ..wire import CronSync, EventRecord, FunctionDefinition, TimerFired, Trigger
from .admission import admit
from .flow import cron, singleton
from .grouping import Grouped, grouping_of, on_event, on_timer
from .routing import run_id_for
from .run_decisions import Decision, cancel, queued, release, skip_queued, skipped, start
from .table_reads import stored

log = logging.getLogger("sluicegate.processor")

SCHEDULED_EVENT = "sluicegate/scheduled.timer"


class FlowStage:
    """Needs from the processor: ``settings``, the ``runs``/``timers``/``flow`` tables, the
    timer ``_heap``, the ``registry`` view, ``app`` and ``_send``."""

    settings: Settings
    runs: Any
    timers: Any
    flow: Any
    registry: Any
    app: Any
    _heap: list[tuple[int, str, bytes]]
    _cron_synced: set[tuple[str, str]]

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        raise NotImplementedError

    def _flow_state(self, key: str) -> str | None:
        raw = stored(self.flow, key.encode())
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
            if stored(self.runs, start.run_id.encode()) is None:
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
        if stored(self.runs, run.run_id.encode()) is not None:
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
        raw = stored(self.runs, run_id.encode())
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

