"""Fixtures for the NATS adapter's own tests (interop with plain nats-py, faults)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import broker_url

pytest.importorskip("nats")

import nats
from nats.aio.client import Client

from eventbus.brokers.nats import NatsBroker
from tests.nats.streams import drop_streams


@pytest.fixture
def url() -> str:
    """The shared NATS server's URL (skip, or fail with EVENTBUS_REQUIRE_BROKERS=1)."""
    return broker_url("nats")


@pytest.fixture(autouse=True)
async def _drop_streams(url: str, topic: str) -> AsyncIterator[None]:
    yield
    await drop_streams(url, topic)


@pytest.fixture
async def plain(url: str) -> AsyncIterator[Client]:
    """A plain nats-py client: what a service without eventbus uses."""
    nc = await nats.connect(url)
    yield nc
    await nc.close()


@pytest.fixture
async def broker(url: str) -> AsyncIterator[NatsBroker]:
    b = NatsBroker(url, ack_wait=10.0, max_age=3600.0)
    await b.connect()
    yield b
    await b.close()
