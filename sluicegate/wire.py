"""Messages that cross a process boundary (Kafka topics and HTTP), as pydantic models.

Every record is JSON. Topic, key and partition of each:

=================  ==========================  =====================================
topic              key                         value
=================  ==========================  =====================================
sg.events          ``app_id``                  :class:`EventRecord`
sg.commands        ``app_id/function_id``      :class:`Trigger` | :class:`StepOutcome` | :class:`TimerFired` | :class:`CronSync` | :class:`Heartbeat` | :class:`DispatchTick`
sg.work.<app>      ``run_id``                  :class:`Job` (partition = the command's partition)
sg.runs            ``run_id``                  :class:`RunView` (compacted; the API's read model)
sg.registry        ``app_id/function_id``      :class:`FunctionDefinition` (compacted)
sg.keys            sha256(event key)           :class:`EventKeyRecord` (compacted; null = revoked)
=================  ==========================  =====================================
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .flow_config import FlowControl
from .lifecycle_config import Cancel, Timeouts
from .triggers import TriggerCron, TriggerEvent


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def dumps(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class EventRecord(_Model):
    """An accepted event, as stored in ``sg.events``."""

    app_id: str
    id: str
    name: str
    data: dict[str, Any] = Field(default_factory=dict)
    user: dict[str, Any] | None = None
    ts: int = Field(description="Event time, ms since the epoch (the sender's clock, or receipt).")
    v: str | None = None
    received_at: int = Field(description="Wall-clock ms when Sluicegate accepted it.")

    def as_payload(self) -> dict[str, Any]:
        """The event as a function sees it."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "data": self.data, "ts": self.ts}
        if self.user is not None:
            out["user"] = self.user
        if self.v is not None:
            out["v"] = self.v
        return out


EventTrigger = TriggerEvent  # the name the processors use


class FunctionDefinition(_Model):
    """A function as registered by its app's worker (``sg.registry``).

    Retry backoff: ``backoff`` holds an ``Exponential`` or ``Fixed`` policy as JSON
    (``{"kind": "exponential", "initial_ms", "factor", "max_ms"}`` or ``{"kind": "fixed",
    "delay_ms"}``); a table of delays travels in ``backoff_ms``, as it did before ``backoff``
    existed; neither means the default schedule. ``backoff_jitter_ms`` (None: the default)
    applies to all three (:func:`sluicegate.processors.backoff.delay_after_failure`).
    """

    app_id: str
    function_id: str
    name: str
    triggers: list[TriggerEvent]
    crons: list[TriggerCron] = Field(default_factory=list)
    flow: FlowControl | None = None
    retries: int
    backoff: dict[str, Any] | None = None
    backoff_ms: list[int] | None = None
    backoff_jitter_ms: int | None = None
    cancel_on: list[Cancel] = Field(default_factory=list)
    timeouts: Timeouts | None = None
    version: str = ""

    def compute_version(self) -> str:
        # a field added later counts only when set, so older definitions keep their versions
        unset = {name for name in ("backoff", "cancel_on", "timeouts") if not getattr(self, name)}
        body = self.model_dump(exclude={"version", *unset})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        return f"{self.app_id}/{self.function_id}"


class Trigger(_Model):
    """Router → function processor: start a run for these events."""

    kind: Literal["trigger"] = "trigger"
    app_id: str
    function_id: str
    run_id: str
    function: FunctionDefinition
    events: list[EventRecord]
    replay_id: str | None = Field(None, description="set for a run a replay creates (a new run, not a retry)")
    replay_of: str | None = Field(None, description="the run the same event started originally")
    only_if_original: list[str] | None = Field(None, description=(
        "replay: start only if the original run ended with one of these statuses"))


class ErrorInfo(BaseModel):
    name: str = "Error"
    message: str = ""
    stack: str | None = None


