"""Timer input and actions shared by the decisions that keep their own timers (debounce,
batching): the caller stores a ``SetTimer`` in its durable timer table, removes it on
``CancelTimer``, and feeds ``TimerFired`` back when it is due (the decision re-checks it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TimerFired:
    timer_id: str


@dataclass(frozen=True)
class SetTimer:
    kind: Literal["set_timer"] = field(default="set_timer", init=False)
    timer_id: str
    due_ms: int


@dataclass(frozen=True)
class CancelTimer:
    kind: Literal["cancel_timer"] = field(default="cancel_timer", init=False)
    timer_id: str
    due_ms: int
