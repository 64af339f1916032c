"""Schedule-time flow-control configuration of a function (reference §4–7, 11, 12, 16).

These pydantic models cross every boundary: users build them with the SDK, workers publish
them in the function definition (``sg.registry``), processors decide with them. Durations
are whole milliseconds. Expressions (``key``, ``if_exp``) are CEL over ``event`` and are
compiled at registration (:mod:`sluicegate.expressions`), so a broken one is rejected with
its position before any event arrives.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

MAX_RATE_LIMIT_PERIOD_MS = DAY
MIN_DEBOUNCE_PERIOD_MS = SECOND
MAX_DEBOUNCE_PERIOD_MS = 7 * DAY
IDEMPOTENCY_PERIOD_MS = DAY
EVENT_DEDUP_PERIOD_MS = DAY
MIN_BATCH_SIZE = 2
MAX_BATCH_SIZE = 500
MIN_BATCH_TIMEOUT_MS = SECOND
MAX_BATCH_TIMEOUT_MS = 5 * MINUTE
MAX_BATCH_BYTES = 10 * 1024 * 1024


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Config):
    """At most ``limit`` runs per ``period_ms`` (per ``key`` value); excess events are dropped.

    ``mode="gcra"`` (Inngest's behaviour): GCRA with burst ``floor(limit / 10)``, so small
    limits admit evenly spaced single runs (``limit=5`` per day: one, then one every 4.8 h).
    ``mode="window"``: GCRA with burst = ``limit - 1`` (capacity ``limit``): up to ``limit``
    runs at once, then the capacity refills evenly over the period — what "N per window" users expect
    (inngest/inngest#1460).
    """

    limit: int = Field(gt=0, le=1_000_000)
    period_ms: int = Field(gt=0, le=MAX_RATE_LIMIT_PERIOD_MS)
    key: str | None = Field(None, max_length=1024)
    mode: Literal["gcra", "window"] = "gcra"


class Debounce(_Config):
    """Start one run after ``period_ms`` without a newer event (per ``key``); last event by
    ``ts`` wins. ``timeout_ms`` caps the total delay from the first event.
    ``deliver="all"`` hands the run every event of the window (bounded like a batch)."""

    period_ms: int = Field(ge=MIN_DEBOUNCE_PERIOD_MS, le=MAX_DEBOUNCE_PERIOD_MS)
    key: str | None = Field(None, max_length=1024)
    timeout_ms: int | None = Field(None, ge=MIN_DEBOUNCE_PERIOD_MS, le=MAX_DEBOUNCE_PERIOD_MS)
    deliver: Literal["last", "all"] = "last"
    max_events: int = Field(MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE,
                            description="deliver='all': the window's events kept (newest win)")


class Batch(_Config):
    """Group events into one run of up to ``max_size`` events, or whatever arrived within
    ``timeout_ms`` of the first, or 10 MiB (per ``key``). Events for which ``if_exp`` is
    false start a run of their own at once."""

    max_size: int = Field(ge=MIN_BATCH_SIZE, le=MAX_BATCH_SIZE)
    timeout_ms: int = Field(ge=MIN_BATCH_TIMEOUT_MS, le=MAX_BATCH_TIMEOUT_MS)
    key: str | None = Field(None, max_length=1024)
    if_exp: str | None = Field(None, max_length=4096)


class Singleton(_Config):
    """At most one run per ``key`` at a time. ``skip``: a new run is skipped while one runs;
    ``cancel``: the running one is cancelled for the new one; ``queue``: at most one run
    waits behind the running one, and a later one replaces the waiting one."""

    key: str | None = Field(None, max_length=1024)
    mode: Literal["skip", "cancel", "queue"] = "skip"


MAX_CONCURRENCY_LIMITS = 2
MAX_CONCURRENCY = 100_000
MIN_THROTTLE_PERIOD_MS = SECOND
MAX_THROTTLE_PERIOD_MS = 7 * DAY
PRIORITY_MAX_S = 43_200
MAX_FAIRNESS_WEIGHT = 100


class Concurrency(_Config):
    """At most ``limit`` steps executing at once (per ``key`` value; reference §2).

    ``scope``: ``fn`` counts this function's steps; ``app`` and ``account`` share one counter
    between every function that names the same key (each compares it with its own limit).
    ``per="run"`` holds the slot for the whole run, sleeps and waits included, instead of
    only while a step executes (inngest/inngest#2263).
    """

    limit: int = Field(ge=1, le=MAX_CONCURRENCY)
    key: str | None = Field(None, max_length=1024)
    scope: Literal["fn", "app", "account"] = "fn"
    per: Literal["step", "run"] = "step"

    @model_validator(mode="after")
    def _scoped_key(self) -> "Concurrency":
        if self.scope != "fn" and self.key is None:
            raise ValueError(f"concurrency.key is required with scope {self.scope!r} "
                             "(a fixed shared key is a quoted string, e.g. '\"openai\"')")
        return self


class Throttle(_Config):
    """At most ``limit`` run starts per ``period_ms`` (per ``key`` value), ``burst`` more at
    once from idle. Excess runs wait in their backlog; nothing is dropped (reference §3)."""

    limit: int = Field(ge=1, le=1_000_000)
    period_ms: int = Field(ge=MIN_THROTTLE_PERIOD_MS, le=MAX_THROTTLE_PERIOD_MS)
    burst: int = Field(0, ge=0, le=1_000_000)
    key: str | None = Field(None, max_length=1024)


class Priority(_Config):
    """``run``: an expression giving whole seconds (clamped to ±12 h). A run with priority
    ``p`` goes ahead of runs of its function queued up to ``p`` seconds before it."""

    run: str = Field(max_length=1024)


class Fairness(_Config):
    """Who shares this function's capacity fairly. ``key`` (an expression, e.g. the
    customer id) names the tenant of a run; ``weight`` (an expression giving a whole number
    1–100, e.g. ``event.data.plan == "pro" ? 4 : 1``) its share. Without it, the values of
    the concurrency and throttle keys are the tenant, each with weight 1."""

    key: str = Field(max_length=1024)
    weight: str | None = Field(None, max_length=1024)


class FlowControl(_Config):
    """Everything decided at schedule time, in this order: rate limit → debounce → batch →
    idempotency → singleton. ``idempotency`` is a key expression: one run per value per 24 h.
    Then the dispatcher: ``concurrency``, ``throttle``, ``priority`` and ``fairness``."""

    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch: Batch | None = None
    idempotency: str | None = Field(None, max_length=1024)
    singleton: Singleton | None = None
    concurrency: list[Concurrency] = Field(default_factory=list, max_length=MAX_CONCURRENCY_LIMITS)
    throttle: Throttle | None = None
    priority: Priority | None = None
    fairness: Fairness | None = None

    @model_validator(mode="after")
    def _compatible(self) -> "FlowControl":
        pairs = [
            ("debounce", "batch", "a debounced function receives one event; batching groups many"),
            ("batch", "singleton", "a batch run cannot be a singleton (reference §6)"),
            ("batch", "rate_limit", "rate limits drop single events; batches group them (reference §4)"),
            ("batch", "idempotency", "a batch run's idempotency key is its batch id (reference §6)"),
            ("batch", "priority", "a batch has no single event to rank (reference §8)"),
        ]
        for a, b, why in pairs:
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise ValueError(f"{a} and {b} cannot be combined: {why}")
        return self

    def expressions(self) -> dict[str, str]:
        """Every CEL expression in this config, by the field that holds it."""
        out: dict[str, str] = {}
        for name in ("rate_limit", "debounce", "batch", "singleton"):
            part = getattr(self, name)
            if part is not None and part.key:
                out[f"{name}.key"] = part.key
        if self.batch is not None and self.batch.if_exp:
            out["batch.if_exp"] = self.batch.if_exp
        for i, c in enumerate(self.concurrency):
            if c.key:
                out[f"concurrency[{i}].key"] = c.key
        if self.throttle is not None and self.throttle.key:
            out["throttle.key"] = self.throttle.key
        if self.priority is not None:
            out["priority.run"] = self.priority.run
        if self.fairness is not None:
            out["fairness.key"] = self.fairness.key
            if self.fairness.weight:
                out["fairness.weight"] = self.fairness.weight
        if self.idempotency:
            out["idempotency"] = self.idempotency
        return out
