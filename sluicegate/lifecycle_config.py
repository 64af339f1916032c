"""Run lifecycle configuration (reference §9, §10): ``cancel_on`` entries and timeouts.

* ``Cancel(event, match=None, if_exp=None, timeout=None)`` — cancel a run when an event of
  that name arrives after the run's trigger. ``match="data.order_id"`` is sugar for
  ``if_exp="event.data.order_id == async.data.order_id"`` (``event`` is the run's trigger,
  ``async`` the candidate); not both. The entry lasts ``timeout`` (default 365 days) from
  the run's creation. At most 5 per function.
* ``Timeouts(start=None, finish=None)`` — ``start``: from the run's creation to its first
  step being dispatched (time blocked by concurrency, throttle or the window counts);
  ``finish``: from that first dispatch to the run's end. Either expiry cancels the run; a
  step executing then finishes, but its result is discarded.

Durations are ms, ``timedelta`` or strings such as ``"30s"`` (:mod:`sluicegate.durations`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import limits
from .durations import DAY_MS, MAX_SLEEP_MS, to_ms
from .expressions import InvalidExpression, match_expression, validate_field

MAX_CANCEL_ON = 5
DEFAULT_CANCEL_TIMEOUT_MS = 365 * DAY_MS


class Cancel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event: str = Field(min_length=1, max_length=limits.MAX_TRIGGER_NAME_LENGTH)
    match: str | None = Field(None, max_length=512)
    if_exp: str | None = Field(None, max_length=4096)
    timeout_ms: int = Field(DEFAULT_CANCEL_TIMEOUT_MS, ge=1000, le=MAX_SLEEP_MS,
                            description="how long after the run's creation it applies")

    @model_validator(mode="before")
    @classmethod
    def _timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout" in data:
            data = dict(data)
            value = data.pop("timeout")
            if value is not None:
                data["timeout_ms"] = to_ms(value, field="timeout", minimum=1000, maximum=MAX_SLEEP_MS)
        return data

    @field_validator("match")
    @classmethod
    def _match(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                match_expression(v)
            except InvalidExpression as exc:
                raise ValueError(exc.message.removeprefix("match: ")) from None
        return v

    @field_validator("if_exp")
    @classmethod
    def _if(cls, v: str | None) -> str | None:
        return validate_field(v, "if_exp")

    @model_validator(mode="after")
    def _one_condition(self) -> "Cancel":
        if self.match is not None and self.if_exp is not None:
            raise ValueError("give match or if_exp, not both")
        return self

    def __init__(self, event: str | None = None, **kw: Any) -> None:
        if event is not None:
            kw["event"] = event
        super().__init__(**kw)

    def expression(self) -> str | None:
        """The condition as CEL over ``event`` (the trigger) and ``async`` (the candidate)."""
        if self.match is not None:
            return f"event.{self.match} == async.{self.match}"
        return self.if_exp


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start_ms: int | None = Field(None, ge=1000, le=MAX_SLEEP_MS, description="creation → first dispatch")
    finish_ms: int | None = Field(None, ge=1000, le=MAX_SLEEP_MS, description="first dispatch → end")

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for name in ("start", "finish"):
                if name in data:
                    value = data.pop(name)
                    if value is not None:
                        data[f"{name}_ms"] = to_ms(value, field=f"timeouts.{name}", minimum=1000,
                                                   maximum=MAX_SLEEP_MS)
        return data


def check_cancel_on(entries: list[Cancel]) -> list[Cancel]:
    if len(entries) > MAX_CANCEL_ON:
        raise ValueError(f"cancel_on: at most {MAX_CANCEL_ON} entries, got {len(entries)}")
    return entries
