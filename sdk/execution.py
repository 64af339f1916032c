"""Call a function once for a job: the framework-free core the worker and the test kit share."""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import StepError, StepInterrupt
from .function import Function
from .step import AsyncStep, Context, Sender, Step, _check_output, _nondeterminism, error_info


def call_once(fn: Function, ctx: Context, memos: dict[str, dict[str, Any]],
              sender: Sender | None = None, target: str | None = None) -> dict[str, Any]:
    """Run the handler from the top with these memos; return the outcome of this call.

    Outcome: ``{"op": "step_ok" | "step_error" | "run_ok", ...}`` (see ``wire.StepOutcome``).
    After a step succeeds, the handler is called once more with that result memoized but
    without running any new step (look-ahead): if the function then returns, the outcome
    also carries ``run_done``/``run_output`` and the run ends without one more job.

    ``target``: a ``step.parallel`` branch job; the call runs only that step (no look-ahead:
    its siblings may still be running elsewhere).
    """
    outcome = _call(fn, ctx, memos, plan_only=False, sender=sender, target=target)
    if outcome["op"] == "step_ok" and target is None:
        ahead = _call(fn, ctx, {**memos, outcome["step_hash"]: {"data": outcome["data"]}}, plan_only=True,
                      sender=sender)
        if ahead["op"] == "run_ok":
            outcome["run_done"] = True
            outcome["run_output"] = ahead["data"]
    return outcome


def _call(fn: Function, ctx: Context, memos: dict[str, dict[str, Any]], *, plan_only: bool,
          sender: Sender | None, target: str | None = None) -> dict[str, Any]:
    step: Step | AsyncStep
    try:
        if fn.is_async:
            step = AsyncStep(memos, plan_only, run_id=ctx.run_id, sender=sender, target=target)
            result = asyncio.run(fn.handler(ctx, step))
        else:
            step = Step(memos, plan_only, run_id=ctx.run_id, sender=sender, target=target)
            result = fn.handler(ctx, step)
        unreached = step.unreached()
        if unreached:
            return _nondeterminism(unreached, memos, "the function returned")
        return {"op": "run_ok", "data": _check_output(result, "(function result)")}
    except StepInterrupt as interrupt:
        return interrupt.outcome
    except StepError as exc:
        # A memoized step error the function did not catch: final (reference §1, spec 5.2.2).
        return {"op": "step_error", "error": error_info(exc), "no_retry": True}
    except Exception as exc:
        from .step import _failure

        return _failure(exc, None, None)
