"""The SDK's durable steps (``step.sleep``, ``sleep_until``, ``wait_for_event``, ``invoke``,
``send_event``) through the test kit: the outcome each call reports, input validation,
replay of their memos, non-determinism detection and repeated ids, for sync and async
handlers alike. No broker: ``testing.call`` / ``execution.call_once`` call handlers in-process.
"""

from __future__ import annotations

import datetime as dt
import inspect
import time
from typing import Any, Callable

import pytest

from sluicegate import limits
from sluicegate.durations import DAY_MS, MAX_SLEEP_MS
from sluicegate.sdk import Context, Function, Sluicegate, StepError, testing
from sluicegate.sdk.execution import call_once
from sluicegate.sdk.step import step_hash

EVENT = {"name": "order.placed", "data": {"order_id": "o-7"}}
UTC = dt.timezone.utc
Y2020 = 1_577_836_800_000  # 2020-01-01T00:00:00Z in ms

Action = Callable[[Any], Any]  # step -> the value of one step call (a coroutine for async handlers)


def define(actions: list[Action], is_async: bool = False, *, fn_id: str = "fn",
           result: Callable[[list[Any]], Any] = lambda values: values) -> Function:
    """A function calling ``actions`` in order and returning ``result(values)``."""
    sg = Sluicegate(app_id="shop")
    if is_async:
        async def handler(ctx: Context, step: Any) -> Any:
            values = []
            for action in actions:
                value = action(step)
                values.append(await value if inspect.isawaitable(value) else value)
            return result(values)
    else:
        def handler(ctx: Context, step: Any) -> Any:  # type: ignore[misc]
            return result([action(step) for action in actions])
    return sg.function(id=fn_id, trigger="order.placed", retries=3)(handler)


def call(actions: list[Action], memos: dict[str, dict[str, Any]] | None = None,
         is_async: bool = False) -> dict[str, Any]:
    return testing.call(define(actions, is_async), EVENT, memos)


def op(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"step_hash": step_hash(step_id), "step_id": step_id, **fields}


both = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])


# -- sleep / sleep_until ---------------------------------------------------------------------


@both
@pytest.mark.parametrize(("duration", "ms"), [
    pytest.param(5_000, 5_000, id="int-ms"),
    pytest.param(0, 0, id="zero"),
    pytest.param(dt.timedelta(minutes=2, milliseconds=5), 120_005, id="timedelta"),
    pytest.param("1h30m", 5_400_000, id="1h30m"),
    pytest.param("300ms", 300, id="300ms"),
    pytest.param("7d", 7 * DAY_MS, id="7d"),
    pytest.param("1.5s", 1_500, id="fractional-seconds"),
    pytest.param(MAX_SLEEP_MS, MAX_SLEEP_MS, id="366-days-exactly"),
])
def test_sleep_reports_its_duration(duration: Any, ms: int, is_async: bool) -> None:
    out = call([lambda step: step.sleep("nap", duration)], is_async=is_async)
    assert out == op("nap", op="sleep", duration_ms=ms)


@both
@pytest.mark.parametrize(("when", "until_ms"), [
    pytest.param(dt.datetime(2020, 1, 1), Y2020, id="naive-datetime-is-utc"),
    pytest.param(dt.datetime(2020, 1, 1, tzinfo=UTC), Y2020, id="aware-utc"),
    pytest.param(dt.datetime(2020, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), Y2020, id="aware-offset"),
    pytest.param("2020-01-01T00:00:00Z", Y2020, id="iso-z"),
    pytest.param("2020-01-01T02:00:00+02:00", Y2020, id="iso-offset"),
    pytest.param("2020-01-01T00:00:00", Y2020, id="iso-naive-is-utc"),
    pytest.param("2020-01-01", Y2020, id="iso-date"),
    pytest.param("2020-01-01T00:00:00.250Z", Y2020 + 250, id="iso-ms"),
])
def test_sleep_until_reports_the_instant_in_utc_ms(when: Any, until_ms: int, is_async: bool) -> None:
    # a time in the past is still reported: the engine sees it is due and does not pause
    out = call([lambda step: step.sleep_until("nap", when)], is_async=is_async)
    assert out == op("nap", op="sleep", until_ms=until_ms)


