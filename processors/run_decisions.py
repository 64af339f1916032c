"""The run state machine: ``decide(state, command, now_ms) -> Decision``. Pure.

No Kafka, RocksDB or clock here; ``now_ms`` is wall-clock ms given by the caller.

A run has at most one job at a time (parallel steps are a later issue). Life of a job:

1. ``Dispatch`` — the job goes to the app's work queue with the memos so far.
2. The worker reports one :class:`~sluicegate.wire.StepOutcome`:
   ``step_ok`` records the step and dispatches the next job (attempt 0), or completes the
   run when the worker's look-ahead saw the function return right after it (``run_done``);
   ``run_ok`` completes the run;
   ``step_error`` retries the same job after a backoff (``StartTimer``), or, when attempts
   are spent or the error is non-retriable, memoizes the step's error (the function sees a
   ``StepError`` on its next call) or fails the run (an error outside any step).
3. Outcomes for any other (job, attempt) are duplicates or stale: ignored — first result wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Union

from .. import limits
from ..state.run_state import CurrentJob, RunState, StepRecord
from ..wire import ErrorInfo, Job, StepAttemptView, StepOutcome, TimerFired, Trigger
from .backoff import retry_delay_ms


@dataclass(frozen=True)
class DispatchRef:
    job_id: str
    attempt: int


@dataclass(frozen=True)
class Dispatch:
    kind: Literal["dispatch"]
    job: DispatchRef


@dataclass(frozen=True)
class StartTimer:
    kind: Literal["start_timer"]
    timer_id: str
    due_ms: int


@dataclass(frozen=True)
class DeleteTimer:
    kind: Literal["delete_timer"]
    timer_id: str
    due_ms: int


Action = Union[Dispatch, StartTimer, DeleteTimer]


@dataclass
class Decision:
    state: RunState | None
    actions: list[Action] = field(default_factory=list)
    changed: bool = False
    note: str = ""


def _job_id(run_id: str, seq: int) -> str:
    return f"{run_id}.{seq}"


def job_for(run: RunState, now_ms: int, *, lease_id: str = "", lease_ms: int = 0) -> Job:
    """The message a worker gets for the run's current job (memos as of now)."""
    assert run.job is not None
    return Job(
        job_id=run.job.job_id, app_id=run.app_id, function_id=run.function_id, run_id=run.run_id,
        attempt=run.job.attempt, max_attempts=run.max_attempts, events=run.events,
        memos=run.memos(), dispatched_at=now_ms, lease_id=lease_id, lease_ms=lease_ms,
    )


def _dispatch(run: RunState, now_ms: int) -> Dispatch:
    """The job is ready: the dispatcher queues it in its backlog and sends it in its turn
    (``Dispatch.job`` names the job; the worker's message is built at send time)."""
    assert run.job is not None
    run.job.dispatched_at = now_ms
    return Dispatch("dispatch", DispatchRef(run.job.job_id, run.job.attempt))


def _next_job(run: RunState, now_ms: int) -> Dispatch:
    seq = run.job_seq
    run.job_seq += 1
    run.job = CurrentJob(job_id=_job_id(run.run_id, seq), seq=seq, attempt=0)
    return _dispatch(run, now_ms)


def _finish(run: RunState, status: Literal["completed", "failed"], now_ms: int,
            output: object = None, error: ErrorInfo | None = None) -> None:
    run.status = status
    run.ended_at = now_ms
    run.output = output
    run.error = error
    run.job = None


def _new_run(cmd: Trigger, status: Literal["running", "queued"], now_ms: int, singleton_key: str | None) -> RunState:
    return RunState(
        run_id=cmd.run_id, app_id=cmd.app_id, function_id=cmd.function_id, function=cmd.function,
        status=status, events=[e.as_payload() for e in cmd.events], event_ids=[e.id for e in cmd.events],
        created_at=now_ms, started_at=now_ms if status == "running" else None, singleton_key=singleton_key,
    )


def start(cmd: Trigger, now_ms: int, singleton_key: str | None = None) -> Decision:
    run = _new_run(cmd, "running", now_ms, singleton_key)
    return Decision(run, [_next_job(run, now_ms)], changed=True)


def queued(cmd: Trigger, now_ms: int, singleton_key: str | None) -> Decision:
    """A run that waits (singleton ``queue`` mode) until :func:`release` starts it."""
    return Decision(_new_run(cmd, "queued", now_ms, singleton_key), changed=True)


def release(run: RunState, now_ms: int) -> Decision:
    """Start a queued run."""
    if run.status != "queued":
        return Decision(run, note="not queued")
    run = _copy_for_update(run)
    run.status = "running"
    run.started_at = now_ms
    return Decision(run, [_next_job(run, now_ms)], changed=True)


def skip_queued(run: RunState, reason: str, detail: str, now_ms: int) -> Decision:
    """A queued run that will never start (replaced by a newer one)."""
    if run.status != "queued":
        return Decision(run, note="not queued")
    run = _copy_for_update(run)
    run.status, run.ended_at, run.skip_reason, run.skip_detail = "skipped", now_ms, reason, detail
    return Decision(run, changed=True)


def cancel(run: RunState, reason: str, now_ms: int) -> Decision:
    """Cancel a run that has not finished: its queued work and retry timer are dropped; a
    step executing now finishes, but its outcome finds no job and is discarded."""
    if run.finished:
        return Decision(run, note="already finished")
    run = _copy_for_update(run)
    actions: list[Action] = []
    if run.job is not None and run.job.retry_timer is not None and run.job.retry_due is not None:
        actions.append(DeleteTimer("delete_timer", run.job.retry_timer, run.job.retry_due))
    run.status, run.ended_at, run.job = "cancelled", now_ms, None
    run.error = ErrorInfo(name="Cancelled", message=reason)
    return Decision(run, actions, changed=True)


