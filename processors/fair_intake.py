"""Per-partition intake queues served in turn, so one partition's flood cannot hold back another's records. Pure.

faust hands an agent one FIFO of the records of every partition it reads: a quiet tenant's
record fetched behind a few hundred records of a flooded partition waits for all of them
(B4: seconds). The processor's agents instead move each record at once into its partition's
queue here, and handle one record of each partition with records queued in turn (round
robin). A quiet partition's record then waits for at most one record of each busy
partition.

Within a partition, records go into lanes. Lane ``RESULTS`` (the function processor:
results of runs that have started — step outcomes, run timers, heartbeats, resolved waits,
cancels) takes every other turn while there is new work, so a burst of triggers does not
hold back the results that free the window ("finish what you started"). New work goes into
lanes named by the caller (``processors/intake_lanes.py``: one per concurrency key of a
function, one per replay, ...) that take turns among themselves, so one key's burst of
triggers does not hold back another key's trigger either. Lanes the caller marks as
background (a replay's) are served only when no other lane of new work has records: a
replay's chunk waits behind live work, never live work behind it. Each lane keeps offset order;
records are handled out of offset order across lanes, so the caller acks them in offset
order through ``processors/ordered_acks.py`` (faust's commit can pass a record not acked).

Memory is bounded by pausing: when a partition holds ``cap`` records, :meth:`put` asks the
caller to pause fetching it; when it is down to ``cap // 2``, :meth:`take` asks to resume it.
No I/O here: the caller pauses and resumes the consumer, and acks a record once handled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

P = TypeVar("P", bound=Hashable)
R = TypeVar("R")

DEFAULT_CAP = 64  # records queued per partition before its fetching pauses (and the most one poll hands over)


RESULTS = None  # the lane of results of started runs; any other hashable names a lane of new work


def _never(_lane: Hashable) -> bool:
    return False


class _Lanes(Generic[R]):
    """One partition's records: the results lane, and lanes of new work taking turns
    (background lanes only when no other has records)."""

    __slots__ = ("first", "rest", "turns", "later", "background", "n", "results_turn")

    def __init__(self, background: Callable[[Hashable], bool] = _never) -> None:
        self.first: deque[R] = deque()
        self.rest: dict[Hashable, deque[R]] = {}
        self.turns: deque[Hashable] = deque()  # lanes of new work with records, next first
        self.later: deque[Hashable] = deque()  # background lanes with records, next first
        self.background = background
        self.n = 0
        self.results_turn = True

    def __len__(self) -> int:
        return self.n

    def put(self, lane: Hashable, record: R) -> None:
        self.n += 1
        if lane is RESULTS:
            self.first.append(record)
            return
        q = self.rest.get(lane)
        if q is None:
            q = self.rest[lane] = deque()
            (self.later if self.background(lane) else self.turns).append(lane)
        q.append(record)

    def take(self) -> R:
        self.n -= 1
        if self.first and (self.results_turn or not (self.turns or self.later)):
            self.results_turn = False
            return self.first.popleft()
        self.results_turn = True
        turns = self.turns or self.later
        lane = turns.popleft()
        q = self.rest[lane]
        record = q.popleft()
        if q:
            turns.append(lane)
        else:
            del self.rest[lane]
        return record


@dataclass
class FairIntake(Generic[P, R]):
    cap: int = DEFAULT_CAP
    background: Callable[[Hashable], bool] = _never  # lanes of new work served only when no other has records
    queues: dict[P, _Lanes[R]] = field(default_factory=dict)
    turns: deque[P] = field(default_factory=deque)  # partitions with queued records, next first
    paused: set[P] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.cap < 2:
            raise ValueError(f"cap must be at least 2, got {self.cap}")

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def __bool__(self) -> bool:
        return bool(self.turns)  # a partition is in turn while it has records queued

    def put(self, partition: P, record: R, lane: Hashable = "") -> P | None:
        """Queue a record in one of the partition's lanes (``RESULTS``, or a lane of new
        work); returns the partition while its fetching should be paused (every time it is
        at or over the cap: something else may have resumed it, and pausing is idempotent)."""
        q = self.queues.get(partition)
        if q is None:
            q = self.queues[partition] = _Lanes(self.background)
        if not q:
            self.turns.append(partition)
        q.put(lane, record)
        if len(q) >= self.cap:
            self.paused.add(partition)
            return partition
        return None

    def take(self) -> tuple[R, P | None] | None:
        """The next record in turn (None when nothing is queued), and the partition to resume
        fetching, if taking it brought a paused partition down to half the cap."""
        if not self.turns:
            return None
        partition = self.turns.popleft()
        q = self.queues[partition]
        record = q.take()
        if q:
            self.turns.append(partition)
        else:
            del self.queues[partition]
        if partition in self.paused and len(q) <= self.cap // 2:
            self.paused.discard(partition)
            return record, partition
        return record, None

    def clear(self) -> int:
        """Forget every queued record (a rebalance: faust reads them again from the last
        commit) and every pause; returns how many were dropped."""
        n = len(self)
        self.queues.clear()
        self.turns.clear()
        self.paused.clear()
        return n
