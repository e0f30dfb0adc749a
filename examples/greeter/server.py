"""The greeter service, after Go Micro's greeter: one endpoint, ``greeter.hello``.

    EVENTBUS_URL=nats://127.0.0.1:4222 python examples/greeter/server.py
    cd examples/greeter && EVENTBUS_URL=... eventbus run server:make_bus   # the same

Runs on ``EVENTBUS_URL`` (``memory://`` when unset: then only code in the same process
can call it, see ``demo.py``). Every node started this way registers itself; run two
and the clients spread their calls over both. Log lines carry the caller's trace id.
"""

from __future__ import annotations

import asyncio
import logging

from messages import HelloReply, HelloRequest

from eventbus import EventBus, tracing

log = logging.getLogger("greeter")


class Greeter:
    """Each public method is an endpoint: ``hello`` is ``greeter.hello``."""

    async def hello(self, request: HelloRequest) -> HelloReply:
        log.info("request received from %s", request.name)
        return HelloReply(greeting=f"Hello {request.name}")


def make_bus(url: str | None = None) -> EventBus:
    """A greeter node on ``url`` (``EVENTBUS_URL`` or ``memory://`` when ``None``)."""
    bus = EventBus(url, name="greeter", version="1.0.0")
    bus.service(Greeter(), concurrency=16)
    return bus


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=tracing.LOG_FORMAT)
    tracing.install_log_filter()


if __name__ == "__main__":
    setup_logging()
    asyncio.run(make_bus().run())  # until Ctrl-C / SIGTERM; says goodbye on the way out
