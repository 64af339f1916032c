"""step.parallel branch jobs in the run state machine (``run_decisions.decide``).

The run's job reports ``op="plan"``; each new planned step becomes a job of its own
(``RunState.branches``, job id ``<run job id>#<hash[:16]>``), dispatched, retried and
memoized alone; the last branch to finish queues the run's next job. Also: stale branch
outcomes and timers, the steps-per-run limit, cancellation while branches run, the
branch's ``Job`` (``target_step``), the run view and the dispatch keys of branch jobs.
Commands are ``sluicegate.wire`` models; step hashes are the SDK's own (``step_hash``).
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable

import pytest

from sluicegate import limits
from sluicegate.lifecycle_config import Timeouts
from sluicegate.processors.run_decisions import (Decision, DeleteTimer, Dispatch, DispatchRef, EmitEvent, StartTimer,
                                               cancel, current_jobs, decide, job_for)
from sluicegate.sdk.step import step_hash
from sluicegate.state.dispatch_record import BRANCH_MARK, dispatch_key, job_dispatch_key
from sluicegate.state.run_state import RunState, StepRecord
from sluicegate.system_events import CANCELLED_EVENT, FAILED_EVENT, FINISHED_EVENT
from sluicegate.wire import (CancelRun, ErrorInfo, EventRecord, EventTrigger, FunctionDefinition, StepAttemptView,
                             StepOutcome, StepView, TimerFired, Trigger)

APP, FN, RUN = "shop", "fanout", "run-p"
NOW = 1_700_000_000_000
ENDED = NOW - 10
H_A, H_B, H_C, H_X = step_hash("a"), step_hash("b"), step_hash("c"), step_hash("x")
HASH = {"a": H_A, "b": H_B, "c": H_C, "x": H_X}
ERR = ErrorInfo(name="ValueError", message="boom")

TRIGGER_EVENT = EventRecord(app_id=APP, id="01TRIG", name="order.placed", data={"n": 1}, ts=NOW - 50,
                            received_at=NOW - 20)


def definition(*, retries: int = 2, timeouts: Timeouts | None = None) -> FunctionDefinition:
    return FunctionDefinition(app_id=APP, function_id=FN, name=FN, triggers=[EventTrigger(event="order.placed")],
                              retries=retries, backoff_ms=[1_000, 2_000], backoff_jitter_ms=0, timeouts=timeouts,
                              version="v1")


def apply(run: RunState | None, cmd: Any, now: int = NOW) -> Decision:
    """decide(), plus the invariant every case shares: the input state is never mutated."""
    before = None if run is None else run.model_dump()
    decision = decide(run, cmd, now)
    assert (None if run is None else run.model_dump()) == before
    return decision


def state_of(decision: Decision) -> RunState:
    assert decision.state is not None
    return decision.state


def work(decision: Decision) -> list[object]:
    return [a for a in decision.actions if not isinstance(a, EmitEvent)]


def emitted(decision: Decision) -> list[tuple[str, str]]:
    return [(a.event.name, a.event.id) for a in decision.actions if isinstance(a, EmitEvent)]


def started(*, retries: int = 2, timeouts: Timeouts | None = None, memoized: tuple[str, ...] = ()) -> RunState:
    """A running run; each of ``memoized`` was run by a job of its own first (so the run's
    job in flight is ``<RUN>.<len(memoized)>``)."""
    cmd = Trigger(app_id=APP, function_id=FN, run_id=RUN, function=definition(retries=retries, timeouts=timeouts),
                  events=[TRIGGER_EVENT])
    run = state_of(apply(None, cmd))
    for name in memoized:
        run = state_of(apply(run, main_outcome(run, "step_ok", step_hash=HASH[name], step_id=name,
                                               data=name.upper())))
    assert run.status == "running" and run.job is not None
    return run


def outcome(job_id: str, attempt: int, op: str, **fields: Any) -> StepOutcome:
    return StepOutcome(app_id=APP, function_id=FN, run_id=RUN, job_id=job_id, attempt=attempt, op=op,
                       started_at=ENDED - 2, ended_at=ENDED, **fields)


def main_outcome(run: RunState, op: str, **fields: Any) -> StepOutcome:
    assert run.job is not None
    return outcome(run.job.job_id, run.job.attempt, op, **fields)


def plan_of(run: RunState, *names: str) -> StepOutcome:
    return main_outcome(run, "plan", planned=[{"step_hash": HASH[n], "step_id": n} for n in names])


def bjid(h: str, seq: int = 0) -> str:
    """The job id of the branch running step ``h`` planned by the run's job ``seq``."""
    return f"{RUN}.{seq}{BRANCH_MARK}{h[:16]}"


