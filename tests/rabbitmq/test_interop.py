"""Plain aio-pika clients and eventbus exchange messages both ways.

The body on the wire is the payload itself; metadata travels in AMQP properties and
headers, so neither side needs the other's library.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import aio_pika
import pytest
from pydantic import BaseModel

from eventbus import EventBus, Message
from tests.helpers import Inbox


class Order(BaseModel):
    id: int
    total: float


@pytest.fixture
def topic() -> str:
    return f"t.{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def plain(url: str) -> aio_pika.abc.AbstractRobustChannel:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    yield channel  # type: ignore[misc]
    await connection.close()


async def test_plain_producer_to_eventbus_group(
    url: str, topic: str, plain: aio_pika.abc.AbstractChannel
) -> None:
    got: list[tuple[Order, Message]] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic, group="billing")
    async def bill(order: Order, msg: Message) -> None:
        got.append((order, msg))
        done.set()

    exchange = await plain.get_exchange("eventbus")
    stamp = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    async with bus:
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"id": 7, "total": 9.5}).encode(),
                content_type="application/json",
                message_id="plain-1",
                correlation_id="corr-1",
                app_id="legacy-shop",
                type="order.placed",
                timestamp=stamp,
                headers={"x-tenant": "acme", "x-attempt": 1},
            ),
            routing_key=topic,
        )
        async with asyncio.timeout(20):
            await done.wait()
    ((order, msg),) = got
    assert order == Order(id=7, total=9.5)
    assert (msg.id, msg.correlation_id, msg.source, msg.type) == (
        "plain-1",
        "corr-1",
        "legacy-shop",
        "order.placed",
    )
    assert msg.time == stamp
    assert msg.topic == topic
    assert dict(msg.headers) == {"x-tenant": "acme", "x-attempt": "1"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"a": [1, 2]}', {"a": [1, 2]}), (b"\x00not json", b"\x00not json")],
)
async def test_plain_message_without_content_type_reads_as_json_else_bytes(
    url: str, topic: str, plain: aio_pika.abc.AbstractChannel, body: bytes, expected: object
) -> None:
    got: list[object] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic)
    async def handle(payload: object) -> None:
        got.append(payload)
        done.set()

    exchange = await plain.get_exchange("eventbus")
    async with bus:
        await exchange.publish(aio_pika.Message(body), routing_key=topic)
        async with asyncio.timeout(20):
            await done.wait()
    assert got == [expected]


async def test_eventbus_producer_to_plain_consumer(
    url: str, topic: str, plain: aio_pika.abc.AbstractChannel
) -> None:
    queue = await plain.declare_queue(exclusive=True)
    await queue.bind("eventbus", routing_key=topic)
    bus = EventBus(url, name="shop")
    async with bus:
        sent = await bus.publish(
            topic, Order(id=1, total=2.5), key="customer-9", headers={"x-tenant": "acme"}
        )
    received = await queue.get(timeout=10)
    await received.ack()
    assert received.body == b'{"id":1,"total":2.5}'
    assert received.content_type == "application/json"
    assert received.message_id == sent.id
    assert received.app_id == "shop"
    assert received.type == topic
    assert received.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert received.timestamp == sent.time.replace(microsecond=0)
    assert received.headers["x-tenant"] == "acme"
    assert received.headers["cloudEvents_partitionkey"] == "customer-9"
    assert received.headers["cloudEvents_specversion"] == "1.0"
    assert received.headers["cloudEvents_time"] == sent.time.isoformat().replace("+00:00", "Z")


async def test_plain_rpc_client_calls_an_eventbus_service(
    url: str, topic: str, plain: aio_pika.abc.AbstractChannel
) -> None:
    server = EventBus(url)

    @server.subscriber(topic, group="calc")
    async def add(req: dict[str, int]) -> dict[str, int]:
        return {"sum": req["a"] + req["b"]}

    replies: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    reply_queue = await plain.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await reply_queue.consume(replies.put, no_ack=True)
    exchange = await plain.get_exchange("eventbus")
    async with server:
        await exchange.publish(
            aio_pika.Message(
                b'{"a": 2, "b": 3}',
                content_type="application/json",
                correlation_id="req-1",
                reply_to="amq.rabbitmq.reply-to",
            ),
            routing_key=topic,
        )
        async with asyncio.timeout(20):
            reply = await replies.get()
    assert reply.correlation_id == "req-1"
    assert json.loads(reply.body) == {"sum": 5}


async def test_eventbus_request_to_a_plain_responder(
    url: str, topic: str, plain: aio_pika.abc.AbstractChannel
) -> None:
    queue = await plain.declare_queue(exclusive=True)
    await queue.bind("eventbus", routing_key=topic)

    async def respond(request: aio_pika.abc.AbstractIncomingMessage) -> None:
        numbers = json.loads(request.body)
        await plain.default_exchange.publish(
            aio_pika.Message(
                json.dumps({"product": numbers["a"] * numbers["b"]}).encode(),
                content_type="application/json",
                correlation_id=request.correlation_id,
            ),
            routing_key=request.reply_to or "",
        )
        await request.ack()

    await queue.consume(respond)
    client = EventBus(url)
    async with client:
        reply = await client.request(topic, {"a": 6, "b": 7}, timeout=10)
    assert reply == {"product": 42}


async def test_eventbus_fan_out_and_plain_queue_see_the_same_messages(
    url: str, topic: str, plain: aio_pika.abc.AbstractChannel
) -> None:
    queue = await plain.declare_queue(exclusive=True)
    await queue.bind("eventbus", routing_key=topic)
    inbox = Inbox()
    bus = EventBus(url)
    bus.subscriber(topic)(inbox.put)
    async with bus:
        sent = [await bus.publish(topic, f"m{i}") for i in range(5)]
        await inbox.wait_for(5)
    plain_ids = []
    for _ in sent:
        message = await queue.get(timeout=10)
        await message.ack()
        plain_ids.append(message.message_id)
    assert plain_ids == [m.id for m in sent] == [m.id for m in inbox.messages]
