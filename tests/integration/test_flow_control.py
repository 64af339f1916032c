"""Schedule-time flow control on a real broker, as a user writes it with the SDK."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from sluicegate.sdk import RateLimit, TriggerEvent

from polling import wait_until as _wait

if TYPE_CHECKING:
    from conftest import Engine




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


def _singleton_app(engine: "Engine", mode: str):
    import threading

    from sluicegate.sdk import Singleton

    sg = engine.app(f"single-{mode}")
    started: list[int] = []
    gate = threading.Event()

    @sg.function(id="import", trigger="shop/import.requested", singleton=Singleton(key="event.data.shop", mode=mode))
    def do_import(ctx, step):
        n = ctx.event["data"]["n"]

        def work():
            started.append(n)
            if n == 1:
                gate.wait(30)
            return n

        return step.run("import", work)

    return sg, started, gate


def _send(sg, n: int) -> str:
    return sg.send({"name": "shop/import.requested", "data": {"shop": "s1", "n": n}})[0]


def test_singleton_skip_skips_while_one_runs_and_frees_the_lock_after(engine_cleanup: "Engine") -> None:
    sg, started, gate = _singleton_app(engine_cleanup, "skip")
    engine_cleanup.start_worker(sg)
    first = _send(sg, 1)
    _wait(lambda: started == [1], what="the first run to start")
    second = _send(sg, 2)
    skipped = engine_cleanup.wait_run(second)
    assert (skipped["status"], skipped["skip_reason"]) == ("skipped", "singleton_skipped")
    gate.set()
    assert engine_cleanup.wait_run(first)["status"] == "completed"
    third = _send(sg, 3)
    assert engine_cleanup.wait_run(third)["status"] == "completed"
    assert started == [1, 3]


def test_singleton_cancel_cancels_the_running_one_and_discards_its_step(engine_cleanup: "Engine") -> None:
    sg, started, gate = _singleton_app(engine_cleanup, "cancel")
    engine_cleanup.start_worker(sg)
    first = _send(sg, 1)
    _wait(lambda: started == [1], what="the first run to start")
    second = _send(sg, 2)
    cancelled = engine_cleanup.wait_run(first)
    assert (cancelled["status"], cancelled["error"]["name"]) == ("cancelled", "Cancelled")
    gate.set()  # the executing step finishes; its result must be discarded
    assert engine_cleanup.wait_run(second)["status"] == "completed"
    time.sleep(0.5)
    run = engine_cleanup.http.get(f"/v1/runs/{cancelled['run_id']}").json()
    assert run["status"] == "cancelled" and run["steps"] == []
    assert started == [1, 2]


def test_singleton_queue_keeps_one_waiting_run_and_the_newest_replaces_it(engine_cleanup: "Engine") -> None:
    sg, started, gate = _singleton_app(engine_cleanup, "queue")
    engine_cleanup.start_worker(sg)
    first = _send(sg, 1)
    _wait(lambda: started == [1], what="the first run to start")
    second, third = _send(sg, 2), _send(sg, 3)
    replaced = engine_cleanup.wait_run(second)
    assert (replaced["status"], replaced["skip_reason"]) == ("skipped", "singleton_replaced")
    waiting = engine_cleanup.wait_run(third, until=lambda r: r["status"] == "queued")
    assert waiting.get("started_at") is None and waiting["steps"] == []
    gate.set()
    assert engine_cleanup.wait_run(first)["status"] == "completed"
    assert engine_cleanup.wait_run(third)["status"] == "completed"
    assert started == [1, 3]


def test_a_cron_function_fires_once_per_tick_across_a_processor_restart(engine_cleanup: "Engine") -> None:
    from sluicegate.sdk import TriggerCron

    sg = engine_cleanup.app("cron")
    ticks: list[int] = []

    @sg.function(id="heartbeat", trigger=TriggerCron(cron="* * * * * *"))  # every second (6th field)
    def heartbeat(ctx, step):
        assert ctx.event["name"] == "sluicegate/scheduled.timer"
        tick = ctx.event["data"]["tick_ms"]
        return step.run("beat", lambda: ticks.append(tick) or tick)

    engine_cleanup.start_worker(sg)
    _wait(lambda: len(ticks) >= 3, timeout=20, what="three ticks")
    processor = engine_cleanup.processor
    processor.kill()
    before_restart = len(ticks)
    processor.start()
    # a generous bound: the old member's session expires, faust rebalances and recovers, and
    # the new owner syncs its cron functions before ticks resume (over 30 s once in a whole-suite run)
    _wait(lambda: len(ticks) >= before_restart + 3, timeout=90, what="three ticks after the restart")
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {ticks}"
    assert all(t % 1000 == 0 for t in ticks)
    assert ticks == sorted(ticks)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert gaps.count(1000) >= len(gaps) - 1  # consecutive, except at most one gap over the restart


def test_http_wait_schedule_says_which_functions_started_and_which_were_skipped(engine_cleanup: "Engine") -> None:
    from sluicegate.ingest.event_keys import create_key
    from sluicegate.sdk import Debounce

    sg = engine_cleanup.app("wait")

    @sg.function(id="notify", trigger="user/signed-up")
    def notify(ctx, step):
        return step.run("n", lambda: 1)

    @sg.function(id="welcome-once", trigger="user/signed-up", rate_limit=RateLimit(limit=1, period_ms=3_600_000))
    def welcome_once(ctx, step):
        return step.run("w", lambda: 1)

    @sg.function(id="digest", trigger="user/*", debounce=Debounce(period_ms=1000))
    def digest(ctx, step):
        return step.run("d", lambda: 1)

    @sg.function(id="admins-only", trigger=TriggerEvent(event="user/signed-up", if_exp="event.data.admin == true"))
    def admins_only(ctx, step):
        return step.run("a", lambda: 1)

    engine_cleanup.start_worker(sg)
    key = create_key(engine_cleanup.settings, sg.app_id)
    first = engine_cleanup.http.post(f"/e/{key}?wait=schedule", json={"name": "user/signed-up", "data": {}})
    assert first.status_code == 200, first.text
    [event_id] = first.json()["ids"]
    schedule = first.json()["schedule"][event_id]
    assert sorted(schedule["started"]) == ["notify", "welcome-once"]
    assert schedule["skipped"] == {} and schedule["pending"] == ["digest"]
    second = engine_cleanup.http.post(f"/e/{key}?wait=schedule", json={"name": "user/signed-up", "data": {}}).json()
    assert second["schedule"][second["ids"][0]] == {
        "started": {"notify": second["schedule"][second["ids"][0]]["started"]["notify"]},
        "skipped": {"welcome-once": "rate_limited"}, "pending": ["digest"]}
    plain = engine_cleanup.http.post(f"/e/{key}", json={"name": "user/signed-up"}).json()
    assert set(plain) == {"ids", "status"}  # no waiting unless asked


def test_a_changed_function_config_takes_effect_for_new_runs(engine_cleanup: "Engine") -> None:
    from sluicegate.sdk import Sluicegate

    v1 = engine_cleanup.app("versions")

    @v1.function(id="notify", trigger="user/poked", rate_limit=RateLimit(limit=1, period_ms=3_600_000))
    def notify_v1(ctx, step):
        return step.run("v", lambda: "v1")

    worker = engine_cleanup.start_worker(v1)
    first, limited = (v1.send({"name": "user/poked"})[0] for _ in range(2))
    assert engine_cleanup.wait_run(first)["output"] == "v1"
    assert engine_cleanup.wait_run(limited)["skip_reason"] == "rate_limited"
    worker.stop()

    v2 = Sluicegate(app_id=v1.app_id, settings=engine_cleanup.settings)
    engine_cleanup.apps.append(v2)

    @v2.function(id="notify", trigger="user/poked")  # the rate limit is gone
    def notify_v2(ctx, step):
        return step.run("v", lambda: "v2")

    engine_cleanup.start_worker(v2)
    # A new definition reaches the router through sg.registry within milliseconds; an event
    # the router takes before that still matches the old definition (README, Limits).
    time.sleep(0.5)
    assert notify_v2.definition().version != notify_v1.definition().version
    runs = [engine_cleanup.wait_run(v2.send({"name": "user/poked"})[0]) for _ in range(2)]
    assert [(r["status"], r["output"], r["function_version"]) for r in runs] == [
        ("completed", "v2", notify_v2.definition().version)] * 2
