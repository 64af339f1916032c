"""The run state machine, ``run_decisions.decide``, driven by hand: no broker, no clock.

Every case builds its commands from ``sluicegate.wire`` models and checks the new state and
the exact actions. Backoff is the function's own table with jitter 0, so due times are exact.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from sluicegate import limits
from sluicegate.processors.run_decisions import (DeleteTimer, Decision, Dispatch, DispatchRef, EmitEvent, StartTimer, decide,
                                               job_for)
from sluicegate.state.run_state import RunState, StepRecord
from sluicegate.wire import (
    ErrorInfo,
    EventRecord,
    FunctionDefinition,
    Job,
    StepOutcome,
    TimerFired,
    Trigger,
    EventTrigger,
)

APP, FN, RUN = "shop", "welcome", "run-1"
NOW = 1_700_000_000_000
BACKOFF = [1_000, 5_000, 20_000]  # the function's own schedule; last entry is the cap


def definition(retries: int = 2, backoff_ms: list[int] | None = None) -> FunctionDefinition:
    return FunctionDefinition(
        app_id=APP, function_id=FN, name=FN, triggers=[EventTrigger(event="user.created")], retries=retries,
        backoff_ms=BACKOFF if backoff_ms is None else backoff_ms, backoff_jitter_ms=0, version="v1",
    )


EVENT = EventRecord(app_id=APP, id="01EVENT", name="user.created", data={"user": 7}, ts=NOW - 5,
                    received_at=NOW - 1)


def trigger(retries: int = 2) -> Trigger:
    return Trigger(app_id=APP, function_id=FN, run_id=RUN, function=definition(retries), events=[EVENT])


def started(retries: int = 2) -> RunState:
    state = decide(None, trigger(retries), NOW).state
    assert state is not None
    return state


def outcome(run: RunState, op: str, *, job_id: str | None = None, attempt: int | None = None,
            **fields: Any) -> StepOutcome:
    """An outcome for the job in flight unless ``job_id`` / ``attempt`` say otherwise."""
    assert run.job is not None or (job_id is not None and attempt is not None)
    return StepOutcome(
        app_id=APP, function_id=FN, run_id=RUN, op=op,
        job_id=run.job.job_id if job_id is None else job_id,  # type: ignore[union-attr]
        attempt=run.job.attempt if attempt is None else attempt,  # type: ignore[union-attr]
        started_at=NOW, ended_at=NOW + 1, **fields,
    )


def step_ok(run: RunState, step: str, data: Any = None, **kw: Any) -> StepOutcome:
    return outcome(run, "step_ok", step_hash=f"h-{step}", step_id=step, data=data, **kw)


def step_error(run: RunState, step: str | None, message: str = "boom", **kw: Any) -> StepOutcome:
    return outcome(run, "step_error", step_hash=None if step is None else f"h-{step}", step_id=step,
                   error=ErrorInfo(name="ValueError", message=message), **kw)


def timer(timer_id: str) -> TimerFired:
    return TimerFired(app_id=APP, function_id=FN, run_id=RUN, timer_id=timer_id)


def apply(run: RunState | None, cmd: Trigger | StepOutcome | TimerFired, now: int = NOW) -> Decision:
    """decide(), plus the invariant every case shares: the input state is never mutated."""
    before = None if run is None else run.model_dump()
    decision = decide(run, cmd, now)
    assert (None if run is None else run.model_dump()) == before
    return decision


def fail_and_retry(run: RunState, step: str | None, now: int = NOW) -> RunState:
    """One failed attempt of the job in flight and the firing of its retry timer."""
    failed = apply(run, step_error(run, step), now)
    assert failed.state is not None and failed.state.job is not None
    assert failed.state.job.retry_timer is not None
    fired = apply(failed.state, timer(failed.state.job.retry_timer), now)
    assert fired.state is not None
    return fired.state


def work(decision: Decision) -> list[object]:
    """The actions other than system events (``end_events`` has its own tests)."""
    return [a for a in decision.actions if not isinstance(a, EmitEvent)]


def dispatched(decision: Decision) -> Job:
    assert [type(a) for a in decision.actions] == [Dispatch] or [type(a) for a in decision.actions] == [
        DeleteTimer, Dispatch]
    action = decision.actions[-1]
    assert isinstance(action, Dispatch) and decision.state is not None and decision.state.job is not None
    assert (action.job.job_id, action.job.attempt) == (decision.state.job.job_id, decision.state.job.attempt)
    # the worker's message is built when the dispatcher sends it: from the state as it is now
    return job_for(decision.state, decision.state.job.dispatched_at or 0)


# -- trigger ---------------------------------------------------------------------------------


def test_trigger_creates_run_and_dispatches_attempt_zero_with_no_memos() -> None:
    decision = apply(None, trigger(retries=3))

    assert decision.changed is True
    run = decision.state
    assert run is not None
    assert (run.run_id, run.status, run.created_at, run.started_at, run.ended_at) == (RUN, "running", NOW, NOW, None)
    assert run.event_ids == ["01EVENT"]
    assert run.max_attempts == 4
    assert decision.actions == [Dispatch("dispatch", DispatchRef(f"{RUN}.0", 0))]
    assert dispatched(decision) == Job(
        job_id=f"{RUN}.0", app_id=APP, function_id=FN, run_id=RUN, attempt=0, max_attempts=4,
        events=[{"id": "01EVENT", "name": "user.created", "data": {"user": 7}, "ts": NOW - 5}],
        memos={}, dispatched_at=NOW,
    )


def test_duplicate_trigger_is_ignored() -> None:
    run = started()
    decision = apply(run, trigger())
    assert (decision.changed, decision.actions, decision.state) == (False, [], run)


@pytest.mark.parametrize("cmd", [
    pytest.param(StepOutcome(app_id=APP, function_id=FN, run_id=RUN, job_id=f"{RUN}.0", attempt=0, op="run_ok",
                             started_at=NOW, ended_at=NOW), id="outcome"),
    pytest.param(timer(f"{RUN}.0:1"), id="timer"),
])
def test_command_for_unknown_run_is_ignored(cmd: StepOutcome | TimerFired) -> None:
    decision = apply(None, cmd)
    assert (decision.changed, decision.actions, decision.state) == (False, [], None)


# -- outcomes that move the run on -----------------------------------------------------------


def test_step_ok_memoizes_and_dispatches_next_job_with_memos() -> None:
    run = started()
    decision = apply(run, step_ok(run, "charge", {"paid": 12}))

    new = decision.state
    assert decision.changed is True and new is not None
    assert new.step_order == ["h-charge"]
    record = new.steps["h-charge"]
    assert (record.id, record.status, record.output, record.size) == ("charge", "completed", {"paid": 12}, 12)
    assert [a.attempt for a in record.attempts] == [0]
    assert new.state_bytes == 12
    job = dispatched(decision)
    assert (job.job_id, job.attempt, job.memos) == (f"{RUN}.1", 0, {"h-charge": {"data": {"paid": 12}, "id": "charge"}})


def test_run_ok_completes_with_output() -> None:
    run = started()
    after_step = apply(run, step_ok(run, "a", 1)).state
    assert after_step is not None
    decision = apply(after_step, outcome(after_step, "run_ok", data={"total": 3}))

    done = decision.state
    assert decision.changed is True and work(decision) == [] and done is not None
    assert (done.status, done.output, done.error, done.ended_at, done.job) == ("completed", {"total": 3}, None, NOW, None)
    assert done.view().status == "completed"


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("failed_attempt", "delay_ms"), [
    (0, 1_000),
    (1, 5_000),
    (2, 20_000),
    (3, 20_000),  # past the table's end: the last entry is the cap
])
def test_step_error_with_attempts_left_starts_timer_at_now_plus_backoff(failed_attempt: int, delay_ms: int) -> None:
    run = started(retries=5)
    for _ in range(failed_attempt):
        run = fail_and_retry(run, "charge")
    assert run.job is not None and run.job.attempt == failed_attempt

    decision = apply(run, step_error(run, "charge"), NOW + 77)

    timer_id = f"{RUN}.0:{failed_attempt + 1}"
    assert decision.changed is True
    assert decision.actions == [StartTimer("start_timer", timer_id, NOW + 77 + delay_ms)]
    new = decision.state
    assert new is not None and new.job is not None
    assert (new.job.retry_timer, new.job.retry_due) == (timer_id, NOW + 77 + delay_ms)
    assert new.steps == {}  # not memoized while a retry is pending


def test_timer_fired_dispatches_next_attempt_of_the_same_job() -> None:
    run = started()
    first = apply(run, step_ok(run, "a", "A")).state
    assert first is not None
    waiting = apply(first, step_error(first, "b")).state
    assert waiting is not None

    decision = apply(waiting, timer(f"{RUN}.1:1"), NOW + 1_500)

    assert decision.changed is True
    assert decision.actions[0] == DeleteTimer("delete_timer", f"{RUN}.1:1", NOW + 1_000)
    job = dispatched(decision)
    assert (job.job_id, job.attempt, job.memos, job.dispatched_at) == (
        f"{RUN}.1", 1, {"h-a": {"data": "A", "id": "a"}}, NOW + 1_500)
    assert decision.state is not None and decision.state.job is not None
    assert decision.state.job.retry_timer is None


@pytest.mark.parametrize(("retry_after_ms", "delay_ms"), [
    (5_000, 5_000),  # overrides the table's 1_000
    (1_000, 1_000),
    (999, 1_000),
    (0, 1_000),
    (limits.MAX_RETRY_AFTER_MS, limits.MAX_RETRY_AFTER_MS),
    (limits.MAX_RETRY_AFTER_MS + 1, limits.MAX_RETRY_AFTER_MS),
    (30 * 24 * 3600 * 1000, 24 * 3600 * 1000),
])
def test_retry_after_overrides_table_and_is_clamped(retry_after_ms: int, delay_ms: int) -> None:
    run = started()
    decision = apply(run, step_error(run, "a", retry_after_ms=retry_after_ms))
    assert decision.actions == [StartTimer("start_timer", f"{RUN}.0:1", NOW + delay_ms)]


# -- stale and duplicate commands ------------------------------------------------------------


def _in_flight() -> tuple[RunState, StepOutcome]:
    run = started()
    return run, step_ok(run, "a", 1, job_id=f"{RUN}.9")


def _wrong_attempt() -> tuple[RunState, StepOutcome]:
    run = started()
    return run, step_ok(run, "a", 1, attempt=1)


def _old_job_after_next_dispatched() -> tuple[RunState, StepOutcome]:
    run = started()
    late = step_ok(run, "a", 1)
    new = apply(run, late).state
    assert new is not None
    return new, late  # the first result already won; the redelivery is ignored


def _after_run_ok() -> tuple[RunState, StepOutcome]:
    run = started()
    done = apply(run, outcome(run, "run_ok", data=1)).state
    assert done is not None
    return done, outcome(run, "run_ok", data=2)


def _step_after_failure() -> tuple[RunState, StepOutcome]:
    run = started(retries=0)
    failed = apply(run, step_error(run, None)).state
    assert failed is not None and failed.status == "failed"
    return failed, step_ok(run, "a", 1)


def _duplicate_error_while_waiting() -> tuple[RunState, StepOutcome]:
    run = started()
    err = step_error(run, "a")
    waiting = apply(run, err).state
    assert waiting is not None
    return waiting, err


def _late_success_while_waiting() -> tuple[RunState, StepOutcome]:
    run = started()
    waiting = apply(run, step_error(run, "a")).state
    assert waiting is not None
    return waiting, step_ok(run, "a", 1)


def _next_attempt_before_timer() -> tuple[RunState, StepOutcome]:
    run = started()
    waiting = apply(run, step_error(run, "a")).state
    assert waiting is not None
    return waiting, step_ok(run, "a", 1, attempt=1)


@pytest.mark.parametrize("scenario", [
    _in_flight, _wrong_attempt, _old_job_after_next_dispatched, _after_run_ok, _step_after_failure,
    _duplicate_error_while_waiting, _late_success_while_waiting, _next_attempt_before_timer,
], ids=lambda f: f.__name__.strip("_"))
def test_stale_or_duplicate_outcome_is_ignored(scenario: Callable[[], tuple[RunState, StepOutcome]]) -> None:
    run, cmd = scenario()
    decision = apply(run, cmd)
    assert (decision.changed, decision.actions) == (False, [])
    assert decision.state is not None and decision.state.model_dump() == run.model_dump()


def _waiting() -> RunState:
    run = started()
    waiting = apply(run, step_error(run, "a")).state
    assert waiting is not None
    return waiting


def _fired_twice() -> RunState:
    return fail_and_retry(started(), "a")


def _finished_while_waiting() -> RunState:
    run = _waiting().model_copy(deep=True)
    run.status = "cancelled"
    return run


@pytest.mark.parametrize(("make_run", "timer_id"), [
    pytest.param(_waiting, f"{RUN}.0:2", id="other-attempt"),
    pytest.param(_waiting, f"{RUN}.1:1", id="other-job"),
    pytest.param(_fired_twice, f"{RUN}.0:1", id="fired-twice"),
    pytest.param(started, f"{RUN}.0:1", id="no-retry-pending"),
    pytest.param(_finished_while_waiting, f"{RUN}.0:1", id="run-finished"),
])
def test_stale_timer_is_ignored(make_run: Callable[[], RunState], timer_id: str) -> None:
    run = make_run()
    decision = apply(run, timer(timer_id))
    assert (decision.changed, decision.actions) == (False, [])
    assert decision.state is not None and decision.state.model_dump() == run.model_dump()


# -- errors that are final -------------------------------------------------------------------


@pytest.mark.parametrize(("retries", "no_retry", "failures_before"), [
    pytest.param(3, True, 0, id="no_retry"),
    pytest.param(0, False, 0, id="no-retries-configured"),
    pytest.param(2, False, 2, id="attempts-spent"),
])
def test_final_step_error_memoizes_error_and_dispatches_next_job(retries: int, no_retry: bool,
                                                                 failures_before: int) -> None:
    run = started(retries=retries)
    run = apply(run, step_ok(run, "a", "A")).state  # type: ignore[assignment]
    for _ in range(failures_before):
        run = fail_and_retry(run, "b")

    decision = apply(run, step_error(run, "b", "card declined", no_retry=no_retry))

    new = decision.state
    assert decision.changed is True and new is not None
    assert new.status == "running"
    record = new.steps["h-b"]
    assert (record.status, record.error) == ("failed", ErrorInfo(name="ValueError", message="card declined"))
    assert [a.attempt for a in record.attempts] == list(range(failures_before + 1))
    job = dispatched(decision)
    assert (job.job_id, job.attempt) == (f"{RUN}.2", 0)
    assert job.memos == {
        "h-a": {"data": "A", "id": "a"},
        "h-b": {"error": {"name": "ValueError", "message": "card declined", "stack": None}, "id": "b"},
    }


@pytest.mark.parametrize(("retries", "no_retry", "failures_before"), [
    pytest.param(3, True, 0, id="no_retry"),
    pytest.param(0, False, 0, id="no-retries-configured"),
    pytest.param(2, False, 2, id="attempts-spent"),
])
def test_function_level_error_without_attempts_left_fails_run(retries: int, no_retry: bool,
                                                              failures_before: int) -> None:
    run = started(retries=retries)
    for _ in range(failures_before):
        run = fail_and_retry(run, None)

    decision = apply(run, step_error(run, None, "bad input", no_retry=no_retry), NOW + 9)

    failed = decision.state
    assert decision.changed is True and work(decision) == [] and failed is not None
    assert (failed.status, failed.error, failed.ended_at, failed.job) == (
        "failed", ErrorInfo(name="ValueError", message="bad input"), NOW + 9, None)


def test_function_level_error_with_attempts_left_is_retried() -> None:
    run = started(retries=1)
    decision = apply(run, step_error(run, None))
    assert decision.actions == [StartTimer("start_timer", f"{RUN}.0:1", NOW + 1_000)]
    assert decision.state is not None and decision.state.status == "running"


def test_step_failing_twice_then_succeeding_records_three_attempts() -> None:
    run = started(retries=4)
    run = fail_and_retry(run, "flaky")
    run = fail_and_retry(run, "flaky")
    decision = apply(run, step_ok(run, "flaky", "ok"))

    assert decision.state is not None
    attempts = decision.state.steps["h-flaky"].attempts
    assert [(a.attempt, a.error is not None) for a in attempts] == [(0, True), (1, True), (2, False)]
    job = dispatched(decision)
    assert (job.job_id, job.attempt) == (f"{RUN}.1", 0)  # the next job starts fresh


# -- limits ----------------------------------------------------------------------------------


def _with_steps(count: int, state_bytes: int = 0) -> RunState:
    run = started().model_copy(deep=True)
    for i in range(count):
        run.steps[f"old-{i}"] = StepRecord(hash=f"old-{i}", id=f"old-{i}", status="completed", output=i)
        run.step_order.append(f"old-{i}")
    run.state_bytes = state_bytes
    return run


@pytest.mark.parametrize(("steps", "state_bytes", "data", "error_fragment"), [
    pytest.param(limits.MAX_STEPS_PER_RUN - 1, 0, 1, None, id="1000th-step-accepted"),
    pytest.param(limits.MAX_STEPS_PER_RUN, 0, 1, "at most 1000 steps", id="1001st-step-fails-run"),
    pytest.param(0, limits.MAX_RUN_STATE_BYTES - 3, "x", None, id="state-exactly-at-limit"),
    pytest.param(0, limits.MAX_RUN_STATE_BYTES - 3, "xy", f"at most {limits.MAX_RUN_STATE_BYTES} bytes",
                 id="state-over-limit"),
])
def test_run_limits(steps: int, state_bytes: int, data: Any, error_fragment: str | None) -> None:
    run = _with_steps(steps, state_bytes)
    decision = apply(run, step_ok(run, "new", data))

    new = decision.state
    assert decision.changed is True and new is not None
    if error_fragment is None:
        assert new.status == "running" and "h-new" in new.steps
        assert dispatched(decision).attempt == 0
    else:
        assert work(decision) == [] and "h-new" not in new.steps
        assert new.status == "failed" and new.error is not None
        assert new.error.name == "LimitExceeded"
        assert error_fragment in new.error.message


def test_step_ok_with_run_done_memoizes_the_step_and_completes_without_another_job() -> None:
    run = started()
    d = apply(run, step_ok(run, "only", data=41, run_done=True, run_output={"answer": 42}))
    assert d.changed and work(d) == []
    assert d.state is not None
    assert (d.state.status, d.state.output, d.state.ended_at, d.state.job) == ("completed", {"answer": 42}, NOW, None)
    assert d.state.steps["h-only"].output == 41 and d.state.step_order == ["h-only"]


# -- singleton helpers: queued runs, release, cancellation --------------------------------------

from sluicegate.processors.run_decisions import cancel, queued, release, skip_queued  # noqa: E402


def test_a_queued_run_has_no_job_until_released() -> None:
    d = queued(trigger(), NOW, singleton_key="singleton/shop/welcome/")
    assert d.state is not None and d.changed and work(d) == []
    assert (d.state.status, d.state.job, d.state.started_at, d.state.singleton_key) == (
        "queued", None, None, "singleton/shop/welcome/")
    r = release(d.state, NOW + 50)
    assert r.state is not None and r.state.status == "running" and r.state.started_at == NOW + 50
    [dispatch] = r.actions
    assert isinstance(dispatch, Dispatch) and dispatch.job.attempt == 0 and dispatched(r).memos == {}
    assert release(r.state, NOW + 60).changed is False  # only a queued run is released


@pytest.mark.parametrize(("make", "changed"), [
    (lambda: queued(trigger(), NOW, None).state, True),
    (lambda: started(), False),
])
def test_skip_queued_only_skips_queued_runs(make: Callable[[], RunState], changed: bool) -> None:
    d = skip_queued(make(), "singleton_replaced", "replaced by run r2", NOW + 5)
    assert d.changed is changed
    if changed:
        assert d.state is not None and (d.state.status, d.state.skip_reason, d.state.ended_at) == (
            "skipped", "singleton_replaced", NOW + 5)


def test_cancel_drops_the_retry_timer_and_discards_the_step_in_flight() -> None:
    run = started(retries=2)
    waiting = apply(run, step_error(run, "a")).state  # now waiting on a retry timer
    assert waiting is not None and waiting.job is not None and waiting.job.retry_timer is not None
    d = cancel(waiting, "singleton: replaced by run r2", NOW + 10)
    assert d.state is not None and (d.state.status, d.state.ended_at, d.state.job) == ("cancelled", NOW + 10, None)
    assert d.state.error is not None and d.state.error.name == "Cancelled"
    assert work(d) == [DeleteTimer("delete_timer", waiting.job.retry_timer, waiting.job.retry_due)]
    late = apply(d.state, step_ok(run, "a", 1))  # the executing step finishes after the cancel
    assert late.changed is False and d.state.steps == {}
    assert cancel(d.state, "again", NOW + 20).changed is False
