"""Sluicegate benchmarks (see BENCHMARKS.md): ``python -m bench <ID> [--quick]``.

Each benchmark starts what it needs (a local Kafka broker unless
``KAFKA_BOOTSTRAP_SERVERS`` / ``SLUICEGATE_BOOTSTRAP_SERVERS`` is set, a processor child
process, an in-process worker), prints a table for people and then one JSON object per
result on its own line. A missed target never fails the process; a real error does.
"""

from __future__ import annotations

# id -> "module:function"; the function takes (quick: bool, **options) and returns the
# list of JSON-able result dicts it printed.
BENCHMARKS: dict[str, str] = {
    "B1": "bench.b1_latency:main",
    "B2": "bench.b2_step_gap:main",  # gap between one step's end and the next one's start
    "B4": "bench.b4_noisy_neighbour:main",  # noisy-neighbour fairness vs a plain FIFO consumer
    "B5": "bench.b5_many_tenants:main",  # Jain's index over 100 backlogged tenants
    "B6": "bench.b6_key_cardinality:main",  # 10k keys x 3 vs 1 key x 30k, throughput ratio
    "B9": "bench.b9_timers:main",  # lateness of step.sleep timers
    "B10": "bench.b10_event_match:main",  # wait_for_event match latency with many live waiters
    "FLOW": "bench.flow_grouping:main",  # debounce / batching throughput and lateness (issue 3)
    "REPLAY": "bench.replay_fairness:main",  # live start latency while a 20k-event replay runs (issue 6)
}
