"""Run retention in the function processor (a mixin of ``Processor``): ended runs are
deleted once ``run_retention_ms`` has passed (``processors/run_retention.py`` decides).

* When a run ends, :meth:`RetentionStage._note_ended` writes its expiry entry into the
  changelogged ``expiry`` table, in the same command (so it is as durable as the end itself).
* Every :data:`~.run_retention.SWEEP_INTERVAL_S`, :meth:`_sweep_expired` reads the first
  entry of each owned partition; when one is due it sends that partition an ``ExpireRuns``
  (tables change only inside the agent), at most one in flight per partition.
* :meth:`_on_expire_runs`, in the agent: deletes up to ``EXPIRE_BATCH`` due runs (state and
  entry, each with its changelog tombstone) and publishes a tombstone for each run's view in
  ``sg.runs``, so the API forgets the run and its listing entries; while more are due, it
  sends itself the next ``ExpireRuns``.
* Flow-control records (rate limit, throttle, idempotency) that are worth nothing any more
  are found by a sweep rather than by entries: every
  :data:`~.flow.expiry.FLOW_SWEEP_INTERVAL_S` the next ``FLOW_SWEEP_BATCH`` records of each
  owned partition's ``flow`` table are read from a cursor kept in memory (a restart begins a
  new pass); when some have expired, a ``SweepFlow`` to the partition deletes them
  (``processors/flow/expiry.py``). An idle processor sends nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from ..partitioning import partition_for
from ..settings import Settings
from ..state.codecs import expiry_key
from ..state.run_state import RunState
from ..wire import ExpireRuns, SweepFlow
from .flow.expiry import FLOW_SWEEP_BATCH, sweep
from .run_retention import EXPIRE_BATCH, RESEND_AFTER_MS, due_entries, expires_at
from .table_reads import items_from, keys_in_order, stored

log = logging.getLogger("sluicegate.retention")


class RetentionStage:
    settings: Settings
    app: Any
    runs: Any
    expiry: Any
    flow: Any
    _views: dict[str, RunState]
    _expiry_sent: dict[int, int]
    _flow_cursor: dict[int, bytes | None]
    _flow_sweep_sent: dict[int, int]

    async def _send(self, topic_name: str, key: str, value: bytes, partition: int) -> None:
        raise NotImplementedError

    def _note_ended(self, run: RunState) -> None:
        """An ended run's expiry entry (the same key each time: ``ended_at`` is fixed)."""
        at = expires_at(run, self.settings.run_retention_ms)
        if at is not None:
            self.expiry[expiry_key(at, run.run_id)] = b""

    def _partitions_to_ask(self, sent: dict[int, int], now: int) -> list[int]:
        """Owned partitions of ``sg.commands`` with no such housekeeping command in flight
        (``sent``: when one was sent; one not handled within ``RESEND_AFTER_MS`` was lost)."""
        return [tp.partition for tp in self.app.assignor.assigned_actives()
                if tp.topic == self.settings.commands_topic
                and (tp.partition not in sent or now - sent[tp.partition] >= RESEND_AFTER_MS)]

    async def _sweep_expired(self, now: int) -> None:
        """Ask each owned partition whose first expiry entry is due to delete its runs."""
        for p in self._partitions_to_ask(self._expiry_sent, now):
            due, _more = due_entries(keys_in_order(self.expiry, p), now, 1)
            if due:
                self._expiry_sent[p] = now
                await self._send(self.settings.commands_topic, f"expiry/{p}", ExpireRuns(partition=p).dumps(), p)

    async def _on_expire_runs(self, partition: int, now: int) -> None:
        due, more = due_entries(keys_in_order(self.expiry, partition), now, EXPIRE_BATCH)
        deleted = 0
        for key, run_id in due:
            self.expiry.pop(key, None)
            raw = stored(self.runs, run_id.encode())
            if raw is None:
                continue
            at = expires_at(RunState.model_validate_json(raw), self.settings.run_retention_ms)
            if at is None or at > now:
                continue  # not ended (cannot happen), or kept longer by a later entry of its own
            self.runs.pop(run_id.encode(), None)
            self._views.pop(run_id, None)
            self.app.producer.produce(self.settings.runs_topic, run_id.encode(), None,
                                      partition_for(run_id, self.settings.partitions))
            deleted += 1
        if deleted:
            log.info("retention: deleted %d run(s) of partition %d that ended over %d ms ago", deleted, partition,
                     self.settings.run_retention_ms)
        if more:
            self._expiry_sent[partition] = now
            await self._send(self.settings.commands_topic, f"expiry/{partition}",
                             ExpireRuns(partition=partition).dumps(), partition)
        else:
            self._expiry_sent.pop(partition, None)

    async def _sweep_flow_partitions(self, now: int) -> None:
        """Read each owned partition's next slice of the ``flow`` table; when it holds records
        to delete, ask the partition to delete them (``SweepFlow``), else move on."""
        for p in self._partitions_to_ask(self._flow_sweep_sent, now):
            deletes, cursor = sweep(items_from(self.flow, p, self._flow_cursor.get(p)), now, FLOW_SWEEP_BATCH)
            if not deletes:
                self._flow_cursor[p] = cursor
                continue
            self._flow_sweep_sent[p] = now
            await self._send(self.settings.commands_topic, f"flow-sweep/{p}", SweepFlow(partition=p).dumps(), p)

    def _on_sweep_flow(self, partition: int, now: int) -> None:
        """The same slice again, in the agent (its records may have changed): delete what expired."""
        self._flow_sweep_sent.pop(partition, None)
        deletes, cursor = sweep(items_from(self.flow, partition, self._flow_cursor.get(partition)), now,
                                FLOW_SWEEP_BATCH)
        for key in deletes:
            self.flow.pop(key, None)
        self._flow_cursor[partition] = cursor
        if deletes:
            log.info("retention: deleted %d expired flow-control record(s) of partition %d", len(deletes), partition)
