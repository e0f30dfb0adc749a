"""A group member in its own process, for the SIGKILL test.

    python -m tests.rabbitmq.member URL TOPIC GROUP

Prints ``ready`` once subscribed, then ``start <id>`` before and ``done <id>`` after
handling each message (each handler takes 20 ms), flushing every line.
"""

from __future__ import annotations

import asyncio
import sys

from eventbus.brokers.rabbitmq import RabbitMQBroker
from eventbus.message import Message


async def main(url: str, topic: str, group: str) -> None:
    broker = RabbitMQBroker(url)
    await broker.connect()

    async def handle(message: Message) -> None:
        print("start", message.id, flush=True)
        await asyncio.sleep(0.02)
        print("done", message.id, flush=True)

    await broker.subscribe(topic, handle, group=group, prefetch=4)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
