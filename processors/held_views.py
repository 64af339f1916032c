"""Run views held back for a moment, so a run that changes again soon sends one view, not two.

Every change of a run used to publish its view to ``sg.runs`` at once: two or three views per
run (created, started, ended), a quarter of the function processor's time on a one-step run
(sending no views at all: 183 -> ~230 runs/s). Views are the API's read model, eventually
consistent; the run's state in the ``runs`` table is what the engine acts on. So a view waits
here up to ``hold_ms``; a later change of the same run replaces it (keeping the first one's
place and time), and a run that starts and ends within the hold sends one view.

Every held view goes out before the processor commits the offsets of the records it follows
from (``faust_tuning.before_each_flush``), so a crash can lose only views whose records are
read again, and a record read again sends its run's view again. ``max_held`` bounds the
memory: beyond it the oldest go out at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S")

HOLD_MS = 100
MAX_HELD = 5_000


@dataclass
class HeldViews(Generic[S]):
    hold_ms: int = HOLD_MS
    max_held: int = MAX_HELD
    # run id -> (partition, latest state, when its first held view was held); oldest first
    held: dict[Hashable, tuple[int, S, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hold_ms < 0:
            raise ValueError(f"hold_ms must be 0 or more, got {self.hold_ms}")
        if self.max_held < 1:
            raise ValueError(f"max_held must be at least 1, got {self.max_held}")

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, run_id: Hashable, partition: int, state: S, now_ms: int) -> None:
        """Hold the run's latest view; one already held keeps its place and its hold time."""
        before = self.held.get(run_id)
        self.held[run_id] = (partition, state, now_ms if before is None else before[2])

    def due(self, now_ms: int) -> list[tuple[Hashable, int, S]]:
        """Take the views held ``hold_ms`` or longer, and the oldest beyond ``max_held``."""
        out: list[tuple[Hashable, int, S]] = []
        for run_id, (partition, state, held_at) in self.held.items():
            if now_ms - held_at < self.hold_ms and len(self.held) - len(out) <= self.max_held:
                break  # oldest first: the rest were held later
            out.append((run_id, partition, state))
        for run_id, _p, _s in out:
            del self.held[run_id]
        return out

    def take_all(self) -> list[tuple[Hashable, int, S]]:
        """Every held view (before a commit), oldest first."""
        out = [(run_id, partition, state) for run_id, (partition, state, _at) in self.held.items()]
        self.held.clear()
        return out
