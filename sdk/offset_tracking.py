"""The worker's bookkeeping, pure: which offsets may be committed, which leases need a heartbeat.

No Kafka and no clock here: the worker passes offsets and monotonic milliseconds in.

Offsets. Jobs of one partition start in offset order but finish in any order. An offset may
be committed only when every job started before it in its partition is done (its outcome
acknowledged), so :class:`OffsetTracker` keeps, per partition, the offsets started and not
yet committed past, in start order, and answers each ``done`` with the next offset to
commit (last of the contiguous done prefix + 1) or ``None``. Contiguity follows the started
offsets, not ``offset + 1``: a topic may skip offsets (transaction markers, compaction).

Leases. A job with ``lease_ms > 0`` is re-dispatched by the engine after ``lease_ms`` without
word from the worker; :func:`due_heartbeats` says which jobs are due a heartbeat: those
whose last heartbeat (or start) is at least ``lease_ms // 3`` ago.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class _Partition:
    started: deque[int] = field(default_factory=deque)  # start order; everything before was committed past
    running: set[int] = field(default_factory=set)  # started, not done
    done: set[int] = field(default_factory=set)  # done, waiting for an earlier offset


class OffsetTracker:
    """Per partition: the next offset to commit, given jobs that finish out of order.

    Offsets start in increasing order within a partition. A lower or repeated ``started``
    offset means the consumer went back (a seek, or the partition came back after a
    rebalance): the partition starts over from it. ``done`` for an offset that is not
    running (unknown, already done, or forgotten) changes nothing and returns ``None``.
    """

    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def started(self, partition: int, offset: int) -> None:
        state = self._partitions.get(partition)
        if state is None or (state.started and offset <= state.started[-1]):
            state = self._partitions[partition] = _Partition()
        state.started.append(offset)
        state.running.add(offset)

    def done(self, partition: int, offset: int) -> int | None:
        """Mark ``offset`` done; return the next offset to commit if it advanced, else ``None``."""
        state = self._partitions.get(partition)
        if state is None or offset not in state.running:
            return None
        state.running.discard(offset)
        state.done.add(offset)
        last: int | None = None
        while state.started and state.started[0] in state.done:
            last = state.started.popleft()
            state.done.discard(last)
        return None if last is None else last + 1

    def forget(self, partition: int) -> None:
        """The partition was revoked: drop its state (later ``done`` calls for it are ignored)."""
        self._partitions.pop(partition, None)

    def running(self, partition: int) -> int:
        """How many jobs of ``partition`` are started and not done."""
        state = self._partitions.get(partition)
        return 0 if state is None else len(state.running)


class LeaseClock(NamedTuple):
    lease_ms: int  # 0: the job has no lease, it needs no heartbeat
    last_beat_ms: int  # monotonic ms of the job's start or of its last heartbeat


def heartbeat_interval_ms(lease_ms: int) -> int:
    return lease_ms // 3


def due_heartbeats(leases: Mapping[K, LeaseClock], now_ms: int) -> list[K]:
    """The jobs due a heartbeat at monotonic instant ``now_ms``, in the mapping's order."""
    return [key for key, lease in leases.items()
            if lease.lease_ms > 0 and now_ms - lease.last_beat_ms >= heartbeat_interval_ms(lease.lease_ms)]