def branch_dispatch(h: str, attempt: int = 0, seq: int = 0) -> Dispatch:
    return Dispatch("dispatch", DispatchRef(bjid(h, seq), attempt, branch=h))


def next_dispatch(seq: int) -> Dispatch:
    return Dispatch("dispatch", DispatchRef(f"{RUN}.{seq}", 0))


def branch_outcome(run: RunState, name: str, op: str = "step_ok", *, attempt: int | None = None,
                   **fields: Any) -> StepOutcome:
    """The outcome of the branch job running step ``name`` (its current attempt unless given)."""
    b = run.branches[HASH[name]]
    fields.setdefault("step_hash", HASH[name])
    fields.setdefault("step_id", name)
    if op == "step_ok":
        fields.setdefault("data", name.upper())
    if op == "step_error":
        fields.setdefault("error", ERR)
    return outcome(b.job_id, b.attempt if attempt is None else attempt, op, **fields)


def timer(timer_id: str) -> TimerFired:
    return TimerFired(app_id=APP, function_id=FN, run_id=RUN, timer_id=timer_id)


def planned(*names: str, retries: int = 2, timeouts: Timeouts | None = None) -> RunState:
    run = started(retries=retries, timeouts=timeouts)
    return state_of(apply(run, plan_of(run, *names)))


def fail_branch(run: RunState, name: str) -> RunState:
    """The branch's current attempt fails (retriable) and its retry timer fires."""
    run = state_of(apply(run, branch_outcome(run, name, "step_error")))
    b = run.branches[HASH[name]]
    assert b.retry_timer is not None
    return state_of(apply(run, timer(b.retry_timer)))


def with_steps(run: RunState, steps: int) -> RunState:
    run = run.model_copy(deep=True)
    for i in range(steps):
        run.steps[f"old-{i}"] = StepRecord(hash=f"old-{i}", id=f"old-{i}", status="completed", output=i)
        run.step_order.append(f"old-{i}")
    return run


# -- plan: one job per new step ------------------------------------------------------------------


@pytest.mark.parametrize(("memoized", "names", "new"), [
    pytest.param((), ("a",), ("a",), id="one-branch"),
    pytest.param((), ("a", "b", "c"), ("a", "b", "c"), id="three-branches"),
    pytest.param((), ("c", "a", "b"), ("c", "a", "b"), id="dispatched-in-planned-order"),
    pytest.param(("x",), ("a", "b"), ("a", "b"), id="after-an-earlier-step"),
])
def test_plan_dispatches_one_job_per_new_step(memoized: tuple[str, ...], names: tuple[str, ...],
                                              new: tuple[str, ...]) -> None:
    run = started(memoized=memoized)
    seq = len(memoized)
    d = apply(run, plan_of(run, *names))

    after = state_of(d)
    hashes = [HASH[n] for n in new]
    assert d.changed is True and after.status == "running"
    assert after.job is None  # the run's job waits for every branch
    assert d.actions == [branch_dispatch(h, seq=seq) for h in hashes]
    assert list(after.branches) == hashes
    ids = [a.job.job_id for a in d.actions if isinstance(a, Dispatch)]
    assert len(set(ids)) == len(ids) and f"{RUN}.{seq}" not in ids
    for n, h in zip(new, hashes):
        b = after.branches[h]
        assert (b.job_id, b.seq, b.attempt, b.step_id, b.dispatched_at, b.since_ms) == (
            bjid(h, seq), seq, 0, n, NOW, NOW)
        assert (b.retry_timer, b.failed_attempts) == (None, [])
    assert current_jobs(after) == list(after.branches.items())
    assert after.job_seq == seq + 1  # no run job was created
    assert list(after.steps) == [HASH[m] for m in memoized]