def test_sleep_until_a_day_ahead() -> None:
    when = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=1)
    out = call([lambda step: step.sleep_until("nap", when)])
    assert out == op("nap", op="sleep", until_ms=int(when.timestamp()) * 1000)


# -- wait_for_event ------------------------------------------------------------------------


@both
@pytest.mark.parametrize(("kwargs", "fields"), [
    pytest.param({"timeout": "1h", "match": "data.order_id"}, {"timeout_ms": 3_600_000, "wait_match": "data.order_id"},
                 id="match"),
    pytest.param({"timeout": dt.timedelta(seconds=30), "if_exp": "async.data.order_id == event.data.order_id"},
                 {"timeout_ms": 30_000, "wait_if": "async.data.order_id == event.data.order_id"}, id="if_exp"),
    pytest.param({"timeout": 1}, {"timeout_ms": 1}, id="no-condition-1ms"),
    pytest.param({"timeout": "366d"}, {"timeout_ms": MAX_SLEEP_MS}, id="366-days"),
])
def test_wait_for_event_reports_event_condition_and_timeout(kwargs: dict[str, Any], fields: dict[str, Any],
                                                            is_async: bool) -> None:
    out = call([lambda step: step.wait_for_event("pay", event="payment.done", **kwargs)], is_async=is_async)
    assert out == op("pay", op="wait", wait_event="payment.done", **fields)


# -- invoke ----------------------------------------------------------------------------------


def _billing_fn() -> Function:
    return Sluicegate(app_id="billing").function(id="charge", trigger="never")(lambda ctx, step: None)


def _own_fn() -> Function:
    return Sluicegate(app_id="shop").function(id="helper", trigger="never")(lambda ctx, step: None)


@both
@pytest.mark.parametrize(("make_kwargs", "fields"), [
    pytest.param(lambda: {"function": _billing_fn(), "data": {"amount": 12}},
                 {"invoke_app": "billing", "invoke_function": "charge", "invoke_data": {"amount": 12},
                  "timeout_ms": MAX_SLEEP_MS}, id="function-object-of-another-app"),
    pytest.param(lambda: {"function": _own_fn()},
                 {"invoke_app": "shop", "invoke_function": "helper", "invoke_data": {}, "timeout_ms": MAX_SLEEP_MS},
                 id="function-object-no-data"),
    pytest.param(lambda: {"function": "helper", "data": {"x": [1, 2]}, "timeout": "30s"},
                 {"invoke_function": "helper", "invoke_data": {"x": [1, 2]}, "timeout_ms": 30_000},
                 id="fn-id-of-this-app"),
    pytest.param(lambda: {"function": "billing/charge", "timeout": dt.timedelta(minutes=5)},
                 {"invoke_app": "billing", "invoke_function": "charge", "invoke_data": {}, "timeout_ms": 300_000},
                 id="app-slash-fn"),
])
def test_invoke_reports_target_data_and_timeout(make_kwargs: Callable[[], dict[str, Any]], fields: dict[str, Any],
                                                is_async: bool) -> None:
    kwargs = make_kwargs()
    out = call([lambda step: step.invoke("charge", **kwargs)], is_async=is_async)
    assert out == op("charge", op="invoke", **fields)


# -- invalid inputs fail the run at once -----------------------------------------------------

LONG_ID = "s" * (limits.MAX_ID_LENGTH + 1)


