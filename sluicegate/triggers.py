"""Triggers: what starts a function (reference §12). Validated when the function is defined.

* ``TriggerEvent(event, if_exp=None)`` — an exact name (``shop/order.created``) or a
  trailing wildcard after ``/`` or ``.`` (``shop/*``, ``shop/order.*``); no other ``*``.
  ``if_exp`` is a CEL boolean over ``event``, checked before a run is created; an error
  while evaluating it counts as false.
* ``TriggerCron(cron, jitter_ms=0)`` — 5-field cron, UTC unless prefixed ``TZ=Area/City ``
  (or ``CRON_TZ=``); ``jitter_ms`` is 0 or 1 s–5 min. A 6th field (seconds, last) is
  accepted for fine-grained schedules.
* At most 10 triggers per function; duplicates (and the same cron with another jitter) are
  rejected.
"""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import limits
from .expressions import evaluate, validate_field

MAX_TRIGGERS = 10
MAX_CRON_LENGTH = 255
MAX_CRON_JITTER_MS = 5 * 60 * 1000
_TZ_PREFIX = re.compile(r"^(?:CRON_TZ|TZ)=(\S+)\s+(.*)$")


class TriggerEvent(BaseModel):
    """Start a run for every event with this name (or prefix, ending in ``/*`` or ``.*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event: str = Field(min_length=1, max_length=limits.MAX_TRIGGER_NAME_LENGTH)
    if_exp: str | None = Field(None, max_length=4096)

    @field_validator("event")
    @classmethod
    def _wildcard(cls, v: str) -> str:
        star = v.find("*")
        if star == -1:
            return v
        if star != len(v) - 1 or len(v) < 3 or v[-2] not in "/.":
            raise ValueError("a wildcard is only allowed as a trailing '*' after '/' or '.', "
                             "as in 'app/*' or 'app/user.*'")
        return v

    @field_validator("if_exp")
    @classmethod
    def _expression(cls, v: str | None) -> str | None:
        return validate_field(v, "if_exp")

    @property
    def prefix(self) -> str | None:
        """The name prefix of a wildcard trigger, else None."""
        return self.event[:-1] if self.event.endswith("*") else None

    def matches(self, name: str, payload: dict[str, Any]) -> bool:
        prefix = self.prefix
        if prefix is None and name != self.event:
            return False
        if prefix is not None and not name.startswith(prefix):
            return False
        if self.if_exp is None:
            return True
        try:
            return evaluate(self.if_exp, {"event": payload}) is True
        except Exception:  # an error in `if` means "does not match" (reference §12)
            return False


class TriggerCron(BaseModel):
    """Start a run on a schedule (the run's event is ``sluicegate/scheduled.timer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str = Field(min_length=1, max_length=MAX_CRON_LENGTH)
    jitter_ms: int = Field(0, ge=0, le=MAX_CRON_JITTER_MS)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from croniter import croniter

        tz, expr = split_timezone(v)
        if tz is not None:
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {tz!r} (use an IANA name such as Europe/Paris)") from None
        if len(expr.split()) not in (5, 6):
            raise ValueError("use the 5-field syntax: minute hour day-of-month month day-of-week "
                             "(a 6th field, seconds, is accepted for fine-grained schedules)")
        if not croniter.is_valid(expr):
            raise ValueError(f"{expr!r} is not a valid cron expression")
        return v

    @field_validator("jitter_ms")
    @classmethod
    def _jitter(cls, v: int) -> int:
        if 0 < v < 1000:
            raise ValueError("jitter is 0 or between 1 s and 5 min")
        return v


def split_timezone(cron: str) -> tuple[str | None, str]:
    """``"TZ=Europe/Paris 0 12 * * 5"`` -> ``("Europe/Paris", "0 12 * * 5")``."""
    m = _TZ_PREFIX.match(cron.strip())
    return (m.group(1), m.group(2).strip()) if m else (None, cron.strip())


class Triggers(BaseModel):
    """A function's triggers, validated together."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    events: list[TriggerEvent] = Field(default_factory=list)
    crons: list[TriggerCron] = Field(default_factory=list)

    @model_validator(mode="after")
    def _together(self) -> "Triggers":
        total = len(self.events) + len(self.crons)
        if not 1 <= total <= MAX_TRIGGERS:
            raise ValueError(f"a function has 1 to {MAX_TRIGGERS} triggers, got {total}")
        seen = [(t.event, t.if_exp) for t in self.events]
        if len(set(seen)) != len(seen):
            raise ValueError("duplicate event trigger")
        crons = [split_timezone(c.cron) for c in self.crons]
        if len(set(crons)) != len(crons):
            raise ValueError("duplicate cron trigger (the same schedule with another jitter counts too)")
        return self

    @classmethod
    def of(cls, trigger: Any) -> "Triggers":
        """From what a user passes: a name, a trigger, or a list of them."""
        items = trigger if isinstance(trigger, list) else [trigger]
        events: list[TriggerEvent] = []
        crons: list[TriggerCron] = []
        for item in items:
            if isinstance(item, str):
                events.append(TriggerEvent(event=item))
            elif isinstance(item, TriggerEvent):
                events.append(item)
            elif isinstance(item, TriggerCron):
                crons.append(item)
            elif isinstance(item, dict):
                (crons if "cron" in item else events).append(
                    TriggerCron(**item) if "cron" in item else TriggerEvent(**item))  # type: ignore[arg-type]
            else:
                raise ValueError(f"not a trigger: {item!r}")
        return cls(events=events, crons=crons)
