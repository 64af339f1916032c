"""`sluicegate dev` as a user starts it: its own broker, processor, HTTP bridge and the
example app's worker; the curl line it prints starts a run we can read back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float, out: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        out.append(line)
        if pattern in line:
            return
    raise AssertionError(f"`sluicegate dev` did not print {pattern!r} in {timeout} s:\n{''.join(out)}")


def _run_of(base: str, event_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 60) -> Any:
    """The event's first run once it satisfies ``until`` (None after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(f"{base}/v1/events/{event_id}/runs", timeout=5).json()["data"]
        if data and until(data[0]):
            return data[0]
        time.sleep(0.2)
    return None


def test_sluicegate_dev_runs_the_example_app_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SLUICEGATE_BOOTSTRAP_SERVERS")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "sluicegate.cli", "dev", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    out: list[str] = []
    try:
        _read_until(proc, "Ctrl-C stops everything", 240, out)
        text = "".join(out)
        # the printed curl line, run exactly as printed
        curl = re.search(r"(curl -s -X POST .*?\\\n\s+-d '.*?')", text, re.S)
        assert curl, text
        sent = subprocess.run(curl.group(1).replace("\\\n", " "), shell=True, capture_output=True, text=True,
                              timeout=30)
        assert sent.returncode == 0, sent.stderr
        [event_id] = json.loads(sent.stdout)["ids"]
        runs_url = re.search(r"curl -s (http://\S+)/v1/events/<EVENT_ID>/runs", text).group(1)
        run = _run_of(runs_url, event_id, lambda r: r["status"] == "completed")
        assert run is not None, f"the example run did not complete:\n{text}"
        assert run["output"] == {"greeting": "Hello, Ada!", "length": 11}
        assert [s["id"] for s in run["steps"]] == ["read-name", "greet", "measure"]
        assert "dev" in text.lower() and "never run dev mode in production" in text.lower()
        # durable steps: the onboarding run sleeps, then waits for the user's verification event
        base = re.search(r"curl -s -X POST (http://\S+/e/)(\S+)", text)
        assert base, text
        post = base.group(1) + base.group(2)
        [signup] = httpx.post(post, json={"name": "demo/signup", "data": {"user": "ada"}}, timeout=10).json()["ids"]
        waiting = _run_of(runs_url, signup, lambda r: any(s["status"] == "waiting" for s in r.get("steps", [])))
        assert waiting is not None, f"the onboarding run never waited:\n{text}"
        httpx.post(post, json={"name": "demo/verified", "data": {"user": "ada"}}, timeout=10).raise_for_status()
        onboarding = _run_of(runs_url, signup, lambda r: r["status"] == "completed")
        assert onboarding is not None, f"the onboarding run did not complete:\n{text}"
        assert onboarding["output"] == {"user": "ada", "verified": True,
                                        "synced": ["profile of ada", "crm record of ada"]}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, "".join(out)[-3000:]
