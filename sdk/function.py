"""A function definition: typed config (pydantic, retry policy included) plus the user's handler."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .. import limits
from ..expressions import InvalidExpression, compile_expression
from ..ids import ID_PATTERN, ID_RULE
from ..flow_config import Batch, Concurrency, Debounce, Fairness, FlowControl, Priority, RateLimit, Singleton, Throttle
from ..lifecycle_config import MAX_CANCEL_ON, Cancel, Timeouts
from ..triggers import TriggerCron, TriggerEvent, Triggers
from ..wire import FunctionDefinition


__all__ = ["Batch", "Cancel", "Timeouts", "Concurrency", "Debounce", "Exponential", "Fairness", "Fixed", "Function", "FunctionConfig",
           "Priority", "RateLimit", "Retries", "Singleton", "Throttle", "TriggerCron", "TriggerEvent"]

MAX_BACKOFF_MS = limits.MAX_RETRY_AFTER_MS  # any one delay: 24 h
MAX_JITTER_MS = 3_600_000
MAX_BACKOFF_FACTOR = 10
MAX_BACKOFF_TABLE = 32


def _limit_text(ms: int) -> str:
    return f"{ms // 3_600_000} h ({ms} ms)" if ms % 3_600_000 == 0 else f"{ms} ms"


def _duration_ms(value: object, field: str, *, high: int) -> int:
    """``value`` (int ms or timedelta) as whole milliseconds in [0, high]; errors name ``field``."""
    if isinstance(value, dt.timedelta):
        ms = value // dt.timedelta(milliseconds=1)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value
    else:
        raise ValueError(f"{field} must be whole milliseconds (int) or a datetime.timedelta, got {value!r}")
    if not 0 <= ms <= high:
        raise ValueError(f"{field} must be between 0 and {_limit_text(high)}, got {ms} ms")
    return ms


class _Policy(BaseModel):
    """Durations are stored as ``*_ms`` ints; the constructor takes the short names
    (``initial=``, ``max=``, ``delay=``) as aliases, and the ``*_ms`` names as well."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> object:
        name = info.field_name or ""
        if not name.endswith("_ms"):
            return v
        return _duration_ms(v, cls.model_fields[name].alias or name, high=MAX_BACKOFF_MS)


class Exponential(_Policy):
    """After failed attempt ``n`` (0-based) wait ``min(max, initial * factor ** n)``.

    ``Exponential(initial=timedelta(seconds=1), factor=2, max=timedelta(minutes=5))``: 1 s,
    2 s, 4 s, … 256 s, then 5 min. ``initial`` and ``max`` are int ms or timedeltas, each
    0–24 h, ``initial <= max``; ``factor`` 1–10.
    """

    kind: Literal["exponential"] = "exponential"
    initial_ms: int = Field(alias="initial")
    factor: float = 2.0
    max_ms: int = Field(alias="max")

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: float) -> float:
        if not 1 <= v <= MAX_BACKOFF_FACTOR:  # also rejects NaN
            raise ValueError(f"factor must be between 1 and {MAX_BACKOFF_FACTOR}, got {v}")
        return v

    @model_validator(mode="after")
    def _initial_within_max(self) -> Exponential:
        if self.initial_ms > self.max_ms:
            raise ValueError(f"initial ({self.initial_ms} ms) must not exceed max ({self.max_ms} ms)")
        return self


class Fixed(_Policy):
    """The same ``delay`` (int ms or timedelta, 0–24 h) after every failed attempt."""

    kind: Literal["fixed"] = "fixed"
    delay_ms: int = Field(alias="delay")


