"""A Kafka group member in a process of its own, for the fault tests.

    python -m tests.kafka.worker URL TOPIC GROUP LOGFILE DELAY

Writes ``ready`` once it has its partitions, then ``start <body>`` and ``done <body>``
around each handler call (each line reaches the file at once), so a test that
SIGKILLs it can tell which messages it finished.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from eventbus import Message
from eventbus.brokers.kafka import KafkaBroker

FAST_GROUPS = {
    "session_timeout": 2.0,
    "heartbeat_interval": 0.2,
    "max_poll_interval": 2.0,
    "fetch_wait": 0.05,
    "commit_interval": 0.1,
}


async def main(url: str, topic: str, group: str, log: TextIO, delay: float) -> None:
    broker = KafkaBroker(url, **FAST_GROUPS)  # type: ignore[arg-type]
    await broker.connect()

    async def handle(message: Message) -> None:
        log.write(f"start {message.body.decode()}\n")
        await asyncio.sleep(delay)
        log.write(f"done {message.body.decode()}\n")

    await broker.subscribe(topic, handle, group=group, concurrency=2)
    log.write("ready\n")
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, topic, group, path, delay = sys.argv[1:6]
    with open(path, "a", buffering=1) as out:  # line-buffered: each line lands at once
        asyncio.run(main(url, topic, group, out, float(delay)))
