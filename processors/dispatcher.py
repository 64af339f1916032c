"""The fair dispatcher inside the function processor (a mixin of ``Processor``; issue 4).

Ready jobs never wait in a topic that executors read (DESIGN invariant 3). They wait in
backlogs per (app, function, key) — the durable truth is one :class:`ActiveRun` record per
run in the changelogged ``dispatch`` table; the ordered index, leases and counters of each
partition live in memory and are rebuilt from the records when the partition is assigned.

The window: at most ``settings.dispatch_window`` jobs of one app are in flight from one
partition at a time (in ``sg.work.<app>`` partition p or executing). A job leaves its backlog
only when the window has room, and :func:`.dispatch.pump.pump` picks which (fair DRR over
functions and keys, started runs first, priority; concurrency and throttle respected). So a
newly ready job waits behind at most one window of other jobs, never behind a flood.

A slot of the window is freed by the job's outcome or its lease's expiry. A lease lasts
``settings.lease_ms`` from dispatch; workers extend it with heartbeats during long steps.
An expired lease (the worker died) puts the job back at the head of its backlog with a new
lease id; a late outcome of the old dispatch is still accepted once (first result wins).

Everything here runs inside the ``sg.commands`` agent (one writer per partition), except
:meth:`_dispatch_due`, which only *sends* a :class:`DispatchTick` back to the partition.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..partitioning import partition_for
from ..settings import Settings
from ..state.codecs import timer_key
from ..state.dispatch_record import ActiveRun, job_dispatch_key
from ..state.run_state import RunState
from ..topics import ensure_work_topic
from ..wire import DispatchTick, FunctionDefinition, Heartbeat, StepOutcome
from .dispatch import concurrency as cc
from .dispatch import throttle as th
from .dispatch.backlogs import Backlogs
from .dispatch.fair_selection import FairState, Item, Weights
from .dispatch.pump import Ticket, is_replay_key, pump, replay_key, replay_share_free
from .dispatch.run_keys import partitions_sharing, run_keys
from .flow.rate_limit import GcraState
from .run_decisions import current_jobs, finish_timeout_timer, job_for
from .table_reads import stored

log = logging.getLogger("sluicegate.dispatcher")

STATS_INTERVAL_MS = 1000


@dataclass
class PartitionDispatch:
    """The in-memory side of one partition's dispatcher."""

    backlogs: Backlogs = field(default_factory=Backlogs)
    records: dict[str, ActiveRun] = field(default_factory=dict)  # by dispatch key (ActiveRun.dkey)
    branches: dict[str, set[str]] = field(default_factory=dict)  # run id -> its branch jobs' keys
    tickets: dict[str, Ticket] = field(default_factory=dict)
    cc: cc.ConcurrencyState = cc.EMPTY
    fair: dict[str, FairState] = field(default_factory=dict)
    inflight: Counter = field(default_factory=Counter)       # app -> jobs in flight
    inflight_fn: Counter = field(default_factory=Counter)    # (app, fn) -> jobs in flight
    inflight_replay: Counter = field(default_factory=Counter)  # app -> replayed runs' jobs in flight
    leases: list[tuple[int, str, str]] = field(default_factory=list)  # heap (expires, dispatch key, lease)
    key_weights: dict[tuple[str, str, str], int] = field(default_factory=dict)
    weights: Weights = field(default_factory=Weights)
    weights_dirty: bool = False
    throttle_wake: int | None = None
    blocked: dict[str, dict[tuple[str, ...], str]] = field(default_factory=dict)  # app -> path -> reason
    window_full: dict[str, bool] = field(default_factory=dict)
    tick_sent: bool = False

    def wake_at(self) -> int | None:
        due = [t for t in (self.throttle_wake, self.leases[0][0] if self.leases else None) if t is not None]
        return min(due) if due else None


