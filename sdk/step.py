"""The step API and the replay model.

Every call of a function runs the handler from the top. Each ``step.run(step_id, ...)``
works out a hash (SHA-1 of the id; a repeated id gets ``:1``, ``:2``, ... appended first):

* a memoized result for that hash → returned (or its error raised as :class:`StepError`)
  without running the step again;
* no memo → this call runs the step, then stops the function with a
  :class:`~sluicegate.sdk.errors.StepInterrupt` carrying the outcome. One step per call.

So code outside steps runs on every call and must be deterministic.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import limits
from .errors import NonRetriableError, RetryAfterError, StepError, StepInterrupt


def step_hash(step_id: str) -> str:
    """Hex SHA-1 of the (suffixed) step id. NEVER change: memos are keyed by it."""
    return hashlib.sha1(step_id.encode()).hexdigest()


@dataclass
class Context:
    """What a function call knows about its run."""

    event: dict[str, Any]
    events: list[dict[str, Any]]
    run_id: str
    attempt: int
    max_attempts: int
    function_id: str = ""
    app_id: str = ""


def error_info(exc: BaseException) -> dict[str, Any]:
    return {
        "name": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(exc))[-8000:],
    }


def _failure(exc: BaseException, step_hash_: str | None, step_id: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"op": "step_error", "step_hash": step_hash_, "step_id": step_id,
                           "error": error_info(exc), "no_retry": isinstance(exc, NonRetriableError)}
    if isinstance(exc, RetryAfterError):
        out["retry_after_ms"] = exc.retry_after_ms
    return out


def _check_output(value: Any, step_id: str) -> Any:
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NonRetriableError(f"step {step_id!r}: output must be JSON-serializable ({exc})") from None
    if len(encoded.encode()) > limits.MAX_STEP_OUTPUT_BYTES:
        raise NonRetriableError(
            f"step {step_id!r}: output is {len(encoded.encode())} bytes; "
            f"the limit is {limits.MAX_STEP_OUTPUT_BYTES} bytes")
    return json.loads(encoded)


@dataclass
class _StepBase:
    memos: dict[str, dict[str, Any]]
    plan_only: bool = False  # look-ahead call: stop at the first new step without running it
    _seen: dict[str, int] = field(default_factory=dict)

    def _resolve(self, step_id: str) -> tuple[str, str, dict[str, Any] | None]:
        if not isinstance(step_id, str) or not step_id:
            raise NonRetriableError("step id must be a non-empty string")
        n = self._seen.get(step_id, 0)
        self._seen[step_id] = n + 1
        full_id = step_id if n == 0 else f"{step_id}:{n}"
        h = step_hash(full_id)
        return full_id, h, self.memos.get(h)

    def _stop_if_planning(self, full_id: str, h: str) -> None:
        if self.plan_only:
            raise StepInterrupt({"op": "planned", "step_hash": h, "step_id": full_id})

    @staticmethod
    def _replay(full_id: str, memo: dict[str, Any]) -> Any:
        if "error" in memo:
            err = memo["error"] or {}
            raise StepError(full_id, err.get("name", "Error"), err.get("message", ""), err.get("stack"))
        return memo.get("data")


class Step(_StepBase):
    """Steps for a synchronous handler."""

    def run(self, step_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return self._replay(full_id, memo)
        self._stop_if_planning(full_id, h)
        try:
            value = fn(*args)
            if inspect.isawaitable(value):
                raise NonRetriableError(f"step {full_id!r}: an async step needs an async function handler")
            data = _check_output(value, full_id)
        except Exception as exc:  # the step failed: report it, stop this call
            raise StepInterrupt(_failure(exc, h, full_id)) from None
        raise StepInterrupt({"op": "step_ok", "step_hash": h, "step_id": full_id, "data": data})


class AsyncStep(_StepBase):
    """Steps for an ``async def`` handler: ``await step.run(...)``; the step may be sync or async."""

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return self._replay(full_id, memo)
        self._stop_if_planning(full_id, h)
        try:
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
            data = _check_output(value, full_id)
        except Exception as exc:
            raise StepInterrupt(_failure(exc, h, full_id)) from None
        raise StepInterrupt({"op": "step_ok", "step_hash": h, "step_id": full_id, "data": data})
