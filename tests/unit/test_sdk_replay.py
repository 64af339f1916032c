"""The SDK's replay model, driven through its own test kit (``sluicegate.sdk.testing``).

No broker: constructing ``Sluicegate`` does not connect, and ``testing.call`` / ``testing.run``
call handlers in-process with the memos the engine would send.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from typing import Any, Callable

import pytest
from pydantic import ValidationError

from sluicegate import limits
from sluicegate.sdk import (
    Context,
    Function,
    FunctionConfig,
    NonRetriableError,
    Retries,
    RetryAfterError,
    Sluicegate,
    Step,
    StepError,
    TriggerEvent,
    testing,
)
from sluicegate.sdk.step import step_hash

EVENT = {"name": "order.placed", "data": {"order": 42}}


def define(handler: Callable[..., Any], retries: Retries | int = 3) -> Function:
    sg = Sluicegate(app_id="shop")
    return sg.function(id="fn", trigger="order.placed", retries=retries)(handler)


def ok_memo(data: Any) -> dict[str, Any]:
    return {"data": data}


def err_memo(name: str = "ValueError", message: str = "declined") -> dict[str, Any]:
    return {"error": {"name": name, "message": message, "stack": "Traceback ..."}}


# -- step ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(("step_id", "expected"), [
    ("a", "86f7e437faa5a7fce15d1ddcb9eaeaea377667b8"),
    ("a:1", "de89bfaf06245091a7873290a793604612302247"),
    ("a:2", "20276a922b7f092ff864f0fedcec18a7ff3bfeab"),
    ("charge-card", "b2ae8f272ea660900fca3aeefbd39695c43f5cc9"),
    ("日本", hashlib.sha1("日本".encode()).hexdigest()),
])
def test_step_hash_is_hex_sha1_of_the_id(step_id: str, expected: str) -> None:
    # Memos are keyed by these hashes: a change here orphans every run in flight.
    assert step_hash(step_id) == expected


@pytest.mark.parametrize(("memoized", "runs_as"), [
    (0, "a"),
    (1, "a:1"),
    (2, "a:2"),
])
def test_repeated_step_ids_get_a_counter_suffix(memoized: int, runs_as: str) -> None:
    def handler(ctx: Context, step: Step) -> list[Any]:
        return [step.run("a", lambda: i) for i in range(3)]

    fn = define(handler)
    memos = {step_hash(sid): ok_memo(sid) for sid in ["a", "a:1", "a:2"][:memoized]}
    out = testing.call(fn, EVENT, memos)
    expected = {"op": "step_ok", "step_hash": step_hash(runs_as), "step_id": runs_as, "data": memoized}
    if runs_as == "a:2":  # the last step: the look-ahead sees the function return
        expected |= {"run_done": True, "run_output": ["a", "a:1", 2]}
    assert out == expected


# -- one call --------------------------------------------------------------------------------


def three_steps(counter: Counter[str]) -> Callable[[Context, Step], Any]:
    def work(name: str, value: Any) -> Callable[[], Any]:
        def run() -> Any:
            counter[name] += 1
            return value
        return run

    def handler(ctx: Context, step: Step) -> Any:
        a = step.run("a", work("a", 1))
        b = step.run("b", work("b", {"from_a": a}))
        c = step.run("c", work("c", [a, b]))
        return {"a": a, "b": b, "c": c}

    return handler


@pytest.mark.parametrize(("memos", "expected", "ran"), [
    pytest.param({}, {"op": "step_ok", "step_hash": step_hash("a"), "step_id": "a", "data": 1}, ["a"],
                 id="first-call-runs-first-step"),
    pytest.param({step_hash("a"): ok_memo(10)},
                 {"op": "step_ok", "step_hash": step_hash("b"), "step_id": "b", "data": {"from_a": 10}}, ["b"],
                 id="memo-value-is-returned-not-recomputed"),
    pytest.param({step_hash("a"): ok_memo(1), step_hash("b"): ok_memo("B")},
                 {"op": "step_ok", "step_hash": step_hash("c"), "step_id": "c", "data": [1, "B"],
                  # look-ahead: the function returns right after the last step, so no extra call
                  "run_done": True, "run_output": {"a": 1, "b": "B", "c": [1, "B"]}}, ["c"],
                 id="third-step"),
    pytest.param({step_hash("a"): ok_memo(1), step_hash("b"): ok_memo(2), step_hash("c"): ok_memo(3)},
                 {"op": "run_ok", "data": {"a": 1, "b": 2, "c": 3}}, [], id="all-memoized-returns"),
])
def test_memoized_steps_never_run_again(memos: dict[str, Any], expected: dict[str, Any], ran: list[str]) -> None:
    counter: Counter[str] = Counter()
    fn = define(three_steps(counter))
    assert testing.call(fn, EVENT, memos) == expected
    assert counter == Counter(ran)  # at most one step per call, never a memoized one


def raiser(exc: BaseException) -> Callable[[], Any]:
    def run() -> Any:
        raise exc
    return run


@pytest.mark.parametrize(("exc", "no_retry", "retry_after_ms"), [
    pytest.param(ValueError("declined"), False, None, id="plain-error"),
    pytest.param(KeyError("k"), False, None, id="key-error"),
    pytest.param(NonRetriableError("declined"), True, None, id="non-retriable"),
    pytest.param(RetryAfterError("declined", dt.timedelta(seconds=30)), False, 30_000, id="retry-after-timedelta"),
    pytest.param(RetryAfterError("declined", dt.timedelta(minutes=2, milliseconds=5)), False, 120_005,
                 id="retry-after-ms-precision"),
    pytest.param(RetryAfterError("declined", 1_500), False, 1_500, id="retry-after-int-ms"),
])
def test_step_raising_returns_step_error(exc: Exception, no_retry: bool, retry_after_ms: int | None) -> None:
    fn = define(lambda ctx, step: step.run("charge", raiser(exc)))
    out = testing.call(fn, EVENT)

    assert (out["op"], out["step_hash"], out["step_id"], out["no_retry"]) == (
        "step_error", step_hash("charge"), "charge", no_retry)
    assert out.get("retry_after_ms") == retry_after_ms
    assert (out["error"]["name"], out["error"]["message"]) == (type(exc).__name__, str(exc))
    assert type(exc).__name__ in out["error"]["stack"]


def test_retry_after_datetime_is_ms_from_now() -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    fn = define(lambda ctx, step: step.run("a", raiser(RetryAfterError("later", when))))
    out = testing.call(fn, EVENT)
    assert 3_599_000 <= out["retry_after_ms"] <= 3_600_000


@pytest.mark.parametrize(("exc", "no_retry"), [
    (ValueError("bad input"), False),
    (NonRetriableError("bad input"), True),
])
def test_error_outside_steps_has_no_step_hash(exc: Exception, no_retry: bool) -> None:
    def handler(ctx: Context, step: Step) -> Any:
        step.run("a", lambda: 1)
        raise exc

    out = testing.call(define(handler), EVENT, {step_hash("a"): ok_memo(1)})
    assert (out["op"], out["step_hash"], out["no_retry"], out["error"]["message"]) == (
        "step_error", None, no_retry, "bad input")


# -- memoized errors -------------------------------------------------------------------------


def test_memoized_error_raises_step_error_that_user_code_can_catch() -> None:
    ran: list[str] = []

    def handler(ctx: Context, step: Step) -> Any:
        try:
            step.run("charge", lambda: ran.append("charge"))
        except StepError as err:
            fallback = step.run("refund", lambda: "refunded")
            return {"step": err.step_id, "name": err.name, "message": err.error_message, "then": fallback}
        return "not reached"

    fn = define(handler)
    memos = {step_hash("charge"): err_memo(), step_hash("refund"): ok_memo("refunded")}
    assert testing.call(fn, EVENT, memos) == {
        "op": "run_ok", "data": {"step": "charge", "name": "ValueError", "message": "declined", "then": "refunded"}}
    assert ran == []


def test_uncaught_memoized_error_is_a_final_step_error() -> None:
    fn = define(lambda ctx, step: step.run("charge", lambda: "never"))
    out = testing.call(fn, EVENT, {step_hash("charge"): err_memo("CardError", "declined")})
    assert (out["op"], out.get("step_hash"), out["no_retry"], out["error"]["name"]) == (
        "step_error", None, True, "StepError")
    assert out["error"]["message"] == "step 'charge' failed: CardError: declined"


@pytest.mark.parametrize(("step_fn", "expected_op"), [
    (lambda: "fine", "step_ok"),
    (raiser(ValueError("boom")), "step_error"),
])
def test_except_exception_does_not_swallow_the_step_interrupt(step_fn: Callable[[], Any], expected_op: str) -> None:
    after: list[str] = []

    def handler(ctx: Context, step: Step) -> Any:
        try:
            step.run("a", step_fn)
        except Exception:  # noqa: BLE001 - this is what careless user code does
            return "swallowed"
        after.append("ran past the step")
        return "not reached"

    out = testing.call(define(handler), EVENT)
    assert (out["op"], out["step_id"]) == (expected_op, "a")
    assert out.get("run_output") != "swallowed"
    # Past the step only in the look-ahead call, where "a" is already memoized.
    assert after == (["ran past the step"] if expected_op == "step_ok" else [])
    assert out.get("run_done", False) is (expected_op == "step_ok")


# -- output limits ---------------------------------------------------------------------------

MAX = limits.MAX_STEP_OUTPUT_BYTES


@pytest.mark.parametrize(("value", "fragment"), [
    pytest.param(object(), "JSON-serializable", id="object"),
    pytest.param({1, 2}, "JSON-serializable", id="set"),
    # NaN/Infinity are not JSON: the wire (pydantic) turns them into null, so a replay would
    # see a different value than the first call did.
    pytest.param(float("nan"), "JSON-serializable", id="nan"),
    pytest.param({"x": float("inf")}, "JSON-serializable", id="infinity"),
    pytest.param("x" * (MAX - 2), None, id="exactly-4MiB"),
    pytest.param("x" * (MAX - 1), f"the limit is {MAX} bytes", id="one-byte-over-4MiB"),
    pytest.param({"s": "é" * (MAX // 2)}, f"the limit is {MAX} bytes", id="utf8-over-4MiB"),
])
def test_step_output_must_be_json_and_at_most_4_mib(value: Any, fragment: str | None) -> None:
    out = testing.call(define(lambda ctx, step: step.run("big", lambda: value)), EVENT)
    if fragment is None:
        assert (out["op"], out["step_id"]) == ("step_ok", "big")
    else:
        assert (out["op"], out["step_id"], out.get("no_retry")) == ("step_error", "big", True)
        assert out["error"]["name"] == "NonRetriableError"
        assert fragment in out["error"]["message"] and "'big'" in out["error"]["message"]


@pytest.mark.parametrize(("value", "fragment"), [
    (object(), "JSON-serializable"),
    ("x" * MAX, f"the limit is {MAX} bytes"),
])
def test_function_result_has_the_same_limits(value: Any, fragment: str) -> None:
    out = testing.call(define(lambda ctx, step: value), EVENT)
    assert (out["op"], out["step_hash"], out["no_retry"]) == ("step_error", None, True)
    assert fragment in out["error"]["message"]


def test_step_output_is_returned_as_its_json_round_trip() -> None:
    out = testing.call(define(lambda ctx, step: step.run("a", lambda: {"t": (1, 2), 3: "x"})), EVENT)
    assert out["data"] == {"t": [1, 2], "3": "x"}  # what a replay will see, not the raw object


# -- async handlers --------------------------------------------------------------------------


def test_async_handler_runs_sync_and_async_steps() -> None:
    counter: Counter[str] = Counter()

    async def fetch() -> str:
        counter["fetch"] += 1
        return "page"

    def parse() -> int:
        counter["parse"] += 1
        return 4

    async def handler(ctx: Context, step: Any) -> Any:
        page = await step.run("fetch", fetch)
        size = await step.run("parse", parse)
        return {"page": page, "size": size}

    fn = define(handler)
    assert fn.is_async
    assert testing.call(fn, EVENT) == {"op": "step_ok", "step_hash": step_hash("fetch"), "step_id": "fetch",
                                       "data": "page"}
    assert testing.call(fn, EVENT, {step_hash("fetch"): ok_memo("P")})["data"] == 4
    assert testing.call(fn, EVENT, {step_hash("fetch"): ok_memo("P"), step_hash("parse"): ok_memo(9)}) == {
        "op": "run_ok", "data": {"page": "P", "size": 9}}
    assert counter == Counter({"fetch": 1, "parse": 1})

    result = testing.run(fn, EVENT)
    assert (result.status, result.output, result.step_ids) == ("completed", {"page": "page", "size": 4},
                                                                ["fetch", "parse"])


def test_async_handler_step_errors() -> None:
    async def boom() -> None:
        raise NonRetriableError("nope")

    async def handler(ctx: Context, step: Any) -> Any:
        try:
            await step.run("a", boom)
        except Exception:  # noqa: BLE001
            return "swallowed"

    out = testing.call(define(handler), EVENT)
    assert (out["op"], out["step_id"], out["no_retry"]) == ("step_error", "a", True)


# -- whole runs ------------------------------------------------------------------------------


def test_run_drives_three_steps_to_completion() -> None:
    counter: Counter[str] = Counter()
    result = testing.run(define(three_steps(counter)), EVENT)

    assert (result.status, result.error) == ("completed", None)
    assert result.output == {"a": 1, "b": {"from_a": 1}, "c": [1, {"from_a": 1}]}
    assert result.step_ids == ["a", "b", "c"]
    assert result.calls == 3  # one per step; the look-ahead after the last sees the return
    assert result.memos == {step_hash("a"): ok_memo(1), step_hash("b"): ok_memo({"from_a": 1}),
                            step_hash("c"): ok_memo([1, {"from_a": 1}])}
    assert counter == Counter({"a": 1, "b": 1, "c": 1})


def test_step_failing_twice_then_succeeding_is_called_three_times() -> None:
    counter: Counter[str] = Counter()
    attempts_seen: list[int] = []

    def handler(ctx: Context, step: Step) -> Any:
        def flaky() -> str:
            counter["flaky"] += 1
            attempts_seen.append(ctx.attempt)
            if counter["flaky"] < 3:
                raise ValueError(f"try {counter['flaky']}")
            return "ok"

        def once(name: str) -> Callable[[], str]:
            def run() -> str:
                counter[name] += 1
                return name
            return run

        first = step.run("first", once("first"))
        middle = step.run("flaky", flaky)
        last = step.run("last", once("last"))
        return [first, middle, last]

    result = testing.run(define(handler, retries=2), EVENT)

    assert (result.status, result.output) == ("completed", ["first", "ok", "last"])
    assert counter == Counter({"first": 1, "flaky": 3, "last": 1})
    assert attempts_seen == [0, 1, 2]
    assert result.calls == 5  # first, flaky x3, last (the look-ahead ends the run)


@pytest.mark.parametrize(("catch", "status", "output"), [
    (True, "completed", "fallback after ValueError"),
    (False, "failed", None),
])
def test_run_with_a_step_that_always_fails(catch: bool, status: str, output: Any) -> None:
    calls: Counter[str] = Counter()

    def always() -> None:
        calls["always"] += 1
        raise ValueError("down")

    def handler(ctx: Context, step: Step) -> Any:
        try:
            step.run("always", always)
        except StepError as err:
            if not catch:
                raise
            return f"fallback after {err.name}"

    result = testing.run(define(handler, retries=1), EVENT)
    assert (result.status, result.output) == (status, output)
    assert calls["always"] == 2  # retries=1: two attempts, then the error is memoized
    assert result.memos[step_hash("always")]["error"]["message"] == "down"
    if not catch:
        assert result.error is not None and result.error["name"] == "StepError"


def test_call_gives_the_event_and_attempt_to_the_context() -> None:
    seen: list[Context] = []

    def handler(ctx: Context, step: Step) -> str:
        seen.append(ctx)
        return "done"

    testing.call(define(handler, retries=Retries(attempts=6)), EVENT, attempt=2, run_id="r-9")
    [ctx] = seen
    assert (ctx.run_id, ctx.attempt, ctx.max_attempts, ctx.function_id, ctx.app_id) == ("r-9", 2, 7, "fn", "shop")
    assert ctx.event == {"id": "test-event", "ts": 0, **EVENT} and ctx.events == [ctx.event]


# -- configuration ---------------------------------------------------------------------------

TRIGGER = {"event": "order.placed"}

BAD_CONFIGS = [
    pytest.param({"id": "", "trigger": TRIGGER}, id="empty-id"),
    pytest.param({"id": "-fn", "trigger": TRIGGER}, id="id-starts-with-dash"),
    pytest.param({"id": ".fn", "trigger": TRIGGER}, id="id-starts-with-dot"),
    pytest.param({"id": "my fn", "trigger": TRIGGER}, id="id-with-space"),
    pytest.param({"id": "a/b", "trigger": TRIGGER}, id="id-with-slash"),
    pytest.param({"id": "é", "trigger": TRIGGER}, id="id-non-ascii"),
    pytest.param({"id": "f" * 129, "trigger": TRIGGER}, id="id-over-128"),
    pytest.param({"id": "fn", "trigger": TRIGGER, "retries": {"attempts": 21}}, id="retries-policy-21"),
    pytest.param({"id": "fn", "trigger": TRIGGER, "retries": 21}, id="retries-int-21"),
    pytest.param({"id": "fn", "trigger": TRIGGER, "retries": -1}, id="retries-int-negative"),
    pytest.param({"id": "fn", "trigger": TRIGGER, "retries": {"attempts": 3, "backoff_ms": []}},
                 id="empty-backoff-table"),
    pytest.param({"id": "fn", "trigger": TRIGGER, "retries": {"attempts": 3, "backoff_ms": [-1]}},
                 id="negative-backoff"),
    pytest.param({"id": "fn", "trigger": [{"event": f"e{i}"} for i in range(11)]}, id="11-triggers"),
    pytest.param({"id": "fn", "trigger": []}, id="no-triggers"),
    pytest.param({"id": "fn", "trigger": {"event": "e" * 256}}, id="trigger-name-over-255"),
    pytest.param({"id": "fn", "trigger": {"event": ""}}, id="empty-trigger-name"),
    pytest.param({"id": "fn", "trigger": TRIGGER, "concurrency": 3}, id="unknown-option"),
]


@pytest.mark.parametrize("config", BAD_CONFIGS)
def test_function_config_rejects(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FunctionConfig.model_validate(config)


@pytest.mark.parametrize("config", [
    {"id": "fn", "trigger": TRIGGER},
    {"id": "a.b_c-1", "trigger": TRIGGER},
    {"id": "f" * 128, "trigger": TRIGGER},
    {"id": "fn", "trigger": TRIGGER, "retries": 0},
    {"id": "fn", "trigger": TRIGGER, "retries": 20},
    {"id": "fn", "trigger": TRIGGER, "retries": {"attempts": 20, "backoff_ms": [10, 20], "jitter_ms": 0}},
    {"id": "fn", "trigger": [{"event": f"e{i}"} for i in range(10)]},
    {"id": "fn", "trigger": {"event": "e" * 255}},
])
def test_function_config_accepts(config: dict[str, Any]) -> None:
    parsed = FunctionConfig.model_validate(config)
    assert 0 <= parsed.retry_policy.attempts <= limits.MAX_RETRIES
    assert 1 <= len(parsed.triggers) <= 10


@pytest.mark.parametrize("kwargs", [
    pytest.param({"id": "bad id", "trigger": "x"}, id="bad-id"),
    pytest.param({"id": "fn", "trigger": "x", "retries": 21}, id="retries-21"),
    pytest.param({"id": "fn", "trigger": "e" * 256}, id="trigger-over-255"),
    pytest.param({"id": "fn", "trigger": [TriggerEvent(event=f"e{i}") for i in range(11)]}, id="11-triggers"),
])
def test_decorator_rejects_bad_config_before_any_handler_is_registered(kwargs: dict[str, Any]) -> None:
    sg = Sluicegate(app_id="shop")
    with pytest.raises(ValidationError):
        sg.function(**kwargs)(lambda ctx, step: None)
    assert sg.functions == {}


def test_decorator_registers_definition() -> None:
    sg = Sluicegate(app_id="shop")

    @sg.function(id="welcome", trigger="user.created", retries=Retries(attempts=2, backoff_ms=[10], jitter_ms=0))
    def welcome(ctx: Context, step: Step) -> str:
        return "hi"

    assert sg.functions == {"welcome": welcome}
    d = welcome.definition()
    assert (d.app_id, d.function_id, d.name, [t.event for t in d.triggers], d.retries, d.backoff_ms,
            d.backoff_jitter_ms) == ("shop", "welcome", "welcome", ["user.created"], 2, [10], 0)
    assert d.version == d.compute_version() and len(d.version) == 16
    with pytest.raises(ValueError, match="defined twice"):
        sg.function(id="welcome", trigger="other")(lambda ctx, step: None)


def test_look_ahead_never_runs_a_new_step_and_ignores_errors_after_the_step() -> None:
    ran: Counter[str] = Counter()

    def handler(ctx: Context, step: Step) -> Any:
        step.run("a", lambda: ran.update(["a"]) or 1)
        if ctx.event["data"].get("explode"):
            raise ValueError("after the step")
        step.run("b", lambda: ran.update(["b"]) or 2)
        return "done"

    fn = define(handler)
    out = testing.call(fn, EVENT)
    assert (out["op"], out["step_id"], out.get("run_done", False)) == ("step_ok", "a", False)
    assert ran == Counter(a=1)  # "b" was only planned by the look-ahead, never run
    exploding = testing.call(fn, {**EVENT, "data": {"explode": True}})
    # the error after the step belongs to the next call, not to this step's outcome
    assert (exploding["op"], exploding.get("run_done", False)) == ("step_ok", False)
