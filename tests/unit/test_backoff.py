"""Retry backoff: the default schedule, its jitter, custom tables and RetryAfter clamping."""

from __future__ import annotations

import pytest

from sluicegate import limits
from sluicegate.processors.backoff import DEFAULT_BACKOFF_MS, DEFAULT_JITTER_MS, retry_delay_ms

S, M, H = 1_000, 60_000, 3_600_000

DEFAULT_TABLE = [
    (0, 15 * S), (1, 30 * S), (2, 1 * M), (3, 2 * M), (4, 5 * M), (5, 10 * M), (6, 20 * M), (7, 40 * M),
    (8, 1 * H), (9, 2 * H),
    (10, 2 * H), (19, 2 * H), (1_000, 2 * H),  # capped from attempt 9 on
    (-1, 15 * S),  # defensive: never index from the end
]
SEEDS = [f"run-{i}.{j}" for i in range(20) for j in range(5)]


def test_default_table_is_the_reference_schedule() -> None:
    assert DEFAULT_BACKOFF_MS == (15 * S, 30 * S, 1 * M, 2 * M, 5 * M, 10 * M, 20 * M, 40 * M, 1 * H, 2 * H)
    assert DEFAULT_JITTER_MS == 30 * S


@pytest.mark.parametrize(("failed_attempt", "base"), DEFAULT_TABLE)
def test_default_schedule_without_jitter(failed_attempt: int, base: int) -> None:
    assert retry_delay_ms(failed_attempt, seed="run-1.0", jitter_ms=0) == base


@pytest.mark.parametrize(("failed_attempt", "base"), DEFAULT_TABLE)
def test_default_jitter_is_within_zero_to_thirty_seconds(failed_attempt: int, base: int) -> None:
    delays = [retry_delay_ms(failed_attempt, seed=s) for s in SEEDS]
    assert all(base <= d <= base + 30 * S for d in delays)
    jitters = [d - base for d in delays]
    # The jitter really spreads retries over the window rather than sitting at one end.
    assert min(jitters) < 5 * S and max(jitters) > 25 * S


@pytest.mark.parametrize("seed", ["run-1.0", "01HZX3", ""])
@pytest.mark.parametrize("failed_attempt", [0, 3, 9])
def test_same_seed_same_delay(seed: str, failed_attempt: int) -> None:
    first = retry_delay_ms(failed_attempt, seed=seed)
    assert [retry_delay_ms(failed_attempt, seed=seed) for _ in range(3)] == [first] * 3


def test_different_seeds_spread_retries() -> None:
    assert len({retry_delay_ms(0, seed=s) for s in SEEDS}) > len(SEEDS) // 2


@pytest.mark.parametrize(("table", "jitter_ms", "failed_attempt", "low", "high"), [
    ([100, 200, 400], 0, 0, 100, 100),
    ([100, 200, 400], 0, 1, 200, 200),
    ([100, 200, 400], 0, 2, 400, 400),
    ([100, 200, 400], 0, 7, 400, 400),  # the last entry caps
    ((250,), 0, 3, 250, 250),  # a tuple works as well as a list
    ([0], 0, 0, 0, 0),
    ([100, 200], 50, 0, 100, 150),
    ([100, 200], 50, 5, 200, 250),
    ([100, 200], None, 0, 100, 100 + 30 * S),  # a custom table keeps the default jitter
    (None, 10, 0, 15 * S, 15 * S + 10),  # a custom jitter keeps the default table
])
def test_custom_table_and_jitter(table: list[int] | tuple[int, ...] | None, jitter_ms: int | None,
                                 failed_attempt: int, low: int, high: int) -> None:
    for seed in SEEDS:
        assert low <= retry_delay_ms(failed_attempt, seed=seed, table=table, jitter_ms=jitter_ms) <= high


@pytest.mark.parametrize(("retry_after_ms", "expected"), [
    (-5, limits.MIN_RETRY_AFTER_MS),
    (0, 1_000),
    (1, 1_000),
    (999, 1_000),
    (1_000, 1_000),
    (1_001, 1_001),
    (90_000, 90_000),
    (24 * H, 24 * H),
    (24 * H + 1, 24 * H),
    (7 * 24 * H, limits.MAX_RETRY_AFTER_MS),
])
def test_retry_after_is_clamped_and_ignores_table_and_jitter(retry_after_ms: int, expected: int) -> None:
    for failed_attempt in (0, 9):
        assert retry_delay_ms(failed_attempt, seed="run-1.0", retry_after_ms=retry_after_ms) == expected
        assert retry_delay_ms(failed_attempt, seed="run-1.0", table=[5], jitter_ms=100,
                              retry_after_ms=retry_after_ms) == expected
