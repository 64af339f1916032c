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


def _debounce_and_batch_app(engine: "Engine"):
    from sluicegate.sdk import Batch, Debounce

    sg = engine.app("groups")
    seen: dict[str, list] = {"debounced": [], "batches": []}

    @sg.function(id="sync-order", trigger="shop/order.updated",
                 debounce=Debounce(period_ms=1000, key="event.data.order"))
    def sync_order(ctx, step):
        return step.run("sync", lambda: seen["debounced"].append(
            [e["data"]["n"] for e in ctx.events]) or ctx.event["data"]["n"])

    @sg.function(id="bulk-insert", trigger="shop/row.created", batch=Batch(max_size=100, timeout_ms=2000))
    def bulk_insert(ctx, step):
        return step.run("insert", lambda: seen["batches"].append(len(ctx.events)) or len(ctx.events))

    return sg, seen


def test_twelve_updates_in_two_seconds_become_one_debounced_run_with_the_last_event(
        engine_cleanup: "Engine") -> None:
    sg, seen = _debounce_and_batch_app(engine_cleanup)
    engine_cleanup.start_worker(sg)
    ids = []
    for n in range(12):
        ids += sg.send({"name": "shop/order.updated", "data": {"order": "o-1", "n": n}})
        time.sleep(2.0 / 12)
    [other_order] = sg.send({"name": "shop/order.updated", "data": {"order": "o-2", "n": 99}})
    run = engine_cleanup.wait_run(ids[-1])
    assert (run["status"], run["output"], run["event_ids"]) == ("completed", 11, [ids[-1]])
    for event_id in ids[:-1]:
        [replaced] = _wait(lambda e=event_id: engine_cleanup.runs_for_event(e), what="a skipped run")
        assert (replaced["status"], replaced["skip_reason"]) == ("skipped", "debounced_replaced")
    assert engine_cleanup.wait_run(other_order)["output"] == 99  # its own key, its own debounce
    time.sleep(1.5)  # nothing else fires later
    assert sorted(seen["debounced"]) == [[11], [99]]


def test_250_events_with_batches_of_100_become_runs_of_100_100_and_50(engine_cleanup: "Engine") -> None:
    sg, seen = _debounce_and_batch_app(engine_cleanup)
    engine_cleanup.start_worker(sg)
    ids = sg.send([{"name": "shop/row.created", "data": {"row": n}} for n in range(250)])
    runs = {}
    for event_id in (ids[0], ids[100], ids[249]):
        run = engine_cleanup.wait_run(event_id)
        runs[run["run_id"]] = run
    assert sorted(len(r["event_ids"]) for r in runs.values()) == [50, 100, 100]
    assert sorted(r["output"] for r in runs.values()) == [50, 100, 100]
    assert [e for r in sorted(runs.values(), key=lambda r: r["created_at"]) for e in r["event_ids"]] == ids
    assert sorted(seen["batches"]) == [50, 100, 100]


def test_pending_debounce_and_batch_fire_exactly_once_after_a_processor_crash(engine_cleanup: "Engine") -> None:
    import shutil

    sg, seen = _debounce_and_batch_app(engine_cleanup)
    engine_cleanup.start_worker(sg)
    debounced = sg.send([{"name": "shop/order.updated", "data": {"order": "o-9", "n": n}} for n in range(3)])
    batched = sg.send([{"name": "shop/row.created", "data": {"row": n}} for n in range(7)])
    time.sleep(0.5)  # both are pending in the processor's state now (period 1 s, timeout 2 s)
    processor = engine_cleanup.processor
    processor.kill()
    shutil.rmtree(processor.settings.data_dir / "processor", ignore_errors=True)
    processor.start()
    run = engine_cleanup.wait_run(debounced[-1])
    assert (run["status"], run["event_ids"], run["output"]) == ("completed", [debounced[-1]], 2)
    batch_run = engine_cleanup.wait_run(batched[0])
    assert (batch_run["status"], batch_run["event_ids"]) == ("completed", batched)
    time.sleep(2.5)  # a duplicate would have fired by now
    assert seen["debounced"] == [[2]] and seen["batches"] == [7]