@both
@pytest.mark.parametrize(("action", "fragments"), [
    pytest.param(lambda s: s.sleep("nap", MAX_SLEEP_MS + 1), ["step.sleep('nap') duration", "366 days"],
                 id="sleep-over-366-days"),
    pytest.param(lambda s: s.sleep("nap", "367d"), ["step.sleep('nap') duration", "366 days", "367 days"],
                 id="sleep-367d-string"),
    pytest.param(lambda s: s.sleep("nap", -1), ["step.sleep('nap') duration", "between"], id="sleep-negative"),
    pytest.param(lambda s: s.sleep("nap", "an hour"), ["step.sleep('nap') duration", "'an hour'"],
                 id="sleep-bad-string"),
    pytest.param(lambda s: s.sleep("nap", True), ["step.sleep('nap') duration", "True"], id="sleep-bool"),
    pytest.param(lambda s: s.sleep("nap", None), ["step.sleep('nap') duration"], id="sleep-none"),
    pytest.param(lambda s: s.sleep_until("nap", dt.datetime.now(UTC) + dt.timedelta(days=367)),
                 ["step.sleep_until('nap')", "366 days"], id="sleep-until-over-366-days"),
    pytest.param(lambda s: s.wait_for_event("pay", event="payment.done", timeout=0),
                 ["step.wait_for_event('pay') timeout", "between 1 ms and 366 days"], id="wait-timeout-0"),
    pytest.param(lambda s: s.wait_for_event("pay", event="payment.done", timeout="367d"),
                 ["step.wait_for_event('pay') timeout", "366 days"], id="wait-timeout-over-366-days"),
    pytest.param(lambda s: s.wait_for_event("pay", event="e" * (limits.MAX_EVENT_NAME_LENGTH + 1), timeout=1),
                 ["step.wait_for_event('pay')", "1 to 512 characters"], id="wait-event-name-too-long"),
    pytest.param(lambda s: s.wait_for_event("pay", event="", timeout=1),
                 ["step.wait_for_event('pay')", "1 to 512 characters"], id="wait-event-name-empty"),
    pytest.param(lambda s: s.wait_for_event("pay", event="p", timeout=1, match="data.x", if_exp="true"),
                 ["step.wait_for_event('pay')", "match or if_exp, not both"], id="wait-match-and-if"),
    pytest.param(lambda s: s.wait_for_event("pay", event="p", timeout=1, match="data..x"),
                 ["step.wait_for_event('pay')", "dotted field path"], id="wait-bad-match"),
    pytest.param(lambda s: s.wait_for_event("pay", event="p", timeout=1, if_exp="async.data.x =="),
                 ["step.wait_for_event('pay')"], id="wait-if-does-not-compile"),
    pytest.param(lambda s: s.invoke("charge", function="helper", timeout=0),
                 ["step.invoke('charge') timeout", "between 1 ms"], id="invoke-timeout-0"),
    pytest.param(lambda s: s.invoke("charge", function=42), ["step.invoke('charge')", "function must be"],
                 id="invoke-bad-function"),
    pytest.param(lambda s: s.invoke("charge", function=""), ["step.invoke('charge')", "function must be"],
                 id="invoke-empty-function"),
    pytest.param(lambda s: s.invoke("charge", function="billing/"), ["step.invoke('charge')", "function must be"],
                 id="invoke-app-without-fn"),
    pytest.param(lambda s: s.invoke("charge", function="helper", data=[1, 2]),
                 ["step.invoke('charge')", "data must be a JSON object"], id="invoke-list-data"),
    pytest.param(lambda s: s.invoke("charge", function="helper", data={"x": object()}),
                 ["'charge'", "JSON-serializable"], id="invoke-unserializable-data"),
    pytest.param(lambda s: s.invoke("charge", function="helper", data={"x": "y" * limits.MAX_EVENT_BYTES}),
                 ["step.invoke('charge')", f"{limits.MAX_EVENT_BYTES} bytes"], id="invoke-data-over-event-limit"),
    pytest.param(lambda s: s.sleep(LONG_ID, 1), [repr(LONG_ID[:40]), "at most 128 characters"],
                 id="step-id-over-128-chars"),
    pytest.param(lambda s: s.wait_for_event(LONG_ID, event="p", timeout=1), ["at most 128 characters"],
                 id="wait-step-id-over-128-chars"),
    pytest.param(lambda s: s.sleep("", 1), ["step id must be a non-empty string"], id="empty-step-id"),
])
def test_invalid_durable_step_fails_the_run_without_retry(action: Action, fragments: list[str],
                                                          is_async: bool) -> None:
    out = call([action], is_async=is_async)
    assert (out["op"], out["step_hash"], out["step_id"], out["no_retry"]) == ("step_error", None, None, True)
    assert out["error"]["name"] == "NonRetriableError"
    for fragment in fragments:
        assert fragment in out["error"]["message"]


