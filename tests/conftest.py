"""Shared fixtures: broker URLs for the conformance suite, and broker availability.

Every broker the suite knows is listed in ``BROKERS``. A broker that cannot be reached
is a skip with the reason, or a failure when ``EVENTBUS_REQUIRE_BROKERS=1`` (CI).
URLs come from ``EVENTBUS_<NAME>_URL`` or the defaults below. Kafka without
``EVENTBUS_KAFKA_URL`` is a Tansu broker (``tests/tansu.py``) started on a free
loopback port on first use and stopped at the end of the session.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.tansu import TansuServer

REQUIRE = os.environ.get("EVENTBUS_REQUIRE_BROKERS") == "1"

DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when brokers are required."""
    if REQUIRE:
        pytest.fail(f"EVENTBUS_REQUIRE_BROKERS=1 but {reason}")
    pytest.skip(reason)


def reachable(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port
    if port is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_tansu: TansuServer | None = None


def _kafka_test_server() -> str:
    """The session's Tansu broker, started on first use."""
    global _tansu
    if _tansu is None:
        server = TansuServer()
        try:
            server.start()
        except RuntimeError as exc:
            unavailable(f"could not start the Tansu test broker: {exc}")
        _tansu = server
    return _tansu.url


@pytest.fixture(scope="session", autouse=True)
def _stop_kafka_test_server() -> Iterator[None]:
    """Stop the Tansu broker `broker_url("kafka")` may have started."""
    yield
    if _tansu is not None:
        _tansu.stop()


def broker_url(name: str) -> str:
    """The URL of broker ``name`` for this test, or skip/fail when it is not there."""
    if name == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    if name == "kafka" and not os.environ.get("EVENTBUS_KAFKA_URL"):
        return _kafka_test_server()
    url = os.environ.get(f"EVENTBUS_{name.upper()}_URL") or DEFAULT_URLS.get(name)
    if url is None:
        unavailable(f"no URL for broker {name!r}: set EVENTBUS_{name.upper()}_URL")
    assert url is not None
    if not reachable(url):
        unavailable(f"{name} is not reachable at {url}")
    return url


@pytest.fixture
def topic() -> str:
    """A fresh topic name per test."""
    return f"t.{uuid.uuid4().hex[:16]}"
