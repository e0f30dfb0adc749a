"""The greeter server and client in one process, on ``memory://`` by default.

    python examples/greeter/demo.py

Two greeter nodes register, the client finds them in the registry and alternates
between them; the server and client log lines of each call share a trace id.
"""

from __future__ import annotations

import asyncio
import logging

from client import greet
from server import make_bus, setup_logging

from eventbus import EventBus

log = logging.getLogger("greeter.demo")


async def main() -> None:
    async with make_bus() as first, make_bus() as second, EventBus(first.url) as client:
        for name in await client.registry.services():
            for node in await client.registry.nodes(name):
                log.info(
                    "found %s node %s %s: %s", name, node.id, node.version, sorted(node.endpoints)
                )
        await greet(client, ["John", "Ann", "World", "Ada"])
        log.info("nodes: %s and %s", first.node_id, second.node_id)


if __name__ == "__main__":
    setup_logging()
    asyncio.run(main())
