"""Acks handed to faust in offset order per partition, whatever order records were handled in. Pure.

The processor's intake (``processors/fair_intake.py``) handles a partition's records out of
offset order: lanes take turns. faust's commit does not protect against that. It commits
the first run of consecutive acked offsets, and it checks that run against the last commit
only loosely:

- it accepts a run that starts one past the committed offset, so offset ``C`` not acked and
  ``C+1..`` acked commits past ``C``;
- it does not check at all while it knows no committed offset (a new partition, or right
  after a rebalance revoked it).

A crash after such a commit loses record ``C``: the next owner starts reading after it. So a
record's ack waits here until every record before it in its partition (in delivery order,
which is offset order) has been handled; :meth:`OrderedAcks.handled` returns the records
that may be acked now, oldest first.

:meth:`OrderedAcks.clear` forgets everything: faust clears its own queues at a rebalance and
then reads again from the last commit, so a record handled before that point but not yet
acked is read and handled again (every handler is idempotent), never acked out of turn.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class Tracked(Generic[K, R]):
    """A record waiting for its ack; :meth:`OrderedAcks.track` hands it out."""

    __slots__ = ("key", "record", "done", "generation")

    def __init__(self, key: K, record: R, generation: int) -> None:
        self.key = key
        self.record = record
        self.done = False
        self.generation = generation


class OrderedAcks(Generic[K, R]):
    def __init__(self) -> None:
        self._lines: dict[K, deque[Tracked[K, R]]] = {}
        self._generation = 0

    def __len__(self) -> int:
        """Records tracked and not yet ackable (queued, being handled, or behind one that is)."""
        return sum(len(line) for line in self._lines.values())

    def track(self, key: K, record: R) -> Tracked[K, R]:
        """Note a record as delivered; call in delivery order within ``key`` (a partition)."""
        entry = Tracked(key, record, self._generation)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = deque()
        line.append(entry)
        return entry

    def handled(self, entry: Tracked[K, R]) -> list[R]:
        """Mark a record handled; returns the records of its partition that may be acked now,
        in offset order (none while an earlier record is still unhandled, and none for a
        record tracked before the last :meth:`clear`)."""
        entry.done = True
        if entry.generation != self._generation:
            return []
        line = self._lines.get(entry.key)
        ready: list[R] = []
        while line and line[0].done:
            ready.append(line.popleft().record)
        if line is not None and not line:
            del self._lines[entry.key]
        return ready

    def clear(self) -> int:
        """Forget every tracked record (a rebalance: faust reads them again from the last
        commit); returns how many were forgotten."""
        n = len(self)
        self._lines = {}
        self._generation += 1
        return n