class StepOutcome(_Model):
    """Worker → function processor: what one job did.

    ``op``: ``step_ok`` (a step ran and returned ``data``; with ``run_done`` the function
    then returned ``run_output``), ``step_error`` (a step or the function body raised),
    ``run_ok`` (the function returned ``data``; no step left), or a durable step the engine
    carries out: ``sleep`` (``duration_ms`` from ``ended_at``, or ``until_ms``), ``wait``
    (``wait_event``, ``wait_match`` or ``wait_if``, ``timeout_ms``), ``invoke``
    (``invoke_app``/``invoke_function``, ``invoke_data``, ``timeout_ms``); or ``plan``: the
    call reached a ``step.parallel`` whose new steps are ``planned`` (each becomes a job of its
    own, with ``Job.target_step``); or ``steps``: branches executed together by one job
    (``results``; how earlier SDK builds ran them; still accepted).
    """

    kind: Literal["outcome"] = "outcome"
    app_id: str
    function_id: str
    run_id: str
    job_id: str
    attempt: int
    op: Literal["step_ok", "step_error", "run_ok", "sleep", "wait", "invoke", "plan", "steps"]
    step_hash: str | None = None
    step_id: str | None = None
    data: Any = None
    error: ErrorInfo | None = None
    no_retry: bool = False
    retry_after_ms: int | None = None
    run_done: bool = Field(False, description="step_ok only: the function returned right after this step")
    run_output: Any = None
    duration_ms: int | None = None
    until_ms: int | None = None
    wait_event: str | None = None
    wait_match: str | None = None
    wait_if: str | None = None
    timeout_ms: int | None = None
    invoke_app: str | None = None
    invoke_function: str | None = None
    invoke_data: dict[str, Any] | None = None
    results: list[dict[str, Any]] | None = Field(None, description=(
        "op steps (step.parallel): one step_ok / step_error outcome per branch executed by this job"))
    planned: list[dict[str, str]] | None = Field(None, description=(
        "op plan (step.parallel): [{step_hash, step_id}] of the branches' new steps, in order"))
    started_at: int
    ended_at: int
    worker_id: str = ""
    lease_id: str = Field("", description="the lease of the dispatch this outcome answers")


class Heartbeat(_Model):
    """Worker → function processor: the step of this lease is still executing; extend it."""

    kind: Literal["heartbeat"] = "heartbeat"
    app_id: str
    function_id: str
    run_id: str
    lease_id: str
    worker_id: str = ""


class DispatchTick(_Model):
    """Self-addressed, to one partition: reap expired leases, wake throttled backlogs, refill
    the in-flight windows (tables change only inside the agent)."""

    kind: Literal["dispatch_tick"] = "dispatch_tick"
    at_ms: int


class ExpireRuns(_Model):
    """Self-addressed, to one partition of ``sg.commands``: delete the ended runs whose
    retention is over (``processors/run_retention.py``)."""

    kind: Literal["expire_runs"] = "expire_runs"
    partition: int


class SweepFlow(_Model):
    """Self-addressed, to one partition of ``sg.commands``: delete the flow-control records
    of the next slice of the ``flow`` table that are worth nothing any more
    (``processors/flow/expiry.py``)."""

    kind: Literal["sweep_flow"] = "sweep_flow"
    partition: int


class TimerFired(_Model):
    """Self-addressed: a durable timer of this function's partition is due."""

    kind: Literal["timer"] = "timer"
    app_id: str
    function_id: str
    run_id: str = Field("", description="the run's timer; empty for a debounce/batch timer")
    timer_id: str
    due_ms: int | None = None
    flow_key: str | None = Field(None, description="debounce/batch timers: the group's state key")
    flow_timer: str | None = Field(None, description="the decision's own timer id")


class CronSync(_Model):
    """Self-addressed: make sure the next tick of a cron trigger has a timer (idempotent)."""

    kind: Literal["cron_sync"] = "cron_sync"
    app_id: str
    function_id: str
    cron: str


class CancelRun(_Model):
    """API → function processor: cancel one run (``DELETE /v1/runs/{id}``), or a timeout or
    a ``cancel_on`` event did. A run that already ended is left as it is."""

    kind: Literal["cancel"] = "cancel"
    app_id: str
    function_id: str
    run_id: str
    reason: str = "cancelled"
    by: Literal["api", "event", "bulk", "timeout"] = "api"
    event: dict[str, Any] | None = Field(None, description="the event that cancelled it (cancel_on)")


class CancelRuns(_Model):
    """API → function processor: bulk cancellation (``POST /v1/cancellations``) of the
    function's runs not yet ended that were created in ``[started_after, started_before)``
    and whose first event passes ``if_exp`` (CEL over ``event``)."""

    kind: Literal["cancel_many"] = "cancel_many"
    cancellation_id: str
    app_id: str
    function_id: str
    started_after: int | None = None
    started_before: int
    if_exp: str | None = None


class WaitResolved(_Model):
    """Router → function processor: an event matched a run's wait (``step.wait_for_event``,
    an invoke's result or a ``cancel_on`` entry)."""

    kind: Literal["wait_resolved"] = "wait_resolved"
    app_id: str
    function_id: str
    run_id: str
    wait_id: str
    event: dict[str, Any]


class ReplaySpec(_Model):
    """What a replay re-reads and through which functions (``POST /v1/replays``)."""

    replay_id: str
    app_id: str
    functions: list[str] | None = Field(None, description="function ids; None: every function of the app")
    ranges: dict[int, tuple[int, int]] = Field(description="sg.events partition -> [start, end) offsets")
    if_exp: str | None = Field(None, description="only events for which this CEL expression over event is true")
    only_failed: bool = Field(False, description="only events whose original run failed or was cancelled")
    pace_per_s: float | None = Field(None, description="at most this many events read per second")
    created_at: int = 0