class Retries(BaseModel):
    """Retry policy: ``attempts`` is the number of retries (so attempts + 1 calls at most).

    ``backoff`` — the delay after each failed attempt — is an :class:`Exponential` or
    :class:`Fixed` policy, or a table of 1–32 delays (int ms or timedeltas, each 0–24 h;
    failed attempt ``n`` waits ``table[min(n, len - 1)]``). None keeps the default schedule
    (15 s, 30 s, 1 m, 2 m, 5 m, 10 m, 20 m, 40 m, 1 h, then 2 h). ``jitter`` (int ms or
    timedelta, 0–1 h) is the most added to every delay; None means 0 with an Exponential or
    Fixed policy and 30 s with a table or the default schedule.
    ``RetryAfterError`` still overrides the delay of the attempt it ends.

    ``backoff_ms=[...]`` and ``jitter_ms=...`` (the names before ``backoff`` existed) are
    accepted too: ``backoff_ms`` is a table; ``jitter_ms`` is the field ``jitter`` sets.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    attempts: int = Field(limits.DEFAULT_RETRIES, ge=0, le=limits.MAX_RETRIES)
    backoff: Exponential | Fixed | list[int] | None = None
    jitter_ms: int | None = Field(None, alias="jitter")

    @model_validator(mode="before")
    @classmethod
    def _legacy_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backoff_ms" in data:
            if "backoff" in data:
                raise ValueError("give backoff or backoff_ms (its older name), not both")
            data = {("backoff" if k == "backoff_ms" else k): v for k, v in data.items()}
        return data

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff(cls, v: object) -> object:
        if isinstance(v, (list, tuple)):
            if not 1 <= len(v) <= MAX_BACKOFF_TABLE:
                raise ValueError(f"backoff table must have between 1 and {MAX_BACKOFF_TABLE} delays, got {len(v)}")
            return [_duration_ms(ms, f"backoff[{i}]", high=MAX_BACKOFF_MS) for i, ms in enumerate(v)]
        if isinstance(v, dict):  # a policy from config data: by its kind, else by its keys
            fixed = v.get("kind") == "fixed" or ("kind" not in v and ("delay" in v or "delay_ms" in v))
            return (Fixed if fixed else Exponential).model_validate(v)
        if v is not None and not isinstance(v, (Exponential, Fixed)):
            raise ValueError(f"backoff must be Exponential(...), Fixed(...), a list of delays or None, got {v!r}")
        return v

    @field_validator("jitter_ms", mode="before")
    @classmethod
    def _jitter(cls, v: object) -> object:
        return None if v is None else _duration_ms(v, "jitter", high=MAX_JITTER_MS)

    @property
    def backoff_ms(self) -> list[int] | None:
        """The table, if ``backoff`` is one (what ``backoff_ms`` held before policies existed)."""
        return self.backoff if isinstance(self.backoff, list) else None

    def backoff_policy(self) -> dict[str, Any] | None:
        """``backoff`` in its wire form (``FunctionDefinition.backoff``) when it is a policy."""
        return self.backoff.model_dump() if isinstance(self.backoff, (Exponential, Fixed)) else None


class FunctionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=limits.MAX_ID_LENGTH)
    name: str | None = None
    trigger: Triggers
    retries: Retries | int = Retries()
    flow: FlowControl = FlowControl()
    cancel_on: list[Cancel] = Field(default_factory=list, max_length=MAX_CANCEL_ON)
    timeouts: Timeouts | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError(ID_RULE)
        return v

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: object) -> object:
        # a bare number is the retry count: check it now, like Retries(attempts=...)
        return Retries(attempts=v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("trigger", mode="before")
    @classmethod
    def _triggers(cls, v: Any) -> Any:
        return v if isinstance(v, Triggers) else Triggers.of(v)

    @field_validator("flow")
    @classmethod
    def _flow_expressions(cls, v: FlowControl) -> FlowControl:
        for field, source in v.expressions().items():
            try:
                compile_expression(source, field=field)
            except InvalidExpression as exc:
                raise ValueError(exc.message) from None
        return v

    @property
    def triggers(self) -> list[TriggerEvent]:
        return self.trigger.events

    @property
    def retry_policy(self) -> Retries:
        return self.retries if isinstance(self.retries, Retries) else Retries(attempts=self.retries)


class Function:
    """A registered function: its config and handler ``(ctx, step) -> result``."""

    def __init__(self, app_id: str, config: FunctionConfig, handler: Callable[..., Any]) -> None:
        self.app_id = app_id
        self.config = config
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)

    @property
    def id(self) -> str:
        return self.config.id

    def definition(self) -> FunctionDefinition:
        policy = self.config.retry_policy
        d = FunctionDefinition(
            app_id=self.app_id, function_id=self.config.id, name=self.config.name or self.config.id,
            triggers=list(self.config.trigger.events), crons=list(self.config.trigger.crons),
            flow=self.config.flow if self.config.flow != FlowControl() else None, retries=policy.attempts,
            backoff=policy.backoff_policy(), backoff_ms=policy.backoff_ms, backoff_jitter_ms=policy.jitter_ms,
            cancel_on=list(self.config.cancel_on), timeouts=self.config.timeouts,
        )
        d.version = d.compute_version()
        return d

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)
