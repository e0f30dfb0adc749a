"""Calls the greeter through the registry, after Go Micro's greeter client.

    EVENTBUS_URL=nats://127.0.0.1:4222 python examples/greeter/client.py

Start ``server.py`` on the same broker first (``memory://`` cannot cross processes:
use ``demo.py`` for a one-process run). Each call runs in its own trace: the server
logs the same trace id as the client.
"""

from __future__ import annotations

import asyncio
import logging

from messages import HelloReply, HelloRequest

from eventbus import EventBus, ServiceNotFound, tracing

log = logging.getLogger("greeter.client")


async def greet(bus: EventBus, names: list[str]) -> list[str]:
    """Call ``greeter.hello`` once per name, each call in a trace of its own."""
    greeter = bus.client("greeter", selector="round_robin", timeout=2.0)
    greetings = []
    for name in names:
        with tracing.trace():
            reply = await greeter.call("hello", HelloRequest(name=name), response_type=HelloReply)
            log.info("response: %s", reply.greeting)
        greetings.append(reply.greeting)
    return greetings


async def main() -> None:
    async with EventBus() as bus:
        try:
            await greet(bus, ["John", "Ann", "World"])
        except ServiceNotFound as exc:
            log.error("%s", exc)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=tracing.LOG_FORMAT)
    tracing.install_log_filter()
    asyncio.run(main())