class ReplayStart(_Model):
    """API → the replay's partition: begin (idempotent per replay id)."""

    kind: Literal["replay_start"] = "replay_start"
    spec: ReplaySpec


class ReplayContinue(_Model):
    """Self-addressed: read the replay's next chunk."""

    kind: Literal["replay_continue"] = "replay_continue"
    replay_id: str
    seq: int = Field(description="the chunk this continues from; a replayed or duplicate continue is ignored")
    timer_due: int | None = Field(None, description="the pace timer that sent it (deleted when handled)")


class ReplayCancel(_Model):
    kind: Literal["replay_cancel"] = "replay_cancel"
    replay_id: str


class ReplayMark(_Model):
    """Replay partition → a function partition, after a chunk's triggers: when the function
    processor reaches it, the chunk is absorbed there; it answers with :class:`ReplayAck`."""

    kind: Literal["replay_mark"] = "replay_mark"
    replay_id: str
    seq: int


class ReplayAck(_Model):
    """Function partition → the replay's partition: the chunk ``seq`` is absorbed here."""

    kind: Literal["replay_ack"] = "replay_ack"
    replay_id: str
    seq: int
    partition: int = Field(description="the function partition that absorbed it")


class ReplayTally(_Model):
    """Function processor → the replay's partition: a replayed trigger was not started (its
    original run did not fail, say)."""

    kind: Literal["replay_tally"] = "replay_tally"
    replay_id: str
    skipped: int = 1


class RerunRun(_Model):
    """API → function processor: start ``new_run_id`` from the same events as ``run_id``
    with the function's current version; with ``from_step``, the original's results of the
    steps before that step are kept (memoized), and execution resumes at it."""

    kind: Literal["rerun"] = "rerun"
    app_id: str
    function_id: str
    run_id: str
    new_run_id: str
    from_step: str | None = None


AnyCommand = Union[Trigger, StepOutcome, TimerFired, CronSync, Heartbeat, DispatchTick, CancelRun, CancelRuns,
                   WaitResolved, ReplayStart, ReplayContinue, ReplayCancel, ReplayTally, ReplayMark, ReplayAck,
                   RerunRun, ExpireRuns, SweepFlow]
Command = Annotated[AnyCommand, Field(discriminator="kind")]
command_adapter: TypeAdapter[AnyCommand] = TypeAdapter(Command)


class Job(_Model):
    """Function processor → worker (``sg.work.<app>``): call the function once, run one step."""

    job_id: str
    app_id: str
    function_id: str
    run_id: str
    attempt: int
    max_attempts: int
    events: list[dict[str, Any]]
    memos: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="step hash -> {'data': ...} or {'error': {...}}"
    )
    dispatched_at: int
    lease_id: str = Field("", description="echo it in the outcome and in heartbeats")
    lease_ms: int = Field(0, description="the lease lasts this long from dispatch or the last heartbeat")
    target_step: str | None = Field(None, description=(
        "a step.parallel branch job: run only the step with this hash (the call replays its memos up to it)"))


class StepAttemptView(BaseModel):
    attempt: int
    started_at: int | None = None
    ended_at: int | None = None
    error: ErrorInfo | None = None


class StepView(BaseModel):
    hash: str
    id: str
    status: Literal["completed", "failed", "running", "sleeping", "waiting"]
    kind: Literal["sleep", "wait", "invoke"] | None = Field(None, description="a durable step in progress")
    until: int | None = Field(None, description="sleeping/waiting: when it ends at the latest (ms)")
    output: Any = None
    error: ErrorInfo | None = None
    attempts: list[StepAttemptView] = Field(default_factory=list)


class RunView(_Model):
    run_id: str
    app_id: str
    function_id: str
    function_version: str = ""
    status: Literal["queued", "running", "completed", "failed", "cancelled", "skipped"]
    event_ids: list[str]
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: ErrorInfo | None = None
    skip_reason: str | None = Field(None, description="why no run was started (status 'skipped')")
    skip_detail: str | None = None
    replay_id: str | None = Field(None, description="the replay that created this run")
    replay_of: str | None = Field(None, description="replay: the run the same event started originally")
    rerun_of: str | None = Field(None, description="rerun: the run this one repeats")
    waiting: str | None = Field(None, description=(
        "why the run's next step has not been dispatched yet: concurrency (a concurrency key is full), "
        "throttled, window_full (its app's in-flight window is full) or queued (behind other steps)"))
    steps: list[StepView] = Field(default_factory=list)


class EventKeyRecord(_Model):
    app_id: str
    prefix: str = Field(description="First characters of the key, safe to show.")
    created_at: int
