"""Retry backoff: the default schedule, its jitter, custom tables and RetryAfter clamping; per-function
policies (Exponential, Fixed, table) from config to delay, and their validation."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import pytest
from pydantic import ValidationError

from sluicegate import limits
from sluicegate.processors.backoff import DEFAULT_BACKOFF_MS, DEFAULT_JITTER_MS, delay_after_failure, retry_delay_ms
from sluicegate.sdk import Exponential, Fixed, Retries
from sluicegate.sdk.function import Function, FunctionConfig
from sluicegate.wire import FunctionDefinition

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


# --- per-function policies: Retries(backoff=Exponential | Fixed | table, jitter=...) -----------------------------

SEC, MIN = dt.timedelta(seconds=1), dt.timedelta(minutes=1)


def defined(retries: Retries) -> FunctionDefinition:
    """The definition a worker publishes for a function with this policy, as the processor reads it."""
    fn = Function("shop", FunctionConfig(id="fn", trigger="order.placed", retries=retries), lambda ctx, step: None)
    return FunctionDefinition.model_validate_json(fn.definition().dumps())


def raw(**fields: Any) -> FunctionDefinition:
    """A registry record as some worker (maybe an older or a broken one) wrote it."""
    return FunctionDefinition(app_id="shop", function_id="fn", name="fn", triggers=[], retries=4, **fields)


POLICIES = [
    # (policy, failed_attempt, base delay)
    *[(Retries(backoff=Exponential(initial=1_000, factor=2, max=60_000)), n, d)
      for n, d in [(0, 1_000), (1, 2_000), (2, 4_000), (5, 32_000), (6, 60_000), (19, 60_000), (-1, 1_000)]],
    *[(Retries(backoff=Exponential(initial=1_000, factor=1.5, max=10_000)), n, d)
      for n, d in [(0, 1_000), (1, 1_500), (2, 2_250), (3, 3_375), (5, 7_593), (6, 10_000)]],
    *[(Retries(attempts=5, backoff=Exponential(initial=SEC, factor=2, max=5 * MIN)), n, d)  # the README's example
      for n, d in [(0, 1 * S), (4, 16 * S), (8, 256 * S), (9, 5 * M), (20, 5 * M)]],
    (Retries(backoff=Exponential(initial=500, max=500)), 7, 500),  # factor defaults to 2; max caps at once
    (Retries(backoff=Exponential(initial=3_000, factor=1, max=9_000)), 12, 3_000),
    (Retries(backoff=Exponential(initial=0, factor=10, max=1_000)), 5, 0),
    (Retries(backoff=Exponential(initial=1, factor=10, max=24 * H)), 19, 24 * H),
    *[(Retries(backoff=Fixed(delay=5_000)), n, 5_000) for n in (0, 3, 19)],
    (Retries(backoff=Fixed(delay=2 * SEC)), 1, 2_000),
    (Retries(backoff=Fixed(delay=0)), 4, 0),
    (Retries(backoff=Fixed(delay=dt.timedelta(hours=24))), 0, 24 * H),
    *[(Retries(backoff=[100, SEC, 400]), n, d) for n, d in [(0, 100), (1, 1_000), (2, 400), (7, 400)]],
    *[(Retries(backoff_ms=[250, 750]), n, d) for n, d in [(0, 250), (1, 750), (9, 750)]],  # the older keyword
    *[(Retries(), n, d) for n, d in DEFAULT_TABLE],
    *[(Retries(attempts=20), n, d) for n, d in DEFAULT_TABLE],
]


@pytest.mark.parametrize(("retries", "failed_attempt", "base"), POLICIES)
def test_each_policy_without_jitter(retries: Retries, failed_attempt: int, base: int) -> None:
    fn = defined(retries.model_copy(update={"jitter_ms": 0}))
    assert delay_after_failure(fn, failed_attempt, seed="job-1", retry_after_ms=None) == base


@pytest.mark.parametrize(("retries", "failed_attempt", "base"), POLICIES)
def test_a_policy_without_jitter_is_exact_and_a_table_gets_the_default_jitter(
        retries: Retries, failed_attempt: int, base: int) -> None:
    fn = defined(retries)
    delays = [delay_after_failure(fn, failed_attempt, seed=s, retry_after_ms=None) for s in SEEDS]
    if isinstance(retries.backoff, (Exponential, Fixed)):
        assert set(delays) == {base}  # Exponential / Fixed mean exactly the delays given
    else:
        assert all(base <= d <= base + DEFAULT_JITTER_MS for d in delays)
        assert min(delays) - base < 5 * S and max(delays) - base > 25 * S


@pytest.mark.parametrize("jitter", [1, 250, 10 * SEC, dt.timedelta(hours=1)])
@pytest.mark.parametrize("backoff", [Exponential(initial=SEC, max=MIN), Fixed(delay=SEC), [1_000], None])
def test_jitter_stays_in_range_and_spreads(backoff: Any, jitter: int | dt.timedelta) -> None:
    fn = defined(Retries(backoff=backoff, jitter=jitter))
    limit = jitter if isinstance(jitter, int) else jitter // dt.timedelta(milliseconds=1)
    base = 15 * S if backoff is None else 1_000
    delays = [delay_after_failure(fn, 0, seed=s, retry_after_ms=None) for s in SEEDS]
    assert all(base <= d <= base + limit for d in delays)
    if limit >= 250:
        assert len(set(delays)) > len(SEEDS) // 4


@pytest.mark.parametrize("failed_attempt", [0, 3, 19])
@pytest.mark.parametrize("backoff", [Exponential(initial=SEC, max=MIN), Fixed(delay=SEC), [1_000, 2_000], None])
def test_jitter_is_a_function_of_job_and_attempt(backoff: Any, failed_attempt: int) -> None:
    fn = defined(Retries(backoff=backoff, jitter=5 * SEC))
    first = {s: delay_after_failure(fn, failed_attempt, seed=s, retry_after_ms=None) for s in SEEDS}
    again = {s: delay_after_failure(defined(Retries(backoff=backoff, jitter=5 * SEC)), failed_attempt, seed=s,
                                    retry_after_ms=None) for s in SEEDS}
    assert first == again


@pytest.mark.parametrize(("retry_after_ms", "expected"), [
    (-5, limits.MIN_RETRY_AFTER_MS), (0, 1_000), (999, 1_000), (1_000, 1_000), (1_001, 1_001), (90_000, 90_000),
    (24 * H, 24 * H), (24 * H + 1, limits.MAX_RETRY_AFTER_MS), (7 * 24 * H, limits.MAX_RETRY_AFTER_MS),
])
@pytest.mark.parametrize("retries", [
    Retries(backoff=Exponential(initial=10, factor=10, max=24 * H), jitter=H),
    Retries(backoff=Fixed(delay=5), jitter=0),
    Retries(backoff=[5, 10], jitter=100),
    Retries(),
])
def test_retry_after_overrides_every_policy_clamped_without_jitter(retries: Retries, retry_after_ms: int,
                                                                   expected: int) -> None:
    fn = defined(retries)
    for failed_attempt in (0, 9):
        assert delay_after_failure(fn, failed_attempt, seed="job-1", retry_after_ms=retry_after_ms) == expected


@pytest.mark.parametrize("fields", [
    {},
    {"backoff_ms": [100, 200, 400], "backoff_jitter_ms": 0},
    {"backoff_ms": [100, 200], "backoff_jitter_ms": 50},
    {"backoff_ms": [100]},
    {"backoff_jitter_ms": 10},
])
def test_records_of_older_workers_keep_their_delays(fields: dict[str, Any]) -> None:
    # a record written before `backoff` existed: JSON without the key
    fn = FunctionDefinition.model_validate_json(raw(**fields).model_dump_json(exclude={"backoff"}))
    for seed in SEEDS[:20]:
        for failed_attempt in (0, 1, 2, 9, 19):
            assert delay_after_failure(fn, failed_attempt, seed=seed, retry_after_ms=None) == retry_delay_ms(
                failed_attempt, seed=seed, table=fields.get("backoff_ms"), jitter_ms=fields.get("backoff_jitter_ms"))


@pytest.mark.parametrize(("fields", "failed_attempt", "expected"), [
    ({"backoff": {"kind": "linear", "step_ms": 5}}, 1, 30 * S),  # a kind this engine does not know: the table
    ({"backoff": {"kind": "linear"}, "backoff_ms": [700]}, 3, 700),
    ({"backoff": {"kind": "fixed"}}, 0, 15 * S),  # malformed: missing its delay
    ({"backoff": {"kind": "exponential", "initial_ms": "x", "factor": 2, "max_ms": 9}}, 0, 15 * S),
    ({"backoff": {"kind": "fixed", "delay_ms": 30 * 24 * H}}, 0, 24 * H),  # out of range: capped at 24 h
    ({"backoff": {"kind": "fixed", "delay_ms": -5}}, 0, 0),
    ({"backoff": {"kind": "exponential", "initial_ms": 1, "factor": 1e300, "max_ms": H}}, 10_000, H),  # no overflow
    ({"backoff_ms": [48 * H]}, 0, 24 * H),
    ({"backoff": {"kind": "fixed", "delay_ms": 100}, "backoff_jitter_ms": -7}, 0, 100),
])
def test_hand_made_records_never_break_the_decision(fields: dict[str, Any], failed_attempt: int,
                                                    expected: int) -> None:
    fn = raw(**{"backoff_jitter_ms": 0, **fields})
    assert delay_after_failure(fn, failed_attempt, seed="job-1", retry_after_ms=None) == expected


@pytest.mark.parametrize(("retries", "backoff", "backoff_ms", "jitter"), [
    (Retries(), None, None, None),
    (Retries(backoff=Exponential(initial=SEC, factor=3, max=MIN), jitter=SEC),
     {"kind": "exponential", "initial_ms": 1_000, "factor": 3.0, "max_ms": 60_000}, None, 1_000),
    (Retries(backoff=Fixed(delay=MIN), jitter=0), {"kind": "fixed", "delay_ms": 60_000}, None, 0),
    (Retries(backoff=[SEC, 2_000], jitter_ms=5), None, [1_000, 2_000], 5),  # a table travels as before
    (Retries(backoff_ms=[10], jitter_ms=0), None, [10], 0),
])
def test_definition_carries_the_policy(retries: Retries, backoff: dict[str, Any] | None,
                                       backoff_ms: list[int] | None, jitter: int | None) -> None:
    d = defined(retries)
    assert (d.backoff, d.backoff_ms, d.backoff_jitter_ms) == (backoff, backoff_ms, jitter)
    assert d.version == d.compute_version()


def test_the_policy_counts_in_the_version() -> None:
    versions = {defined(Retries(backoff=b)).version for b in (Exponential(initial=1, max=2), Fixed(delay=1),
                                                               Exponential(initial=1, factor=3, max=2), None)}
    assert len(versions) == 4


@pytest.mark.parametrize(("config", "expected"), [
    ({"backoff": {"initial": 1_000, "factor": 2, "max": 8_000}}, Exponential(initial=1_000, max=8_000)),
    ({"backoff": {"kind": "exponential", "initial_ms": 5, "factor": 1.5, "max_ms": 9}},
     Exponential(initial=5, factor=1.5, max=9)),
    ({"backoff": {"delay": 300}}, Fixed(delay=300)),
    ({"backoff": {"kind": "fixed", "delay_ms": 300}}, Fixed(delay=300)),
    ({"backoff": (1, 2)}, [1, 2]),
    ({"backoff_ms": [1, 2], "jitter_ms": 0}, [1, 2]),
])
def test_policies_from_config_data(config: dict[str, Any], expected: Any) -> None:
    assert Retries.model_validate(config).backoff == expected


def test_durations_accept_timedeltas_and_whole_ms_alike() -> None:
    assert Exponential(initial=SEC, max=MIN) == Exponential(initial=1_000, max=60_000) \
        == Exponential(initial_ms=1_000, max_ms=60_000)
    assert Fixed(delay=dt.timedelta(milliseconds=1_500, microseconds=999)) == Fixed(delay_ms=1_500)
    assert Retries(jitter=SEC).jitter_ms == Retries(jitter_ms=1_000).jitter_ms == 1_000
    assert Retries(backoff=[SEC, 2 * SEC]).backoff_ms == [1_000, 2_000]


BAD_POLICIES: list[Any] = [
    # (builds the config, pattern the error must match: the field and its limit)
    pytest.param(lambda: Exponential(initial=24 * H + 1, max=24 * H), r"initial must be between 0 and 24 h",
                 id="initial-over-24h"),
    pytest.param(lambda: Exponential(initial=-SEC, max=SEC), r"initial must be between 0 and 24 h",
                 id="initial-negative"),
    pytest.param(lambda: Exponential(initial=SEC, max=dt.timedelta(days=2)), r"max must be between 0 and 24 h",
                 id="max-over-24h"),
    pytest.param(lambda: Exponential(initial=SEC, factor=0.5, max=MIN), r"factor must be between 1 and 10",
                 id="factor-under-1"),
    pytest.param(lambda: Exponential(initial=SEC, factor=10.5, max=MIN), r"factor must be between 1 and 10",
                 id="factor-over-10"),
    pytest.param(lambda: Exponential(initial=SEC, factor=float("nan"), max=MIN), r"factor must be between 1 and 10",
                 id="factor-nan"),
    pytest.param(lambda: Exponential(initial=MIN, max=SEC), r"initial \(60000 ms\) must not exceed max \(1000 ms\)",
                 id="initial-over-max"),
    pytest.param(lambda: Exponential(initial=SEC), r"max\n  Field required", id="max-missing"),
    pytest.param(lambda: Fixed(delay=dt.timedelta(hours=25)), r"delay must be between 0 and 24 h", id="delay-over-24h"),
    pytest.param(lambda: Fixed(delay=-1), r"delay must be between 0 and 24 h", id="delay-negative"),
    pytest.param(lambda: Fixed(delay=1.5), r"delay must be whole milliseconds \(int\) or a datetime.timedelta",
                 id="delay-float"),
    pytest.param(lambda: Fixed(delay="5s"), r"delay must be whole milliseconds", id="delay-string"),
    pytest.param(lambda: Retries(backoff=[]), r"backoff table must have between 1 and 32 delays, got 0",
                 id="table-empty"),
    pytest.param(lambda: Retries(backoff=[1] * 33), r"backoff table must have between 1 and 32 delays, got 33",
                 id="table-33"),
    pytest.param(lambda: Retries(backoff_ms=[]), r"backoff table must have between 1 and 32", id="backoff-ms-empty"),
    pytest.param(lambda: Retries(backoff=[SEC, 24 * H + 1]), r"backoff\[1\] must be between 0 and 24 h",
                 id="table-entry-over-24h"),
    pytest.param(lambda: Retries(backoff_ms=[-1]), r"backoff\[0\] must be between 0 and 24 h",
                 id="table-entry-negative"),
    pytest.param(lambda: Retries(backoff="fast"), r"backoff must be Exponential\(...\), Fixed\(...\), a list",
                 id="backoff-unknown"),
    pytest.param(lambda: Retries(backoff=[1], backoff_ms=[1]), r"backoff or backoff_ms", id="both-names"),
    pytest.param(lambda: Retries(jitter=dt.timedelta(hours=1, milliseconds=1)), r"jitter must be between 0 and 1 h",
                 id="jitter-over-1h"),
    pytest.param(lambda: Retries(jitter_ms=-1), r"jitter must be between 0 and 1 h", id="jitter-negative"),
    pytest.param(lambda: Retries(attempts=limits.MAX_RETRIES + 1),
                 r"attempts\n  Input should be less than or equal to 20",
                 id="attempts-over-20"),
    pytest.param(lambda: Retries.model_validate({"backoff": {"initial": 5_000, "max": 1_000}}),
                 r"initial \(5000 ms\) must not exceed max", id="dict-initial-over-max"),
    pytest.param(lambda: Retries.model_validate({"backoff": {"delay": 25 * H}}), r"backoff.delay\n.*delay must be",
                 id="dict-delay-over-24h"),
    pytest.param(lambda: FunctionConfig.model_validate({"id": "fn", "trigger": {"event": "e"}, "retries": {
        "backoff": {"initial": 1, "factor": 11, "max": 2}}}), r"retries.Retries.backoff.factor\n.*factor must be",
                 id="function-config-factor"),
]


@pytest.mark.parametrize(("build", "pattern"), BAD_POLICIES)
def test_bad_policies_are_rejected_naming_field_and_limit(build: Callable[[], Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        build()


@pytest.mark.parametrize("build", [
    lambda: Exponential(initial=0, factor=1, max=0),
    lambda: Exponential(initial=24 * H, factor=10, max=dt.timedelta(hours=24)),
    lambda: Exponential(initial=SEC, max=SEC),
    lambda: Fixed(delay=24 * H),
    lambda: Retries(backoff=[0] * 32, jitter=H),
    lambda: Retries(backoff=[24 * H], jitter=0),
    lambda: Retries(attempts=0, backoff=Fixed(delay=0)),
])
def test_limits_are_inclusive(build: Callable[[], Any]) -> None:
    assert build() is not None  # a value at each limit is accepted (a refused one raises)