@pytest.mark.parametrize(("memoized", "entries", "expected"), [
    pytest.param(("a",), [{"step_hash": H_A, "step_id": "a"}, {"step_hash": H_B, "step_id": "b"},
                          {"step_hash": H_C, "step_id": "c"}], [(H_B, "b"), (H_C, "c")], id="memoized-skipped"),
    pytest.param(("a", "c"), [{"step_hash": H_A, "step_id": "a"}, {"step_hash": H_B, "step_id": "b"},
                              {"step_hash": H_C, "step_id": "c"}], [(H_B, "b")], id="only-one-left"),
    pytest.param((), [{"step_hash": H_A, "step_id": "a"}, {"step_hash": H_B, "step_id": "b"},
                      {"step_hash": H_A, "step_id": "a-again"}], [(H_A, "a"), (H_B, "b")],
                 id="duplicate-hash-deduplicated-first-id-wins"),
    pytest.param((), [{"step_hash": H_B, "step_id": "b"}, {"step_hash": H_B, "step_id": "b"}], [(H_B, "b")],
                 id="same-entry-twice"),
    pytest.param((), [{"step_hash": H_A}], [(H_A, H_A)], id="missing-step-id-uses-hash"),
    pytest.param((), [{"step_id": "nohash"}, {"step_hash": "", "step_id": "empty"},
                      {"step_hash": H_C, "step_id": "c"}], [(H_C, "c")], id="entries-without-hash-ignored"),
])
def test_plan_skips_memoized_and_duplicate_steps(memoized: tuple[str, ...], entries: list[dict[str, str]],
                                                 expected: list[tuple[str, str]]) -> None:
    run = started(memoized=memoized)
    seq = len(memoized)
    d = apply(run, main_outcome(run, "plan", planned=entries))

    after = state_of(d)
    assert d.actions == [branch_dispatch(h, seq=seq) for h, _ in expected]
    assert [(h, b.step_id) for h, b in after.branches.items()] == expected
    assert after.job is None
    for m in memoized:  # the memo is kept as it was
        assert after.steps[HASH[m]] == run.steps[HASH[m]]


@pytest.mark.parametrize(("memoized", "entries"), [
    pytest.param(("a", "b"), [{"step_hash": H_A, "step_id": "a"}, {"step_hash": H_B, "step_id": "b"}],
                 id="all-memoized"),
    pytest.param(("a",), [{"step_hash": H_A, "step_id": "a"}, {"step_hash": H_A, "step_id": "a"}],
                 id="all-memoized-duplicates"),
    pytest.param(("a",), [], id="empty-plan"),
    pytest.param(("a",), None, id="no-planned-field"),
])
def test_plan_with_nothing_new_queues_the_runs_next_job(memoized: tuple[str, ...],
                                                        entries: list[dict[str, str]] | None) -> None:
    run = started(memoized=memoized)
    seq = len(memoized)
    d = apply(run, main_outcome(run, "plan", planned=entries))

    after = state_of(d)
    assert d.changed is True
    assert d.actions == [next_dispatch(seq + 1)]
    assert after.branches == {} and after.job is not None and after.job.job_id == f"{RUN}.{seq + 1}"
    assert after.steps == run.steps


# -- branch results ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [pytest.param(p, id="-".join(p)) for p in itertools.permutations("abc")])
def test_branches_finish_in_any_order_and_only_the_last_queues_the_next_job(order: tuple[str, ...]) -> None:
    run = planned("a", "b", "c")
    for i, name in enumerate(order):
        d = apply(run, branch_outcome(run, name, data={"v": name}))
        run = state_of(d)
        assert d.changed is True and run.status == "running"
        assert run.steps[HASH[name]].output == {"v": name} and run.steps[HASH[name]].status == "completed"
        assert run.steps[HASH[name]].id == name
        if i < len(order) - 1:
            assert d.actions == [] and run.job is None
            assert HASH[name] not in run.branches and len(run.branches) == len(order) - i - 1
        else:
            assert d.actions == [next_dispatch(1)]
            assert run.branches == {} and run.job is not None and run.job.attempt == 0
    assert run.step_order == [HASH[n] for n in order]  # memoized in the order they finished
    assert job_for(run, NOW).memos == {HASH[n]: {"data": {"v": n}, "id": n} for n in order}
    assert job_for(run, NOW).target_step is None


def test_branch_attempt_is_recorded_with_its_times() -> None:
    run = planned("a", "b")
    d = apply(run, branch_outcome(run, "a"))
    assert state_of(d).steps[H_A].attempts == [StepAttemptView(attempt=0, started_at=ENDED - 2, ended_at=ENDED)]


