"""The conformance suite: the same scenarios against every broker adapter.

An adapter is done when it passes all of it on its real server. To add one, put its
name in ``BROKERS`` (and, if it needs them, fast test settings in ``BROKER_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from eventbus import EventBus
from eventbus.broker import Broker
from eventbus.brokers import open_broker
from tests.conftest import broker_url

BROKERS = ["memory", "redis"]
"""Adapters under test, by name; each resolves to a URL in tests/conftest.py."""

BROKER_OPTIONS: dict[str, dict[str, object]] = {
    # Entries of a member that died go to another one after 3 s instead of 60 s.
    "redis": {"reclaim_idle": 3.0},
}
"""Adapter options for tests (e.g. short redelivery timeouts), by broker name."""


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
