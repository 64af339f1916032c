"""Triggers: validation at definition time and matching in the router's index."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.processors.routing import TriggerIndex
from sluicegate.sdk import Batch, Debounce, RateLimit, Singleton, Sluicegate, TriggerCron, TriggerEvent
from sluicegate.triggers import Triggers, split_timezone
from sluicegate.wire import EventRecord, FunctionDefinition


def event(name: str, app: str = "shop", **data: object) -> EventRecord:
    return EventRecord(app_id=app, id=f"id-{name}", name=name, data=dict(data), ts=1, received_at=1)


def definition(fn_id: str, *triggers: TriggerEvent, app: str = "shop") -> FunctionDefinition:
    return FunctionDefinition(app_id=app, function_id=fn_id, name=fn_id, triggers=list(triggers), retries=0)


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("shop/order.created", "shop/order.created", True),
    ("shop/order.created", "shop/order.created2", False),
    ("shop/*", "shop/order.created", True),
    ("shop/*", "shopping/x", False),
    ("shop/order.*", "shop/order.paid", True),
    ("shop/order.*", "shop/orders.paid", False),
    ("shop/order.*", "shop/order.", True),
])
def test_exact_and_trailing_wildcard_names(pattern: str, name: str, matches: bool) -> None:
    index = TriggerIndex()
    index.rebuild([definition("f", TriggerEvent(event=pattern))])
    assert [fn.function_id for fn in index.match(event(name))] == (["f"] if matches else [])


@pytest.mark.parametrize(("if_exp", "data", "matches"), [
    ("event.data.amount > 100", {"amount": 150}, True),
    ("event.data.amount > 100", {"amount": 50}, False),
    ("event.data.amount > 100", {}, False),                       # missing field: error -> no match
    ("event.data.plan == 'pro' && event.name == 'shop/paid'", {"plan": "pro"}, True),
    ("event.data.amount", {"amount": 5}, False),                  # not a boolean: no match
])
def test_if_expressions_filter_before_a_run_is_created(if_exp: str, data: dict, matches: bool) -> None:
    index = TriggerIndex()
    index.rebuild([definition("f", TriggerEvent(event="shop/paid", if_exp=if_exp))])
    assert bool(index.match(event("shop/paid", **data))) is matches


def test_a_function_matching_through_two_triggers_gets_one_run_and_apps_are_separate() -> None:
    index = TriggerIndex()
    index.rebuild([
        definition("f", TriggerEvent(event="shop/*"), TriggerEvent(event="shop/paid")),
        definition("g", TriggerEvent(event="shop/paid")),
        definition("other-app-fn", TriggerEvent(event="shop/paid"), app="other"),
    ])
    assert sorted(fn.function_id for fn in index.match(event("shop/paid"))) == ["f", "g"]
    assert [fn.function_id for fn in index.match(event("shop/paid", app="other"))] == ["other-app-fn"]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"event": "shop/*/x"}, "trailing '*'"),
    ({"event": "shop/order*"}, "trailing '*'"),
    ({"event": "*"}, "trailing '*'"),
    ({"event": "x" * 256}, "at most 255"),
    ({"event": "shop/paid", "if_exp": "event.data.amount >"}, "line 1, column"),
    ({"event": "shop/paid", "if_exp": "event.data.amount ==== 1"}, "invalid expression"),
])
def test_bad_event_triggers_are_rejected_with_the_reason(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        TriggerEvent(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"cron": "* * * *"}, "5-field"),
    ({"cron": "61 * * * *"}, "not a valid cron"),
    ({"cron": "TZ=Mars/Olympus 0 12 * * 5"}, "unknown time zone"),
    ({"cron": "0 12 * * 5", "jitter_ms": 500}, "between 1 s and 5 min"),
    ({"cron": "0 12 * * 5", "jitter_ms": 5 * 60 * 1000 + 1}, "less than or equal"),
    ({"cron": "@daily"}, "5-field"),
    ({"cron": "* * * * * * *"}, "5-field"),
])
def test_bad_cron_triggers_are_rejected(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        TriggerCron(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("cron", "tz", "expr"), [
    ("0 12 * * 5", None, "0 12 * * 5"),
    ("TZ=Europe/Paris 0 12 * * 5", "Europe/Paris", "0 12 * * 5"),
    ("CRON_TZ=America/New_York */5 * * * *", "America/New_York", "*/5 * * * *"),
])
def test_cron_time_zone_prefix(cron: str, tz: str | None, expr: str) -> None:
    assert split_timezone(cron) == (tz, expr)
    assert TriggerCron(cron=cron).cron == cron


@pytest.mark.parametrize(("triggers", "fragment"), [
    ([f"e{i}" for i in range(11)], "1 to 10 triggers"),
    ([], "1 to 10 triggers"),
    (["a", "a"], "duplicate event trigger"),
    ([TriggerCron(cron="0 * * * *"), TriggerCron(cron="0 * * * *", jitter_ms=2000)], "duplicate cron"),
])
def test_trigger_sets_are_validated_together(triggers: list, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        Triggers.of(triggers)
    assert fragment in str(err.value)


def test_ten_mixed_triggers_are_fine() -> None:
    t = Triggers.of([f"e{i}" for i in range(9)] + [TriggerCron(cron="0 0 * * *")])
    assert (len(t.events), len(t.crons)) == (9, 1)


@pytest.mark.parametrize(("flow", "fragment"), [
    ({"debounce": Debounce(period_ms=1000), "batch": Batch(max_size=10, timeout_ms=1000)},
     "debounce and batch cannot be combined"),
    ({"batch": Batch(max_size=10, timeout_ms=1000), "singleton": Singleton()}, "batch and singleton"),
    ({"batch": Batch(max_size=10, timeout_ms=1000), "rate_limit": RateLimit(limit=1, period_ms=1000)},
     "batch and rate_limit"),
    ({"batch": Batch(max_size=10, timeout_ms=1000), "idempotency": "event.data.id"}, "batch and idempotency"),
    ({"rate_limit": RateLimit(limit=1, period_ms=1000, key="event.data.user ==")}, "rate_limit.key: invalid expression"),
    ({"idempotency": "event.data.(id"}, "idempotency: invalid expression"),
    ({"batch": Batch(max_size=10, timeout_ms=1000, if_exp="event.data.x >")}, "batch.if_exp: invalid expression"),
])
def test_invalid_flow_control_is_rejected_at_definition(flow: dict, fragment: str) -> None:
    sg = Sluicegate(app_id="shop")
    with pytest.raises(ValidationError) as err:
        sg.function(id="f", trigger="shop/paid", **flow)
    assert fragment in str(err.value)
    assert "f" not in sg.functions


@pytest.mark.parametrize(("model", "kwargs", "fragment"), [
    (RateLimit, {"limit": 0, "period_ms": 1000}, "greater than 0"),
    (RateLimit, {"limit": 1, "period_ms": 24 * 3600 * 1000 + 1}, "less than or equal"),
    (Debounce, {"period_ms": 999}, "greater than or equal to 1000"),
    (Debounce, {"period_ms": 7 * 24 * 3600 * 1000 + 1}, "less than or equal"),
    (Batch, {"max_size": 1, "timeout_ms": 1000}, "greater than or equal to 2"),
    (Batch, {"max_size": 501, "timeout_ms": 1000}, "less than or equal to 500"),
    (Batch, {"max_size": 10, "timeout_ms": 999}, "greater than or equal to 1000"),
    (Singleton, {"mode": "wait"}, "'skip', 'cancel' or 'queue'"),
])
def test_flow_control_limits(model: type, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        model(**kwargs)
    assert fragment in str(err.value)


def test_definition_carries_triggers_and_flow_control_and_versions_change_with_config() -> None:
    from sluicegate.sdk import Function, FunctionConfig
    from sluicegate.flow_config import FlowControl

    triggers = [TriggerEvent(event="shop/*", if_exp="event.data.ok"), TriggerCron(cron="TZ=Europe/Paris 0 9 * * 1")]
    limited = FlowControl(rate_limit=RateLimit(limit=5, period_ms=60_000, key="event.data.user"))
    f = Function("shop", FunctionConfig(id="f", trigger=triggers, flow=limited), lambda ctx, step: None)
    d = f.definition()
    assert [t.event for t in d.triggers] == ["shop/*"] and [c.cron for c in d.crons] == ["TZ=Europe/Paris 0 9 * * 1"]
    assert d.flow is not None and d.flow.rate_limit == RateLimit(limit=5, period_ms=60_000, key="event.data.user")
    assert FunctionDefinition.model_validate_json(d.dumps()) == d

    sg = Sluicegate(app_id="shop")

    @sg.function(id="g", trigger="shop/paid")
    def g(ctx, step):
        return None

    assert g.definition().flow is None
    unlimited = Function("shop", FunctionConfig(id="f", trigger=triggers), lambda ctx, step: None)
    assert unlimited.definition().version != d.version


@pytest.mark.parametrize("app_id", ["", "a/b", "-lead", "sp ace", "x" * 129, "émoji"])
def test_app_ids_that_cannot_be_topic_names_or_state_keys_are_rejected(app_id: str) -> None:
    from sluicegate.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        Sluicegate(app_id=app_id)
    assert err.value.field == "app_id"


def test_valid_app_ids() -> None:
    for app_id in ["shop", "shop-eu.1", "A_b", "x" * 128]:
        assert Sluicegate(app_id=app_id).app_id == app_id
