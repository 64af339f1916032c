"""The client: send events straight to Kafka, define functions, start a worker."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from ..events import validate_events
from ..ids import check_id
from ..kafka_clients import SyncProducer
from ..settings import Settings
from ..flow_config import Batch, Concurrency, Debounce, Fairness, FlowControl, Priority, RateLimit, Singleton, Throttle
from ..triggers import TriggerCron, TriggerEvent
from ..lifecycle_config import Cancel, Timeouts
from ..system_events import CANCELLED_EVENT, FAILED_EVENT
from .function import Function, FunctionConfig, Retries


if TYPE_CHECKING:
    from .worker import Worker


class Sluicegate:
    """One app's handle on Sluicegate.

    >>> sg = Sluicegate(app_id="shop")
    >>> @sg.function(id="welcome", trigger=TriggerEvent(event="user.created"))
    ... def welcome(ctx, step): ...
    >>> sg.send({"name": "user.created", "data": {"id": 1}})
    """

    def __init__(self, app_id: str, *, bootstrap_servers: str | None = None,
                 settings: Settings | None = None) -> None:
        base = settings or Settings()
        if bootstrap_servers:
            base = base.model_copy(update={"bootstrap_servers": bootstrap_servers})
        self.settings = base
        self.app_id = check_id(app_id, field="app_id")
        self.functions: dict[str, Function] = {}
        self._producer: SyncProducer | None = None

    # -- events -----------------------------------------------------------------------------

    def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Validate and produce events (acks=all, idempotent); return their ids once acknowledged."""
        records = validate_events(events, self.app_id, max_event_bytes=self.settings.max_event_bytes)
        if self._producer is None:
            self._producer = SyncProducer(self.settings.bootstrap_servers)
        self._producer.send_many(self.settings.events_topic, [(r.app_id, r.dumps()) for r in records],
                                 self.settings.partitions)
        return [r.id for r in records]

    # -- functions --------------------------------------------------------------------------

    def function(self, *, id: str,
                 trigger: str | TriggerEvent | TriggerCron | list[str | TriggerEvent | TriggerCron],
                 retries: Retries | int = Retries(), name: str | None = None,
                 rate_limit: RateLimit | None = None, debounce: Debounce | None = None,
                 batch: Batch | None = None, idempotency: str | None = None,
                 singleton: Singleton | None = None,
                 concurrency: int | Concurrency | list[Concurrency] | None = None,
                 throttle: Throttle | None = None, priority: Priority | None = None,
                 fairness: Fairness | None = None, cancel_on: list[Cancel] | None = None,
                 timeouts: Timeouts | None = None, on_failure: Callable[..., Any] | None = None,
                 on_cancel: Callable[..., Any] | None = None) -> Callable[[Callable[..., Any]], Function]:
        """Decorator: register ``handler(ctx, step)`` (sync or async) as a function of this app.

        Invalid configuration (a bad id, trigger or expression, an incompatible combination
        of flow controls) raises ``pydantic.ValidationError`` naming the field, here, at
        definition time.

        ``on_failure`` / ``on_cancel``: a handler ``(ctx, step)`` registered as its own
        function ``<id>-failure`` / ``<id>-cancel``, triggered by this function's
        ``sluicegate/function.failed`` / ``.cancelled`` event (``ctx.event``; the original
        trigger is ``ctx.event["data"]["event"]``, the error ``ctx.event["data"]["error"]``).
        It has no flow control and one retry.
        """
        if concurrency is None or concurrency == 0:
            limits: list[Concurrency] = []
        elif isinstance(concurrency, int) and not isinstance(concurrency, bool):
            limits = [Concurrency(limit=concurrency)]  # a bare number: one function-wide limit
        elif isinstance(concurrency, Concurrency):
            limits = [concurrency]
        else:
            limits = list(concurrency)
        flow = FlowControl(rate_limit=rate_limit, debounce=debounce, batch=batch,
                           idempotency=idempotency, singleton=singleton, concurrency=limits,
                           throttle=throttle, priority=priority, fairness=fairness)
        config = FunctionConfig(id=id, name=name, trigger=trigger, retries=retries, flow=flow,
                                cancel_on=list(cancel_on or []), timeouts=timeouts)
        handlers = {}
        for suffix, event, handler in (("failure", FAILED_EVENT, on_failure), ("cancel", CANCELLED_EVENT, on_cancel)):
            if handler is None:
                continue
            if not callable(handler):
                raise ValueError(f"on_{suffix}: expected a function (ctx, step), got {handler!r}")
            composite = f"{self.app_id}-{config.id}"
            handlers[suffix] = (FunctionConfig(
                id=f"{config.id}-{suffix}", name=f"{config.name or config.id} ({suffix})",
                trigger=TriggerEvent(event=event, if_exp=f"event.data.function_id == {json.dumps(composite)}"),
                retries=1), handler)

        def decorate(handler: Callable[..., Any]) -> Function:
            if config.id in self.functions:
                raise ValueError(f"function id {config.id!r} is defined twice in app {self.app_id!r}")
            for extra, _ in handlers.values():
                if extra.id in self.functions:
                    raise ValueError(f"function id {extra.id!r} is defined twice in app {self.app_id!r}")
            fn = Function(self.app_id, config, handler)
            self.functions[config.id] = fn
            for extra, extra_handler in handlers.values():
                self.functions[extra.id] = Function(self.app_id, extra, extra_handler)
            return fn

        return decorate

    def worker(self, **kwargs: Any) -> "Worker":
        from .worker import Worker

        return Worker(self, **kwargs)

    def close(self) -> None:
        """Deliver what is pending and release the producer (it reconnects on the next send)."""
        if self._producer is not None:
            self._producer.flush()
            self._producer = None
