"""The conformance suite: the same scenarios against every broker adapter.

An adapter is done when it passes all of it on its real server. To add one, put its
name in ``BROKERS`` (and, if it needs them, fast test settings in ``BROKER_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager

import pytest

from eventbus import EventBus
from eventbus.broker import Broker
from eventbus.brokers import open_broker
from tests.brokers.redis_cleanup import deleting_keys
from tests.conftest import broker_url
from tests.nats.streams import dropping_streams
from tests.rabbitmq.cleanup import removing_queues, sweep

BROKERS = ["memory", "redis", "rabbitmq", "nats", "kafka"]
"""Adapters under test, by name; each resolves to a URL in tests/conftest.py."""

BROKER_OPTIONS: dict[str, dict[str, object]] = {
    # Entries of a member that died go to another one after 3 s instead of 60 s.
    "redis": {"reclaim_idle": 3.0},
    # Streams are RabbitMQ's opt-in retention: on for every topic so replay is tested;
    # short retention keeps the shared test server small.
    "rabbitmq": {"streams": True, "stream_max_age": "1h", "reconnect_interval": 0.5},
    # Unacknowledged messages of a member that died go to another one after 10 s, not 30 s;
    # streams keep an hour, so the shared test server stays small.
    "nats": {"ack_wait": 10.0, "max_age": 3600.0},
    # Groups join in about half the session timeout on Tansu; fetches wait for data only
    # up to fetch_wait there (Tansu does not end a long poll early when data arrives).
    "kafka": {
        "session_timeout": 2.0,
        "heartbeat_interval": 0.2,
        "max_poll_interval": 2.0,
        "fetch_wait": 0.05,
        "partitions": 4,
        "commit_interval": 0.2,
        "linger": 0.0,  # the suite awaits publishes one by one
    },
}
"""Adapter options for tests (e.g. short redelivery timeouts), by broker name."""

CLEANUP: dict[str, Callable[..., AbstractAsyncContextManager[None]]] = {
    "rabbitmq": removing_queues,
    "redis": deleting_keys,
    "nats": dropping_streams,
}
"""Per broker: ``cleanup(monkeypatch, url, topic)`` wraps each test and removes what it
left on the (shared) server; ``SWEEP`` runs once at the end of the session."""

SWEEP: dict[str, Callable[[], None]] = {"rabbitmq": sweep}


@pytest.fixture(autouse=True)
async def clean_up_the_server(
    broker_name: str, url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    cleanup = CLEANUP.get(broker_name)
    if cleanup is None:
        yield
        return
    async with cleanup(monkeypatch, url, topic):
        yield


@pytest.fixture(scope="session", autouse=True)
def sweep_the_servers() -> Iterator[None]:
    yield
    for finish in SWEEP.values():
        finish()


@pytest.fixture(params=BROKERS)
def broker_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def url(broker_name: str) -> str:
    return broker_url(broker_name)


MakeBus = Callable[..., EventBus]


@pytest.fixture
async def make_bus(url: str, broker_name: str) -> AsyncIterator[MakeBus]:
    """Build buses on the broker under test; every one is closed after the test."""
    buses: list[EventBus] = []

    def make(**settings: object) -> EventBus:
        options = {**BROKER_OPTIONS.get(broker_name, {}), **settings}
        bus = EventBus(url, **options)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    for bus in reversed(buses):
        await bus.close()


@pytest.fixture
async def broker(url: str, broker_name: str) -> AsyncIterator[Broker]:
    """A connected raw `Broker` (the protocol without the bus on top)."""
    b = open_broker(url, **BROKER_OPTIONS.get(broker_name, {}))
    await b.connect()
    yield b
    await b.close()
