"""Errors user code raises (or sees) and the step interrupt."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any


class NonRetriableError(Exception):
    """Raise to fail a step (or the run) at once, without retries."""


class RetryAfterError(Exception):
    """Raise to retry no sooner than ``retry_after`` (ms, timedelta or datetime).

    The engine clamps the delay to [1 s, 24 h]; the attempt still counts.
    """

    def __init__(self, message: str, retry_after: int | dt.timedelta | dt.datetime) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def retry_after_ms(self) -> int:
        ra = self.retry_after
        if isinstance(ra, dt.timedelta):
            return int(ra.total_seconds() * 1000)
        if isinstance(ra, dt.datetime):
            when = ra if ra.tzinfo else ra.replace(tzinfo=dt.timezone.utc)
            return max(0, int(when.timestamp() * 1000 - time.time() * 1000))
        return int(ra)


class StepError(Exception):
    """A step failed for good; raised where user code called it on later calls.

    Uncaught, it fails the run without further retries.
    """

    def __init__(self, step_id: str, name: str, message: str, stack: str | None = None) -> None:
        super().__init__(f"step {step_id!r} failed: {name}: {message}")
        self.step_id = step_id
        self.name = name
        self.error_message = message
        self.stack = stack


class StepInterrupt(BaseException):
    """Stops the function after the one step this call ran.

    A ``BaseException`` so that user code's ``except Exception`` cannot swallow it.
    """

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__("step interrupt")
        self.outcome = outcome
