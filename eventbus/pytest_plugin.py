"""pytest plugin (entry point ``eventbus``): fixtures for testing eventbus handlers.

Installed with eventbus; nothing to configure. Async fixtures need pytest-asyncio.

Fixtures:
    memory_bus: a fresh, started `EventBus` on its own ``memory://`` hub.
    app_bus: the bus under test, not started. A new empty bus by default; override it
        in your ``conftest.py`` to return your application's bus.
    testbus: a `eventbus.testing.TestBus` around ``app_bus``, entered: the app's
        handlers on a private in-memory broker, whatever the bus's URL.
    eventbus_url: the broker URL from ``--eventbus-url`` or ``EVENTBUS_URL``; tests
        using it are skipped when neither is set.
    url_bus: a fresh, started `EventBus` on the broker at ``eventbus_url``.

Example:
    >>> # conftest.py
    >>> # @pytest.fixture
    >>> # def app_bus() -> EventBus:
    >>> #     from shop.app import bus
    >>> #     return bus
    >>> #
    >>> # async def test_bill(testbus: TestBus) -> None:
    >>> #     await testbus.publish("orders.placed", {"id": 1})
    >>> #     await testbus.wait_for("orders.placed", processed=1)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import pytest

from eventbus.bus import EventBus
from eventbus.message import new_id
from eventbus.testing import TestBus

__all__ = ["app_bus", "eventbus_url", "memory_bus", "pytest_addoption", "testbus", "url_bus"]

F = TypeVar("F", bound=Callable[..., Any])

_fixture: Any
try:  # pytest-asyncio's decorator works in its "strict" mode too; plain pytest's only in "auto"
    from pytest_asyncio import fixture as _fixture
except ImportError:  # pragma: no cover - without pytest-asyncio async fixtures cannot run anyway
    _fixture = pytest.fixture


def async_fixture(fn: F) -> F:
    """Declare an async fixture (pytest-asyncio's decorator where it is installed)."""
    return cast(F, _fixture(fn))


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--eventbus-url``: the broker the ``url_bus`` fixture connects to."""
    parser.addoption(
        "--eventbus-url",
        default=None,
        help="broker URL for eventbus's url_bus fixture (default: $EVENTBUS_URL)",
    )


@async_fixture
async def memory_bus() -> AsyncIterator[EventBus]:
    """A fresh bus on a private ``memory://`` hub, started, closed after the test."""
    async with EventBus(f"memory://test-{new_id()}") as bus:
        yield bus


@pytest.fixture
def app_bus() -> EventBus:
    """The bus under test, not started: override to return your application's bus."""
    return EventBus("memory://")


@async_fixture
async def testbus(app_bus: EventBus) -> AsyncIterator[TestBus]:
    """``app_bus`` on a private in-memory broker for the test (see `TestBus`)."""
    async with TestBus(app_bus) as tb:
        yield tb


@pytest.fixture
def eventbus_url(request: pytest.FixtureRequest) -> str:
    """The broker URL from ``--eventbus-url`` or ``EVENTBUS_URL``; skips the test when unset."""
    url: str | None = request.config.getoption("--eventbus-url") or os.environ.get("EVENTBUS_URL")
    if not url:
        pytest.skip("no broker URL: pass --eventbus-url URL or set EVENTBUS_URL")
    return url


@async_fixture
async def url_bus(eventbus_url: str) -> AsyncIterator[EventBus]:
    """A fresh bus on the broker at ``eventbus_url``, started, closed after the test.

    Use fresh topic names per test: the broker is shared and keeps what it is sent.
    """
    async with EventBus(eventbus_url) as bus:
        yield bus
