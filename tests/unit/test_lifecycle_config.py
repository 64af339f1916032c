"""Run lifecycle configuration: ``Cancel`` (cancel_on entries), ``Timeouts``, their limits
through ``sg.function(...)``, the ``on_failure`` / ``on_cancel`` handler functions, and
``durations.to_ms`` that every duration goes through. Errors name the field and the limit.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from sluicegate import limits
from sluicegate.durations import DAY_MS, MAX_SLEEP_MS, to_ms
from sluicegate.expressions import compile_expression
from sluicegate.lifecycle_config import DEFAULT_CANCEL_TIMEOUT_MS, MAX_CANCEL_ON, Cancel, Timeouts, check_cancel_on
from sluicegate.processors.event_waits import match_to_if
from sluicegate.sdk import Sluicegate, TriggerEvent
from sluicegate.system_events import CANCELLED_EVENT, FAILED_EVENT
from sluicegate.triggers import TriggerCron

# -- durations.to_ms -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ms"), [
    pytest.param(0, 0, id="zero-int"),
    pytest.param(1_500, 1_500, id="int-ms"),
    pytest.param(1.4, 1, id="float-rounds-down"),
    pytest.param(1.6, 2, id="float-rounds-up"),
    pytest.param(dt.timedelta(seconds=90), 90_000, id="timedelta"),
    pytest.param(dt.timedelta(microseconds=1_500), 2, id="timedelta-sub-ms"),
    pytest.param("300ms", 300, id="ms"),
    pytest.param("30s", 30_000, id="s"),
    pytest.param("5m", 300_000, id="m"),
    pytest.param("2h", 7_200_000, id="h"),
    pytest.param("7d", 7 * DAY_MS, id="d"),
    pytest.param("1w", 7 * DAY_MS, id="w"),
    pytest.param("2h45m", 9_900_000, id="h-m"),
    pytest.param("1h30m15s250ms", 5_415_250, id="h-m-s-ms"),
    pytest.param("1m1ms", 60_001, id="m-then-ms"),
    pytest.param("1.5s", 1_500, id="fraction"),
    pytest.param("0.5m", 30_000, id="fraction-minutes"),
    pytest.param("  30s ", 30_000, id="surrounding-space"),
    pytest.param("1s1s", 2_000, id="repeated-unit-adds"),
    pytest.param("366d", MAX_SLEEP_MS, id="max"),
])
def test_to_ms_accepts(value: Any, ms: int) -> None:
    assert to_ms(value, field="f") == ms


@pytest.mark.parametrize("value", [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("30", id="no-unit"),
    pytest.param("s", id="no-number"),
    pytest.param("30 s", id="inner-space"),
    pytest.param("30S", id="upper-case-unit"),
    pytest.param("-5s", id="negative-string"),
    pytest.param("1y", id="unknown-unit"),
    pytest.param("1h 30m", id="space-between-parts"),
    pytest.param("1e3s", id="exponent"),
    pytest.param("30sec", id="long-unit"),
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param(None, id="none"),
    pytest.param([30], id="list"),
    pytest.param(dt.datetime(2020, 1, 1), id="datetime"),
])
def test_to_ms_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ValueError) as err:
        to_ms(value, field="step.sleep('x') duration")
    message = str(err.value)
    assert message.startswith("step.sleep('x') duration: expected milliseconds (int), a timedelta or a duration string")
    assert repr(value) in message


@pytest.mark.parametrize(("value", "minimum", "maximum", "message"), [
    pytest.param(-1, 0, MAX_SLEEP_MS, "t: must be between 0 s and 366 days; got -1 ms", id="negative"),
    pytest.param(MAX_SLEEP_MS + 1, 0, MAX_SLEEP_MS, f"t: must be between 0 s and 366 days; got {MAX_SLEEP_MS + 1} ms",
                 id="one-ms-over"),
    pytest.param("367d", 0, MAX_SLEEP_MS, "t: must be between 0 s and 366 days; got 367 days", id="367d"),
    pytest.param("999ms", 1_000, MAX_SLEEP_MS, "t: must be between 1 s and 366 days; got 999 ms", id="under-1s"),
    pytest.param(0, 1, MAX_SLEEP_MS, "t: must be between 1 ms and 366 days; got 0 s", id="zero-under-1ms"),
    pytest.param("2d", 0, DAY_MS, "t: must be between 0 s and 1 day; got 2 days", id="1-day-max"),
    pytest.param("90s", 0, 60_000, "t: must be between 0 s and 60 s; got 90 s", id="seconds"),
])
def test_to_ms_bounds_message_names_field_and_range(value: Any, minimum: int, maximum: int, message: str) -> None:
    with pytest.raises(ValueError) as err:
        to_ms(value, field="t", minimum=minimum, maximum=maximum)
    assert str(err.value) == message


@pytest.mark.parametrize(("value", "minimum", "maximum"), [
    (0, 0, 0), (1_000, 1_000, MAX_SLEEP_MS), (MAX_SLEEP_MS, 1_000, MAX_SLEEP_MS), ("1s", 1_000, 1_000),
])
def test_to_ms_bounds_are_inclusive(value: Any, minimum: int, maximum: int) -> None:
    assert minimum <= to_ms(value, field="t", minimum=minimum, maximum=maximum) <= maximum


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "9" * 400 + "s"],
                         ids=["inf", "-inf", "nan", "huge-string"])
def test_to_ms_non_finite_is_a_value_error_naming_the_field(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^timeouts\.start: "):
        to_ms(value, field="timeouts.start", minimum=1_000)


# -- Cancel ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "expression", "timeout_ms"), [
    pytest.param({}, None, DEFAULT_CANCEL_TIMEOUT_MS, id="event-only-365-days"),
    pytest.param({"match": "data.order_id"}, "event.data.order_id == async.data.order_id", DEFAULT_CANCEL_TIMEOUT_MS,
                 id="match-sugar"),
    pytest.param({"match": "user.id"}, "event.user.id == async.user.id", DEFAULT_CANCEL_TIMEOUT_MS, id="match-user"),
    pytest.param({"if_exp": "async.data.x > event.data.x"}, "async.data.x > event.data.x", DEFAULT_CANCEL_TIMEOUT_MS,
                 id="if_exp"),
    pytest.param({"timeout": "1h"}, None, 3_600_000, id="timeout-string"),
    pytest.param({"timeout": dt.timedelta(days=2)}, None, 2 * DAY_MS, id="timeout-timedelta"),
    pytest.param({"timeout": 1_000}, None, 1_000, id="timeout-min"),
    pytest.param({"timeout": "366d"}, None, MAX_SLEEP_MS, id="timeout-max"),
    pytest.param({"timeout": None}, None, DEFAULT_CANCEL_TIMEOUT_MS, id="timeout-none-is-default"),
])
def test_cancel_entry(kwargs: dict[str, Any], expression: str | None, timeout_ms: int) -> None:
    entry = Cancel("order.cancelled", **kwargs)
    assert (entry.event, entry.timeout_ms, entry.expression()) == ("order.cancelled", timeout_ms, expression)
    assert Cancel(event="order.cancelled", **kwargs) == entry  # positional or keyword event
    if expression is not None:
        compile_expression(expression, field="if")  # what the engine evaluates compiles
    assert DEFAULT_CANCEL_TIMEOUT_MS == 365 * DAY_MS


def test_cancel_round_trips_through_its_stored_form() -> None:
    entry = Cancel("order.cancelled", match="data.order_id", timeout="1h")
    raw = entry.model_dump_json()
    assert json.loads(raw) == {"event": "order.cancelled", "match": "data.order_id", "if_exp": None,
                               "timeout_ms": 3_600_000}
    assert Cancel.model_validate_json(raw) == entry


@pytest.mark.parametrize(("kwargs", "fragment"), [
    pytest.param({"event": ""}, "event", id="empty-event"),
    pytest.param({"event": "e" * (limits.MAX_TRIGGER_NAME_LENGTH + 1)}, "255", id="event-too-long"),
    pytest.param({"event": "x", "match": "data..id"}, "dotted field path", id="match-double-dot"),
    pytest.param({"event": "x", "match": "data.order id"}, "dotted field path", id="match-space"),
    pytest.param({"event": "x", "match": "data[0]"}, "dotted field path", id="match-index"),
    pytest.param({"event": "x", "match": "1data"}, "dotted field path", id="match-digit-first"),
    pytest.param({"event": "x", "match": "data.x", "if_exp": "true"}, "give match or if_exp, not both",
                 id="match-and-if"),
    pytest.param({"event": "x", "if_exp": "async.data.x =="}, "", id="if-does-not-compile"),
    pytest.param({"event": "x", "timeout": "0s"}, "timeout: must be between 1 s and 366 days; got 0 s",
                 id="timeout-zero"),
    pytest.param({"event": "x", "timeout": 999}, "timeout: must be between 1 s and 366 days; got 999 ms",
                 id="timeout-under-1s"),
    pytest.param({"event": "x", "timeout": "367d"}, "timeout: must be between 1 s and 366 days; got 367 days",
                 id="timeout-over-366d"),
    pytest.param({"event": "x", "timeout": True}, "timeout: expected milliseconds", id="timeout-bool"),
    pytest.param({"event": "x", "timeout": "soon"}, "timeout: expected milliseconds", id="timeout-bad-string"),
    pytest.param({"event": "x", "unknown": 1}, "unknown", id="extra-field"),
    pytest.param({}, "event", id="no-event"),
])
def test_cancel_refuses(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        Cancel(**kwargs)
    assert fragment in str(err.value)


def test_cancel_is_frozen() -> None:
    entry = Cancel("x")
    with pytest.raises(ValidationError):
        entry.event = "y"  # type: ignore[misc]


@pytest.mark.parametrize("match", ["event.data.order_id", "async.data.order_id", "data.in", "data.if", "null.x"])
def test_cancel_refuses_a_match_the_engine_cannot_use(match: str) -> None:
    with pytest.raises(ValueError):
        match_to_if(match)  # the engine refuses it ...
    with pytest.raises(ValidationError):
        Cancel("order.cancelled", match=match)  # ... so the definition must too


@pytest.mark.parametrize("build", [
    pytest.param(lambda: Cancel("x", timeout_ms=-5), id="cancel-negative"),
    pytest.param(lambda: Cancel("x", timeout_ms=0), id="cancel-zero"),
    pytest.param(lambda: Timeouts(start_ms=1), id="start-1ms"),
    pytest.param(lambda: Timeouts(finish_ms=10**15), id="finish-huge"),
    pytest.param(lambda: Timeouts.model_validate_json('{"start_ms": -1}'), id="stored-negative"),
])
def test_stored_duration_fields_keep_their_bounds(build: Any) -> None:
    with pytest.raises(ValidationError):
        build()


# -- Timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "start_ms", "finish_ms"), [
    pytest.param({}, None, None, id="none"),
    pytest.param({"start": "30s"}, 30_000, None, id="start-string"),
    pytest.param({"finish": dt.timedelta(hours=2)}, None, 7_200_000, id="finish-timedelta"),
    pytest.param({"start": 1_000, "finish": "366d"}, 1_000, MAX_SLEEP_MS, id="bounds"),
    pytest.param({"start": None, "finish": "1h"}, None, 3_600_000, id="start-none"),
    pytest.param({"start": "1m30s"}, 90_000, None, id="combo"),
])
def test_timeouts(kwargs: dict[str, Any], start_ms: int | None, finish_ms: int | None) -> None:
    t = Timeouts(**kwargs)
    assert (t.start_ms, t.finish_ms) == (start_ms, finish_ms)
    assert Timeouts.model_validate_json(t.model_dump_json()) == t


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"start": 999}, "timeouts.start: must be between 1 s and 366 days; got 999 ms", id="start-under"),
    pytest.param({"start": 0}, "timeouts.start: must be between 1 s and 366 days; got 0 s", id="start-zero"),
    pytest.param({"finish": "367d"}, "timeouts.finish: must be between 1 s and 366 days; got 367 days",
                 id="finish-over"),
    pytest.param({"finish": MAX_SLEEP_MS + 1},
                 f"timeouts.finish: must be between 1 s and 366 days; got {MAX_SLEEP_MS + 1} ms", id="finish-1ms-over"),
    pytest.param({"start": True}, "timeouts.start: expected milliseconds", id="bool"),
    pytest.param({"finish": "later"}, "timeouts.finish: expected milliseconds", id="bad-string"),
    pytest.param({"begin": "1s"}, "begin", id="unknown-field"),
])
def test_timeouts_refuse(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        Timeouts(**kwargs)
    assert message in str(err.value)


# -- sg.function: cancel_on and timeouts in the definition ------------------------------------


def test_function_definition_carries_cancel_on_and_timeouts() -> None:
    sg = Sluicegate(app_id="shop")
    entries = [Cancel(f"e{i}") for i in range(MAX_CANCEL_ON)]
    fn = sg.function(id="checkout", trigger="order.placed", cancel_on=entries,
                     timeouts=Timeouts(start="1m", finish="1h"))(lambda ctx, step: None)
    d = fn.definition()
    assert d.cancel_on == entries and d.timeouts == Timeouts(start_ms=60_000, finish_ms=3_600_000)
    plain = sg.function(id="plain", trigger="order.placed")(lambda ctx, step: None).definition()
    assert (plain.cancel_on, plain.timeouts) == ([], None)
    assert d.version != plain.version


@pytest.mark.parametrize("count", [MAX_CANCEL_ON + 1, 10])
def test_more_than_five_cancel_on_entries_are_refused(count: int) -> None:
    sg = Sluicegate(app_id="shop")
    with pytest.raises(ValidationError) as err:
        sg.function(id="checkout", trigger="order.placed", cancel_on=[Cancel("x")] * count)
    message = str(err.value)
    assert "cancel_on" in message and f"at most {MAX_CANCEL_ON}" in message
    assert "checkout" not in sg.functions
    with pytest.raises(ValueError, match=f"cancel_on: at most 5 entries, got {count}"):
        check_cancel_on([Cancel("x")] * count)
    assert check_cancel_on([Cancel("x")] * MAX_CANCEL_ON) == [Cancel("x")] * MAX_CANCEL_ON


def test_invalid_cancel_or_timeouts_is_refused_at_definition_time() -> None:
    sg = Sluicegate(app_id="shop")
    with pytest.raises(ValidationError, match="timeouts.start"):
        sg.function(id="a", trigger="e", timeouts=Timeouts(start="0s"))
    with pytest.raises(ValidationError, match="cancel_on"):
        sg.function(id="b", trigger="e", cancel_on=["not a Cancel"])  # type: ignore[list-item]


# -- on_failure / on_cancel ------------------------------------------------------------------


def _failure(ctx: Any, step: Any) -> str:
    return "handled"


@pytest.mark.parametrize(("kind", "event"), [("failure", FAILED_EVENT), ("cancel", CANCELLED_EVENT)])
def test_handler_functions_are_registered(kind: str, event: str) -> None:
    sg = Sluicegate(app_id="shop")
    fn = sg.function(id="checkout", name="Checkout", trigger="order.placed", retries=7, concurrency=3,
                     **{f"on_{kind}": _failure})(lambda ctx, step: None)
    assert set(sg.functions) == {"checkout", f"checkout-{kind}"}
    assert sg.functions["checkout"] is fn
    extra = sg.functions[f"checkout-{kind}"]
    assert (extra.app_id, extra.id, extra.config.name, extra.handler) == ("shop", f"checkout-{kind}",
                                                                          f"Checkout ({kind})", _failure)
    d = extra.definition()
    assert d.triggers == [TriggerEvent(event=event, if_exp='event.data.function_id == "shop-checkout"')]
    assert (d.retries, d.flow, d.cancel_on, d.timeouts) == (1, None, [], None)
    # the trigger selects this function's end events only
    trig = d.triggers[0]
    assert trig.matches(event, {"name": event, "data": {"function_id": "shop-checkout"}}) is True
    assert trig.matches(event, {"name": event, "data": {"function_id": "shop-other"}}) is False


def test_both_handlers_and_no_name() -> None:
    sg = Sluicegate(app_id="shop")
    sg.function(id="checkout", trigger="order.placed", on_failure=_failure, on_cancel=_failure)(lambda c, s: None)
    assert sorted(sg.functions) == ["checkout", "checkout-cancel", "checkout-failure"]
    assert sg.functions["checkout-failure"].config.name == "checkout (failure)"
    assert sg.functions["checkout-cancel"].config.name == "checkout (cancel)"


def test_async_handler_is_kept_async() -> None:
    async def on_failure(ctx: Any, step: Any) -> None:
        return None

    sg = Sluicegate(app_id="shop")
    sg.function(id="checkout", trigger="order.placed", on_failure=on_failure)(lambda c, s: None)
    assert sg.functions["checkout-failure"].is_async is True
    assert sg.functions["checkout"].is_async is False


@pytest.mark.parametrize("kind", ["failure", "cancel"])
def test_handler_must_be_callable(kind: str) -> None:
    sg = Sluicegate(app_id="shop")
    with pytest.raises(ValueError, match=f"on_{kind}: expected a function"):
        sg.function(id="checkout", trigger="order.placed", **{f"on_{kind}": "nope"})
    assert sg.functions == {}


def test_handler_id_clash_is_refused_and_nothing_is_registered() -> None:
    sg = Sluicegate(app_id="shop")
    sg.function(id="checkout-failure", trigger="x")(lambda c, s: None)
    with pytest.raises(ValueError, match="'checkout-failure' is defined twice"):
        sg.function(id="checkout", trigger="order.placed", on_failure=_failure)(lambda c, s: None)
    assert set(sg.functions) == {"checkout-failure"}


def test_cron_function_can_have_a_failure_handler() -> None:
    sg = Sluicegate(app_id="shop")
    sg.function(id="nightly", trigger=TriggerCron(cron="0 3 * * *"), on_failure=_failure)(lambda c, s: None)
    d = sg.functions["nightly-failure"].definition()
    assert d.triggers[0].event == FAILED_EVENT and d.crons == []
