"""Deleting what a test declared on a RabbitMQ server it shares with others.

Group queues and streams outlive their broker on purpose; a suite that creates a fresh
topic per test would pile them up. Streams also hold open files on the server (about
two each): a few hundred of them exhaust a default limit of 1024 open files and take
the whole server down.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import pytest

from eventbus.brokers.rabbitmq import RabbitMQBroker


@contextlib.asynccontextmanager
async def removing_queues(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Around a test: remember every `RabbitMQBroker` it builds, then delete their queues."""
    built: list[RabbitMQBroker] = []
    original = RabbitMQBroker.__init__

    def remembering(self: RabbitMQBroker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(RabbitMQBroker, "__init__", remembering)
    try:
        yield
    finally:
        await delete_queues(built)


async def delete_queues(brokers: list[RabbitMQBroker]) -> None:
    """Delete every durable queue the brokers declared, on each broker's server."""
    by_url: dict[str, set[str]] = {}
    for broker in brokers:
        if broker.queues:
            by_url.setdefault(broker.url, set()).update(broker.queues)
    for url, names in by_url.items():
        try:
            connection = await aio_pika.connect(url, timeout=5)
        except Exception:
            continue  # the server is gone (a private node after its test): nothing to keep clean
        try:
            channel = await connection.channel()
            for name in sorted(names):
                try:
                    await channel.queue_delete(name)
                except aiormq.exceptions.AMQPChannelError:
                    channel = await connection.channel()  # a channel error closes the channel
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
