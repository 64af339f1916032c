"""A function definition: typed config (pydantic) plus the user's handler."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import limits
from ..expressions import InvalidExpression, compile_expression
from ..ids import ID_PATTERN, ID_RULE
from ..flow_config import Batch, Concurrency, Debounce, Fairness, FlowControl, Priority, RateLimit, Singleton, Throttle
from ..triggers import TriggerCron, TriggerEvent, Triggers
from ..wire import FunctionDefinition


__all__ = ["Batch", "Concurrency", "Debounce", "Fairness", "Function", "FunctionConfig", "Priority", "RateLimit",
           "Retries", "Singleton", "Throttle", "TriggerCron", "TriggerEvent"]


class Retries(BaseModel):
    """Retry policy: ``attempts`` is the number of retries (so attempts + 1 calls at most).

    ``backoff_ms`` replaces the default schedule (15 s, 30 s, 1 m, ... 2 h) and
    ``jitter_ms`` its 0–30 s jitter — useful for tests; production code rarely needs them.
    """

    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(limits.DEFAULT_RETRIES, ge=0, le=limits.MAX_RETRIES)
    backoff_ms: list[int] | None = Field(None, min_length=1, max_length=32)
    jitter_ms: int | None = Field(None, ge=0, le=3_600_000)

    @field_validator("backoff_ms")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(ms < 0 or ms > limits.MAX_RETRY_AFTER_MS for ms in v):
            raise ValueError(f"each delay must be between 0 and {limits.MAX_RETRY_AFTER_MS} ms")
        return v


class FunctionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=limits.MAX_ID_LENGTH)
    name: str | None = None
    trigger: Triggers
    retries: Retries | int = Retries()
    flow: FlowControl = FlowControl()

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
            backoff_ms=policy.backoff_ms, backoff_jitter_ms=policy.jitter_ms,
        )
        d.version = d.compute_version()
        return d

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)