@pytest.mark.parametrize("step_id", ["s" * limits.MAX_ID_LENGTH, "日" * limits.MAX_ID_LENGTH])
def test_step_id_of_128_chars_is_fine(step_id: str) -> None:
    assert call([lambda s: s.sleep(step_id, 1)]) == op(step_id, op="sleep", duration_ms=1)


@pytest.mark.parametrize("when", [
    pytest.param("tomorrow", id="not-iso"),
    pytest.param(dt.date(2020, 1, 1), id="date-not-datetime"),
    pytest.param(1_577_836_800, id="number"),
])
def test_sleep_until_with_a_bad_value_fails_the_run_without_retry(when: Any) -> None:
    out = call([lambda s: s.sleep_until("nap", when)])
    assert (out["op"], out["step_hash"], out["no_retry"]) == ("step_error", None, True)
    assert "sleep_until" in out["error"]["message"] and repr(when) in out["error"]["message"]


def test_sleep_until_bad_value_message_names_the_step() -> None:
    out = call([lambda s: s.sleep_until("nap", "tomorrow")])
    assert "'nap'" in out["error"]["message"]


@pytest.mark.parametrize("duration", [float("inf"), "9" * 400 + "ms"], ids=["inf", "huge-string"])
def test_sleep_with_an_infinite_duration_fails_the_run_without_retry(duration: Any) -> None:
    out = call([lambda s: s.sleep("nap", duration)])
    assert (out["op"], out["no_retry"]) == ("step_error", True)
    assert "step.sleep('nap') duration" in out["error"]["message"]


# -- memoized durable steps ------------------------------------------------------------------

PAID = {"id": "01PAID", "name": "payment.done", "data": {"order_id": "o-7"}, "ts": 5}


@both
@pytest.mark.parametrize(("action", "memo", "value"), [
    pytest.param(lambda s: s.sleep("x", "1h"), {"data": None}, None, id="sleep-is-null"),
    pytest.param(lambda s: s.sleep_until("x", "2020-01-01"), {"data": None}, None, id="sleep-until-is-null"),
    pytest.param(lambda s: s.wait_for_event("x", event="payment.done", timeout="1h"), {"data": PAID}, PAID,
                 id="wait-is-the-event"),
    pytest.param(lambda s: s.wait_for_event("x", event="payment.done", timeout="1h"), {"data": None}, None,
                 id="wait-timed-out-is-null"),
    pytest.param(lambda s: s.invoke("x", function="helper"), {"data": {"charged": 12}}, {"charged": 12},
                 id="invoke-is-the-result"),
    pytest.param(lambda s: s.invoke("x", function="helper"), {"data": None}, None, id="invoke-null-result"),
    pytest.param(lambda s: s.send_event("x", {"name": "a"}), {"data": ["id-1"]}, ["id-1"],
                 id="send-event-is-the-ids"),
])
def test_memoized_durable_step_returns_its_memo(action: Action, memo: dict[str, Any], value: Any,
                                                is_async: bool) -> None:
    out = call([action], {step_hash("x"): {**memo, "id": "x"}}, is_async=is_async)
    assert out == {"op": "run_ok", "data": [value]}


@both
def test_memoized_invoke_error_raises_step_error_the_function_can_catch(is_async: bool) -> None:
    def sync_handler(ctx: Context, step: Any) -> Any:
        try:
            return step.invoke("charge", function="billing/charge")
        except StepError as exc:
            return [exc.step_id, exc.name, exc.error_message, exc.stack]

    async def async_handler(ctx: Context, step: Any) -> Any:
        try:
            return await step.invoke("charge", function="billing/charge")
        except StepError as exc:
            return [exc.step_id, exc.name, exc.error_message, exc.stack]

    fn = Sluicegate(app_id="shop").function(id="fn", trigger="order.placed")(
        async_handler if is_async else sync_handler)
    memos = {step_hash("charge"): {"error": {"name": "InvokeTimeout", "message": "too slow", "stack": "T"},
                                   "id": "charge"}}
    assert testing.call(fn, EVENT, memos) == {"op": "run_ok", "data": ["charge", "InvokeTimeout", "too slow", "T"]}


