"""Event keys and the API token on a real broker and real HTTP."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx
import pytest

from sluicegate.devstack import ApiServer
from sluicegate.ingest.event_keys import EventKeys, create_key, mask
from sluicegate.local_broker import free_port

if TYPE_CHECKING:
    from conftest import Engine


def test_event_keys_are_never_logged_in_full(engine: "Engine", caplog: pytest.LogCaptureFixture) -> None:
    key = create_key(engine.settings, "logging-app")
    with caplog.at_level(logging.DEBUG):
        r = engine.http.post(f"/e/{key}", json={"name": "noop"})
        assert r.status_code == 200, r.text
        bad = engine.http.post(f"/e/{key}x", json={"name": "noop"})
        assert bad.status_code == 401
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sluicegate"))
    assert key not in ours
    assert mask(key) in ours  # the request was logged, masked


def test_keys_are_stored_hashed_and_listed_by_prefix(engine: "Engine") -> None:
    key = create_key(engine.settings, "listing-app")
    keys = EventKeys(engine.settings).start()
    try:
        listed = [(h, rec) for h, rec in keys.listing() if rec.app_id == "listing-app"]
        assert listed, "the new key is not listed"
        for key_hash, rec in listed:
            assert key not in key_hash and key not in rec.prefix
        assert mask(key) in [rec.prefix for _, rec in listed]
        assert keys.app_for(key) == "listing-app"
        assert keys.app_for("dev") is None  # not dev mode
    finally:
        keys.stop()


def test_the_runs_api_requires_the_token_when_one_is_set(engine: "Engine") -> None:
    settings = engine.settings.model_copy(update={"api_token": "s3cret-token", "http_port": free_port(),
                                                  "data_dir": engine.settings.data_dir / "token-api"})
    api = ApiServer(settings).start()
    try:
        assert httpx.get(f"{api.url}/v1/runs/nope").status_code == 401
        assert httpx.get(f"{api.url}/v1/runs/nope", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(f"{api.url}/v1/runs/nope", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 404
        assert "s3cret-token" not in ok.text
    finally:
        api.stop()


def test_keys_cli_creates_a_key_once_and_lists_only_its_prefix(engine: "Engine") -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "SLUICEGATE_BOOTSTRAP_SERVERS": engine.settings.bootstrap_servers,
           "SLUICEGATE_TOPIC_PREFIX": engine.settings.topic_prefix,
           "SLUICEGATE_PARTITIONS": str(engine.settings.partitions)}
    created = subprocess.run([sys.executable, "-m", "sluicegate.cli", "keys", "create", "--app", "cli-app"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sgk_") and len(key) > 40
    listed = subprocess.run([sys.executable, "-m", "sluicegate.cli", "keys", "list"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if "app=cli-app" in line)
    assert mask(key) in line and key not in listed.stdout
    # and the key works on the HTTP bridge right away
    r = engine.http.post(f"/e/{key}", json={"name": "cli/works"})
    assert r.status_code == 200, r.text
    missing = subprocess.run([sys.executable, "-m", "sluicegate.cli", "keys", "create"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--app" in missing.stderr
