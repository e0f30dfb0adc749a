"""A service node in a process of its own, for tests that kill it with SIGKILL.

    python -m tests.conformance.node_process URL BROKER_NAME SERVICE HEARTBEAT

Prints ``ready <node id>`` once the node is announced, then serves ``<SERVICE>.ping``
until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

from eventbus import EventBus
from tests.conformance.conftest import BROKER_OPTIONS


async def serve(url: str, broker_name: str, service: str, heartbeat: float) -> None:
    options = BROKER_OPTIONS.get(broker_name, {})
    bus = EventBus(url, name=service, heartbeat=heartbeat, **options)  # type: ignore[arg-type]

    @bus.subscriber(f"{service}.ping", group=service)
    async def ping(request: dict[str, object]) -> dict[str, object]:
        return {"pid": os.getpid(), "node": bus.node_id}

    async with bus:
        print("ready", bus.node_id, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    url, broker_name, service, heartbeat = sys.argv[1:5]
    asyncio.run(serve(url, broker_name, service, float(heartbeat)))
