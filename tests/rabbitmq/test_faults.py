"""Fault injection on RabbitMQ: a broker restart, and a group member killed mid-message.

The restart runs on a private node (the shared server is never restarted); the killed
member runs on the shared server in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from eventbus import BrokerUnavailable, Message
from eventbus.brokers.rabbitmq import RabbitMQBroker
from tests.rabbitmq.cleanup import delete
from tests.rabbitmq.conftest import PrivateNode, consumers

pytestmark = pytest.mark.slow

PUBLISH_TIMEOUT = 2.0
ROOT = Path(__file__).resolve().parents[2]


async def eventually(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` (state that cannot be awaited, like a queue's consumer count)."""
    try:
        async with asyncio.timeout(timeout):
            while not await _value(predicate()):  # noqa: ASYNC110 - server state, not an event
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def _value(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value


async def test_restart_loses_no_confirmed_message_and_the_consumer_comes_back(
    private_node: PrivateNode,
) -> None:
    url = private_node.url
    topic = f"t.{uuid.uuid4().hex[:16]}"
    queue = f"{topic}.workers"
    options = {"timeout": PUBLISH_TIMEOUT, "reconnect_interval": 0.3}
    consumer, producer = RabbitMQBroker(url, **options), RabbitMQBroker(url, **options)
    await consumer.connect()
    await producer.connect()
    handled: set[str] = set()
    confirmed: list[str] = []
    failures: list[BrokerUnavailable] = []
    stop = asyncio.Event()

    async def handle(message: Message) -> None:
        handled.add(message.id)

    async def publish_steadily() -> None:
        n = 0
        while not stop.is_set():
            message = Message(topic, b'{"n": %d}' % n, content_type="application/json")
            n += 1
            try:
                # A publish must fail within its own timeout during the outage, never hang.
                async with asyncio.timeout(PUBLISH_TIMEOUT + 10):
                    await producer.publish(message)
            except BrokerUnavailable as exc:
                failures.append(exc)
                continue
            confirmed.append(message.id)
            await asyncio.sleep(0.002)  # a steady stream, not a flood

    try:
        await consumer.subscribe(topic, handle, group="workers", concurrency=4)
        publisher = asyncio.create_task(publish_steadily())
        await eventually(lambda: len(handled) >= 50, 30, "50 messages before the restart")

        await private_node.ctl("stop_app")
        await eventually(lambda: failures, 30, "a publish to fail during the outage")
        await private_node.ctl("start_app")

        # The consumer registers itself again: the queue shows it (a known failure
        # of other frameworks is a queue left without its consumer after a restart).
        await eventually(lambda: consumers(url, queue), 60, "the queue to have its consumer")
        assert await private_node.queue_consumers(queue) == 1
        before = len(confirmed)
        await eventually(lambda: len(confirmed) >= before + 50, 60, "publishing to resume")
        stop.set()
        await publisher
        await eventually(
            lambda: handled >= set(confirmed), 60, "every confirmed message to be handled"
        )
    finally:
        stop.set()
        await producer.close()
        await consumer.close()
    assert all("RabbitMQ" in str(exc) for exc in failures), failures[:3]


class Member:
    """A group member in a subprocess; collects what it started and finished."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[str] = []
        self.done: list[str] = []
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self, url: str, topic: str, group: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.rabbitmq.member",
            url,
            topic,
            group,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            word, _, message_id = raw.decode().strip().partition(" ")
            if word == "ready":
                self.ready.set()
            elif word == "start":
                self.started.append(message_id)
            elif word == "done":
                self.done.append(message_id)
            self.changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: timed out waiting for {what}") from None

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


async def test_killed_member_share_goes_to_the_other_and_its_unfinished_message_again(
    url: str,
) -> None:
    topic = f"t.{uuid.uuid4().hex[:16]}"
    first, second = Member("first"), Member("second")
    producer = RabbitMQBroker(url)
    await producer.connect()
    try:
        for member in (first, second):
            await member.start(url, topic, "workers")
        for member in (first, second):
            async with asyncio.timeout(60):
                await member.ready.wait()
        sent = [Message(topic, b'{"n": %d}' % i) for i in range(300)]
        for message in sent[:100]:
            await producer.publish(message)
        await first.wait_until(lambda: len(first.done) >= 10, 30, "10 messages handled")
        await first.wait_until(
            lambda: len(first.started) > len(first.done), 30, "a handler in progress"
        )
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)  # mid-handler: its message is unfinished
        await first.stop()
        unfinished = set(first.started) - set(first.done)
        assert unfinished, "the first member should have been killed mid-handler"
        for message in sent[100:]:
            await producer.publish(message)
        everything = {m.id for m in sent}
        await second.wait_until(
            lambda: set(first.done) | set(second.done) >= everything,
            60,
            "the second member to take over the rest",
        )
    finally:
        await first.stop()
        await second.stop()
        await producer.close()
        await delete(url, [f"{topic}.workers"])  # declared by the member processes
    assert unfinished <= set(second.done), "a message whose handler had not finished comes again"
    assert second.done, "the second member should have had a share"
