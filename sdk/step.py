"""The step API and the replay model.

Every call of a function runs the handler from the top. Each ``step.run(step_id, ...)``
works out a hash (SHA-1 of the id; a repeated id gets ``:1``, ``:2``, ... appended first):

* a memoized result for that hash → returned (or its error raised as :class:`StepError`)
  without running the step again;
* no memo → this call runs the step, then stops the function with a
  :class:`~sluicegate.sdk.errors.StepInterrupt` carrying the outcome. One step per call.

So code outside steps runs on every call and must be deterministic. Other steps stop the
call the same way and let the engine do the work durably:

* ``step.sleep(id, duration)`` / ``step.sleep_until(id, when)`` → op ``sleep`` (memo ``null``);
* ``step.wait_for_event(id, event=..., timeout=..., match=... | if_exp=...)`` → op ``wait``
  (memo: the matching event, or ``null`` after the timeout);
* ``step.invoke(id, function=..., data=..., timeout=...)`` → op ``invoke`` (memo: the
  callee's return value, or its error);
* ``step.send_event(id, events)`` is a ``run`` step whose body sends the events (ids derived
  from the run and the step, so a retried step sends the same events and starts no run twice).

Non-determinism: when a call reaches a new step (or returns) while a memoized step was not
reached on the way, the code took another path than on an earlier call (code outside steps
is not deterministic, or the function changed under a running run). The run fails at once
with ``NonDeterminismError`` naming the steps, rather than run side effects twice.
"""

from __future__ import annotations

import hashlib
import datetime as dt
import inspect
import json
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import limits
from ..durations import MAX_SLEEP_MS, to_ms
from ..errors import InvalidInput
from ..expressions import InvalidExpression, compile_expression, match_expression
from .errors import NonRetriableError, RetryAfterError, StepError, StepInterrupt

Sender = Callable[[list[dict[str, Any]]], list[str]]


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


def _nondeterminism(unreached: list[str], memos: dict[str, dict[str, Any]], where: str) -> dict[str, Any]:
    names = ", ".join(repr(memos[h].get("id", h)) for h in unreached[:5])
    more = f" and {len(unreached) - 5} more" if len(unreached) > 5 else ""
    exc = NonRetriableError(
        f"non-determinism: {where} without reaching the memoized step(s) {names}{more}, which an earlier call "
        "of this run did reach. Code outside steps must take the same path on every call; "
        "a function changed under a running run can do this too")
    out = _failure(exc, None, None)
    out["error"]["name"] = "NonDeterminismError"
    return out


def _sleep_until_ms(step_id: str, when: dt.datetime | str) -> int:
    bad = NonRetriableError(f"step.sleep_until({step_id!r}): expected a datetime or an ISO 8601 string, got {when!r}")
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise bad from None
    if not isinstance(when, dt.datetime):
        raise bad
    aware = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return int(aware.timestamp() * 1000)


MAX_PARALLEL = 100  # branches of one step.parallel


