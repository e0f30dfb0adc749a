"""Deleting the streams a test left on the Redis server it shares with others."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_py

__all__ = ["deleting_keys"]


@contextlib.asynccontextmanager
async def deleting_keys(
    monkeypatch: pytest.MonkeyPatch, url: str, topic: str
) -> AsyncIterator[None]:
    """Around a test: afterwards, delete every key named after its (unique) topic.

    Test topics are fresh uuid names, and every stream a test creates (``<topic>``,
    ``<topic>.dlq``, ``<topic>.<n>``...) starts with one, so nobody else's keys match.
    """
    yield
    client = redis_py.Redis.from_url(url)
    try:
        names = [name async for name in client.scan_iter(match=f"{topic}*", count=1000)]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()
