"""Retry backoff: which delay follows a failed attempt. Pure.

Default schedule (reference §1): a fixed table indexed by the attempt that just failed,
plus 0–30 s of jitter. A function may give its own table and jitter (tests use short ones).
``RetryAfterError`` overrides the table, clamped to [1 s, 24 h].
"""

from __future__ import annotations

import hashlib

from .. import limits

DEFAULT_BACKOFF_MS: tuple[int, ...] = (
    15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_200_000, 2_400_000, 3_600_000, 7_200_000,
)
DEFAULT_JITTER_MS = 30_000


def _stable_fraction(seed: str) -> float:
    """A number in [0, 1) from a string: jitter without a random source, so decisions stay pure."""
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def retry_delay_ms(
    failed_attempt: int,
    *,
    seed: str,
    table: list[int] | tuple[int, ...] | None = None,
    jitter_ms: int | None = None,
    retry_after_ms: int | None = None,
) -> int:
    """Delay before the attempt after ``failed_attempt`` (0-based)."""
    if retry_after_ms is not None:
        return min(max(retry_after_ms, limits.MIN_RETRY_AFTER_MS), limits.MAX_RETRY_AFTER_MS)
    schedule = tuple(table) if table else DEFAULT_BACKOFF_MS
    base = schedule[min(max(failed_attempt, 0), len(schedule) - 1)]
    jitter = DEFAULT_JITTER_MS if jitter_ms is None else jitter_ms
    return base + int(_stable_fraction(f"{seed}:{failed_attempt}") * (jitter + 1)) if jitter > 0 else base
