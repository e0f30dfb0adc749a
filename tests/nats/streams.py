"""Clean-up for tests on the shared NATS server: drop the JetStream streams of a test topic."""

from __future__ import annotations

import json
import os

import nats

from tests.conftest import DEFAULT_URLS


def nats_url() -> str:
    """The NATS server the suite uses (``EVENTBUS_NATS_URL`` or the default)."""
    return os.environ.get("EVENTBUS_NATS_URL") or DEFAULT_URLS["nats"]


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