class _Discovered(BaseException):
    """Internal: a ``step.parallel`` branch reached a new ``step.run`` (not run yet)."""

    def __init__(self, full_id: str, h: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__(full_id)
        self.full_id, self.hash, self.fn, self.args = full_id, h, fn, args


def _target_missed(target: str, why: str) -> dict[str, Any]:
    """A branch job whose call did not reach its step where it was planned (the code changed)."""
    return {"op": "step_error", "step_hash": target, "no_retry": True, "error": {
        "name": "NonDeterminismError",
        "message": f"a step.parallel branch job did not reach its step {target[:12]}: the call {why}"}}


def _branch_results(branches: list[Any], errors: dict[int, BaseException]) -> tuple[Any, ...]:
    for i in sorted(errors):
        raise errors[i]
    return tuple(branches)


@dataclass
class _StepBase:
    memos: dict[str, dict[str, Any]]
    plan_only: bool = False  # look-ahead call: stop at the first new step without running it
    run_id: str = ""
    sender: Sender | None = None  # step.send_event's transport (the worker's producer)
    target: str | None = None  # a step.parallel branch job: run only this step (hash)
    _seen: dict[str, int] = field(default_factory=dict)
    _reached: set[str] = field(default_factory=set)
    _discovering: bool = False  # inside step.parallel's first pass

    def _resolve(self, step_id: str) -> tuple[str, str, dict[str, Any] | None]:
        if not isinstance(step_id, str) or not step_id:
            raise NonRetriableError("step id must be a non-empty string")
        if len(step_id) > limits.MAX_ID_LENGTH:
            raise NonRetriableError(f"step id {step_id[:40]!r}...: at most {limits.MAX_ID_LENGTH} characters")
        n = self._seen.get(step_id, 0)
        self._seen[step_id] = n + 1
        full_id = step_id if n == 0 else f"{step_id}:{n}"
        h = step_hash(full_id)
        memo = self.memos.get(h)
        if memo is not None:
            self._reached.add(h)
        return full_id, h, memo

    def unreached(self) -> list[str]:
        """Memoized steps this call has not reached (in memo order)."""
        return [h for h in self.memos if h not in self._reached]

    def _new_step(self, full_id: str, h: str) -> None:
        """The call reached a step with no memo: check determinism, then stop if planning."""
        unreached = self.unreached()
        if unreached:
            raise StepInterrupt(_nondeterminism(unreached, self.memos, f"the call reached new step {full_id!r}"))
        if self.plan_only:
            raise StepInterrupt({"op": "planned", "step_hash": h, "step_id": full_id})
        if self.target is not None and h != self.target:
            raise StepInterrupt(_target_missed(self.target, f"reached new step {full_id!r} first"))

    @staticmethod
    def _replay(full_id: str, memo: dict[str, Any]) -> Any:
        if "error" in memo:
            err = memo["error"] or {}
            raise StepError(full_id, err.get("name", "Error"), err.get("message", ""), err.get("stack"))
        return memo.get("data")

    # -- durable steps: the engine does the waiting ----------------------------------------------

    def _durable(self, step_id: str, op: Callable[[], dict[str, Any]]) -> tuple[bool, Any]:
        """(True, value) when memoized; else stop the call with the op ``op()`` builds."""
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return True, self._replay(full_id, memo)
        if self._discovering:
            raise StepInterrupt(_failure(NonRetriableError(
                f"step {full_id!r}: only step.run may start a step.parallel branch (sleep, wait_for_event and "
                "invoke may follow it in the function)"), None, None))
        self._new_step(full_id, h)
        try:
            body = op()
        except NonRetriableError as exc:
            raise StepInterrupt(_failure(exc, None, None)) from None
        raise StepInterrupt({"step_hash": h, "step_id": full_id, **body})

    def _sleep(self, step_id: str, duration: int | dt.timedelta | str) -> None:
        def op() -> dict[str, Any]:
            try:
                ms = to_ms(duration, field=f"step.sleep({step_id!r}) duration")
            except ValueError as exc:
                raise NonRetriableError(str(exc)) from None
            return {"op": "sleep", "duration_ms": ms}
        self._durable(step_id, op)

    def _sleep_until(self, step_id: str, when: dt.datetime | str) -> None:
        def op() -> dict[str, Any]:
            until = _sleep_until_ms(step_id, when)
            if until - time.time() * 1000 > MAX_SLEEP_MS:
                raise NonRetriableError(f"step.sleep_until({step_id!r}): at most 366 days ahead")
            return {"op": "sleep", "until_ms": until}
        self._durable(step_id, op)

    def _wait_for_event(self, step_id: str, event: str, timeout: int | dt.timedelta | str,
                        match: str | None, if_exp: str | None) -> dict[str, Any] | None:
        def op() -> dict[str, Any]:
            if not isinstance(event, str) or not event or len(event) > limits.MAX_EVENT_NAME_LENGTH:
                raise NonRetriableError(f"step.wait_for_event({step_id!r}): event must be a name of "
                                        f"1 to {limits.MAX_EVENT_NAME_LENGTH} characters")
            if match is not None and if_exp is not None:
                raise NonRetriableError(f"step.wait_for_event({step_id!r}): give match or if_exp, not both")
            if match is not None:
                try:
                    match_expression(match)
                except InvalidExpression as exc:
                    raise NonRetriableError(f"step.wait_for_event({step_id!r}): {exc.message}") from None
            if if_exp is not None:
                try:
                    compile_expression(if_exp, field="if_exp")
                except InvalidExpression as exc:
                    raise NonRetriableError(f"step.wait_for_event({step_id!r}): {exc.message}") from None
            try:
                ms = to_ms(timeout, field=f"step.wait_for_event({step_id!r}) timeout", minimum=1)
            except ValueError as exc:
                raise NonRetriableError(str(exc)) from None
            out: dict[str, Any] = {"op": "wait", "wait_event": event, "timeout_ms": ms}
            if match is not None:
                out["wait_match"] = match
            if if_exp is not None:
                out["wait_if"] = if_exp
            return out
        return self._durable(step_id, op)[1]

    def _invoke(self, step_id: str, function: Any, data: dict[str, Any] | None,
                timeout: int | dt.timedelta | str | None) -> Any:
        def op() -> dict[str, Any]:
            target = getattr(function, "app_id", None), getattr(function, "id", None)
            if isinstance(function, str):
                target = tuple(function.split("/", 1)) if "/" in function else (None, function)
            if not target[1]:
                raise NonRetriableError(f"step.invoke({step_id!r}): function must be a Function or its id "
                                        f"('fn' or 'app/fn'), got {function!r}")
            payload = {} if data is None else data
            if not isinstance(payload, dict):
                raise NonRetriableError(f"step.invoke({step_id!r}): data must be a JSON object")
            payload = _check_output(payload, step_id)
            if len(json.dumps(payload).encode()) > limits.MAX_EVENT_BYTES:
                raise NonRetriableError(f"step.invoke({step_id!r}): data is over the event limit of "
                                        f"{limits.MAX_EVENT_BYTES} bytes")
            try:
                ms = MAX_SLEEP_MS if timeout is None else to_ms(
                    timeout, field=f"step.invoke({step_id!r}) timeout", minimum=1)
            except ValueError as exc:
                raise NonRetriableError(str(exc)) from None
            out = {"op": "invoke", "invoke_function": target[1], "invoke_data": payload, "timeout_ms": ms}
            if target[0]:
                out["invoke_app"] = target[0]
            return out
        return self._durable(step_id, op)[1]

    def _discover(self, branches: Any) -> tuple[list[Any], dict[int, BaseException], list[tuple[int, _Discovered]]]:
        """First pass of ``step.parallel``: each branch up to its first new ``step.run``."""
        calls = list(branches)
        if not calls or len(calls) > MAX_PARALLEL or not all(callable(c) for c in calls):
            raise StepInterrupt(_failure(NonRetriableError(
                f"step.parallel: give 1 to {MAX_PARALLEL} callables (e.g. lambda: step.run('a', fetch_a)), "
                f"got {len(calls)}"), None, None))
        results: list[Any] = [None] * len(calls)
        errors: dict[int, BaseException] = {}
        planned: list[tuple[int, _Discovered]] = []
        self._discovering = True
        try:
            for i, branch in enumerate(calls):
                try:
                    results[i] = branch()
                except _Discovered as found:
                    planned.append((i, found))
                except Exception as exc:  # a memoized error (StepError) or the branch's own bug
                    errors[i] = exc
        finally:
            self._discovering = False
        return results, errors, planned

    def _to_execute(self, planned: list[tuple[int, _Discovered]]) -> _Discovered:
        """The one new step of ``step.parallel`` this job executes: its target, or the only
        one. Otherwise the call stops with ``plan``: each new step becomes a job of its own."""
        unreached = self.unreached()
        if unreached:
            first = planned[0][1].full_id
            raise StepInterrupt(_nondeterminism(unreached, self.memos, f"step.parallel reached new step {first!r}"))
        if self.plan_only:
            _i, found = planned[0]
            raise StepInterrupt({"op": "planned", "step_hash": found.hash, "step_id": found.full_id})
        if self.target is not None:
            for _i, found in planned:
                if found.hash == self.target:
                    return found
            raise StepInterrupt(_target_missed(self.target, "reached step.parallel without it"))
        if len(planned) == 1:
            return planned[0][1]
        raise StepInterrupt({"op": "plan", "planned": [{"step_hash": f.hash, "step_id": f.full_id}
                                                       for _i, f in planned]})

    @staticmethod
    def _branch_outcome(found: _Discovered, value: Any = None, exc: BaseException | None = None) -> dict[str, Any]:
        if exc is not None:
            return _failure(exc, found.hash, found.full_id)
        try:
            data = _check_output(value, found.full_id)
        except Exception as bad:
            return _failure(bad, found.hash, found.full_id)
        return {"op": "step_ok", "step_hash": found.hash, "step_id": found.full_id, "data": data}

    def _event_batch(self, step_id: str, events: dict[str, Any] | list[dict[str, Any]], h: str) -> list[dict[str, Any]]:
        batch = [events] if isinstance(events, dict) else list(events)
        if not batch or len(batch) > limits.MAX_EVENTS_PER_REQUEST:
            raise NonRetriableError(f"step.send_event({step_id!r}): send 1 to {limits.MAX_EVENTS_PER_REQUEST} events")
        out = []
        for i, ev in enumerate(batch):
            if not isinstance(ev, dict):
                raise NonRetriableError(f"step.send_event({step_id!r}): event [{i}] must be a dict")
            # the same ids on every attempt: a retried step starts no run twice
            out.append({**ev, "id": ev.get("id") or f"{self.run_id[:26]}-{h[:12]}-{i}"})
        return out

    def _send_events(self, events: list[dict[str, Any]]) -> list[str]:
        if self.sender is None:
            raise NonRetriableError("step.send_event: this call has no event transport")
        try:
            return self.sender(events)
        except InvalidInput as exc:  # a bad or too large event does not get better on retry
            raise NonRetriableError(f"step.send_event: {exc}") from None


class Step(_StepBase):
    """Steps for a synchronous handler."""

    def run(self, step_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return self._replay(full_id, memo)
        if self._discovering:
            raise _Discovered(full_id, h, fn, args)
        self._new_step(full_id, h)
        try:
            value = fn(*args)
            if inspect.isawaitable(value):
                raise NonRetriableError(f"step {full_id!r}: an async step needs an async function handler")
            data = _check_output(value, full_id)
        except Exception as exc:  # the step failed: report it, stop this call
            raise StepInterrupt(_failure(exc, h, full_id)) from None
        raise StepInterrupt({"op": "step_ok", "step_hash": h, "step_id": full_id, "data": data})

    def sleep(self, step_id: str, duration: int | dt.timedelta | str) -> None:
        """Pause the run durably (ms, timedelta or ``"1h30m"``; at most 366 days). No worker waits."""
        self._sleep(step_id, duration)

    def sleep_until(self, step_id: str, when: dt.datetime | str) -> None:
        """Pause until ``when`` (a naive datetime is UTC); a time in the past does not pause."""
        self._sleep_until(step_id, when)

    def wait_for_event(self, step_id: str, *, event: str, timeout: int | dt.timedelta | str,
                       match: str | None = None, if_exp: str | None = None) -> dict[str, Any] | None:
        """The first matching event accepted after the previous step ended (or after the
        trigger, for a first step), or ``None`` after ``timeout``."""
        return self._wait_for_event(step_id, event, timeout, match, if_exp)

    def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
               timeout: int | dt.timedelta | str | None = None) -> Any:
        """Run another function (a ``Function``, ``"fn"`` of this app, or ``"app/fn"``) and
        return its result; its failure, skip or timeout raises :class:`StepError` here."""
        return self._invoke(step_id, function, data, timeout)

    def parallel(self, branches: Any) -> tuple[Any, ...]:
        """Run branches at once: ``step.parallel([lambda: step.run("a", fa), lambda: step.run("b", fb)])``
        → ``(a, b)``. Each branch's new step is a job of its own (dispatched, leased, retried
        and memoized alone, on any worker); the call goes on once all have results. A branch
        error raises here after all branches have their results."""
        results, errors, planned = self._discover(branches)
        if not planned:
            return _branch_results(results, errors)
        found = self._to_execute(planned)
        try:
            value = found.fn(*found.args)
            if inspect.isawaitable(value):
                raise NonRetriableError(f"step {found.full_id!r}: an async step needs an async function handler")
        except Exception as exc:
            raise StepInterrupt(self._branch_outcome(found, exc=exc)) from None
        raise StepInterrupt(self._branch_outcome(found, value))

    def send_event(self, step_id: str, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Send events (each starts every function it triggers) once; returns their ids."""
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return self._replay(full_id, memo)
        self._seen[step_id] -= 1  # run() resolves the same id again
        self._reached.discard(h)
        batch = self._event_batch(step_id, events, h)
        return self.run(step_id, self._send_events, batch)


class AsyncStep(_StepBase):
    """Steps for an ``async def`` handler: ``await step.run(...)``; the step may be sync or async."""

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return self._replay(full_id, memo)
        if self._discovering:
            raise _Discovered(full_id, h, fn, args)
        self._new_step(full_id, h)
        try:
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
            data = _check_output(value, full_id)
        except Exception as exc:
            raise StepInterrupt(_failure(exc, h, full_id)) from None
        raise StepInterrupt({"op": "step_ok", "step_hash": h, "step_id": full_id, "data": data})

    async def sleep(self, step_id: str, duration: int | dt.timedelta | str) -> None:
        self._sleep(step_id, duration)

    async def sleep_until(self, step_id: str, when: dt.datetime | str) -> None:
        self._sleep_until(step_id, when)

    async def wait_for_event(self, step_id: str, *, event: str, timeout: int | dt.timedelta | str,
                             match: str | None = None, if_exp: str | None = None) -> dict[str, Any] | None:
        return self._wait_for_event(step_id, event, timeout, match, if_exp)

    async def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
                     timeout: int | dt.timedelta | str | None = None) -> Any:
        return self._invoke(step_id, function, data, timeout)

    async def parallel(self, branches: Any) -> tuple[Any, ...]:
        """As :meth:`Step.parallel`; branches are ``lambda: step.run(...)`` (not awaited)."""
        calls = list(branches) if not callable(branches) else [branches]

        def first_pass_branch(branch: Callable[[], Any]) -> Callable[[], Any]:
            def call() -> Any:
                value = branch()
                if inspect.iscoroutine(value):  # await step.run(...) of a memoized step: drive it here
                    try:
                        value.send(None)
                    except StopIteration as done:
                        return done.value
                    raise StepInterrupt(_failure(NonRetriableError(
                        "step.parallel: a branch must only call step.run (no other awaits)"), None, None))
                return value
            return call

        results, errors, planned = self._discover([first_pass_branch(b) for b in calls])
        if not planned:
            return _branch_results(results, errors)
        found = self._to_execute(planned)
        try:
            value = found.fn(*found.args)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise StepInterrupt(self._branch_outcome(found, exc=exc)) from None
        raise StepInterrupt(self._branch_outcome(found, value))

    async def send_event(self, step_id: str, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        full_id, h, memo = self._resolve(step_id)
        if memo is not None:
            return self._replay(full_id, memo)
        self._seen[step_id] -= 1
        self._reached.discard(h)
        batch = self._event_batch(step_id, events, h)
        return await self.run(step_id, self._send_events, batch)
