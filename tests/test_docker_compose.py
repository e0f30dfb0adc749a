"""docker-compose.yml parses and offers every broker on the adapters' default ports.

Docker itself does not run in CI; this checks the file's structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import DEFAULT_URLS

COMPOSE = Path(__file__).parents[1] / "docker-compose.yml"


def services() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    found: dict[str, Any] = document["services"]
    return found


def published(service: dict[str, Any]) -> set[int]:
    return {int(str(port).split(":")[0]) for port in service.get("ports", [])}


def test_every_broker_is_there_on_its_default_port() -> None:
    found = services()
    assert set(found) == {"kafka", "rabbitmq", "nats", "redis"}
    assert 9092 in published(found["kafka"])  # kafka://localhost:9092
    for name in ("redis", "nats", "rabbitmq"):
        port = int(DEFAULT_URLS[name].rsplit(":", 1)[1].split("/")[0])
        assert port in published(found[name]), f"{name} should publish {port}"
    assert 15672 in published(found["rabbitmq"])  # the management UI


def test_kafka_runs_in_kraft_mode_and_nats_with_jetstream() -> None:
    found = services()
    kafka = found["kafka"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("zookeeper" in s["image"] for s in found.values())
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://localhost:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "-js" in found["nats"]["command"]
    assert "management" in found["rabbitmq"]["image"]
    for service in found.values():
        assert ":" in service["image"], "pin image versions"