def _ticket(rec: ActiveRun) -> Ticket:
    return Ticket(
        item=Item(rec.dkey, rec.enqueued_at, rec.priority_s, rec.started), run_id=rec.run_id,
        lease_id=f"{rec.job_id}:{rec.attempt}:{rec.dispatches}",
        limits=tuple(cc.SlotLimit(s, n, per) for s, n, per in rec.limits),  # type: ignore[arg-type]
        throttle=None if rec.throttle is None else th.Throttle(*rec.throttle),
        throttle_key=rec.throttle_key)


class DispatchStage:
    """Needs from the processor: ``settings``, the ``runs``/``flow``/``dispatch`` tables,
    ``registry``, ``app``, ``_send`` and ``_work_topics``."""

    settings: Settings
    runs: Any
    flow: Any
    dispatch: Any
    timers: Any
    _heap: list[tuple[int, str, bytes]]
    registry: Any
    app: Any
    _work_topics: set[str]
    _dispatchers: dict[int, PartitionDispatch]
    _dispatch_dirty: bool
    _touched: set[tuple[int, str]]
    _waiting_shown: set[str]
    _views: dict[str, RunState]
    _record_writes: dict[str, ActiveRun | None]
    _sharing_cache: tuple[int, dict[str, int]] | None = None

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        raise NotImplementedError

    def _set_run_timer(self, run: RunState, timer_id: str, due_ms: int) -> None:
        value = json.dumps({"app_id": run.app_id, "function_id": run.function_id, "run_id": run.run_id}).encode()
        self.timers[timer_key(due_ms, timer_id)] = value
        heapq.heappush(self._heap, (due_ms, timer_id, value))

    # -- state -----------------------------------------------------------------------------

    def _dp(self, partition: int) -> PartitionDispatch:
        if self._dispatch_dirty:
            self._rebuild_dispatch()
        dp = self._dispatchers.get(partition)
        if dp is None:
            dp = self._dispatchers[partition] = PartitionDispatch()
        return dp

    def _rebuild_dispatch(self) -> None:
        """After a rebalance: backlogs, leases and counters from the ``dispatch`` records.

        A lease in flight gets at least one more ``lease_ms`` from now (in memory): while no
        processor read this partition, its worker's heartbeats waited in ``sg.commands``, so
        a restart longer than a lease does not send every executing step out again."""
        self._dispatchers = {}
        self._dispatch_dirty = False
        n = 0
        grace = int(time.time() * 1000) + self.settings.lease_ms
        for _key, raw in self.dispatch.items():
            rec = ActiveRun.model_validate_json(raw)
            if rec.phase == "inflight" and rec.lease_expires < grace:
                rec = rec.model_copy(update={"lease_expires": grace})
            dp = self._dispatchers.setdefault(rec.partition, PartitionDispatch())
            self._index(dp, rec)
            n += 1
        for p, dp in self._dispatchers.items():
            self._touched.update((p, app) for app in dp.backlogs.apps())
        log.info("dispatcher: rebuilt %d active run(s) over %d partition(s)", n, len(self._dispatchers))

    def _index(self, dp: PartitionDispatch, rec: ActiveRun) -> None:
        """Put one record into the in-memory side (no writes)."""
        dkey = rec.dkey
        dp.records[dkey] = rec
        if rec.branch is not None:
            dp.branches.setdefault(rec.run_id, set()).add(dkey)
        runs_slots = tuple(s for s, _n, per in rec.limits if per == "run")
        if rec.started and runs_slots and not rec.run_ended and rec.branch is None:  # branches share them
            state = dp.cc
            dp.cc = state.model_copy(update={
                "runs": {**state.runs, rec.run_id: runs_slots},
                "run_holders": cc._add(state.run_holders, runs_slots, rec.run_id)})
        if rec.phase == "ready":
            t = _ticket(rec)
            dp.tickets[dkey] = t
            dp.backlogs.add((rec.app_id, rec.function_id, rec.key), t.item)
            if rec.weight != 1:
                dp.key_weights[(rec.app_id, rec.function_id, rec.key)] = rec.weight
                dp.weights_dirty = True
        elif rec.phase == "inflight":
            steps = tuple(dict.fromkeys(s for s, _n, per in rec.limits if per == "step"))
            state = dp.cc
            dp.cc = state.model_copy(update={
                "leases": {**state.leases, rec.lease_id: cc.Lease(run_id=rec.run_id, expires_ms=rec.lease_expires,
                                                                  slots=steps)},
                "step_holders": cc._add(state.step_holders, steps, rec.lease_id)})
            self._count_in_flight(dp, rec, 1)
            heapq.heappush(dp.leases, (rec.lease_expires, dkey, rec.lease_id))

    def _put_record(self, dp: PartitionDispatch, rec: ActiveRun | None, dkey: str) -> None:
        """Change a record in memory now; the table gets its last state once per command
        (:meth:`_flush_records`): a run queued and dispatched, or released and ended, by one
        command costs one changelog record, not two."""
        if rec is None:
            old = dp.records.pop(dkey, None)
            if old is not None and old.branch is not None:
                keys = dp.branches.get(old.run_id)
                if keys is not None:
                    keys.discard(dkey)
                    if not keys:
                        del dp.branches[old.run_id]
        else:
            dp.records[dkey] = rec
        self._record_writes[dkey] = rec

    def _flush_records(self) -> None:
        writes, self._record_writes = self._record_writes, {}
        for dkey, rec in writes.items():
            if rec is None:
                self.dispatch.pop(dkey.encode(), None)
            else:
                self.dispatch[dkey.encode()] = rec.dumps()

    # -- inputs from the run state machine --------------------------------------------------

    def _enqueue(self, run: RunState, job_id: str, attempt: int, partition: int, now: int,
                 branch: str | None = None) -> None:
        """A job of the run is ready: into its backlog (idempotent per job and attempt). A
        ``step.parallel`` branch job (``branch``) is queued on its own, with the run's keys."""
        dp = self._dp(partition)
        dkey = job_dispatch_key(run.run_id, job_id)
        rec = dp.records.get(dkey)
        if rec is not None and rec.job_id == job_id and rec.attempt == attempt and rec.phase in ("ready", "inflight"):
            return
        if rec is not None and rec.phase == "inflight":
            self._free_lease(dp, rec)
            rec = dp.records.get(dkey)
        main = dp.records.get(run.run_id)
        if rec is None and branch is not None and main is not None:
            rec = main.model_copy(update={"branch": branch, "started": True, "finish_due": None, "dispatches": 0,
                                          "lease_id": "", "lease_expires": 0})
        if rec is None:
            keys = run_keys(run.function, run.events[0] if run.events else {},
                            partitions_sharing=self._sharing())
            rec = ActiveRun(
                run_id=run.run_id, app_id=run.app_id, function_id=run.function_id, partition=partition,
                # a replay's runs take turns with live work as a backlog of their own (fair selection
                # goes over keys); their concurrency and throttle keys are the same as live runs'
                key=keys.key if run.replay_id is None else replay_key(run.replay_id, keys.key), enqueued_at=run.created_at, priority_s=keys.priority_s, weight=keys.weight,
                limits=[(lim.slot, lim.limit, lim.per) for lim in keys.limits],
                throttle=None if keys.throttle is None else (keys.throttle.limit, keys.throttle.period_ms,
                                                             keys.throttle.burst),
                throttle_key=keys.throttle_key, branch=branch, started=branch is not None)
        rec = rec.model_copy(update={"phase": "ready", "job_id": job_id, "attempt": attempt, "run_ended": False})
        self._put_record(dp, rec, dkey)
        self._index(dp, rec)
        self._touched.add((partition, run.app_id))

    def _ensure_enqueued(self, run: RunState, partition: int, now: int) -> None:
        """Reconcile after a replayed command: a running run whose job is neither waiting
        for a retry nor known to the dispatcher gets it queued (writes to two tables are not
        atomic; a crash between them must not strand the run)."""
        if run.finished:
            return
        for branch, job in current_jobs(run):
            if job.retry_timer is not None:
                continue
            rec = self._dp(partition).records.get(job_dispatch_key(run.run_id, job.job_id))
            if rec is None or (rec.job_id, rec.attempt) != (job.job_id, job.attempt) or rec.phase == "idle":
                self._enqueue(run, job.job_id, job.attempt, partition, now, branch=branch)

    def _run_finished(self, run: RunState, partition: int) -> None:
        """Free the run's run-level slots and drop its queued job; a step still executing
        keeps its lease until its outcome or expiry."""
        dp = self._dp(partition)
        dkeys = [run.run_id, *sorted(dp.branches.get(run.run_id, ()))]
        for dkey in dkeys:
            rec = dp.records.get(dkey)
            if rec is None:
                continue
            if rec.finish_due is not None:
                self.timers.pop(timer_key(rec.finish_due, f"{run.run_id}:timeout-finish"), None)
            dp.backlogs.remove(dkey)
            dp.tickets.pop(dkey, None)
            if rec.phase == "inflight":
                self._put_record(dp, rec.model_copy(update={"run_ended": True}), dkey)
            else:
                self._put_record(dp, None, dkey)
        dp.cc = cc.release_run(dp.cc, run.run_id)
        self._touched.add((partition, run.app_id))

    def _on_outcome_lease(self, cmd: StepOutcome, accepted: bool, partition: int) -> None:
        """An outcome frees the window slot and step slots of the dispatch it answers."""
        dp = self._dp(partition)
        rec = dp.records.get(job_dispatch_key(cmd.run_id, cmd.job_id))
        if rec is None or rec.phase != "inflight":
            return
        if accepted or cmd.lease_id == rec.lease_id or \
                (not cmd.lease_id and (cmd.job_id, cmd.attempt) == (rec.job_id, rec.attempt)):
            self._free_lease(dp, rec)

    def _free_lease(self, dp: PartitionDispatch, rec: ActiveRun) -> None:
        dp.cc = cc.release(dp.cc, rec.lease_id)
        self._count_in_flight(dp, rec, -1)
        self._touched.add((rec.partition, rec.app_id))
        if rec.run_ended or rec.branch is not None:  # a branch job answered is done: its record goes
            self._put_record(dp, None, rec.dkey)
        else:
            self._put_record(dp, rec.model_copy(update={"phase": "idle", "lease_id": "", "lease_expires": 0}),
                             rec.dkey)

    @staticmethod
    def _count_in_flight(dp: PartitionDispatch, rec: ActiveRun, n: int) -> None:
        dp.inflight[rec.app_id] += n
        dp.inflight_fn[(rec.app_id, rec.function_id)] += n
        if is_replay_key(rec.key):
            dp.inflight_replay[rec.app_id] += n

    def _on_heartbeat(self, cmd: Heartbeat, partition: int, now: int) -> None:
        dp = self._dp(partition)
        # a lease id is ``<job id>:<attempt>:<dispatches>``
        rec = dp.records.get(job_dispatch_key(cmd.run_id, cmd.lease_id.rsplit(":", 2)[0]))
        if rec is None or rec.phase != "inflight" or rec.lease_id != cmd.lease_id:
            return
        got = cc.extend(dp.cc, rec.lease_id, now + self.settings.lease_ms, now)
        if got.changed:
            dp.cc = got.state
            rec = rec.model_copy(update={"lease_expires": now + self.settings.lease_ms})
            self._put_record(dp, rec, rec.dkey)
            heapq.heappush(dp.leases, (rec.lease_expires, rec.dkey, rec.lease_id))

    def _on_tick(self, cmd: DispatchTick, partition: int, now: int) -> None:
        """Reap expired leases (their jobs go back to the head of their backlogs) and let
        every app of the partition refill its window (throttles may have room now)."""
        dp = self._dp(partition)
        dp.tick_sent = False
        dp.throttle_wake = None
        while dp.leases and dp.leases[0][0] <= now:
            _exp, dkey, lease_id = heapq.heappop(dp.leases)
            rec = dp.records.get(dkey)
            if rec is None or rec.phase != "inflight" or rec.lease_id != lease_id or rec.lease_expires > now:
                continue  # stale heap entry: released, or extended by a heartbeat
            log.warning("run %s: lease %s expired (no outcome or heartbeat for %d ms); dispatching again",
                        rec.run_id, lease_id, self.settings.lease_ms)
            ended = rec.run_ended
            self._free_lease(dp, rec)
            if not ended:
                rec = rec.model_copy(update={"phase": "ready", "started": True, "lease_id": "", "lease_expires": 0})
                self._put_record(dp, rec, dkey)
                self._index(dp, rec)
        dp.cc, _ = cc.reap(dp.cc, now)
        self._touched.update((partition, app) for app in dp.backlogs.apps())

    # -- the window ------------------------------------------------------------------------

    def _sharing(self) -> dict[str, int]:
        """``app``/``account`` counters: partitions per counter family, recomputed only when
        the registry changed (``_registry_gen``)."""
        gen = getattr(self, "_registry_gen", 0)
        if self._sharing_cache is None or self._sharing_cache[0] != gen:
            fns = [v for v in self.registry.items.values() if isinstance(v, FunctionDefinition)] \
                if self.registry is not None else []
            self._sharing_cache = (gen, partitions_sharing(fns, lambda k: partition_for(k, self.settings.partitions)))
        return self._sharing_cache[1]

    def _gcra(self, key: str) -> GcraState | None:
        raw = stored(self.flow, key.encode())
        return GcraState.model_validate_json(raw) if raw is not None else None

    async def _refill(self, now: int) -> list[str]:
        """Refill the windows of every (partition, app) touched by this command; returns the
        run ids that were released (their views lose the waiting reason)."""
        touched, self._touched = self._touched, set()
        sent: list[str] = []
        for partition, app in sorted(touched):
            dp = self._dp(partition)
            ready = dp.backlogs.ready(app)
            free = self.settings.dispatch_window - dp.inflight[app]
            if not ready:
                dp.blocked.pop(app, None)
                dp.window_full[app] = False
                continue
            if free <= 0:  # nothing can go: keep the last reasons, skip the selection
                dp.window_full[app] = True
                continue
            if dp.weights_dirty:
                dp.weights = Weights(keys=dict(dp.key_weights))
                dp.weights_dirty = False
            share = self.settings.replay_window_share
            replay_free = None if share >= 1 else replay_share_free(
                self.settings.dispatch_window, share, dp.inflight_replay[app], free)
            result = pump(ready, dp.tickets, free=free, fair=dp.fair.get(app, FairState()),
                          concurrency=dp.cc, throttle_state=self._gcra, now_ms=now,
                          lease_ms=self.settings.lease_ms, weights=dp.weights, replay_free=replay_free)
            dp.fair[app] = result.fair
            dp.cc = result.concurrency
            dp.blocked[app] = dict(result.blocked)
            dp.window_full[app] = result.window_full
            for key, gcra in result.throttle_puts.items():
                self.flow[key.encode()] = gcra.model_dump_json().encode()
            if result.wake_at_ms is not None:
                dp.throttle_wake = result.wake_at_ms if dp.throttle_wake is None else min(dp.throttle_wake,
                                                                                           result.wake_at_ms)
            for released in result.released:
                await self._send_job(dp, released.ticket, partition, now)
                sent.append(released.ticket.run_id)
        return sent

    async def _send_job(self, dp: PartitionDispatch, ticket: Ticket, partition: int, now: int) -> None:
        run_id, dkey = ticket.run_id, ticket.item.item_id
        rec = dp.records[dkey]
        dp.backlogs.remove(dkey)
        dp.tickets.pop(dkey, None)
        run = self._views.get(run_id)  # changed by this command: already in hand
        if run is None:
            raw = stored(self.runs, run_id.encode())
            run = RunState.model_validate_json(raw) if raw is not None else None
        job = None if run is None else (run.job if rec.branch is None else run.branches.get(rec.branch))
        if run is None or run.finished or job is None or job.retry_timer is not None \
                or (job.job_id, job.attempt) != (rec.job_id, rec.attempt):
            # the run moved on since its job was queued: nothing to send
            dp.cc = cc.release(dp.cc, ticket.lease_id)
            gone = run is None or run.finished or rec.branch is not None
            self._put_record(dp, None if gone else rec.model_copy(update={"phase": "idle"}), dkey)
            return
        expires = now + self.settings.lease_ms
        finish_due = rec.finish_due
        if not rec.started:
            timer = finish_timeout_timer(run, now)  # the finish timeout runs from the first dispatch
            if timer is not None:
                self._set_run_timer(run, *timer)
                finish_due = timer[1]
        rec = rec.model_copy(update={"phase": "inflight", "started": True, "finish_due": finish_due, "lease_id": ticket.lease_id,
                                     "lease_expires": expires, "dispatches": rec.dispatches + 1})
        self._put_record(dp, rec, dkey)
        self._flush_records()  # the record says "in flight" before the job can be seen
        self._count_in_flight(dp, rec, 1)
        heapq.heappush(dp.leases, (expires, dkey, ticket.lease_id))
        work = self.settings.work_topic(rec.app_id)
        if work not in self._work_topics:
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, ensure_work_topic, self.settings, rec.app_id)
            self._work_topics.add(work)
        msg = job_for(run, now, lease_id=ticket.lease_id, lease_ms=self.settings.lease_ms, branch=rec.branch)
        await self._send(work, run_id, msg.dumps(), partition)
        if run_id in self._waiting_shown and run_id not in self._views:
            self._views[run_id] = run  # its view said it was waiting: say it no longer is

    def waiting_reason(self, partition: int, run_id: str) -> str | None:
        """Why a run's job is still in its backlog: ``concurrency``, ``throttled``,
        ``window_full`` (its app's window has no room), or ``queued`` (behind other jobs of
        its backlog, or not reached yet)."""
        dp = self._dispatchers.get(partition)
        if dp is None:
            return None
        loc = dp.backlogs.location(run_id)
        if loc is None:
            return None
        reason = dp.blocked.get(loc[0], {}).get(loc)
        if reason is not None:
            return reason
        return "window_full" if dp.window_full.get(loc[0]) else "queued"

    # -- periodic (outside the agent: sends only) -------------------------------------------

    async def _dispatch_due(self, now: int) -> None:
        """Ask a partition to reap leases / wake throttles when one is due."""
        for partition, dp in list(self._dispatchers.items()):
            wake = dp.wake_at()
            if wake is not None and wake <= now and not dp.tick_sent:
                dp.tick_sent = True
                await self._send(self.settings.results_topic, f"tick/{partition}",
                                 DispatchTick(at_ms=now).dumps(), partition)

    def dispatch_stats(self) -> list[dict[str, Any]]:
        """Per function: backlog depth, jobs in flight, and backlog depth by waiting reason."""
        out: list[dict[str, Any]] = []
        per_fn: dict[tuple[str, str], dict[str, Any]] = {}
        for _p, dp in self._dispatchers.items():
            keys = set(dp.inflight_fn) | {(a, f) for a in dp.backlogs.apps() for f in dp.backlogs.functions(a)}
            for app, fn in keys:
                s = per_fn.setdefault((app, fn), {"app_id": app, "function_id": fn, "backlog": 0, "in_flight": 0,
                                                  "waiting": Counter()})
                s["in_flight"] += max(0, dp.inflight_fn[(app, fn)])
                blocked = dp.blocked.get(app, {})
                for key, depth in dp.backlogs.backlogs(app, fn):
                    s["backlog"] += depth
                    reason = blocked.get((app, fn, key)) or ("window_full" if dp.window_full.get(app) else "queued")
                    s["waiting"][reason] += depth
        for s in per_fn.values():
            s["waiting"] = dict(s["waiting"])
            out.append(s)
        return out

