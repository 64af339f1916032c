"""step.parallel in the SDK (no broker): discovery, the plan of branch jobs, a branch job
running only its target step, memo replay, branch errors, retries of only the failed
branches, non-determinism, and the run decision for a ``steps`` outcome (older workers)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from sluicegate.sdk import NonRetriableError, Sluicegate, StepError, TriggerEvent, testing
from sluicegate.sdk.step import MAX_PARALLEL, step_hash

EVENT = {"name": "go", "data": {}}


def ok(value: Any) -> dict[str, Any]:
    return {"data": value}


def failed(name: str = "ValueError", message: str = "bad") -> dict[str, Any]:
    return {"error": {"name": name, "message": message}}


def make(handler: Callable[..., Any], **config: Any) -> Any:
    sg = Sluicegate(app_id="par")
    return sg.function(id="fn", trigger=TriggerEvent(event="go"), **config)(handler)


def three_branches(ran: list[str]) -> Callable[..., Any]:
    def work(name: str) -> Callable[[], str]:
        def body() -> str:
            ran.append(name)
            return name.upper()
        return body

    def handler(ctx: Any, step: Any) -> Any:
        a, b, c = step.parallel([lambda: step.run("a", work("a")), lambda: step.run("b", work("b")),
                                 lambda: step.run("c", work("c"))])
        return step.run("join", lambda: a + b + c)
    return handler


def branch_result(name: str, value: Any) -> dict[str, Any]:
    return {"op": "step_ok", "step_hash": step_hash(name), "step_id": name, "data": value}


@pytest.mark.parametrize(("memos", "planned"), [
    pytest.param({}, ["a", "b", "c"], id="nothing-memoized"),
    pytest.param({step_hash("a"): ok("A")}, ["b", "c"], id="a-memoized"),
    pytest.param({step_hash("b"): ok("B")}, ["a", "c"], id="b-finished-first"),
])
def test_new_branch_steps_are_planned_as_jobs_of_their_own_and_none_runs(
        memos: dict[str, Any], planned: list[str]) -> None:
    ran: list[str] = []
    out = testing.call(make(three_branches(ran)), EVENT, memos)
    assert out == {"op": "plan", "planned": [{"step_hash": step_hash(n), "step_id": n} for n in planned]}
    assert ran == []


def test_a_single_new_branch_step_runs_in_the_job_that_reached_it() -> None:
    ran: list[str] = []
    out = testing.call(make(three_branches(ran)), EVENT, {step_hash("a"): ok("A"), step_hash("c"): ok("C")})
    assert out == branch_result("b", "B") and ran == ["b"]


@pytest.mark.parametrize(("memos", "target"), [
    pytest.param({}, "a", id="first"),
    pytest.param({}, "c", id="last"),
    pytest.param({step_hash("a"): ok("A")}, "b", id="sibling-memoized"),
    pytest.param({step_hash("a"): ok("A"), step_hash("b"): ok("B")}, "c", id="only-one-left"),
])
def test_a_branch_job_runs_only_its_target_step(memos: dict[str, Any], target: str) -> None:
    ran: list[str] = []
    out = testing.call(make(three_branches(ran)), EVENT, memos, target=step_hash(target))
    assert out == branch_result(target, target.upper()) and ran == [target]


@pytest.mark.parametrize(("memos", "target", "why"), [
    pytest.param({step_hash("a"): ok("A")}, "a", "without it", id="target-already-memoized"),
    pytest.param({}, "zzz", "without it", id="target-not-in-the-group"),
])
def test_a_branch_job_that_misses_its_step_reports_non_determinism(
        memos: dict[str, Any], target: str, why: str) -> None:
    ran: list[str] = []
    out = testing.call(make(three_branches(ran)), EVENT, memos, target=step_hash(target))
    assert (out["op"], out["step_hash"], out["no_retry"], out["error"]["name"]) == (
        "step_error", step_hash(target), True, "NonDeterminismError")
    assert why in out["error"]["message"] and ran == []


def test_a_branch_job_stops_at_a_different_new_step_before_the_group() -> None:
    ran: list[str] = []

    def handler(ctx: Any, step: Any) -> Any:
        step.run("new-first", lambda: ran.append("new-first"))
        return step.parallel([lambda: step.run("a", lambda: ran.append("a"))])

    out = testing.call(make(handler), EVENT, {}, target=step_hash("a"))
    assert (out["op"], out["error"]["name"], out["step_hash"]) == ("step_error", "NonDeterminismError", step_hash("a"))
    assert "'new-first'" in out["error"]["message"] and ran == []


def test_all_branches_memoized_returns_their_results_in_order() -> None:
    ran: list[str] = []
    fn = make(three_branches(ran))
    memos = {step_hash("c"): ok("C"), step_hash("a"): ok("A"), step_hash("b"): ok("B")}  # completion order
    out = testing.call(fn, EVENT, memos)
    assert out["op"] == "step_ok" and out["step_id"] == "join" and out["data"] == "ABC"
    assert ran == []


@pytest.mark.parametrize(("target", "name", "no_retry"), [
    pytest.param("bad", "ValueError", False, id="retriable"),
    pytest.param("final", "NonRetriableError", True, id="non-retriable"),
])
def test_a_failing_branch_job_reports_its_step_error(target: str, name: str, no_retry: bool) -> None:
    def handler(ctx: Any, step: Any) -> Any:
        return step.parallel([lambda: step.run("good", lambda: 1),
                              lambda: step.run("bad", lambda: (_ for _ in ()).throw(ValueError("no"))),
                              lambda: step.run("final", lambda: (_ for _ in ()).throw(NonRetriableError("stop")))])

    out = testing.call(make(handler), EVENT, target=step_hash(target))
    assert (out["op"], out["step_hash"], out["step_id"], out["error"]["name"], out["no_retry"]) == (
        "step_error", step_hash(target), target, name, no_retry)


def test_a_memoized_branch_error_raises_step_error_from_parallel() -> None:
    caught: list[str] = []

    def handler(ctx: Any, step: Any) -> Any:
        try:
            step.parallel([lambda: step.run("a", lambda: 1), lambda: step.run("b", lambda: 2)])
        except StepError as exc:
            caught.append(exc.step_id)
            return "handled"
        return "no error"

    out = testing.call(make(handler), EVENT, {step_hash("a"): ok(1), step_hash("b"): failed()})
    assert out == {"op": "run_ok", "data": "handled"} and caught == ["b"]


def test_the_test_kit_retries_only_the_failed_branch() -> None:
    calls = {"a": 0, "b": 0}

    def handler(ctx: Any, step: Any) -> Any:
        def flaky() -> str:
            calls["b"] += 1
            if calls["b"] == 1:
                raise RuntimeError("once")
            return "B"

        def steady() -> str:
            calls["a"] += 1
            return "A"

        a, b = step.parallel([lambda: step.run("a", steady), lambda: step.run("b", flaky)])
        return a + b

    result = testing.run(make(handler, retries=2), EVENT)
    assert (result.status, result.output, calls) == ("completed", "AB", {"a": 1, "b": 2})


@pytest.mark.parametrize(("branches", "message"), [
    pytest.param([], f"1 to {MAX_PARALLEL} callables", id="empty"),
    pytest.param(["not callable"], "callables", id="not-callable"),
    pytest.param([lambda: None] * (MAX_PARALLEL + 1), f"1 to {MAX_PARALLEL}", id="too-many"),
])
def test_bad_branches_fail_the_run_without_retries(branches: list[Any], message: str) -> None:
    def handler(ctx: Any, step: Any) -> Any:
        return step.parallel(branches)

    out = testing.call(make(handler), EVENT)
    assert out["op"] == "step_error" and out["no_retry"] is True and message in out["error"]["message"]


def test_a_sleep_cannot_start_a_branch() -> None:
    def handler(ctx: Any, step: Any) -> Any:
        return step.parallel([lambda: step.sleep("nap", 1000)])

    out = testing.call(make(handler), EVENT)
    assert out["op"] == "step_error" and out["no_retry"] is True and "only step.run" in out["error"]["message"]


def test_a_memo_no_longer_reached_next_to_a_parallel_group_is_non_determinism() -> None:
    ran: list[str] = []
    fn = make(three_branches(ran))
    out = testing.call(fn, EVENT, {step_hash("gone"): {"data": 1, "id": "gone"}})
    assert out["op"] == "step_error" and out["error"]["name"] == "NonDeterminismError"
    assert "'gone'" in out["error"]["message"] and ran == []


def test_async_branches_are_planned_and_a_branch_job_awaits_its_step() -> None:
    started: list[str] = []

    async def handler(ctx: Any, step: Any) -> Any:
        async def work(name: str) -> str:
            started.append(name)
            return name

        a, b = await step.parallel([lambda: step.run("a", work, "a"), lambda: step.run("b", work, "b")])
        return a + b

    fn = make(handler)
    assert testing.call(fn, EVENT) == {"op": "plan", "planned": [
        {"step_hash": step_hash("a"), "step_id": "a"}, {"step_hash": step_hash("b"), "step_id": "b"}]}
    assert testing.call(fn, EVENT, target=step_hash("b")) == branch_result("b", "b") and started == ["b"]
    assert testing.call(fn, EVENT, {step_hash("a"): ok("a"), step_hash("b"): ok("b")}) == {
        "op": "run_ok", "data": "ab"}


def test_the_test_kit_runs_a_parallel_group_to_the_end() -> None:
    ran: list[str] = []
    result = testing.run(make(three_branches(ran)), EVENT)
    assert (result.status, result.output, sorted(ran)) == ("completed", "ABC", ["a", "b", "c"])
    assert result.step_ids == ["a", "b", "c", "join"]


# -- the run decision for a ``steps`` outcome ------------------------------------------------

def test_decide_memoizes_each_branch_and_retries_only_for_the_failed_one() -> None:
    from sluicegate.processors.run_decisions import Dispatch, StartTimer, decide
    from sluicegate.wire import FunctionDefinition, StepOutcome, Trigger, EventRecord

    fn = FunctionDefinition(app_id="par", function_id="fn", name="fn", triggers=[], retries=2, backoff_ms=[1000],
                            backoff_jitter_ms=0)
    event = EventRecord(app_id="par", id="e1", name="go", ts=0, received_at=0)
    run = decide(None, Trigger(app_id="par", function_id="fn", run_id="r1", function=fn, events=[event]), 0).state
    assert run is not None and run.job is not None

    def outcome(attempt: int, results: list[dict[str, Any]]) -> StepOutcome:
        assert run is not None and run.job is not None
        return StepOutcome(app_id="par", function_id="fn", run_id="r1", job_id=run.job.job_id, attempt=attempt,
                           op="steps", results=results, started_at=10, ended_at=20)

    bad = {"op": "step_error", "step_hash": step_hash("b"), "step_id": "b", "error": {"name": "E", "message": "x"}}
    d = decide(run, outcome(0, [branch_result("a", 1), bad]), 100)
    assert d.state is not None and list(d.state.steps) == [step_hash("a")]
    assert [type(a) for a in d.actions] == [StartTimer] and d.actions[0].due_ms == 1100
    run = d.state
    d = decide(run, outcome(0, [branch_result("a", 1), bad]), 150)
    assert d.note  # the same attempt again: stale, first result wins
    from sluicegate.wire import TimerFired

    assert run.job is not None and run.job.retry_timer is not None
    d = decide(run, TimerFired(app_id="par", function_id="fn", run_id="r1", timer_id=run.job.retry_timer), 1100)
    run = d.state
    assert run is not None
    final_bad = {**bad, "no_retry": True}
    d = decide(run, outcome(1, [final_bad]), 1200)
    assert d.state is not None and d.state.steps[step_hash("b")].status == "failed"
    assert [type(a) for a in d.actions] == [Dispatch]