def skipped(cmd: Trigger, reason: str, detail: str, now_ms: int) -> Decision:
    """Record a triggered run that flow control did not admit: visible, never executed."""
    run = RunState(
        run_id=cmd.run_id, app_id=cmd.app_id, function_id=cmd.function_id, function=cmd.function,
        status="skipped", events=[e.as_payload() for e in cmd.events], event_ids=[e.id for e in cmd.events],
        created_at=now_ms, ended_at=now_ms, skip_reason=reason, skip_detail=detail,
    )
    return Decision(run, changed=True)


def _limit_error(message: str) -> ErrorInfo:
    return ErrorInfo(name="LimitExceeded", message=message)


def on_outcome(run: RunState, cmd: StepOutcome, now_ms: int) -> Decision:
    job = run.job
    if run.finished or job is None or job.retry_timer is not None:
        return Decision(run, note="stale: no job in flight")
    if cmd.job_id != job.job_id or cmd.attempt != job.attempt:
        return Decision(run, note="stale: other job or attempt")
    attempt_view = StepAttemptView(attempt=cmd.attempt, started_at=cmd.started_at, ended_at=cmd.ended_at,
                                   error=cmd.error if cmd.op == "step_error" else None)

    if cmd.op == "run_ok":
        _finish(run, "completed", now_ms, output=cmd.data)
        return Decision(run, changed=True)

    if cmd.op == "step_ok":
        assert cmd.step_hash is not None
        if cmd.step_hash in run.steps:  # memoized already: a replayed result, keep the first
            return Decision(run, note="duplicate step")
        size = len(json.dumps(cmd.data, default=str))
        if len(run.steps) >= limits.MAX_STEPS_PER_RUN:
            _finish(run, "failed", now_ms, error=_limit_error(
                f"steps: a run may have at most {limits.MAX_STEPS_PER_RUN} steps"))
            return Decision(run, changed=True)
        if run.state_bytes + size > limits.MAX_RUN_STATE_BYTES:
            _finish(run, "failed", now_ms, error=_limit_error(
                f"run state: step outputs may total at most {limits.MAX_RUN_STATE_BYTES} bytes"))
            return Decision(run, changed=True)
        run.steps[cmd.step_hash] = StepRecord(
            hash=cmd.step_hash, id=cmd.step_id or cmd.step_hash, status="completed", output=cmd.data,
            size=size, attempts=[*job.failed_attempts, attempt_view])
        run.step_order.append(cmd.step_hash)
        run.state_bytes += size
        if cmd.run_done:  # the worker's look-ahead saw the function return after this step
            _finish(run, "completed", now_ms, output=cmd.run_output)
            return Decision(run, changed=True)
        return Decision(run, [_next_job(run, now_ms)], changed=True)

    # step_error
    error = cmd.error or ErrorInfo()
    attempts_left = cmd.attempt + 1 < run.max_attempts
    if attempts_left and not cmd.no_retry:
        delay = retry_delay_ms(cmd.attempt, seed=job.job_id, table=run.function.backoff_ms,
                               jitter_ms=run.function.backoff_jitter_ms, retry_after_ms=cmd.retry_after_ms)
        job.failed_attempts.append(attempt_view)
        job.retry_timer = f"{job.job_id}:{cmd.attempt + 1}"
        job.retry_due = now_ms + delay
        return Decision(run, [StartTimer("start_timer", job.retry_timer, job.retry_due)], changed=True)

    if cmd.step_hash is not None and cmd.step_hash not in run.steps:
        # The step failed for good: memoize its error; the function decides what follows.
        run.steps[cmd.step_hash] = StepRecord(
            hash=cmd.step_hash, id=cmd.step_id or cmd.step_hash, status="failed", error=error,
            attempts=[*job.failed_attempts, attempt_view])
        run.step_order.append(cmd.step_hash)
        return Decision(run, [_next_job(run, now_ms)], changed=True)
    _finish(run, "failed", now_ms, error=error)
    return Decision(run, changed=True)


def on_timer(run: RunState, cmd: TimerFired, now_ms: int) -> Decision:
    job = run.job
    if run.finished or job is None or job.retry_timer != cmd.timer_id:
        return Decision(run, note="stale timer")
    due = job.retry_due or now_ms
    job.attempt += 1
    job.retry_timer = None
    job.retry_due = None
    return Decision(run, [DeleteTimer("delete_timer", cmd.timer_id, due), _dispatch(run, now_ms)], changed=True)


def _copy_for_update(run: RunState) -> RunState:
    """Copy exactly what the handlers below mutate (a deep copy costs ~10% of a command).

    Step records are replaced, never changed in place, so the dict is copied, not its values.
    """
    return run.model_copy(update={
        "steps": dict(run.steps),
        "step_order": list(run.step_order),
        "job": None if run.job is None else run.job.model_copy(deep=True),
    })


def decide(run: RunState | None, cmd: Trigger | StepOutcome | TimerFired, now_ms: int) -> Decision:
    """The one entry point the processor calls for every command of a function's partition."""
    if isinstance(cmd, Trigger):
        if run is not None:
            return Decision(run, note="duplicate trigger")
        return start(cmd, now_ms)
    if run is None:
        return Decision(None, note="unknown run")
    run = _copy_for_update(run)
    if isinstance(cmd, StepOutcome):
        return on_outcome(run, cmd, now_ms)
    return on_timer(run, cmd, now_ms)
