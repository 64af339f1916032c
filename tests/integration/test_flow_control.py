"""Schedule-time flow control on a real broker, as a user writes it with the SDK."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from sluicegate.sdk import RateLimit

if TYPE_CHECKING:
    from conftest import Engine


def _wait(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def test_password_reset_rate_limited_to_one_per_hour_runs_once_and_announces_four_skips(
        engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("auth")
    sent_mails: Counter[str] = Counter()
    notices: list[dict] = []

    @sg.function(id="reset-password", trigger="auth/password.reset",
                 rate_limit=RateLimit(limit=1, period_ms=3_600_000, key="event.data.user"))
    def reset_password(ctx, step):
        user = ctx.event["data"]["user"]
        return step.run("send-mail", lambda: sent_mails.update([user]) or f"mail to {user}")

    @sg.function(id="watch-skips", trigger="sluicegate/run.skipped")
    def watch_skips(ctx, step):
        data = ctx.event["data"]
        return step.run("record", lambda: notices.append(data) or data["reason"])

    engine_cleanup.start_worker(sg)
    ids = [sg.send({"name": "auth/password.reset", "data": {"user": "ada"}})[0] for _ in range(5)]
    [other_user] = sg.send({"name": "auth/password.reset", "data": {"user": "grace"}})

    runs = [_wait(lambda e=e: engine_cleanup.runs_for_event(e), what=f"a run for {e}")[0] for e in ids]
    statuses = Counter(r["status"] if r["status"] == "skipped" else "started" for r in runs)
    assert statuses == Counter(started=1, skipped=4)
    assert {r["skip_reason"] for r in runs if r["status"] == "skipped"} == {"rate_limited"}
    assert engine_cleanup.wait_run(other_user)["status"] == "completed"  # another key is not limited
    _wait(lambda: len(notices) == 4, what="four run.skipped notices")
    assert sorted(n["run_id"] for n in notices) == sorted(r["run_id"] for r in runs if r["status"] == "skipped")
    assert {n["reason"] for n in notices} == {"rate_limited"} and {n["function_id"] for n in notices} == {
        "reset-password"}
    started = next(r for r in runs if r["status"] != "skipped")
    assert engine_cleanup.wait_run(started["event_ids"][0])["status"] == "completed"
    assert sent_mails == Counter(ada=1, grace=1)
    counts = _wait(lambda: engine_cleanup.http.get(
        f"/v1/functions/{sg.app_id}/reset-password/skips").json()["counts"] or None, what="skip counters")
    assert counts == {"rate_limited": 4}


def test_idempotency_key_runs_one_order_once(engine_cleanup: "Engine") -> None:
    sg = engine_cleanup.app("orders")
    charged: Counter[int] = Counter()

    @sg.function(id="charge", trigger="shop/order.placed", idempotency="event.data.order")
    def charge(ctx, step):
        order = ctx.event["data"]["order"]
        return step.run("charge", lambda: charged.update([order]) or order)

    engine_cleanup.start_worker(sg)
    ids = sg.send([{"name": "shop/order.placed", "data": {"order": n}} for n in (1, 1, 2, 1)])
    runs = [_wait(lambda e=e: engine_cleanup.runs_for_event(e), what="a run")[0] for e in ids]
    assert [r["status"] == "skipped" for r in runs] == [False, True, False, True]
    assert {r["skip_reason"] for r in runs if r["status"] == "skipped"} == {"idempotent_duplicate"}
    for r in runs:
        if r["status"] != "skipped":
            assert engine_cleanup.wait_run(r["event_ids"][0])["status"] == "completed"
    assert charged == Counter({1: 1, 2: 1})