@both
def test_memoized_invoke_error_uncaught_fails_the_run_without_retry(is_async: bool) -> None:
    memos = {step_hash("charge"): {"error": {"name": "ValueError", "message": "declined"}}}
    out = call([lambda s: s.invoke("charge", function="helper")], memos, is_async=is_async)
    assert (out["op"], out["no_retry"], out["error"]["name"]) == ("step_error", True, "StepError")
    assert "'charge'" in out["error"]["message"] and "ValueError: declined" in out["error"]["message"]


@both
def test_memoized_sleep_then_the_next_durable_step_is_reported(is_async: bool) -> None:
    actions: list[Action] = [lambda s: s.sleep("nap", "1m"),
                             lambda s: s.wait_for_event("pay", event="payment.done", timeout="1h"),
                             lambda s: s.invoke("charge", function="billing/charge")]
    memos: dict[str, dict[str, Any]] = {}
    outs = []
    for step_id, memo in (("nap", {"data": None}), ("pay", {"data": PAID}), ("charge", {"data": 3})):
        outs.append(call(actions, memos, is_async=is_async))
        memos[step_hash(step_id)] = {**memo, "id": step_id}
    outs.append(call(actions, memos, is_async=is_async))
    assert [o["op"] for o in outs] == ["sleep", "wait", "invoke", "run_ok"]
    assert [o.get("step_id") for o in outs] == ["nap", "pay", "charge", None]
    assert outs[-1]["data"] == [None, PAID, 3]


# -- send_event ------------------------------------------------------------------------------


class FakeSender:
    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, events: list[dict[str, Any]]) -> list[str]:
        self.calls.append(events)
        return [e["id"] for e in events]


def call_with_sender(fn: Function, memos: dict[str, dict[str, Any]], sender: FakeSender, attempt: int = 0,
                     run_id: str = "01RUNIDXXXXXXXXXXXXXXXXXXXXXXX") -> dict[str, Any]:
    event = {"id": "e1", "ts": 0, **EVENT}
    ctx = Context(event=event, events=[event], run_id=run_id, attempt=attempt, max_attempts=4, function_id=fn.id,
                  app_id=fn.app_id)
    return call_once(fn, ctx, memos, sender=sender)


RUN_ID = "01RUNIDXXXXXXXXXXXXXXXXXXXXXXX"


@both
def test_send_event_sends_once_with_deterministic_ids(is_async: bool) -> None:
    fn = define([lambda s: s.send_event("notify", [{"name": "a", "data": {}}, {"name": "b", "id": "mine"}]),
                 lambda s: s.sleep("later", "1h")], is_async)
    h = step_hash("notify")
    expected_ids = [f"{RUN_ID[:26]}-{h[:12]}-0", "mine"]

    sender = FakeSender()
    first = call_with_sender(fn, {}, sender)
    assert first == op("notify", op="step_ok", data=expected_ids)  # the look-ahead stops at the sleep
    assert sender.calls == [[{"name": "a", "data": {}, "id": expected_ids[0]}, {"name": "b", "id": "mine"}]]

    retried = call_with_sender(fn, {}, sender, attempt=1)  # the same step again: the same ids
    assert retried == first and len(sender.calls) == 2 and sender.calls[1] == sender.calls[0]

    memos = {h: {"data": expected_ids, "id": "notify"}}
    after = call_with_sender(fn, memos, sender)
    assert after == op("later", op="sleep", duration_ms=3_600_000)
    assert len(sender.calls) == 2  # memoized: never sent again


