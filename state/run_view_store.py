"""The API's read model of runs: ``sg.runs`` materialised into a key-value store.

Layout in :mod:`sluicegate.state.codecs`. Offsets are stored in the same atomic batch as
the views they produced, so a restart resumes exactly where it stopped.

**Listing** (``GET /v1/runs``). Runs are indexed by status, at three scopes: every run,
one app, one function (``ix/``, ``ia/``, ``if/``), each ordered newest first by
``created_at`` (ties: run id). A query picks the scope from its app/function filter and
merges the index of each status it asks for (all six when it names none); the time range
is the start and the end of the scans. So every answer is exact and costs about ``limit``
index entries and views read, however rare the statuses asked for are — the alternative,
one index per scope filtered by status while scanning, would need a bounded scan that
answers a query for rare failures with empty pages and a cursor.

The price is paid when a run changes status (queued → running → completed): its three
old entries are deleted and three new ones written, in the same batch as the view. The
store knows the previous status from a small per-run meta record (``m/``: status,
created_at, app/function; 20–300 bytes) read before writing, not from the previous view
(which can be megabytes of step outputs). A view that does not change status or creation
time (most updates: a step finished) costs one extra point read and nothing else.

**Counters** per function and status (``c/status/``) move in the same batch: +1 for the
run's new status, −1 for its previous one, so they always add up to the runs stored.

**Deleting.** A run past its retention arrives as a tombstone (``None``) of its view; the
run's view, meta record, listing entries and event lookups go, and its counters (status,
and skip reason for a skipped run) drop by one, in the same batch.

**Cursors.** A page ends at a *position* ``(created_at, run_id)``; the next page starts
strictly after it. Positions are the same in every index and ``created_at`` never changes,
so a run that changes status between two pages keeps its place: continuing never lists a
run twice nor skips one that existed at the first page (runs created later sort before the
cursor and show up in a new listing). A page also stops after examining ``max_examined``
entries (entries whose view changed status between the index read and the view read are
skipped), returning the position reached so the client continues from there.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..wire import RunView
from . import codecs
from .stores import KeyValueStore

RUN_STATUSES = codecs.RUN_STATUSES
INDEX_VERSION = 1
BACKFILL_CHUNK = 500


@dataclass(frozen=True)
class RunPage:
    """One page of a listing. ``next_after``: the position ``(created_at, run_id)`` to pass
    as ``after`` for the next page, or ``None`` when the listing is complete."""

    runs: list[RunView]
    next_after: tuple[int, str] | None
    examined: int


def scan_from(kv: KeyValueStore, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The keys ``>= start`` that begin with ``prefix``, in byte order (``start`` begins with
    ``prefix``): the store's seek."""
    return kv.scan_from(start, prefix)


