"""The durable state of one run, as the function processor keeps it (table ``runs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..wire import ErrorInfo, FunctionDefinition, RunView, StepAttemptView, StepView

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "skipped"]
FINAL_STATUSES = ("completed", "failed", "cancelled", "skipped")


class StepRecord(BaseModel):
    hash: str
    id: str
    status: Literal["completed", "failed"]
    output: Any = None
    error: ErrorInfo | None = None
    size: int = 0
    attempts: list[StepAttemptView] = Field(default_factory=list)


class CurrentJob(BaseModel):
    """A job of this run that may be in flight (or waiting for its retry timer): the run's
    job, or one branch of a ``step.parallel`` (``RunState.branches``)."""

    job_id: str
    seq: int
    attempt: int
    dispatched_at: int | None = None
    retry_timer: str | None = Field(None, description="timer id while waiting to retry")
    retry_due: int | None = None
    failed_attempts: list[StepAttemptView] = Field(default_factory=list)
    since_ms: int = Field(0, description="when the job became ready: a wait it plans sees events accepted since")
    step_id: str | None = Field(None, description="a branch job: the id of the one step it runs")


class PendingStep(BaseModel):
    """A durable step the engine carries out while no job runs: a sleep, a wait for an
    event, or an invoke waiting for its callee's result."""

    kind: Literal["sleep", "wait", "invoke"]
    hash: str
    id: str
    timer_id: str
    due_ms: int
    wait_id: str | None = None
    wait_app: str | None = Field(None, description="the app whose events the wait watches (router partition)")
    started_at: int
    waiter: dict[str, Any] | None = Field(
        None, description="a wait or invoke: the waiter registered with the router (JSON of event_waits.Waiter), "
                          "kept so it can be registered again (run_decisions.standing_outputs)")
    emitted: list[dict[str, Any]] = Field(
        default_factory=list, description="an invoke: the event it sent (sluicegate/function.invoked), kept for the same reason")


class RunState(BaseModel):
    run_id: str
    app_id: str
    function_id: str
    function: FunctionDefinition
    status: RunStatus
    events: list[dict[str, Any]]
    event_ids: list[str]
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: ErrorInfo | None = None
    skip_reason: str | None = None
    skip_detail: str | None = None
    singleton_key: str | None = Field(None, description="the lock this run holds or waits for")
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    step_order: list[str] = Field(default_factory=list)
    job: CurrentJob | None = None
    branches: dict[str, CurrentJob] = Field(
        default_factory=dict, description="step.parallel: step hash -> its own job, while the run's job waits for all")
    job_seq: int = 0
    state_bytes: int = 0
    pending: PendingStep | None = None
    received_at: int = Field(0, description="when the trigger event was accepted")
    cancel_waits: list[str] = Field(default_factory=list, description="wait ids of the cancel_on entries")
    cancelled_by: str | None = None
    replay_id: str | None = None
    replay_of: str | None = None
    rerun_of: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def max_attempts(self) -> int:
        return self.function.retries + 1

    def memos(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for h in self.step_order:
            s = self.steps[h]
            out[h] = {"data": s.output, "id": s.id} if s.status == "completed" else {
                "error": (s.error or ErrorInfo()).model_dump(), "id": s.id}
        return out

    def view(self) -> RunView:
        steps = [
            StepView(hash=h, id=self.steps[h].id, status=self.steps[h].status, output=self.steps[h].output,
                     error=self.steps[h].error, attempts=self.steps[h].attempts)
            for h in self.step_order
        ]
        if not self.finished:
            steps.extend(StepView(hash=h, id=b.step_id or h, status="running", attempts=b.failed_attempts)
                         for h, b in self.branches.items())
        if self.pending is not None and not self.finished:
            p = self.pending
            steps.append(StepView(hash=p.hash, id=p.id, status="sleeping" if p.kind == "sleep" else "waiting",
                                  kind=p.kind, until=p.due_ms))
        return RunView(
            run_id=self.run_id, app_id=self.app_id, function_id=self.function_id,
            function_version=self.function.version, status=self.status, event_ids=self.event_ids,
            created_at=self.created_at, started_at=self.started_at, ended_at=self.ended_at,
            output=self.output, error=self.error, skip_reason=self.skip_reason,
            skip_detail=self.skip_detail, steps=steps, replay_id=self.replay_id, replay_of=self.replay_of,
            rerun_of=self.rerun_of,
        )
