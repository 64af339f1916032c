"""docker-compose.yml agrees with the settings model and the broker version we test against.

No Docker engine is needed: the file is parsed and checked against ``Settings``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluicegate.local_broker import KAFKA_VERSION
from sluicegate.settings import Settings
from sluicegate.topics import MAX_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PREFIX = "SLUICEGATE_"
SLUICEGATE_SERVICES = ("processor", "api", "worker")
INTERPOLATION = re.compile(r"\$\{?[A-Za-z_]")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whether written as a map or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            name, sep, value = str(item).partition("=")
            out[name] = value if sep else None
        return out
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def field_of(env_name: str) -> str:
    return env_name[len(PREFIX):].lower()


def is_literal(value: str | None) -> bool:
    return value is not None and not INTERPOLATION.search(value)


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(published, target) for the short ("[ip:]host:container") and long port syntaxes."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("published")) if entry.get("published") is not None else None,
                        int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.split(":")
        target = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 else None
        out.append((published, target))
    return out


def test_services_exist(compose: dict[str, Any]) -> None:
    assert {"kafka", *SLUICEGATE_SERVICES} <= set(compose["services"])


def test_sluicegate_services_run_the_cli_from_the_built_image(compose: dict[str, Any]) -> None:
    expected = {
        "processor": ["sluicegate", "processor"],
        "api": ["sluicegate", "api"],
        "worker": ["sluicegate", "worker", "examples/hello.py:sg"],
    }
    for name, command in expected.items():
        svc = compose["services"][name]
        got = svc["command"] if isinstance(svc["command"], list) else str(svc["command"]).split()
        assert got == command, name
        assert svc.get("build"), f"{name} must be built from the Dockerfile"
        depends = svc.get("depends_on") or {}
        assert "kafka" in depends, f"{name} must wait for kafka"
        if isinstance(depends, dict):
            assert depends["kafka"].get("condition") == "service_healthy", name
    assert (ROOT / "Dockerfile").exists()
    assert (ROOT / "examples" / "hello.py").exists()


@pytest.mark.parametrize("service", SLUICEGATE_SERVICES)
def test_every_sluicegate_variable_is_a_settings_field(compose: dict[str, Any], service: str) -> None:
    env = environment(compose["services"][service])
    names = [n for n in env if n.startswith(PREFIX)]
    assert names, f"{service} is not configured by SLUICEGATE_* variables"
    for name in names:
        field = field_of(name)
        assert field in Settings.model_fields, f"{service}: {name} is not a Settings field"


@pytest.mark.parametrize("service", SLUICEGATE_SERVICES)
def test_literal_values_validate(compose: dict[str, Any], service: str) -> None:
    env = environment(compose["services"][service])
    for name, value in env.items():
        if not name.startswith(PREFIX) or not is_literal(value):
            continue
        field = field_of(name)
        parsed = getattr(Settings(**{field: value}), field)  # raises ValidationError if invalid
        if not isinstance(parsed, bool):
            assert str(parsed) == value, f"{service}: {name}={value!r} is read as {parsed!r}"


@pytest.mark.parametrize("service", SLUICEGATE_SERVICES)
def test_no_dev_mode(compose: dict[str, Any], service: str) -> None:
    env = environment(compose["services"][service])
    value = env.get("SLUICEGATE_DEV_MODE")
    assert value is None or Settings(dev_mode=value).dev_mode is False


def test_services_agree_on_the_topic_layout(compose: dict[str, Any]) -> None:
    # topics are created by whoever comes first; a different partition count or prefix
    # would split the system (or fail topic creation)
    for name in ("SLUICEGATE_PARTITIONS", "SLUICEGATE_TOPIC_PREFIX", "SLUICEGATE_BOOTSTRAP_SERVERS",
                 "SLUICEGATE_REPLICATION_FACTOR"):
        values = {environment(compose["services"][s]).get(name) for s in SLUICEGATE_SERVICES}
        assert len(values) == 1, f"{name} differs between services: {values}"


def test_api_port_is_published(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    env = environment(api)
    port = Settings(http_port=env["SLUICEGATE_HTTP_PORT"]).http_port
    assert env.get("SLUICEGATE_HTTP_HOST") == "0.0.0.0", "the API must listen on every interface in a container"
    targets = [target for _published, target in published_ports(api)]
    assert port in targets, f"api listens on {port} but publishes {targets}"


def test_api_token_is_required_not_written_down(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    token = environment(api).get("SLUICEGATE_API_TOKEN")
    from_env_file = bool(api.get("env_file"))
    assert (token is not None and re.fullmatch(r"\$\{SLUICEGATE_API_TOKEN:\?[^}]*\}", token)) or \
        (token is None and from_env_file), "the API token must come from the environment / an env file"


@pytest.mark.parametrize("service", ("processor", "api"))
def test_state_lives_on_a_volume(compose: dict[str, Any], service: str) -> None:
    svc = compose["services"][service]
    data_dir = environment(svc)["SLUICEGATE_DATA_DIR"]
    targets = []
    for v in svc.get("volumes") or []:
        targets.append(v["target"] if isinstance(v, dict) else str(v).split(":")[1])
    assert data_dir in targets, f"{service}: SLUICEGATE_DATA_DIR={data_dir} is not a volume"


def kafka_env(compose: dict[str, Any]) -> dict[str, str]:
    return environment(compose["services"]["kafka"])


def test_kafka_image_matches_the_tested_broker(compose: dict[str, Any]) -> None:
    image = compose["services"]["kafka"]["image"]
    repo, _, tag = image.partition(":")
    assert repo == "apache/kafka"
    assert tag == KAFKA_VERSION


def test_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    env = kafka_env(compose)
    for name in ("KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS",
                 "KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                 "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"):
        assert env.get(name), f"kafka: {name} is missing"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].split("@")[0] == env["KAFKA_NODE_ID"]
    for name in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                 "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env.get(name) == "1", f"kafka: {name} must be 1 on a single broker"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == 52428800
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= int(MAX_MESSAGE_BYTES)
    assert compose["services"]["kafka"].get("healthcheck", {}).get("test")
    # Sluicegate cannot ask for more replicas than there are brokers
    rf = {environment(compose["services"][s]).get("SLUICEGATE_REPLICATION_FACTOR") for s in SLUICEGATE_SERVICES}
    assert all(v is None or int(v) == 1 for v in rf)


def test_bootstrap_servers_point_at_the_advertised_listener(compose: dict[str, Any]) -> None:
    env = kafka_env(compose)
    protocols = dict(p.split(":", 1) for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = {}
    for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, _, address = listener.partition("://")
        advertised[address] = name
    hostname = compose["services"]["kafka"].get("hostname", "kafka")
    for service in SLUICEGATE_SERVICES:
        bootstrap = environment(compose["services"][service])["SLUICEGATE_BOOTSTRAP_SERVERS"]
        for server in Settings(bootstrap_servers=bootstrap).bootstrap_servers.split(","):
            assert server in advertised, f"{service}: {server} is not an advertised listener {sorted(advertised)}"
            host = server.rsplit(":", 1)[0]
            assert host in ("kafka", hostname), f"{service}: {server} is not the kafka service"
            # the clients speak plain Kafka (no TLS/SASL settings exist in Settings)
            assert protocols[advertised[server]] == "PLAINTEXT"


def test_dockerfile_copies_what_exists() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    assert any(ln.startswith("RUN pip install .") for ln in lines)
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
