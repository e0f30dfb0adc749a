"""NATS-specific behaviour of `NatsBroker` on the shared server (beyond the conformance suite)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from eventbus import (
    BrokerUnavailable,
    ConfigurationError,
    EventBus,
    Message,
    ReplayNotSupported,
    TopicNotFound,
)
from eventbus.brokers.nats import NatsBroker
from tests.helpers import Inbox


async def test_core_queue_group_splits_and_wildcards_match(url: str, topic: str) -> None:
    inbox, everything = Inbox(), Inbox()
    bus1, bus2, watcher = EventBus(url), EventBus(url), EventBus(url)
    bus1.subscriber(f"{topic}.*", group="workers", durable=False)(inbox.member("a"))
    bus2.subscriber(f"{topic}.*", group="workers", durable=False)(inbox.member("b"))
    watcher.subscriber(f"{topic}.>", durable=False)(everything.put)
    async with bus1, bus2, watcher:
        publishers = [bus1.publisher(f"{topic}.{i}", durable=False) for i in range(3)]
        for i in range(100):
            await publishers[i % 3].publish({"n": i})
        await inbox.wait_for(100)
        await everything.wait_for(100)
    assert sorted(m.id for m in inbox.messages) == sorted(m.id for m in everything.messages)
    assert {m.topic for m in everything.messages} == {f"{topic}.{i}" for i in range(3)}
    assert inbox.by_member["a"]
    assert inbox.by_member["b"]


async def test_core_publish_reaches_a_durable_group(url: str, topic: str) -> None:
    """durable=False only skips the acknowledgement: the topic's stream still stores it."""
    inbox = Inbox()
    bus = EventBus(url)
    bus.subscriber(topic, group="g")(inbox.put)
    async with bus:
        sent = await bus.publisher(topic, durable=False).publish({"fast": True})
        (got,) = await inbox.wait_for(1)
    assert got.id == sent.id
    assert got.delivery is not None
    assert got.delivery.offset == 1


async def test_long_handler_is_kept_alive_not_redelivered(url: str, topic: str) -> None:
    """A handler running past ack_wait keeps its message (+WPI): the idle member gets nothing."""
    seen = Inbox()
    slow_member, idle_member = seen.member("slow"), seen.member("idle")
    started = asyncio.Event()
    member = EventBus(url, ack_wait=1.0)

    @member.subscriber(topic, group="slow")
    async def slow(msg: Message) -> None:
        if msg.body == b'{"n":1}':
            started.set()
            await asyncio.sleep(2.5)  # the handler's own work, 2.5x the ack wait
        await slow_member(msg)

    other = EventBus(url, ack_wait=1.0)
    async with member:
        first = await member.publish(topic, {"n": 1})
        async with asyncio.timeout(10):
            await started.wait()
        other.subscriber(topic, group="slow")(idle_member)
        async with other:
            await seen.wait_until(lambda: first.id in {m.id for m in seen.messages}, 20, "it")
            sentinel = await member.publish(topic, {"n": 2})
            await seen.wait_until(
                lambda: sentinel.id in {m.id for m in seen.messages}, 20, "the sentinel"
            )
    assert [m.id for m in seen.by_member["slow"]][:1] == [first.id]
    assert seen.by_member["slow"][0].redelivered == 0
    assert first.id not in {m.id for m in seen.by_member["idle"]}, "redelivered while in work"


async def test_a_stream_that_already_captures_the_topic_is_used(
    url: str, topic: str, plain: Client
) -> None:
    name = f"users_{topic.replace('.', '_')}"
    await plain.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{topic}.>"]))
    inbox = Inbox()
    bus = EventBus(url)
    bus.subscriber(f"{topic}.a", group="g")(inbox.put)
    bus.subscriber(f"{topic}.b", group="g")(inbox.put)
    async with bus:
        await bus.publish(f"{topic}.a", {"x": 1})
        await bus.publish(f"{topic}.b", {"x": 2})
        await inbox.wait_for(2)
        replayed = [m async for m in bus.broker.replay(f"{topic}.a")]
    assert sorted(m.topic for m in inbox.messages) == [f"{topic}.a", f"{topic}.b"]
    assert [m.body for m in replayed] == [b'{"x":1}']
    info = await plain.jetstream().stream_info(name)
    assert info.state.messages == 2
    consumers = await plain.jetstream().consumers_info(name)
    assert len(consumers) == 2, "one consumer per (group, topic) in a shared stream"


async def test_fan_out_consumer_is_deleted_on_close(url: str, topic: str, plain: Client) -> None:
    bus = EventBus(url)
    bus.subscriber(topic)(Inbox().put)
    async with bus:
        stream = topic.replace(".", "_")
        assert len(await plain.jetstream().consumers_info(stream)) == 1
    assert await plain.jetstream().consumers_info(stream) == []


async def test_replay_errors(broker: NatsBroker, topic: str) -> None:
    with pytest.raises(TopicNotFound):
        [m async for m in broker.replay(topic)]
    with pytest.raises(ReplayNotSupported):
        [m async for m in broker.replay("_INBOX.abc")]
    await broker.publish(Message(topic, b"x"), durable=False)  # no stream: kept nowhere
    with pytest.raises(TopicNotFound):
        [m async for m in broker.replay(topic)]


async def test_bad_options_and_topics(broker: NatsBroker, topic: str) -> None:
    async def handler(message: Message) -> None:
        pass

    with pytest.raises(ConfigurationError, match="colour"):
        await broker.subscribe(topic, handler, colour="blue")
    with pytest.raises(ConfigurationError, match="concurrency"):
        await broker.subscribe(topic, handler, concurrency=0)
    with pytest.raises(ConfigurationError, match="wildcards"):
        await broker.subscribe(f"{topic}.*", handler)
    with pytest.raises(ConfigurationError, match="group"):
        await broker.subscribe(topic, handler, group="two words")
    with pytest.raises(ConfigurationError):
        await broker.publish(Message("a b", b""))
    with pytest.raises(ConfigurationError, match="durable"):
        await broker.publish(Message(topic, b""), durable="no")


async def test_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = NatsBroker(f"nats://127.0.0.1:{port}", timeout=1.0)
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
        await broker.connect()
    await broker.close()


@pytest.mark.parametrize("group", [None, "g"])
async def test_lost_consumer_is_recreated(
    url: str, topic: str, plain: Client, group: str | None
) -> None:
    """A consumer deleted under a live subscription (as a server may lose an ephemeral one)."""
    inbox = Inbox()
    bus = EventBus(url)
    bus.subscriber(topic, group=group)(inbox.put)
    async with bus:
        for i in range(5):
            await bus.publish(topic, {"n": i})
        await inbox.wait_for(5)
        stream = topic.replace(".", "_")
        (consumer,) = await plain.jetstream().consumers_info(stream)
        await plain.jetstream().delete_consumer(stream, consumer.name)
        for i in range(5, 10):
            await bus.publish(topic, {"n": i})
        await inbox.wait_for(10, timeout=30)
    assert sorted(int(m.body[5:-1]) for m in inbox.messages) == list(range(10))
