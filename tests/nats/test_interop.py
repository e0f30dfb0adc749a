"""eventbus and plain nats-py clients on the same subjects, both ways."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from eventbus import EventBus, Message
from eventbus.brokers.nats import NatsBroker
from tests.helpers import Inbox


@pytest.mark.parametrize("durable", [True, False])
async def test_plain_core_publish_is_decoded(
    url: str, topic: str, plain: Client, durable: bool
) -> None:
    got: list[dict[str, object]] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic, group="readers", durable=durable)
    async def read(order: dict[str, object]) -> None:
        got.append(order)
        done.set()

    async with bus:
        await plain.publish(topic, json.dumps({"id": 1, "total": 9.5}).encode())
        await plain.flush()
        async with asyncio.timeout(10):
            await done.wait()
    assert got == [{"id": 1, "total": 9.5}]


async def test_plain_jetstream_publish_is_decoded(url: str, topic: str, plain: Client) -> None:
    inbox = Inbox()
    bus = EventBus(url)
    bus.subscriber(topic, group="readers")(inbox.put)
    async with bus:  # creates the topic's stream
        ack = await plain.jetstream().publish(topic, b'{"n": 1}')
        await plain.jetstream().publish(topic, b"not json \xff")
        first, second = await inbox.wait_for(2)
    assert ack.stream == topic.replace(".", "_")
    assert first.content_type is None
    assert first.body == b'{"n": 1}'
    assert first.delivery is not None
    assert first.delivery.offset == ack.seq
    assert second.body == b"not json \xff"


async def test_plain_json_without_headers_reads_as_json(
    url: str, topic: str, plain: Client
) -> None:
    got: list[object] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic, durable=False)
    async def read(value: object) -> None:
        got.append(value)
        if len(got) == 2:
            done.set()

    async with bus:
        await plain.publish(topic, b'[1, "two"]')
        await plain.publish(topic, b"\x00raw")
        async with asyncio.timeout(10):
            await done.wait()
    assert got == [[1, "two"], b"\x00raw"]


async def test_plain_subscriber_reads_payload_and_headers(
    url: str, topic: str, plain: Client
) -> None:
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        received.put_nowait(msg)

    await plain.subscribe(topic, cb=on_msg)
    await plain.flush()
    bus = EventBus(url, name="billing")
    async with bus:
        sent = await bus.publish(
            topic, {"id": 7}, key="k1", headers={"x-tenant": "acme"}, type="order.placed"
        )
        msg = await asyncio.wait_for(received.get(), 10)
    assert msg.data == b'{"id":7}'
    assert msg.headers is not None
    assert msg.headers["content-type"] == "application/json"
    assert msg.headers["ce-id"] == sent.id
    assert msg.headers["ce-specversion"] == "1.0"
    assert msg.headers["ce-source"] == "billing"
    assert msg.headers["ce-type"] == "order.placed"
    assert msg.headers["ce-partitionkey"] == "k1"
    assert msg.headers["x-tenant"] == "acme"


async def test_plain_jetstream_consumer_reads_eventbus_messages(
    url: str, topic: str, plain: Client
) -> None:
    broker = NatsBroker(url)
    bus = EventBus(broker=broker)
    async with bus:
        sent = await bus.publish(topic, "hello", headers={"x-a": "1"})
    js = plain.jetstream()
    sub = await js.pull_subscribe(topic, durable="plain-reader")
    (msg,) = await sub.fetch(1, timeout=5)
    await msg.ack()
    assert msg.data == b"hello"
    assert msg.headers is not None
    assert msg.headers["content-type"] == "text/plain"
    assert msg.headers["ce-id"] == sent.id
    assert msg.headers["x-a"] == "1"


async def test_large_body_goes_through_the_object_store(
    url: str, topic: str, plain: Client
) -> None:
    """Bodies over max_payload: eventbus gets them whole; a plain client sees the reference."""
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB
    assert len(body) > plain.max_payload
    raw: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        raw.put_nowait(msg)

    await plain.subscribe(topic, cb=on_msg)
    await plain.flush()
    inbox, core = Inbox(), Inbox()
    bus = EventBus(url, max_age=3600.0)  # the body bucket expires on the shared server
    bus.subscriber(topic, group="big")(inbox.put)
    bus.subscriber(topic, durable=False)(core.put)
    async with bus:
        await bus.publish(topic, body, headers={"x-n": "1"})
        await bus.publish(topic, b"small after large")
        first, second = await inbox.wait_for(2, timeout=30)
        await core.wait_for(2, timeout=30)
        replayed = [m async for m in bus.broker.replay(topic)]
    assert first.body == body
    assert first.headers == {"x-n": "1"}
    assert second.body == b"small after large", "order is kept behind a large body"
    assert [m.body for m in core.messages] == [body, b"small after large"]
    assert [m.body for m in replayed] == [body, b"small after large"]
    msg = await asyncio.wait_for(raw.get(), 10)
    assert msg.data == b""
    assert msg.headers is not None
    bucket, _, name = msg.headers["eventbus-object"].partition("/")
    assert msg.headers["content-type"] == "application/octet-stream"
    stored = await plain.jetstream().object_store(bucket)
    assert (await stored.get(name)).data == body


async def test_eventbus_request_to_plain_responder(url: str, topic: str, plain: Client) -> None:
    async def respond(msg: Msg) -> None:
        assert msg.headers is not None
        reply_to = msg.headers["ce-replyto"]
        headers = {"ce-correlationid": msg.headers["ce-correlationid"]}
        await plain.publish(reply_to, b'{"sum": 3}', headers=headers)

    await plain.subscribe(topic, cb=respond)
    await plain.flush()
    bus = EventBus(url)
    async with bus:
        assert await bus.request(topic, {"a": 1, "b": 2}, timeout=5) == {"sum": 3}


async def test_plain_request_to_an_eventbus_responder(url: str, topic: str, plain: Client) -> None:
    """A plain client calls an eventbus endpoint: ``ce-replyto`` names its reply subject."""
    bus = EventBus(url)

    @bus.subscriber(topic, durable=False)
    async def add(req: dict[str, int]) -> dict[str, int]:
        return {"sum": req["a"] + req["b"]}

    inbox = plain.new_inbox()
    replies = await plain.subscribe(inbox)
    async with bus:
        headers = {"ce-replyto": inbox, "ce-correlationid": "c-1"}
        await plain.publish(topic, b'{"a": 1, "b": 2}', headers=headers)
        reply = await replies.next_msg(timeout=5)
    assert json.loads(reply.data) == {"sum": 3}
    assert reply.headers is not None
    assert reply.headers["ce-correlationid"] == "c-1"
    assert reply.headers["content-type"] == "application/json"


async def test_a_core_subscriber_that_answers_everything_does_not_ack_a_publish(
    url: str, topic: str, plain: Client
) -> None:
    """A plain service replying to every message's reply subject (as NATS services do)
    sees eventbus's JetStream publishes too; its answer is not taken for JetStream's."""

    async def echo(msg: Msg) -> None:
        if msg.reply:
            await plain.publish(msg.reply, b"pong")

    await plain.subscribe(topic, cb=echo)
    await plain.flush()
    inbox = Inbox()
    bus = EventBus(url)
    bus.subscriber(topic, group="g")(inbox.put)
    async with bus:
        for i in range(20):
            await bus.publish(topic, {"n": i})
        await inbox.wait_for(20)
        stream = await plain.jetstream().stream_info(topic.replace(".", "_"))
    assert stream.state.messages == 20


async def test_a_message_eventbus_cannot_take_does_not_stop_the_connection(
    broker: NatsBroker, topic: str, plain: Client
) -> None:
    inbox = Inbox()
    sub = await broker.subscribe(topic, inbox.put, group="g")
    # a publish straight into the consumer's delivery inbox, with a reply that is not
    # a JetStream ack subject: logged and dropped, and the connection keeps reading
    await plain.publish(sub._inbox.decode(), b"junk", reply="not.an.ack")  # type: ignore[union-attr]
    await broker.publish(Message(topic, b"fine"))
    (got,) = await inbox.wait_for(1)
    assert got.body == b"fine"
