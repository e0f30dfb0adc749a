"""Deleting what tests declared on a RabbitMQ server they share with others.

Group queues and streams outlive their broker on purpose; a suite that creates a fresh
topic per test would pile them up. Streams also hold open files on the server (about
two each): a few hundred of them exhaust a default limit of 1024 open files and take
the whole server down. Two nets catch them:

- around each test, every `RabbitMQBroker` built in this process deletes the durable
  queues it declared (`RabbitMQBroker.queues`);
- at the end of the session, queues named after the session's test topics that
  brokers in other processes declared (the CLI tests run ``eventbus`` as processes)
  are found with ``rabbitmqctl list_queues`` and deleted, where rabbitmqctl can reach
  the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aio_pika
import aiormq
import pytest

from eventbus.brokers.rabbitmq import RabbitMQBroker

_topics: dict[str, set[str]] = {}  # server URL -> topics the session's tests used


@contextlib.asynccontextmanager
async def removing_queues(
    monkeypatch: pytest.MonkeyPatch, url: str | None = None, topic: str | None = None
) -> AsyncIterator[None]:
    """Around a test: remember every `RabbitMQBroker` it builds, then delete their queues.

    ``url`` and ``topic`` (the test's topic) are remembered for `sweep` at the end.
    """
    if url is not None and topic is not None:
        _topics.setdefault(url, set()).add(topic)
    built: list[RabbitMQBroker] = []
    original = RabbitMQBroker.__init__

    def remembering(self: RabbitMQBroker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(RabbitMQBroker, "__init__", remembering)
    try:
        yield
    finally:
        by_url: dict[str, set[str]] = {}
        for broker in built:
            by_url.setdefault(broker.url, set()).update(broker.queues)
        for where, names in by_url.items():
            await delete(where, names)


async def delete(url: str, names: Iterable[str]) -> None:
    """Delete the named queues (missing ones are fine) on the server at ``url``."""
    names = sorted(names)
    if not names:
        return
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return  # the server is gone (a private node after its test): nothing to keep clean
    try:
        channel = await connection.channel()
        for name in names:
            try:
                await channel.queue_delete(name)
            except aiormq.exceptions.AMQPChannelError:
                channel = await connection.channel()  # a channel error closes the channel
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


def sweep() -> None:
    """Delete the queues named after this session's test topics, whoever declared them."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if not _topics or rabbitmqctl is None:
        return
    try:
        listed = subprocess.run(
            [rabbitmqctl, "list_queues", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return  # not the local node, or no access: the per-test net must do
    for url, topics in _topics.items():
        names = [q for q in listed if any(q.startswith((f"{t}.", f"{t}:")) for t in topics)]
        asyncio.run(delete(url, names))
    _topics.clear()