@both
def test_send_event_as_last_step_completes_in_the_same_call_sending_once(is_async: bool) -> None:
    fn = define([lambda s: s.send_event("notify", {"name": "a"})], is_async, result=lambda v: {"sent": v[0]})
    sender = FakeSender()
    out = call_with_sender(fn, {}, sender)
    ids = [f"{RUN_ID[:26]}-{step_hash('notify')[:12]}-0"]
    assert out == op("notify", op="step_ok", data=ids, run_done=True, run_output={"sent": ids})
    assert len(sender.calls) == 1


@both
def test_repeated_send_event_ids_hash_with_their_suffix(is_async: bool) -> None:
    fn = define([lambda s: s.send_event("notify", {"name": "a"}), lambda s: s.send_event("notify", {"name": "b"})],
                is_async)
    h0, h1 = step_hash("notify"), step_hash("notify:1")
    sender = FakeSender()
    out = call_with_sender(fn, {h0: {"data": ["x"], "id": "notify"}}, sender)
    assert out == op("notify:1", op="step_ok", data=[f"{RUN_ID[:26]}-{h1[:12]}-0"], run_done=True,
                     run_output=[["x"], [f"{RUN_ID[:26]}-{h1[:12]}-0"]])
    assert sender.calls == [[{"name": "b", "id": f"{RUN_ID[:26]}-{h1[:12]}-0"}]]


@pytest.mark.parametrize(("events", "fragment"), [
    pytest.param([], "send 1 to 5000 events", id="empty"),
    pytest.param([{"name": "a"}] * (limits.MAX_EVENTS_PER_REQUEST + 1), "send 1 to 5000 events", id="too-many"),
    pytest.param(["not-a-dict"], "event [0] must be a dict", id="not-a-dict"),
])
def test_send_event_with_a_bad_batch_fails_without_sending(events: Any, fragment: str) -> None:
    sender = FakeSender()
    out = call_with_sender(define([lambda s: s.send_event("notify", events)]), {}, sender)
    assert (out["op"], out["no_retry"]) == ("step_error", True)
    assert "step.send_event('notify')" in out["error"]["message"] and fragment in out["error"]["message"]
    assert sender.calls == []


def test_send_event_without_a_transport_fails_the_step_without_retry() -> None:
    out = call([lambda s: s.send_event("notify", {"name": "a"})])
    assert (out["op"], out["step_id"], out["no_retry"]) == ("step_error", "notify", True)
    assert "no event transport" in out["error"]["message"]


# -- non-determinism -------------------------------------------------------------------------

NEW_STEPS: list[Any] = [
    pytest.param(lambda s: s.sleep("new", 1), id="sleep"),
    pytest.param(lambda s: s.sleep_until("new", "2020-01-01"), id="sleep_until"),
    pytest.param(lambda s: s.wait_for_event("new", event="p", timeout=1), id="wait"),
    pytest.param(lambda s: s.invoke("new", function="helper"), id="invoke"),
    pytest.param(lambda s: s.send_event("new", {"name": "a"}), id="send_event"),
    pytest.param(lambda s: s.run("new", lambda: 1), id="run"),
]


@both
@pytest.mark.parametrize("new_step", NEW_STEPS)
@pytest.mark.parametrize(("memos", "names"), [
    pytest.param({step_hash("old"): {"data": None, "id": "old"}}, ["'old'"], id="memo-with-id"),
    pytest.param({step_hash("old"): {"data": None}}, [repr(step_hash("old"))], id="memo-without-id-names-hash"),
    pytest.param({step_hash("a"): {"data": None, "id": "a"}, step_hash("b"): {"data": PAID, "id": "b"}},
                 ["'a'", "'b'"], id="two-unreached"),
])
def test_new_step_before_a_memoized_one_is_non_determinism(new_step: Action, memos: dict[str, Any],
                                                          names: list[str], is_async: bool) -> None:
    out = call([new_step], memos, is_async=is_async)
    assert (out["op"], out["step_hash"], out["step_id"], out["no_retry"]) == ("step_error", None, None, True)
    assert out["error"]["name"] == "NonDeterminismError"
    message = out["error"]["message"]
    assert "reached new step 'new'" in message
    for name in names:
        assert name in message


