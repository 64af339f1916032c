"""Materialises ``sg.runs`` (RunView records from the processors) into the API's RocksDB.

Reads every partition (no consumer group: each API process keeps a full read model) and
stores views together with the next offset per partition, in one atomic batch; the listing
indexes and per-status counters of ``GET /v1/runs`` and ``GET /v1/functions`` are written in
that same batch (:mod:`sluicegate.state.run_view_store`). A tombstone (a run deleted at the
end of its retention) deletes the run from the read model. A read model written before the
indexes existed is indexed once, before following resumes.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer, TopicPartition

from ..settings import Settings
from ..state.run_view_store import RunViewStore
from ..state.stores import RocksStore
from ..wire import RunView

log = logging.getLogger("sluicegate.ingest.runs")


class RunViewFollower:
    def __init__(self, settings: Settings, store: RunViewStore | None = None) -> None:
        self.settings = settings
        self.store = store or RunViewStore(RocksStore(settings.data_dir / "api-runs"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sg-run-views", daemon=True)

    def start(self) -> "RunViewFollower":
        self._thread.start()
        return self

    def _run(self) -> None:
        c = Consumer({"bootstrap.servers": self.settings.bootstrap_servers, "group.id": "sg-run-views-unused",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 10, "log_level": 3})
        try:
            indexed = self.store.ensure_indexes()
            if indexed:
                log.info("run views: indexed %d run(s) stored before the listing indexes existed", indexed)
            topic = self.settings.runs_topic
            parts = c.list_topics(topic, timeout=30).topics[topic].partitions
            assignment = []
            for p in parts:
                nxt = self.store.next_offset(p)
                assignment.append(TopicPartition(topic, p, -2 if nxt is None else nxt))
            c.assign(assignment)
            while not self._stop.is_set():
                msgs = c.consume(500, 0.05)
                changes: dict[str, RunView | None] = {}  # the last of each run; None: deleted (retention)
                offsets: dict[int, int] = {}
                for m in msgs:
                    if m.error():
                        continue
                    offsets[m.partition()] = m.offset() + 1
                    if m.value() is None:
                        if m.key():
                            changes[m.key().decode()] = None
                        continue
                    try:
                        v = RunView.model_validate_json(m.value())
                    except ValueError:
                        log.warning("run views: undecodable record at %s/%s", m.partition(), m.offset())
                        continue
                    changes[v.run_id] = v
                if offsets:
                    self.store.apply([v for v in changes.values() if v is not None], offsets,
                                     deleted=[run_id for run_id, v in changes.items() if v is None])
        except Exception:  # pragma: no cover - surfaced in logs; the API keeps serving what it has
            log.exception("run views: follower stopped")
        finally:
            c.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.store.close()
