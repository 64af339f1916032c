"""Run a function in-process, without Kafka: give memos, get the outcome of one call,
or drive a whole run to its end the way the engine would (without retries' delays)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .execution import call_once
from .function import Function
from .step import Context


def _ctx(fn: Function, events: list[dict[str, Any]], attempt: int, run_id: str) -> Context:
    return Context(event=events[0], events=events, run_id=run_id, attempt=attempt,
                   max_attempts=fn.config.retry_policy.attempts + 1, function_id=fn.id, app_id=fn.app_id)


def _event(event: dict[str, Any]) -> dict[str, Any]:
    return {"id": "test-event", "data": {}, "ts": 0, **event}


def call(fn: Function, event: dict[str, Any], memos: dict[str, dict[str, Any]] | None = None,
         attempt: int = 0, run_id: str = "test-run", target: str | None = None) -> dict[str, Any]:
    """One call of ``fn`` with the given memos (step hash -> {"data"} | {"error"}); ``target``:
    a ``step.parallel`` branch job's step hash (the call runs only that step)."""
    return call_once(fn, _ctx(fn, [_event(event)], attempt, run_id), dict(memos or {}), target=target)


@dataclass
class RunResult:
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    memos: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_ids: list[str] = field(default_factory=list)
    calls: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)


def _durable_memo(out: dict[str, Any], wait_events: dict[str, dict[str, Any] | None],
                  invoke_results: dict[str, Any]) -> dict[str, Any]:
    if out["op"] == "sleep":
        return {"data": None}
    if out["op"] == "wait":
        return {"data": wait_events.get(out["step_id"])}
    target = out["invoke_function"]
    if target not in invoke_results:
        return {"error": {"name": "FunctionNotFound", "message": f"no invoke result given for {target!r}"}}
    value = invoke_results[target]
    if isinstance(value, BaseException):
        return {"error": {"name": type(value).__name__, "message": str(value)}}
    return {"data": value}


def run(fn: Function, event: dict[str, Any], max_calls: int = 1000, *,
        wait_events: dict[str, dict[str, Any] | None] | None = None,
        invoke_results: dict[str, Any] | None = None) -> RunResult:
    """Drive a run to the end: memoize each step, retry failures at once up to the budget.

    Durable steps resolve at once: a sleep ends, a wait gets ``wait_events[step_id]`` (or
    ``None``, its timeout), an invoke of function ``f`` returns ``invoke_results[f]`` (an
    exception instance there becomes the step's error). Events of ``step.send_event`` are
    collected in ``RunResult.sent``.
    """
    events = [_event(event)]
    memos: dict[str, dict[str, Any]] = {}
    result = RunResult(status="running")
    attempt = 0
    max_attempts = fn.config.retry_policy.attempts + 1

    def sender(batch: list[dict[str, Any]]) -> list[str]:
        result.sent.extend(batch)
        return [e["id"] for e in batch]

    while result.calls < max_calls:
        result.calls += 1
        out = call_once(fn, _ctx(fn, events, attempt, "test-run"), memos, sender=sender)
        if out["op"] == "run_ok":
            result.status, result.output = "completed", out["data"]
            break
        if out["op"] in ("sleep", "wait", "invoke"):
            memos[out["step_hash"]] = _durable_memo(out, wait_events or {}, invoke_results or {})
            result.step_ids.append(out["step_id"])
            attempt = 0
            continue
        if out["op"] == "plan":  # step.parallel: each new step is a job of its own, retried alone
            for planned in out["planned"]:
                h, done = planned["step_hash"], None
                for branch_attempt in range(max_attempts):
                    result.calls += 1
                    done = call_once(fn, _ctx(fn, events, branch_attempt, "test-run"), memos, sender=sender, target=h)
                    if done["op"] == "step_ok" or done.get("no_retry"):
                        break
                assert done is not None
                if done["op"] == "step_ok" and done.get("step_hash") == h:
                    memos[h] = {"data": json.loads(json.dumps(done["data"]))}
                elif done["op"] == "step_error" and done.get("step_hash") is None:
                    result.status, result.error = "failed", done["error"]
                    break
                else:
                    memos[h] = {"error": done.get("error") or {"name": "NonDeterminismError",
                                                               "message": f"branch reported {done['op']!r}"}}
                result.step_ids.append(planned["step_id"])
            if result.status == "failed":
                break
            attempt = 0
            continue
        if out["op"] == "step_ok":
            memos[out["step_hash"]] = {"data": json.loads(json.dumps(out["data"]))}
            result.step_ids.append(out["step_id"])
            attempt = 0
            if out.get("run_done"):
                result.status, result.output = "completed", out["run_output"]
                break
            continue
        if not out.get("no_retry") and attempt + 1 < max_attempts:
            attempt += 1
            continue
        if out.get("step_hash") and out["step_hash"] not in memos:
            memos[out["step_hash"]] = {"error": out["error"]}
            result.step_ids.append(out["step_id"])
            attempt = 0
            continue
        result.status, result.error = "failed", out["error"]
        break
    result.memos = memos
    return result