@pytest.mark.parametrize(("fields", "due"), [
    pytest.param({}, NOW + 1_000, id="function-backoff"),
    pytest.param({"retry_after_ms": 7_000}, NOW + 7_000, id="retry-after"),
    pytest.param({"retry_after_ms": 10}, NOW + limits.MIN_RETRY_AFTER_MS, id="retry-after-clamped"),
    pytest.param({"step_hash": None}, NOW + 1_000, id="error-outside-the-step-retries-too"),
])
def test_retriable_branch_error_retries_that_branch_alone(fields: dict[str, Any], due: int) -> None:
    run = planned("a", "b", "c")
    d = apply(run, branch_outcome(run, "b", "step_error", **fields))

    after = state_of(d)
    b_timer = f"{bjid(H_B)}:1"
    assert d.changed is True and d.actions == [StartTimer("start_timer", b_timer, due)]
    b = after.branches[H_B]
    assert (b.retry_timer, b.retry_due, b.attempt) == (b_timer, due, 0)
    assert b.failed_attempts == [StepAttemptView(attempt=0, started_at=ENDED - 2, ended_at=ENDED, error=ERR)]
    assert H_B not in after.steps and after.status == "running" and after.job is None
    for other in (H_A, H_C):  # the other branches are untouched
        assert after.branches[other] == run.branches[other]

    # a sibling finishes meanwhile: the run still waits for b
    d = apply(after, branch_outcome(after, "a"))
    after = state_of(d)
    assert d.actions == [] and set(after.branches) == {H_B, H_C}

    # the retry timer fires: only b goes again, with attempt 1
    d = apply(after, timer(b_timer), NOW + 5_000)
    after = state_of(d)
    assert d.changed is True
    assert d.actions == [DeleteTimer("delete_timer", b_timer, due), branch_dispatch(H_B, attempt=1)]
    b = after.branches[H_B]
    assert (b.attempt, b.retry_timer, b.retry_due, b.dispatched_at) == (1, None, None, NOW + 5_000)
    assert after.branches[H_C].attempt == 0
    job = job_for(after, NOW + 5_000, branch=H_B)
    assert (job.job_id, job.attempt, job.target_step) == (bjid(H_B), 1, H_B)

    # attempt 1 succeeds; c is the last, it queues the run's next job
    d = apply(after, branch_outcome(after, "b"))
    after = state_of(d)
    assert d.actions == [] and after.steps[H_B].status == "completed"
    assert [v.attempt for v in after.steps[H_B].attempts] == [0, 1]
    assert after.steps[H_B].attempts[0].error == ERR and after.steps[H_B].attempts[1].error is None
    d = apply(after, branch_outcome(after, "c"))
    assert d.actions == [next_dispatch(1)]


def test_second_branch_failure_uses_the_next_backoff_delay() -> None:
    run = fail_branch(planned("a", "b"), "b")
    d = apply(run, branch_outcome(run, "b", "step_error"))
    assert d.actions == [StartTimer("start_timer", f"{bjid(H_B)}:2", NOW + 2_000)]


@pytest.mark.parametrize(("retries", "retried", "fields"), [
    pytest.param(2, 0, {"no_retry": True}, id="no-retry-on-first-attempt"),
    pytest.param(0, 0, {}, id="no-retries-configured"),
    pytest.param(2, 2, {}, id="attempts-spent"),
    pytest.param(2, 1, {"no_retry": True}, id="no-retry-after-a-retry"),
    pytest.param(2, 2, {"retry_after_ms": 5_000}, id="retry-after-ignored-when-attempts-spent"),
])
def test_final_branch_error_memoizes_the_failed_step(retries: int, retried: int, fields: dict[str, Any]) -> None:
    run = planned("a", "b", retries=retries)
    for _ in range(retried):
        run = fail_branch(run, "b")
    d = apply(run, branch_outcome(run, "b", "step_error", **fields))

    after = state_of(d)
    assert d.changed is True and d.actions == []  # no timer; a still runs
    assert after.status == "running" and H_B not in after.branches and list(after.branches) == [H_A]
    record = after.steps[H_B]
    assert (record.status, record.error, record.output, record.id) == ("failed", ERR, None, "b")
    assert [v.attempt for v in record.attempts] == list(range(retried + 1))
    assert all(v.error == ERR for v in record.attempts)

    d = apply(after, branch_outcome(after, "a"))
    after = state_of(d)
    assert d.actions == [next_dispatch(1)]
    assert job_for(after, NOW).memos[H_B] == {"error": ERR.model_dump(), "id": "b"}


