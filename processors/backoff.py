"""Retry backoff: which delay follows a failed attempt. Pure.

Default schedule (reference §1): a fixed table indexed by the attempt that just failed,
plus 0–30 s of jitter. A function may instead give (``sdk.Retries(backoff=...)``):

* ``Exponential(initial, factor, max)``: ``min(max, initial * factor ** failed_attempt)``;
* ``Fixed(delay)``: the same delay after every failure;
* a table: ``table[min(failed_attempt, len - 1)]`` (the last entry repeats);

and its own jitter (0 for exact delays). ``RetryAfterError`` overrides all of it, clamped to
[1 s, 24 h], without jitter. Jitter is derived from a hash of the job, not from a random
source, so the same failure always yields the same delay.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import limits
from ..wire import FunctionDefinition

DEFAULT_BACKOFF_MS: tuple[int, ...] = (
    15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_200_000, 2_400_000, 3_600_000, 7_200_000,
)
DEFAULT_JITTER_MS = 30_000


def _stable_fraction(seed: str) -> float:
    """A number in [0, 1) from a string: jitter without a random source, so decisions stay pure."""
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _clamp_retry_after(retry_after_ms: int) -> int:
    return min(max(retry_after_ms, limits.MIN_RETRY_AFTER_MS), limits.MAX_RETRY_AFTER_MS)


def _from_table(table: list[int] | tuple[int, ...] | None, failed_attempt: int) -> int:
    schedule = tuple(table) if table else DEFAULT_BACKOFF_MS
    return schedule[min(max(failed_attempt, 0), len(schedule) - 1)]


def _from_policy(policy: dict[str, Any], failed_attempt: int) -> int | None:
    """The base delay of an ``Exponential`` or ``Fixed`` policy in its wire form, or None
    when the record does not hold one this engine knows (then the table or default applies)."""
    try:
        if policy.get("kind") == "fixed":
            return int(policy["delay_ms"])
        if policy.get("kind") == "exponential":
            initial, factor, cap = int(policy["initial_ms"]), float(policy["factor"]), int(policy["max_ms"])
            try:
                grown = initial * factor ** max(failed_attempt, 0)
            except OverflowError:  # only for attempts or factors no SDK lets through
                return cap
            return int(min(cap, grown))
    except (KeyError, TypeError, ValueError):
        pass
    return None


def _with_jitter(base: int, jitter_ms: int | None, *, seed: str, failed_attempt: int) -> int:
    jitter = DEFAULT_JITTER_MS if jitter_ms is None else jitter_ms
    return base + int(_stable_fraction(f"{seed}:{failed_attempt}") * (jitter + 1)) if jitter > 0 else base


def retry_delay_ms(
    failed_attempt: int,
    *,
    seed: str,
    table: list[int] | tuple[int, ...] | None = None,
    jitter_ms: int | None = None,
    retry_after_ms: int | None = None,
) -> int:
    """Delay before the attempt after ``failed_attempt`` (0-based), from a table (or the default)."""
    if retry_after_ms is not None:
        return _clamp_retry_after(retry_after_ms)
    return _with_jitter(_from_table(table, failed_attempt), jitter_ms, seed=seed, failed_attempt=failed_attempt)


def delay_after_failure(fn: FunctionDefinition, failed_attempt: int, *, seed: str, retry_after_ms: int | None) -> int:
    """Delay before the attempt after ``failed_attempt`` (0-based) of a job of ``fn``.

    ``retry_after_ms`` (a ``RetryAfterError``) wins, clamped to [1 s, 24 h]. Otherwise the
    function's policy (``fn.backoff``), else its table (``fn.backoff_ms``), else the default
    table gives the base delay, which is capped at 24 h; then up to ``fn.backoff_jitter_ms``
    is added (when unset: none with an ``Exponential``/``Fixed`` policy, 30 s otherwise), derived from ``seed`` (the job id) and the attempt. A definition
    written before ``backoff`` existed therefore gets the delays it always got.
    """
    if retry_after_ms is not None:
        return _clamp_retry_after(retry_after_ms)
    base = _from_policy(fn.backoff, failed_attempt) if fn.backoff else None
    if base is None:
        base = _from_table(fn.backoff_ms, failed_attempt)
    base = min(max(base, 0), limits.MAX_RETRY_AFTER_MS)
    if fn.backoff_jitter_ms is not None:
        jitter: int | None = max(fn.backoff_jitter_ms, 0)
    else:  # an Exponential or Fixed policy means the delays given, exactly; a table keeps 0-30 s
        jitter = 0 if fn.backoff else None
    return _with_jitter(base, jitter, seed=seed, failed_attempt=failed_attempt)
