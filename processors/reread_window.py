"""Which records of a partition may have been handled before this process took it over.

After a crash or a rebalance a partition is read again from its last commit, and a command
handled by the previous owner can find its state already written (RocksDB keeps what the
dead process wrote) while the outputs it produced died with the process. The processor
sends such a run's standing outputs again (``run_decisions.standing_outputs``), but only for
records read again: those below the partition's end offset when this process took it over.
A duplicate at a later offset is an ordinary one (a result sent twice, a late outcome of a
cancelled run) whose outputs went out the first time, so nothing is sent again for it.

Until the end offsets are known (just after a rebalance, or when asking for them failed)
every record counts as read again: sending twice is harmless, missing once loses a wait.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping


class RereadWindow:
    """End offsets of the partitions this process owns, as they were when it took them over."""

    def __init__(self) -> None:
        self._ends: dict[Hashable, int] | None = None  # None: not known yet

    def reset(self) -> None:
        """A rebalance began or completed: nothing is known until :meth:`learn`."""
        self._ends = None

    def learn(self, ends: Mapping[Hashable, int]) -> None:
        """The end offsets (the offset the next record will get) at the takeover."""
        self._ends = dict(ends)

    def covers(self, tp: Hashable, offset: int) -> bool:
        """Whether the record at ``offset`` of ``tp`` may have been handled before."""
        if self._ends is None:
            return True
        end = self._ends.get(tp)
        return end is None or offset < end
