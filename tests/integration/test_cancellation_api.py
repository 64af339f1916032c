"""The operator's cancellation surface on a real broker: ``DELETE /v1/runs/{id}``,
``POST /v1/cancellations`` and ``GET /v1/cancellations/{id}`` (reference §9)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from sluicegate.sdk import TriggerEvent

from polling import wait_until as _wait

if TYPE_CHECKING:
    from conftest import Engine




class Ledger:
    """Which runs' steps executed (written from inside the steps)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entered: list[str] = []
        self.finished: list[str] = []

    def enter(self, run_id: str) -> None:
        with self.lock:
            self.entered.append(run_id)

    def leave(self, run_id: str) -> None:
        with self.lock:
            self.finished.append(run_id)


def _blocking_app(engine: "Engine", prefix: str) -> tuple[Any, Ledger, threading.Event]:
    """One function with concurrency 1 whose step blocks until ``release`` is set."""
    sg = engine.app(prefix)
    ledger = Ledger()
    release = threading.Event()

    @sg.function(id="slow", trigger=TriggerEvent(event="job.slow"), concurrency=1)
    def slow(ctx: Any, step: Any) -> Any:
        def work() -> str:
            ledger.enter(ctx.run_id)
            try:
                return "done" if release.wait(60) else "timeout"
            finally:
                ledger.leave(ctx.run_id)
        return {"step": step.run("work", work), "n": ctx.event["data"]["n"]}

    engine.start_worker(sg, concurrency=4)
    return sg, ledger, release


def _run_of(engine: "Engine", event_id: str) -> dict[str, Any]:
    return engine.wait_run(event_id, timeout=30, until=lambda r: True)


