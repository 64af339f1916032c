"""Every runtime setting, read from environment variables (``SLUICEGATE_*``).

``docker-compose.yml`` wires the services with these same names; a test checks that.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICEGATE_", extra="ignore", populate_by_name=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("SLUICEGATE_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers.",
    )
    topic_prefix: str = Field("sg", description="Prefix of every topic (sg.events, sg.commands, ...).")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of sg.events, sg.commands and every sg.work.<app>.")
    replication_factor: int = Field(1, ge=1)
    events_retention_ms: int = Field(7 * 24 * 3600 * 1000, description="Retention of raw events in sg.events (the replay source).")
    run_retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=1000, description=(
        "How long an ended run (its state, view and listing entries) is kept after it ended. Keep it at "
        "least 24 h: a repeated event id starts no second run only while the first one is kept."))
    data_dir: Path = Field(Path(".sluicegate/data"), description="Local RocksDB state of processors and the API's run view.")
    processor_id: str = Field("sluicegate-processor", description="faust app id (consumer group) of the processors.")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8288, ge=0, le=65535)
    api_token: str | None = Field(None, description="Bearer token the /v1 API requires when set (never logged).", repr=False)
    dev_mode: bool = Field(False, description="Accept the fixed local event key `dev` (never in production).")
    dev_app_id: str = Field("example-app", description="The app the dev key sends events for.")
    max_event_bytes: int = Field(limits.MAX_EVENT_BYTES, ge=1024, le=limits.ABSOLUTE_MAX_EVENT_BYTES)
    session_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer-group session timeout of processors.")
    commit_interval_s: float = Field(1.0, gt=0)
    dispatch_window: int = Field(64, ge=1, le=100_000, description=(
        "In-flight jobs per app per work partition: the most a newly ready step can wait behind. "
        "Set it to about the executors' capacity per partition (worker concurrency x workers)."))
    replay_window_share: float = Field(0.8, gt=0, le=1.0, description=(
        "The share of each app's dispatch window a replay's runs may hold in flight at once (at least one "
        "slot); the rest stays free for live runs, which then never wait for a replayed step to end. "
        "1.0: replays and live work share the whole window fairly."))
    processor_buffer: int = Field(4096, ge=1, le=131_072, description=(
        "Records a processor agent fetches ahead (faust's stream_buffer_maxsize): a record of a quiet "
        "partition waits behind at most this many of a busy one. Smaller favours fairness under floods, "
        "larger favours throughput (README, B4)."))
    processor_fetch_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024, description=(
        "Bytes a processor fetches per partition at once (faust's consumer_max_fetch_size): a record of a "
        "quiet partition waits behind about this much of a busy one. 64 KiB cut B4's quiet p99 from 10 s to "
        "1 s but doubled B1's latency here (README)."))
    processor_fetch_wait_ms: int = Field(20, ge=1, le=5000, description=(
        "How long the broker may hold a processor's fetch when its topics are quiet (faust hard-codes 1500)."))
    lease_ms: int = Field(30_000, ge=1_000, le=3_600_000, description=(
        "A dispatched step not heard from (outcome or heartbeat) for this long is dispatched again."))
    wait_lookback_events: int = Field(20_000, ge=0, le=1_000_000, description=(
        "Recent events each router partition keeps in memory so a new wait sees events that arrived "
        "just before it was registered; older ones are read back from sg.events."))
    wait_lookback_ms: int = Field(120_000, ge=0, le=3_600_000, description=(
        "The age limit of that in-memory lookback."))
    worker_concurrency: int = Field(8, ge=1, le=1000, description=(
        "Jobs an SDK worker runs at once, each in its own thread (`sluicegate worker --concurrency` "
        "and `sg.worker(concurrency=...)` override it)."))
    log_level: str = "INFO"

    def as_env(self) -> dict[str, str]:
        """Every setting as the environment variable that sets it (unset ones left out): what a
        child process needs to run with exactly these settings."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            out[f"SLUICEGATE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"

    @property
    def events_topic(self) -> str:
        return self.topic("events")

    @property
    def commands_topic(self) -> str:
        return self.topic("commands")

    @property
    def results_topic(self) -> str:
        """Step outcomes, heartbeats, resolved waits, run timers and dispatcher ticks: what
        moves runs that have started. Partitioned like ``sg.commands`` and read by the same
        agent, but never queued behind a burst of new triggers."""
        return self.topic("results")

    @property
    def runs_topic(self) -> str:
        return self.topic("runs")

    @property
    def registry_topic(self) -> str:
        return self.topic("registry")

    @property
    def keys_topic(self) -> str:
        return self.topic("keys")

    def work_topic(self, app_id: str) -> str:
        return self.topic(f"work.{app_id}")