@pytest.mark.parametrize(("retries", "fields"), [
    pytest.param(2, {"no_retry": True}, id="no-retry"),
    pytest.param(0, {}, id="attempts-spent"),
])
def test_branch_error_outside_its_step_on_a_final_attempt_fails_the_run(retries: int,
                                                                        fields: dict[str, Any]) -> None:
    run = planned("a", "b", "c", retries=retries)
    if retries:  # a waits for its retry timer, c is executing
        run = state_of(apply(run, branch_outcome(run, "a", "step_error")))
        assert run.branches[H_A].retry_timer is not None
    d = apply(run, branch_outcome(run, "b", "step_error", step_hash=None, **fields))

    after = state_of(d)
    assert d.changed is True
    assert (after.status, after.error, after.ended_at, after.job) == ("failed", ERR, NOW, None)
    assert after.branches == {} and H_B not in after.steps
    expected = [DeleteTimer("delete_timer", f"{bjid(H_A)}:1", NOW + 1_000)] if retries else []
    assert work(d) == expected  # the end drops the pending retry timer, dispatches nothing
    assert emitted(d) == [(FINISHED_EVENT, f"{RUN}-finished"), (FAILED_EVENT, RUN)]
    assert [s.status for s in after.view().steps] == []  # no branch shown running any more

    # c's outcome, arriving later, is discarded
    late = outcome(bjid(H_C), 0, "step_ok", step_hash=H_C, step_id="c", data=1)
    d = apply(after, late)
    assert d.changed is False and d.actions == [] and state_of(d).steps == after.steps


@pytest.mark.parametrize(("op", "fields", "fragment"), [
    pytest.param("step_ok", {"step_hash": H_X, "step_id": "x", "data": 1}, "'step_ok' for step 'x'",
                 id="ok-for-another-step"),
    pytest.param("step_ok", {"step_hash": None, "step_id": None, "data": 1}, "'step_ok'", id="ok-without-hash"),
    pytest.param("step_error", {"step_hash": H_X, "step_id": "x", "error": ERR}, "'step_error' for step 'x'",
                 id="error-for-another-step"),
    pytest.param("run_ok", {"step_hash": None, "step_id": None, "data": 1}, "'run_ok'", id="run-ok"),
    pytest.param("sleep", {"step_hash": H_B, "step_id": "b", "duration_ms": 1_000}, "'sleep' for step 'b'",
                 id="sleep"),
    pytest.param("plan", {"step_hash": None, "step_id": None, "planned": [{"step_hash": H_X, "step_id": "x"}]},
                 "'plan'", id="nested-plan"),
    pytest.param("steps", {"step_hash": None, "step_id": None, "results": []}, "'steps'", id="steps"),
])
def test_unexpected_branch_report_is_memoized_as_non_determinism(op: str, fields: dict[str, Any],
                                                                 fragment: str) -> None:
    run = planned("a", "b")  # two attempts are left: it is not retried all the same
    d = apply(run, outcome(bjid(H_B), 0, op, **fields))

    after = state_of(d)
    assert d.changed is True and d.actions == [] and after.status == "running"
    assert H_B not in after.branches and list(after.branches) == [H_A]
    record = after.steps[H_B]
    assert record.status == "failed" and record.id == "b" and record.output is None
    assert record.error is not None and record.error.name == "NonDeterminismError"
    assert "'b'" in record.error.message and fragment in record.error.message
    assert [v.error for v in record.attempts] == [record.error]
    assert H_X not in after.steps and after.pending is None


# -- stale outcomes and timers --------------------------------------------------------------------


def _old_attempt() -> tuple[RunState, Any]:
    run = fail_branch(planned("a", "b"), "b")  # b is at attempt 1
    return run, outcome(bjid(H_B), 0, "step_ok", step_hash=H_B, step_id="b", data=1)


def _future_attempt() -> tuple[RunState, Any]:
    run = planned("a", "b")
    return run, outcome(bjid(H_B), 1, "step_ok", step_hash=H_B, step_id="b", data=1)


def _while_retry_pending() -> tuple[RunState, Any]:
    run = planned("a", "b")
    run = state_of(apply(run, branch_outcome(run, "b", "step_error")))
    return run, outcome(bjid(H_B), 0, "step_ok", step_hash=H_B, step_id="b", data=1)


def _finished_branch_again() -> tuple[RunState, Any]:
    run = planned("a", "b")
    cmd = branch_outcome(run, "a")
    return state_of(apply(run, cmd)), cmd


def _unknown_branch() -> tuple[RunState, Any]:
    run = planned("a", "b")
    return run, outcome(bjid(H_C), 0, "step_ok", step_hash=H_C, step_id="c", data=1)


def _branch_of_another_run_job() -> tuple[RunState, Any]:
    run = planned("a", "b")
    return run, outcome(bjid(H_A, seq=3), 0, "step_ok", step_hash=H_A, step_id="a", data=1)


def _runs_old_job() -> tuple[RunState, Any]:
    run = planned("a", "b")
    return run, outcome(f"{RUN}.0", 0, "step_ok", step_hash=H_X, step_id="x", data=1)


