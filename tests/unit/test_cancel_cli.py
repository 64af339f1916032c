"""``sluicegate cancel`` against the real API routes served by uvicorn (lifespan off, so no
broker), with stand-ins for the producer, the run views and the stats view."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from sluicegate.cli import main
from sluicegate.ingest.cancellations import stats_key
from sluicegate.ingest.http_api import create_api
from sluicegate.local_broker import free_port
from sluicegate.settings import Settings
from sluicegate.wire import RunView, command_adapter
from api_fakes import FakeStats, run_cli as call_cli

T0 = 1_738_324_800_000


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_many(self, topic: str, records: list[tuple[str, bytes]], partitions: int,
                        timeout: float = 30.0) -> None:
        self.sent.extend(command_adapter.validate_json(v) for _, v in records)


class FakeRuns:
    def __init__(self, views: list[RunView]) -> None:
        self.store = self
        self.views = {v.run_id: v for v in views}

    def run(self, run_id: str) -> RunView | None:
        return self.views.get(run_id)


def view(run_id: str, status: str) -> RunView:
    return RunView(run_id=run_id, app_id="shop", function_id="checkout", status=status,  # type: ignore[arg-type]
                   event_ids=["e1"], created_at=T0)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("SLUICEGATE_API_URL", "SLUICEGATE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    app = create_api(Settings(topic_prefix="unit", api_token="cli-token"))
    state = app.state.sluicegate
    state["producer"] = FakeProducer()
    state["runs"] = FakeRuns([view("r-live", "running"), view("r-done", "completed"), view("r-gone", "cancelled")])
    state["stats"] = FakeStats()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("SLUICEGATE_API_TOKEN", "cli-token")
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(5)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return call_cli(["cancel", *args], capsys)


def test_cancel_one_run(served: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, state = served
    code, out, _ = run_cli(["r-live", "--url", url], capsys)
    assert code == 0 and out.strip().startswith("run r-live cancelling")
    assert [c.run_id for c in state["producer"].sent] == ["r-live"]


def test_cancel_unknown_or_ended_run_fails_with_the_message(served: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, state = served
    code, out, err = run_cli(["nope", "--url", url], capsys)
    assert code == 1 and "no run 'nope'" in err and "404" in err
    code, out, err = run_cli(["r-done", "--url", url], capsys)
    assert code == 1 and "'completed'" in err and "409" in err
    code, out, err = run_cli(["r-gone", "--url", url], capsys)  # the goal is reached: not a failure
    assert code == 0 and "already cancelled" in out
    assert state["producer"].sent == []


def test_cancel_sends_the_token(served: Any, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = served
    monkeypatch.setenv("SLUICEGATE_API_TOKEN", "wrong")
    code, _, err = run_cli(["r-live", "--url", url], capsys)
    assert code == 1 and "401" in err


def test_bulk_cancel_and_wait_for_the_count(served: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, state = served
    code, out, _ = run_cli(["--app", "shop", "--function", "checkout", "--since", "2025-01-31T11:00:00Z",
                            "--until", str(T0), "--if", "event.data.n > 1", "--url", url], capsys)
    assert code == 0 and "pending" in out and "2025-01-31T11:00:00.000Z" in out, out
    [cmd] = state["producer"].sent
    assert (cmd.kind, cmd.started_after, cmd.started_before, cmd.if_exp) == (
        "cancel_many", T0 - 3_600_000, T0, "event.data.n > 1")

    def publish() -> None:  # what the processor does once it applied the command
        time.sleep(0.3)
        cid = state["producer"].sent[-1].cancellation_id
        state["stats"].items[stats_key(cid)] = {"id": cid, "app_id": "shop", "function_id": "checkout",
                                                "cancelled": 7, "at": T0}
    threading.Thread(target=publish, daemon=True).start()
    code, out, _ = run_cli(["--app", "shop", "--function", "checkout", "--until", "now", "--wait", "10",
                            "--url", url], capsys)
    assert code == 0 and "done: 7 run(s) cancelled" in out, out


def test_bulk_cancel_errors_name_the_field(served: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, state = served
    code, _, err = run_cli(["--app", "shop", "--function", "checkout", "--until", str(T0),
                            "--since", str(T0 + 1), "--url", url], capsys)
    assert code == 1 and "started_after" in err
    code, _, err = run_cli(["--app", "shop", "--function", "checkout", "--until", "now",
                            "--if", "event.data. ==", "--url", url], capsys)
    assert code == 1 and err.startswith("sluicegate cancel: if:")
    assert state["producer"].sent == []


@pytest.mark.parametrize("args", [[], ["r1", "--app", "a"], ["--app", "a", "--function", "f"]])
def test_cancel_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["cancel", *args])
    assert exc.value.code == 2
    assert "cancel:" in capsys.readouterr().err
