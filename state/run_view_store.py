"""The API's read model of runs: ``sg.runs`` materialised into a key-value store.

Layout in :mod:`sluicegate.state.codecs`. Offsets are stored in the same atomic batch as
the views they produced, so a restart resumes exactly where it stopped.
"""

from __future__ import annotations

from ..wire import RunView
from . import codecs
from .stores import KeyValueStore


class RunViewStore:
    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def apply(self, views: list[RunView], offsets: dict[int, int]) -> None:
        """Store views and, atomically with them, the next offset to read per partition.

        A run seen for the first time as ``skipped`` adds one to its function's counter for
        that reason (a view re-read after a crash is not counted again: it is stored already).
        """
        puts: dict[bytes, bytes] = {}
        counts: dict[bytes, int] = {}
        for v in views:
            if v.status == "skipped" and self._store.get(codecs.run_key(v.run_id)) is None:
                ckey = codecs.skip_counter_key(v.app_id, v.function_id, v.skip_reason or "skipped")
                counts[ckey] = counts.get(ckey, 0) + 1
            puts[codecs.run_key(v.run_id)] = v.dumps()
            for eid in v.event_ids:
                puts[codecs.event_run_key(eid, v.run_id)] = b""
        for ckey, n in counts.items():
            raw = self._store.get(ckey)
            puts[ckey] = codecs.encode_offset((codecs.decode_offset(raw) if raw else 0) + n)
        for p, off in offsets.items():
            puts[codecs.offset_key(p)] = codecs.encode_offset(off)
        self._store.write_batch(puts)

    def skip_counts(self, app_id: str, function_id: str) -> dict[str, int]:
        """Skipped runs of a function by reason."""
        prefix = codecs.skip_counter_prefix(app_id, function_id)
        return {k[len(prefix):].decode(): codecs.decode_offset(v) for k, v in self._store.scan_prefix(prefix)}

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

    def close(self) -> None:
        self._store.close()