def _duplicate_plan() -> tuple[RunState, Any]:
    run = started()
    cmd = plan_of(run, "a", "b")
    return state_of(apply(run, cmd)), cmd


def _old_job_after_branches() -> tuple[RunState, Any]:
    run = planned("a")
    run = state_of(apply(run, branch_outcome(run, "a")))
    assert run.job is not None and run.job.job_id == f"{RUN}.1"
    return run, outcome(f"{RUN}.0", 0, "plan", planned=[{"step_hash": H_B, "step_id": "b"}])


def _earlier_parallels_branch() -> tuple[RunState, Any]:
    run = planned("a")
    run = state_of(apply(run, branch_outcome(run, "a")))
    run = state_of(apply(run, plan_of(run, "b")))
    assert list(run.branches) == [H_B] and run.branches[H_B].job_id == bjid(H_B, seq=1)
    return run, outcome(bjid(H_A), 0, "step_ok", step_hash=H_A, step_id="a", data=2)


def _after_cancel() -> tuple[RunState, Any]:
    run = planned("a", "b")
    return state_of(apply(run, CancelRun(app_id=APP, function_id=FN, run_id=RUN))), \
        outcome(bjid(H_A), 0, "step_ok", step_hash=H_A, step_id="a", data=1)


def _stale_retry_timer_id() -> tuple[RunState, Any]:
    run = planned("a", "b")
    run = state_of(apply(run, branch_outcome(run, "b", "step_error")))
    return run, timer(f"{bjid(H_B)}:2")


def _timer_of_a_retried_branch() -> tuple[RunState, Any]:
    run = planned("a", "b")
    run = state_of(apply(run, branch_outcome(run, "b", "step_error")))
    cmd = timer(f"{bjid(H_B)}:1")
    return state_of(apply(run, cmd)), cmd  # fired already


def _branch_timer_after_cancel() -> tuple[RunState, Any]:
    run = planned("a", "b")
    run = state_of(apply(run, branch_outcome(run, "b", "step_error")))
    return state_of(apply(run, CancelRun(app_id=APP, function_id=FN, run_id=RUN))), timer(f"{bjid(H_B)}:1")


@pytest.mark.parametrize("make", [
    pytest.param(_old_attempt, id="branch-old-attempt"),
    pytest.param(_future_attempt, id="branch-other-attempt"),
    pytest.param(_while_retry_pending, id="branch-outcome-while-retry-timer-pending"),
    pytest.param(_finished_branch_again, id="branch-duplicate-after-memo"),
    pytest.param(_unknown_branch, id="unknown-branch-job"),
    pytest.param(_branch_of_another_run_job, id="branch-job-of-another-run-job"),
    pytest.param(_runs_old_job, id="runs-old-job-while-branches-run"),
    pytest.param(_duplicate_plan, id="duplicate-plan"),
    pytest.param(_old_job_after_branches, id="runs-old-job-after-branches"),
    pytest.param(_earlier_parallels_branch, id="branch-of-an-earlier-parallel"),
    pytest.param(_after_cancel, id="branch-outcome-after-cancel"),
    pytest.param(_stale_retry_timer_id, id="timer-wrong-attempt"),
    pytest.param(_timer_of_a_retried_branch, id="timer-fired-twice"),
    pytest.param(_branch_timer_after_cancel, id="branch-timer-after-cancel"),
])
def test_stale_outcomes_and_timers_change_nothing(make: Callable[[], tuple[RunState, Any]]) -> None:
    run, cmd = make()
    d = apply(run, cmd)
    assert d.changed is False and d.actions == []
    assert "stale" in d.note or "duplicate" in d.note
    assert state_of(d).model_dump() == run.model_dump()


# -- the steps-per-run limit ------------------------------------------------------------------