class RunViewStore:
    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._indexed = False

    # -- writing --------------------------------------------------------------------------

    def apply(self, views: list[RunView], offsets: dict[int, int], deleted: Iterable[str] = ()) -> None:
        """Store views, their listing indexes and counters, delete the runs ``deleted`` (a run
        is in one of the two lists at most) and, atomically with them, the next offset to read
        per partition.

        A run that becomes ``skipped`` (first seen so, or a queued run replaced by a newer
        one) adds one to its function's counter for that reason; a view re-read after a
        crash is not counted again: its meta record says it is skipped already.
        """
        if not self._indexed:
            self.ensure_indexes()
        puts: dict[bytes, bytes] = {}
        deletes: set[bytes] = set()
        counts: dict[bytes, int] = {}
        became_skipped = self._index_changes(views, puts, deletes, counts)
        for v in became_skipped:
            ckey = codecs.skip_counter_key(v.app_id, v.function_id, v.skip_reason or "skipped")
            counts[ckey] = counts.get(ckey, 0) + 1
        for v in views:
            puts[codecs.run_key(v.run_id)] = v.dumps()
            for eid in v.event_ids:
                puts[codecs.event_run_key(eid, v.run_id)] = b""
        for run_id in deleted:
            self._forget(run_id, deletes, counts)
        self._add_counts(counts, puts)
        for p, off in offsets.items():
            puts[codecs.offset_key(p)] = codecs.encode_offset(off)
        self._store.write_batch(puts, sorted(deletes))

    def _index_changes(self, views: Iterable[RunView], puts: dict[bytes, bytes], deletes: set[bytes],
                       counts: dict[bytes, int]) -> list[RunView]:
        """Index and counter changes of ``views`` (in order; a run may appear twice) into
        ``puts``/``deletes``/``counts``; returns the views whose run became ``skipped``.
        A key is never both put and deleted (a batch applies puts before deletes)."""
        metas: dict[str, bytes | None] = {}
        became_skipped: list[RunView] = []
        for v in views:
            mkey = codecs.run_meta_key(v.run_id)
            prev = metas[v.run_id] if v.run_id in metas else self._store.get(mkey)
            new = codecs.encode_run_meta(v.status, v.created_at, v.app_id, v.function_id)
            if prev == new:
                continue
            prev_status = None
            if prev is not None:
                prev_status, p_created, p_app, p_fn = codecs.decode_run_meta(prev)
                for key in codecs.run_index_keys(prev_status, p_created, p_app, p_fn, v.run_id):
                    puts.pop(key, None)
                    deletes.add(key)
                ckey = codecs.status_counter_key(p_app, p_fn, prev_status)
                counts[ckey] = counts.get(ckey, 0) - 1
            for key in codecs.run_index_keys(v.status, v.created_at, v.app_id, v.function_id, v.run_id):
                deletes.discard(key)
                puts[key] = b""
            ckey = codecs.status_counter_key(v.app_id, v.function_id, v.status)
            counts[ckey] = counts.get(ckey, 0) + 1
            puts[mkey] = metas[v.run_id] = new
            if v.status == "skipped" and prev_status != "skipped":
                became_skipped.append(v)
        return became_skipped

    def _forget(self, run_id: str, deletes: set[bytes], counts: dict[bytes, int]) -> None:
        """A deleted run's keys into ``deletes``, its counters down by one into ``counts``."""
        mkey = codecs.run_meta_key(run_id)
        meta = self._store.get(mkey)
        if meta is not None:
            status, created, app_id, function_id = codecs.decode_run_meta(meta)
            deletes.update(codecs.run_index_keys(status, created, app_id, function_id, run_id))
            ckey = codecs.status_counter_key(app_id, function_id, status)
            counts[ckey] = counts.get(ckey, 0) - 1
            deletes.add(mkey)
        rkey = codecs.run_key(run_id)
        raw = self._store.get(rkey)
        if raw is None:
            return
        deletes.add(rkey)
        try:
            view = RunView.model_validate_json(raw)
        except ValueError:
            return
        deletes.update(codecs.event_run_key(eid, run_id) for eid in view.event_ids)
        if view.status == "skipped" and meta is not None:
            ckey = codecs.skip_counter_key(view.app_id, view.function_id, view.skip_reason or "skipped")
            counts[ckey] = counts.get(ckey, 0) - 1

    def _add_counts(self, counts: dict[bytes, int], puts: dict[bytes, bytes]) -> None:
        for ckey, delta in counts.items():
            if delta == 0:
                continue
            raw = self._store.get(ckey)
            puts[ckey] = codecs.encode_offset(max(0, (codecs.decode_offset(raw) if raw else 0) + delta))

    def ensure_indexes(self) -> int:
        """Index the views stored before the listing indexes existed (an API upgraded in
        place); a no-op once done. Resumable: a run that has its meta record is skipped, and
        the version key is written last. Returns how many runs it indexed."""
        if self._store.get(codecs.INDEX_VERSION_KEY) is not None:
            self._indexed = True
            return 0
        indexed = 0
        start = b"r/"
        while True:
            chunk = list(itertools.islice(scan_from(self._store, start, b"r/"), BACKFILL_CHUNK))
            if not chunk:
                break
            views = []
            for key, raw in chunk:
                if self._store.get(codecs.run_meta_key(key[2:].decode())) is None:
                    try:
                        views.append(RunView.model_validate_json(raw))
                    except ValueError:
                        continue
            puts: dict[bytes, bytes] = {}
            deletes: set[bytes] = set()
            counts: dict[bytes, int] = {}
            self._index_changes(views, puts, deletes, counts)  # skips were counted when stored
            self._add_counts(counts, puts)
            if puts or deletes:
                self._store.write_batch(puts, sorted(deletes))
            indexed += len(views)
            start = chunk[-1][0] + b"\x00"
        self._store.write_batch({codecs.INDEX_VERSION_KEY: codecs.encode_offset(INDEX_VERSION)})
        self._indexed = True
        return indexed

    # -- reading --------------------------------------------------------------------------

    def skip_counts(self, app_id: str, function_id: str) -> dict[str, int]:
        """Skipped runs of a function by reason."""
        prefix = codecs.skip_counter_prefix(app_id, function_id)
        return {k[len(prefix):].decode(): codecs.decode_offset(v) for k, v in self._store.scan_prefix(prefix)}

    def status_counts(self, app_id: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """Runs per status of every function (of one app) that has runs:
        ``{(app_id, function_id): {status: n, ...}}`` with all six statuses."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for key, raw in self._store.scan_prefix(codecs.status_counter_prefix(app_id)):
            app, fn, status = codecs.parse_status_counter_key(key)
            out.setdefault((app, fn), dict.fromkeys(RUN_STATUSES, 0))[status] = codecs.decode_offset(raw)
        return out

    def next_offset(self, partition: int) -> int | None:
        raw = self._store.get(codecs.offset_key(partition))
        return None if raw is None else codecs.decode_offset(raw)

    def run(self, run_id: str) -> RunView | None:
        raw = self._store.get(codecs.run_key(run_id))
        return None if raw is None else RunView.model_validate_json(raw)

    def runs_for_event(self, event_id: str, limit: int = 1000) -> list[RunView]:
        out = []
        for key, _ in self._store.scan_prefix(codecs.event_runs_prefix(event_id), limit):
            view = self.run(codecs.run_id_from_event_run_key(key))
            if view is not None:
                out.append(view)
        return out

    def list_runs(self, *, app_id: str | None = None, function_id: str | None = None,
                  statuses: Iterable[str] | None = None, since: int | None = None, until: int | None = None,
                  after: tuple[int, str] | None = None, limit: int = 50,
                  max_examined: int | None = None) -> RunPage:
        """Runs newest first (``created_at`` descending, then run id), of every app, one app
        or one function, in ``statuses`` (default all), created in ``[since, until)`` (ms),
        strictly after the position ``after``; at most ``limit`` of them, examining at most
        ``max_examined`` index entries (default ``10 × limit``)."""
        if function_id is not None and app_id is None:
            raise ValueError("function_id needs app_id")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        wanted = tuple(dict.fromkeys(statuses)) if statuses else RUN_STATUSES
        for status in wanted:
            if status not in RUN_STATUSES:
                raise ValueError(f"unknown run status {status!r}")
        budget = max_examined if max_examined is not None else 10 * limit
        if until is not None and until <= 0:
            return RunPage([], None, 0)
        start = b""
        if until is not None:
            start = codecs.time_position(until - 1)
        if after is not None:
            start = max(start, codecs.run_position(*after) + b"\x00")
        stop = codecs.time_position(since - 1) if since else None  # positions >= stop: created before since

        def positions(status: str) -> Iterator[bytes]:
            prefix = codecs.run_index_prefix(status, app_id, function_id)
            for key, _ in scan_from(self._store, prefix + start, prefix):
                yield key[len(prefix):]

        out: list[RunView] = []
        seen: set[str] = set()
        examined = 0
        last_returned = last_examined = b""
        for position in heapq.merge(*(positions(s) for s in wanted)):
            if stop is not None and position >= stop:
                break
            if len(out) >= limit:  # there is more: continue after the last run returned
                return RunPage(out, codecs.parse_run_position(last_returned), examined)
            if examined >= budget:
                return RunPage(out, codecs.parse_run_position(last_examined), examined)
            examined += 1
            last_examined = position
            created_at, run_id = codecs.parse_run_position(position)
            if run_id in seen:  # listed from another status's index already (it changed meanwhile)
                continue
            view = self.run(run_id)
            if view is None or view.status not in wanted or max(0, view.created_at) != created_at:
                continue  # changed between the index read and the view read
            seen.add(run_id)
            out.append(view)
            last_returned = position
        return RunPage(out, None, examined)

    def close(self) -> None:
        self._store.close()
