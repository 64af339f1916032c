"""``Settings.as_env``: what a child process (``devstack.ProcessorProcess``) is given, so it runs
with exactly the parent's settings, whatever the parent's own environment says."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.devstack import ProcessorProcess
from sluicegate.settings import Settings


def custom() -> Settings:
    return Settings(bootstrap_servers="broker:9092", topic_prefix="t", partitions=3, data_dir=Path("/tmp/x"),
                    events_retention_ms=3_600_000, run_retention_ms=5_000, dev_mode=True, api_token="s3cret",
                    session_timeout_s=6.5, replay_window_share=0.25, log_level="DEBUG")


def test_every_setting_survives_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = custom()
    env = settings.as_env()
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"SLUICEGATE_{name.upper()}", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().model_dump() == settings.model_dump()
    assert env["SLUICEGATE_RUN_RETENTION_MS"] == "5000" and env["SLUICEGATE_DEV_MODE"] == "true"


def test_an_unset_setting_is_left_out() -> None:
    assert "SLUICEGATE_API_TOKEN" not in Settings(api_token=None).as_env()


def test_the_child_gets_the_settings_over_the_parents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_RUN_RETENTION_MS", "999999")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    env = ProcessorProcess(custom(), Path("/tmp/p.log")).env()
    assert env["SLUICEGATE_RUN_RETENTION_MS"] == "5000"
    assert env["SLUICEGATE_BOOTSTRAP_SERVERS"] == "broker:9092"  # read before KAFKA_BOOTSTRAP_SERVERS


@pytest.mark.parametrize("value", [0, 999, -1])
def test_run_retention_below_a_second_is_refused_naming_the_setting(value: int) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        Settings(run_retention_ms=value)
    assert "run_retention_ms" in str(err.value) and "1000" in str(err.value)


def test_run_retention_of_a_second_is_accepted() -> None:
    assert Settings(run_retention_ms=1000).run_retention_ms == 1000