@pytest.mark.parametrize(("existing", "names", "fails"), [
    pytest.param(limits.MAX_STEPS_PER_RUN - 3, ("a", "b", "c"), False, id="exactly-at-the-limit"),
    pytest.param(limits.MAX_STEPS_PER_RUN - 2, ("a", "b", "c"), True, id="one-over"),
    pytest.param(limits.MAX_STEPS_PER_RUN, ("a",), True, id="at-the-limit-already"),
    pytest.param(limits.MAX_STEPS_PER_RUN - 1, ("a", "a"), False, id="duplicates-count-once"),
])
def test_plan_over_the_steps_per_run_limit_fails_the_run(existing: int, names: tuple[str, ...],
                                                          fails: bool) -> None:
    run = with_steps(started(), existing)
    d = apply(run, plan_of(run, *names))

    after = state_of(d)
    new = list(dict.fromkeys(HASH[n] for n in names))
    if not fails:
        assert after.status == "running" and d.actions == [branch_dispatch(h) for h in new]
        for h in new:  # every branch may still be memoized: the run reaches the limit exactly
            d = apply(after, outcome(bjid(h), 0, "step_ok", step_hash=h, step_id=h, data=0))
            after = state_of(d)
        assert after.status == "running" and len(after.steps) == limits.MAX_STEPS_PER_RUN
        assert d.actions == [next_dispatch(1)]
        return
    assert d.changed is True
    assert (after.status, after.job, after.branches, len(after.steps)) == ("failed", None, {}, existing)
    assert after.error is not None and after.error.name == "LimitExceeded"
    assert f"at most {limits.MAX_STEPS_PER_RUN} steps" in after.error.message
    assert f"planned {len(new)} more" in after.error.message
    assert work(d) == []
    assert emitted(d) == [(FINISHED_EVENT, f"{RUN}-finished"), (FAILED_EVENT, RUN)]


def test_branch_result_over_the_state_limit_fails_the_run_and_drops_sibling_retry_timers() -> None:
    run = planned("a", "b")
    run = state_of(apply(run, branch_outcome(run, "a", "step_error")))
    big = "y" * 64
    run = run.model_copy(update={"state_bytes": limits.MAX_RUN_STATE_BYTES - len(json.dumps(big)) + 1})
    d = apply(run, branch_outcome(run, "b", data=big))

    after = state_of(d)
    assert (after.status, after.branches, H_B in after.steps) == ("failed", {}, False)
    assert after.error is not None and after.error.name == "LimitExceeded"
    assert work(d) == [DeleteTimer("delete_timer", f"{bjid(H_A)}:1", NOW + 1_000)]


# -- cancellation while branches run -------------------------------------------------------------


def _cancel_cmd(run: RunState) -> Decision:
    return apply(run, CancelRun(app_id=APP, function_id=FN, run_id=RUN, reason="stop", by="api"))


def _cancel_direct(run: RunState) -> Decision:
    before = run.model_dump()
    d = cancel(run, "stop", NOW, by="bulk")
    assert run.model_dump() == before
    return d


def _finish_timeout(run: RunState) -> Decision:
    return apply(run, timer(f"{RUN}:timeout-finish"))


@pytest.mark.parametrize(("how", "by"), [
    pytest.param(_cancel_cmd, "api", id="cancel-command"),
    pytest.param(_cancel_direct, "bulk", id="cancel-function"),
    pytest.param(_finish_timeout, "timeout", id="finish-timeout"),
])
def test_cancel_while_branches_run_drops_them_and_their_retry_timers(how: Callable[[RunState], Decision],
                                                                     by: str) -> None:
    run = planned("a", "b", "c", timeouts=Timeouts(finish_ms=60_000))
    run = state_of(apply(run, branch_outcome(run, "a")))             # a done
    run = state_of(apply(run, branch_outcome(run, "b", "step_error")))  # b waits for its retry timer
    d = how(run)

    after = state_of(d)
    assert d.changed is True
    assert (after.status, after.cancelled_by, after.job, after.branches) == ("cancelled", by, None, {})
    assert work(d) == [DeleteTimer("delete_timer", f"{bjid(H_B)}:1", NOW + 1_000)]
    assert emitted(d) == [(FINISHED_EVENT, f"{RUN}-finished"), (CANCELLED_EVENT, RUN)]
    assert current_jobs(after) == []
    assert [(s.hash, s.status) for s in after.view().steps] == [(H_A, "completed")]

    # c, still executing when the run was cancelled, reports later: discarded
    late = apply(after, outcome(bjid(H_C), 0, "step_ok", step_hash=H_C, step_id="c", data=3))
    assert late.changed is False and late.actions == [] and H_C not in state_of(late).steps
    fired = apply(after, timer(f"{bjid(H_B)}:1"))
    assert fired.changed is False and fired.actions == []


# -- the branch's job, the run view, dispatch keys -------------------------------------------------


