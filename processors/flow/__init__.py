"""Schedule-time flow control as pure decisions, one module per control.

Each module: a JSON-serializable state (pydantic) per (function, key), frozen input and
action dataclasses, and ``decide(state, input, now_ms) -> Decision``. No Kafka, RocksDB or
clock imports; the function processor evaluates key expressions, loads state, calls the
decision, persists and forwards. Order at schedule time: rate limit → debounce → batch →
idempotency → singleton (``sluicegate.flow_config``).
"""
