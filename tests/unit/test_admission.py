"""Schedule-time admission (rate limit → idempotency), driven by hand with a dict of state."""

from __future__ import annotations

import pytest

from sluicegate.flow_config import DAY, HOUR, FlowControl, RateLimit
from sluicegate.processors.admission import admit
from sluicegate.processors.routing import run_id_for
from sluicegate.wire import EventRecord, FunctionDefinition, Trigger, TriggerEvent

NOW = 1_700_000_000_000


def trigger(flow: FlowControl | None, n: int = 0, **data: object) -> Trigger:
    fn = FunctionDefinition(app_id="shop", function_id="reset", name="reset",
                            triggers=[TriggerEvent(event="auth/reset")], retries=0, flow=flow)
    ev = EventRecord(app_id="shop", id=f"e{n}", name="auth/reset", data=dict(data), ts=NOW, received_at=NOW)
    return Trigger(app_id="shop", function_id="reset", run_id=run_id_for("shop", "reset", ev.id), function=fn,
                   events=[ev])


def run_sequence(flow: FlowControl | None, events: list[tuple[int, dict]]) -> list[str]:
    """Admit each (time offset, data) in order, persisting puts; return 'ok' or the skip reason."""
    state: dict[str, str] = {}
    out = []
    for n, (offset, data) in enumerate(events):
        a = admit(trigger(flow, n, **data), state.get, NOW + offset)
        for k, v in a.puts.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        out.append("ok" if a.admitted else a.reason)
    return out


@pytest.mark.parametrize(("flow", "events", "expected"), [
    pytest.param(None, [(0, {})] * 3, ["ok"] * 3, id="no-flow-control"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR)), [(i * 100, {}) for i in range(5)],
                 ["ok"] + ["rate_limited"] * 4, id="password-reset-1-per-hour"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR)), [(0, {}), (HOUR, {})],
                 ["ok", "ok"], id="next-hour-admits-again"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR, key="event.data.user")),
                 [(0, {"user": "a"}), (1, {"user": "b"}), (2, {"user": "a"})], ["ok", "ok", "rate_limited"],
                 id="per-key"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR, key="event.data.limited")),
                 [(0, {"limited": False}), (1, {"limited": False})], ["ok", "ok"], id="key-false-means-off"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=3, period_ms=HOUR, mode="window")),
                 [(0, {})] * 4, ["ok", "ok", "ok", "rate_limited"], id="window-mode-3-at-once"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=3, period_ms=HOUR)),
                 [(0, {})] * 2, ["ok", "rate_limited"], id="gcra-mode-spaces-small-limits"),
    pytest.param(FlowControl(idempotency="event.data.order"),
                 [(0, {"order": 1}), (5, {"order": 1}), (6, {"order": 2}), (DAY, {"order": 1})],
                 ["ok", "idempotent_duplicate", "ok", "ok"], id="idempotency-24h"),
    pytest.param(FlowControl(idempotency="event.data.order"), [(0, {}), (1, {"order": 3})],
                 ["expression_error", "ok"], id="key-expression-error-is-visible"),
    pytest.param(FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR), idempotency="event.data.order"),
                 [(0, {"order": 1}), (1, {"order": 2})], ["ok", "rate_limited"],
                 id="rate-limit-before-idempotency"),
])
def test_admission_sequences(flow: FlowControl | None, events: list[tuple[int, dict]], expected: list[str]) -> None:
    assert run_sequence(flow, events) == expected


def test_a_dropped_run_does_not_consume_the_idempotency_key() -> None:
    flow = FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR), idempotency="event.data.order")
    assert run_sequence(flow, [(0, {"order": 1}), (1, {"order": 2}), (HOUR, {"order": 2})]) == [
        "ok", "rate_limited", "ok"]


def test_skip_detail_says_when_the_next_admission_is() -> None:
    flow = FlowControl(rate_limit=RateLimit(limit=1, period_ms=HOUR))
    state: dict[str, str] = {}
    first = admit(trigger(flow, 0), state.get, NOW)
    state.update({k: v for k, v in first.puts.items() if v is not None})
    second = admit(trigger(flow, 1), state.get, NOW + 10)
    assert (second.admitted, second.reason, second.puts) == (False, "rate_limited", {})
    assert f"next admission at {NOW + HOUR}" in second.detail