@pytest.mark.parametrize(("finished", "memos"), [
    pytest.param((), {H_X: {"data": "X", "id": "x"}}, id="no-sibling-finished"),
    pytest.param(("a",), {H_X: {"data": "X", "id": "x"}, H_A: {"data": "A", "id": "a"}}, id="one-sibling-ok"),
    pytest.param(("c", "a"), {H_X: {"data": "X", "id": "x"}, H_C: {"error": ERR.model_dump(), "id": "c"},
                              H_A: {"data": "A", "id": "a"}}, id="sibling-failed-and-ok"),
])
def test_job_for_a_branch_targets_its_step_with_the_memos_so_far(finished: tuple[str, ...],
                                                                 memos: dict[str, Any]) -> None:
    run = started(memoized=("x",))
    run = state_of(apply(run, plan_of(run, "a", "b", "c")))
    for name in finished:
        cmd = branch_outcome(run, name, "step_error", no_retry=True) if name == "c" else branch_outcome(run, name)
        run = state_of(apply(run, cmd))

    job = job_for(run, NOW + 7, lease_id="lease-1", lease_ms=30_000, branch=H_B)
    assert (job.job_id, job.run_id, job.attempt, job.max_attempts, job.target_step) == (
        bjid(H_B, seq=1), RUN, 0, 3, H_B)
    assert (job.dispatched_at, job.lease_id, job.lease_ms) == (NOW + 7, "lease-1", 30_000)
    assert job.memos == memos
    assert list(job.memos) == list(memos)  # in the order they were memoized
    assert job.events == run.events
    assert job_dispatch_key(RUN, job.job_id) == dispatch_key(RUN, job.target_step)


def test_job_for_a_retried_branch_carries_its_attempt() -> None:
    run = fail_branch(fail_branch(planned("a", "b"), "b"), "b")
    job = job_for(run, NOW, branch=H_B)
    assert (job.attempt, job.target_step) == (2, H_B)
    assert job_for(run, NOW, branch=H_A).attempt == 0


def test_view_shows_running_branches_after_the_memoized_steps() -> None:
    run = started(memoized=("x",))
    run = state_of(apply(run, plan_of(run, "a", "b", "c")))
    run = state_of(apply(run, branch_outcome(run, "c", data=[1])))
    run = state_of(apply(run, branch_outcome(run, "b", "step_error")))

    view = run.view()
    assert view.status == "running"
    failed = StepAttemptView(attempt=0, started_at=ENDED - 2, ended_at=ENDED, error=ERR)
    c_attempt = StepAttemptView(attempt=0, started_at=ENDED - 2, ended_at=ENDED)
    assert view.steps == [
        StepView(hash=H_X, id="x", status="completed", output="X", attempts=run.steps[H_X].attempts),
        StepView(hash=H_C, id="c", status="completed", output=[1], attempts=[c_attempt]),
        StepView(hash=H_A, id="a", status="running"),
        StepView(hash=H_B, id="b", status="running", attempts=[failed]),  # retrying: still running
    ]


@pytest.mark.parametrize(("job_id", "key"), [
    pytest.param(f"{RUN}.0", RUN, id="run-job"),
    pytest.param(f"{RUN}.12", RUN, id="later-run-job"),
    pytest.param(bjid(H_A), f"{RUN}#{H_A[:16]}", id="branch-job"),
    pytest.param(bjid(H_A, seq=9), f"{RUN}#{H_A[:16]}", id="branch-job-of-a-later-run-job"),
    pytest.param(bjid(H_B), f"{RUN}#{H_B[:16]}", id="other-branch-job"),
])
def test_job_dispatch_key_names_the_run_or_the_branch(job_id: str, key: str) -> None:
    assert job_dispatch_key(RUN, job_id) == key
    branch = job_id.rpartition(BRANCH_MARK)[2] if BRANCH_MARK in job_id else None
    assert dispatch_key(RUN, branch) == key


@pytest.mark.parametrize("branch", [pytest.param(None, id="none"), pytest.param("", id="empty")])
def test_dispatch_key_of_the_runs_job_is_the_run_id(branch: str | None) -> None:
    assert dispatch_key(RUN, branch) == RUN


def test_dispatch_keys_of_planned_branches_round_trip_and_are_distinct() -> None:
    d = apply(started(), main_outcome(started(), "plan", planned=[
        {"step_hash": h, "step_id": n} for n, h in HASH.items()]))
    refs = [a.job for a in d.actions if isinstance(a, Dispatch)]
    assert len(refs) == 4
    keys = [dispatch_key(RUN, r.branch) for r in refs]
    assert [job_dispatch_key(RUN, r.job_id) for r in refs] == keys
    assert len(set(keys)) == 4 and RUN not in keys
    assert all(k == f"{RUN}{BRANCH_MARK}{r.branch[:16]}" for k, r in zip(keys, refs) if r.branch)