def _status(engine: "Engine", run_id: str) -> str:
    r = engine.http.get(f"/v1/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()["status"]


def _wait_status(engine: "Engine", run_id: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    _wait(lambda: _status(engine, run_id) == status, timeout, f"run {run_id} {status}\n"
          f"processor log:\n{engine.processor.tail(3000)}")
    return engine.http.get(f"/v1/runs/{run_id}").json()


def test_cancel_a_queued_run_and_the_executing_run_then_the_next_one_runs(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg, ledger, release = _blocking_app(engine, "cancel-one")
    try:
        events = sg.send([{"name": "job.slow", "data": {"n": i}} for i in range(3)])
        runs = [_run_of(engine, e)["run_id"] for e in events]
        _wait(lambda: len(ledger.entered) == 1, what="one run executing its step")
        [executing] = ledger.entered
        second, third = [r for r in runs if r != executing]  # the queued ones, in the order sent
        # the two others wait behind the concurrency limit
        for run_id in (second, third):
            _wait(lambda r=run_id: engine.http.get(f"/v1/runs/{r}").json().get("waiting") == "concurrency",
                  what=f"run {run_id} waiting for concurrency")

        # a queued run: cancelled, never executed; repeating the call is harmless
        for _ in range(2):
            r = engine.http.delete(f"/v1/runs/{second}")
            assert r.status_code == 202, r.text
            assert r.json() == {"run_id": second, "status": "cancelling"}
        cancelled = _wait_status(engine, second, "cancelled")
        assert cancelled["error"]["name"] == "Cancelled"
        assert "cancelled by API" in cancelled["error"]["message"]
        assert cancelled["steps"] == [] and cancelled.get("output") is None
        again = engine.http.delete(f"/v1/runs/{second}")  # once applied: it ended, and says how
        assert again.status_code == 409 and again.json()["error"]["status"] == "cancelled"

        # the executing run: cancelled now; its step runs to the end, its result is discarded
        r = engine.http.delete(f"/v1/runs/{executing}")
        assert r.status_code == 202, r.text
        _wait_status(engine, executing, "cancelled")
        assert ledger.finished == [], "the step was interrupted instead of running to completion"
    finally:
        release.set()

    done = engine.wait_run(events[runs.index(third)], timeout=60)
    assert done["status"] == "completed", done
    assert done["output"] == {"step": "done", "n": runs.index(third)}
    _wait(lambda: executing in ledger.finished, what="the cancelled run's step to finish")
    time.sleep(0.5)  # the discarded outcome has been processed by now (the slot was freed by it)
    first = engine.http.get(f"/v1/runs/{executing}").json()
    assert first["status"] == "cancelled", first
    assert first.get("output") is None
    assert not [s for s in first["steps"] if s["status"] == "completed"], first["steps"]
    assert second not in ledger.entered, "the cancelled queued run executed"
    assert ledger.entered == [executing, third]


def test_bulk_cancellation_cancels_the_queued_runs_and_reports_the_count(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg, ledger, release = _blocking_app(engine, "cancel-bulk")
    try:
        events = sg.send([{"name": "job.slow", "data": {"n": i}} for i in range(5)])
        runs = [_run_of(engine, e)["run_id"] for e in events]
        _wait(lambda: len(ledger.entered) == 1, what="one run executing its step")
        [executing] = ledger.entered
        queued = [r for r in runs if r != executing]
        time.sleep(0.05)
        before = int(time.time() * 1000)  # after every run was created

        r = engine.http.post("/v1/cancellations", json={
            "app_id": sg.app_id, "function_id": "slow", "started_before": before})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "pending" and body["started_before"] == before
        assert (body["app_id"], body["function_id"], body["started_after"], body["if"]) == (
            sg.app_id, "slow", None, None)
        cid = body["id"]
        pending = engine.http.get(f"/v1/cancellations/{cid}")
        assert pending.status_code == 200 and pending.json()["status"] in ("pending", "done")

        for run_id in queued:
            _wait_status(engine, run_id, "cancelled")
    finally:
        release.set()
    final = {run_id: _wait(lambda r=run_id: (s := _status(engine, r)) in ("completed", "cancelled") and s,
                           what=f"run {run_id} ended") for run_id in runs}
    assert all(final[r] == "cancelled" for r in queued), final
    report = _wait(lambda: (g := engine.http.get(f"/v1/cancellations/{cid}").json()).get("status") == "done" and g,
                   what="the cancellation reported done")
    # the run executing when it was applied had not ended either: whether it counts depends on
    # it being cancelled, which the count must agree with
    assert report["cancelled"] == sum(1 for s in final.values() if s == "cancelled"), (report, final)
    assert report["cancelled"] >= 4 and report["id"] == cid
    assert (report["app_id"], report["function_id"]) == (sg.app_id, "slow")
    assert not set(queued) & set(ledger.entered), "a cancelled queued run executed"


def test_bulk_cancellation_with_if_and_range_cancels_only_matching_runs(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    sg, ledger, release = _blocking_app(engine, "cancel-if")
    try:
        events = sg.send([{"name": "job.slow", "data": {"n": i}} for i in range(4)])
        runs = [_run_of(engine, e) for e in events]
        _wait(lambda: len(ledger.entered) == 1, what="one run executing its step")
        created = sorted(r["created_at"] for r in runs)
        r = engine.http.post("/v1/cancellations", json={
            "app_id": sg.app_id, "function_id": "slow", "started_after": created[0],
            "started_before": created[-1] + 1, "if": "event.data.n >= 2"})
        assert r.status_code == 202, r.text
        cid = r.json()["id"]
        report = _wait(lambda: (g := engine.http.get(f"/v1/cancellations/{cid}").json()).get("status") == "done"
                       and g, what="the cancellation reported done")
        assert report["cancelled"] == 2, report
    finally:
        release.set()
    statuses = {r["run_id"]: engine.wait_run(e, timeout=60)["status"] for r, e in zip(runs, events)}
    by_n = {i: statuses[runs[i]["run_id"]] for i in range(4)}
    assert by_n == {0: "completed", 1: "completed", 2: "cancelled", 3: "cancelled"}, by_n


def test_delete_unknown_run_is_404_and_finished_run_is_409(engine_cleanup: "Engine") -> None:
    engine = engine_cleanup
    r = engine.http.delete("/v1/runs/01NOSUCHRUN000000000000000")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found" and "01NOSUCHRUN000000000000000" in r.json()["error"]["message"]

    sg = engine.app("cancel-done")

    @sg.function(id="quick", trigger="job.quick")
    def quick(ctx: Any, step: Any) -> str:
        return step.run("one", lambda: "ok")

    engine.start_worker(sg)
    [event] = sg.send({"name": "job.quick"})
    run = engine.wait_run(event)
    assert run["status"] == "completed"
    r = engine.http.delete(f"/v1/runs/{run['run_id']}")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "conflict" and err["status"] == "completed" and "'completed'" in err["message"]
    assert engine.http.get(f"/v1/runs/{run['run_id']}").json()["status"] == "completed"

    # the same through the CLI: a clear one-line error and a non-zero exit
    env = {**os.environ, "SLUICEGATE_API_URL": str(engine.http.base_url)}
    env.pop("SLUICEGATE_API_TOKEN", None)
    cli = subprocess.run([sys.executable, "-m", "sluicegate.cli", "cancel", run["run_id"]],
                         env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "'completed'" in cli.stderr and "409" in cli.stderr, cli

    assert engine.http.get("/v1/cancellations/01NOSUCHCANCELLATION000000").status_code == 404
