"""pytest plugin (entry point ``eventbus``): fixtures for testing eventbus handlers.

Fixtures:
    memory_bus: a fresh, started `EventBus` on its own ``memory://`` hub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventbus.bus import EventBus
from eventbus.message import new_id

__all__ = ["memory_bus"]


@pytest.fixture
async def memory_bus() -> AsyncIterator[EventBus]:
    """A fresh bus on a private ``memory://`` hub, started, closed after the test."""
    async with EventBus(f"memory://test-{new_id()}") as bus:
        yield bus