@both
@pytest.mark.parametrize("reached", [
    pytest.param([], id="no-step-reached"),
    pytest.param([lambda s: s.sleep("a", 1)], id="one-of-two-reached"),
])
def test_returning_without_reaching_a_memoized_step_is_non_determinism(reached: list[Action], is_async: bool) -> None:
    memos = {step_hash("a"): {"data": None, "id": "a"}, step_hash("b"): {"data": 1, "id": "b"}}
    out = call(reached, memos, is_async=is_async)
    assert (out["op"], out["no_retry"], out["error"]["name"]) == ("step_error", True, "NonDeterminismError")
    assert "the function returned" in out["error"]["message"] and "'b'" in out["error"]["message"]
    assert ("'a'" in out["error"]["message"]) is (not reached)


def test_non_determinism_names_at_most_five_steps() -> None:
    memos = {step_hash(f"m{i}"): {"data": None, "id": f"m{i}"} for i in range(7)}
    out = call([lambda s: s.sleep("new", 1)], memos)
    message = out["error"]["message"]
    assert all(f"'m{i}'" in message for i in range(5)) and "'m5'" not in message
    assert "and 2 more" in message


@both
def test_memoized_steps_in_the_same_order_are_not_non_determinism(is_async: bool) -> None:
    memos = {step_hash("a"): {"data": None, "id": "a"}}
    out = call([lambda s: s.sleep("a", 1), lambda s: s.sleep("b", 2)], memos, is_async=is_async)
    assert out == op("b", op="sleep", duration_ms=2)


# -- repeated ids ----------------------------------------------------------------------------


@both
@pytest.mark.parametrize(("memoized", "expected"), [
    pytest.param(0, op("s", op="sleep", duration_ms=1_000), id="first"),
    pytest.param(1, op("s:1", op="sleep", duration_ms=1_000), id="second-gets-1"),
    pytest.param(2, op("s:2", op="sleep", duration_ms=1_000), id="third-gets-2"),
    pytest.param(3, {"op": "run_ok", "data": [None, None, None]}, id="all-memoized"),
])
def test_repeated_durable_step_ids_get_suffixes(memoized: int, expected: dict[str, Any], is_async: bool) -> None:
    memos = {step_hash(sid): {"data": None, "id": sid} for sid in ["s", "s:1", "s:2"][:memoized]}
    out = call([lambda s: s.sleep("s", 1_000)] * 3, memos, is_async=is_async)
    assert out == expected


@both
def test_step_kinds_share_the_suffix_counter(is_async: bool) -> None:
    actions: list[Action] = [lambda s: s.run("x", lambda: 1), lambda s: s.sleep("x", 5),
                             lambda s: s.wait_for_event("x", event="p", timeout=9),
                             lambda s: s.invoke("x", function="helper")]
    memos = {step_hash("x"): {"data": 1, "id": "x"}}
    assert call(actions, memos, is_async=is_async) == op("x:1", op="sleep", duration_ms=5)
    memos[step_hash("x:1")] = {"data": None, "id": "x:1"}
    assert call(actions, memos, is_async=is_async) == op("x:2", op="wait", wait_event="p", timeout_ms=9)
    memos[step_hash("x:2")] = {"data": None, "id": "x:2"}
    assert call(actions, memos, is_async=is_async) == op("x:3", op="invoke", invoke_function="helper",
                                                         invoke_data={}, timeout_ms=MAX_SLEEP_MS)


def test_durable_step_interrupt_cannot_be_swallowed_by_user_code() -> None:
    def swallow(step: Any) -> Any:
        try:
            step.sleep("nap", "1h")
        except Exception:  # the interrupt is a BaseException: not caught here
            return "swallowed"
        return "passed"

    assert call([swallow]) == op("nap", op="sleep", duration_ms=3_600_000)


def test_sleep_until_limit_is_measured_from_now() -> None:
    near = dt.datetime.now(UTC) + dt.timedelta(days=365)
    out = call([lambda s: s.sleep_until("nap", near)])
    assert out["op"] == "sleep" and abs(out["until_ms"] - int(near.timestamp() * 1000)) <= 1
    assert out["until_ms"] - time.time() * 1000 < MAX_SLEEP_MS
