"""Clean-up for tests on the shared NATS server: drop the JetStream streams of a test topic."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import pytest


async def drop_streams(url: str, topic: str) -> None:
    """Delete every stream that holds ``topic`` or a subtopic of it (``topic.>``).

    Test topics are fresh uuids, so this only ever removes the test's own streams.
    """
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        jsm = nc.jsm()
        names: set[str] = set()
        for subject in (topic, f"{topic}.>"):
            response = await nc.request(
                "$JS.API.STREAM.NAMES", b'{"subject":"%s"}' % subject.encode(), timeout=2
            )
            names.update(json.loads(response.data).get("streams") or ())
        for name in names:
            await jsm.delete_stream(name)
    finally:
        await nc.close()


@asynccontextmanager
async def dropping_streams(
    monkeypatch: pytest.MonkeyPatch, url: str, topic: str
) -> AsyncIterator[None]:
    """The conformance suite's clean-up for NATS: drop the test topic's streams after it."""
    del monkeypatch  # the clean-up protocol passes it; NATS needs nothing patched
    yield
    await drop_streams(url, topic)
