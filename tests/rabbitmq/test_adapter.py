"""The RabbitMQ adapter's own behaviour, beyond the conformance suite."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import aio_pika
import aiormq
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from eventbus import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    EventBus,
    Message,
    ReplayNotSupported,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.brokers import open_broker
from eventbus.brokers.rabbitmq import DEAD_LETTER_GROUP, RabbitMQBroker
from eventbus.brokers.rabbitmq.options import topic_matcher
from eventbus.brokers.rabbitmq.wire import from_amqp, properties
from tests.helpers import Inbox
from tests.rabbitmq.conftest import consumers

# -- without a server -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"exchnage": "x"}, "unknown option(s) exchnage"),
        ({"exchange": ""}, "exchange must be"),
        ({"exchange": "amq.topic"}, "not starting with 'amq.'"),
        ({"confirm": "yes"}, "confirm must be True or False"),
        ({"timeout": 0}, "timeout must be seconds > 0"),
        ({"reconnect_interval": "1"}, "reconnect_interval must be seconds > 0"),
        ({"streams": 3}, "streams must be True, False or a list"),
        ({"stream_max_age": "7 days"}, "stream_max_age must look like"),
        ({"stream_max_bytes": -1}, "stream_max_bytes must be"),
        ({"queue_type": "stream"}, "queue_type must be one of classic, quorum"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        RabbitMQBroker("amqp://guest:guest@127.0.0.1:5672/", **options)


def test_url_scheme_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="amqp:// or amqps://"):
        RabbitMQBroker("redis://127.0.0.1:6379/0")
    assert isinstance(open_broker("amqps://u:p@example.invalid:5671/"), RabbitMQBroker)


@pytest.mark.parametrize(
    ("patterns", "topic", "expected"),
    [
        (("orders.#",), "orders", True),
        (("orders.#",), "orders.placed.eu", True),
        (("orders.*",), "orders.placed", True),
        (("orders.*",), "orders.placed.eu", False),
        (("orders.*",), "orders", False),
        (("#.dlq",), "a.b.dlq", True),
        (("#.dlq",), "dlq", True),
        (("#.dlq",), "a.dlq.b", False),
        (("audit",), "audit", True),
        (("audit",), "audits", False),
        (("*.placed", "audit.#"), "audit.x", True),
    ],
)
def test_stream_topics_follow_amqp_patterns(
    patterns: tuple[str, ...], topic: str, expected: bool
) -> None:
    assert topic_matcher(patterns)(topic) is expected


def test_the_registrys_own_topics_never_get_a_stream() -> None:
    for streams in (True, ("#",), ("eventbus.#",)):
        matches = topic_matcher(streams)
        assert not matches("eventbus.presence")
        assert not matches("eventbus.node.4f2a9c")
    assert topic_matcher(True)("orders")


def test_retains_only_when_every_topic_has_a_stream() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/"
    assert RabbitMQBroker(url, streams=True).capabilities.retains
    assert not RabbitMQBroker(url, streams=["orders.#"]).capabilities.retains
    assert not RabbitMQBroker(url).capabilities.retains


def _delivered(
    props: Basic.Properties, body: bytes, *, redelivered: bool = False
) -> DeliveredMessage:
    deliver = Basic.Deliver(
        consumer_tag="c",
        delivery_tag=1,
        redelivered=redelivered,
        exchange="eventbus",
        routing_key="orders.placed",
    )
    return DeliveredMessage(deliver, ContentHeader(0, len(body), props), body, None)  # type: ignore[arg-type]


def test_metadata_maps_to_amqp_properties_and_back() -> None:
    sent = Message(
        "orders.placed",
        b'{"id": 1}',
        {"x-tenant": "acme"},
        "application/json",
        key="customer-7",
        reply_to="amq.rabbitmq.reply-to",
        correlation_id="c-1",
        source="billing",
        type="com.example.placed",
    )
    props = properties(sent, persistent=True)
    assert props.content_type == "application/json"
    assert props.message_id == sent.id
    assert props.correlation_id == "c-1"
    assert props.reply_to == "amq.rabbitmq.reply-to"
    assert props.app_id == "billing"
    assert props.message_type == "com.example.placed"
    assert props.delivery_mode == 2
    assert props.timestamp == sent.time
    assert props.headers is not None
    assert props.headers["x-tenant"] == "acme"
    assert props.headers["cloudEvents_specversion"] == "1.0"
    assert props.headers["cloudEvents_partitionkey"] == "customer-7"
    got = from_amqp("orders.placed", _delivered(props, sent.body))
    assert (got.id, got.time, got.key, got.source, got.type) == (
        sent.id,
        sent.time,
        "customer-7",
        "billing",
        "com.example.placed",
    )
    assert (got.reply_to, got.correlation_id, got.content_type) == (
        "amq.rabbitmq.reply-to",
        "c-1",
        "application/json",
    )
    assert dict(got.headers) == {"x-tenant": "acme"}
    assert got.redelivered == 0


def test_a_plain_message_gets_what_it_lacks() -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    props = Basic.Properties(
        timestamp=stamp, headers={"n": 5, "flag": True, "raw": b"\xff", "x-delivery-count": 2}
    )
    got = from_amqp("orders.placed", _delivered(props, b"plain", redelivered=True))
    assert got.content_type is None
    assert got.id  # a fresh one
    assert got.time == stamp
    assert got.source == ""
    assert got.type == ""
    assert dict(got.headers) == {"n": "5", "flag": "True", "raw": "\ufffd"}
    assert got.redelivered == 2, "x-delivery-count (quorum queues) counts redeliveries"
    flag_only = from_amqp("t", _delivered(Basic.Properties(), b"", redelivered=True))
    assert flag_only.redelivered == 1


async def test_unreachable_server_is_a_clear_error_within_the_timeout() -> None:
    broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/", timeout=2)
    with pytest.raises(BrokerUnavailable, match=r"cannot reach RabbitMQ at amqp://127\.0\.0\.1:1"):
        async with asyncio.timeout(10):
            await broker.connect()
    await broker.close()
    with pytest.raises(ClosedError):
        await broker.publish(Message("t", b"x"))


# -- on the shared server ---------------------------------------------------------------


@pytest.fixture
async def broker(url: str) -> RabbitMQBroker:
    broker = RabbitMQBroker(url)
    await broker.connect()
    yield broker  # type: ignore[misc]
    await broker.close()


@pytest.fixture
def topic() -> str:
    return f"t.{uuid.uuid4().hex[:16]}"


async def test_wrong_password_is_refused_clearly(url: str) -> None:
    broker = RabbitMQBroker(url.replace("guest:guest", "guest:wrong"), timeout=5)
    with pytest.raises(BrokerError, match="refused the login"):
        await broker.connect()


async def test_bad_subscribe_and_publish_options(broker: RabbitMQBroker, topic: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown subscribe option"):
        await broker.subscribe(topic, Inbox().put, group="g", batch=10)
    with pytest.raises(ConfigurationError, match="prefetch must be"):
        await broker.subscribe(topic, Inbox().put, concurrency=4, prefetch=2)
    with pytest.raises(ConfigurationError, match="unknown publish option"):
        await broker.publish(Message(topic, b"x"), priority=1)


async def test_replay_needs_a_stream(url: str, topic: str) -> None:
    plain = RabbitMQBroker(url)
    with pytest.raises(ReplayNotSupported, match="streams="):
        [m async for m in plain.replay(topic)]
    await plain.close()
    streamed = RabbitMQBroker(url, streams=["t.#"], stream_max_age="1h")
    try:
        with pytest.raises(TopicNotFound, match="nothing was published"):
            [m async for m in streamed.replay(topic)]
        await streamed.publish(Message(topic, b"kept"))
        (got,) = [m async for m in streamed.replay(topic)]
        assert got.body == b"kept"
        assert got.delivery is not None
        assert got.delivery.offset is not None
    finally:
        await streamed.close()


async def test_group_queue_keeps_messages_and_prefetch_bounds_what_is_taken(
    broker: RabbitMQBroker, topic: str, url: str
) -> None:
    started = asyncio.Event()

    async def hang(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    sub = await broker.subscribe(topic, hang, group="slow", prefetch=3)
    for i in range(10):
        await broker.publish(Message(topic, b"%d" % i))
    async with asyncio.timeout(20):
        await started.wait()
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        async with asyncio.timeout(20):
            while True:
                declared = await channel.declare_queue(f"{topic}.slow", passive=True)
                if declared.declaration_result.message_count == 7:
                    break
                await asyncio.sleep(0.05)  # RabbitMQ's counters settle; nothing to await
    finally:
        await connection.close()
    assert sub.queue == f"{topic}.slow"


async def test_non_durable_group_goes_away_with_its_last_member(
    broker: RabbitMQBroker, topic: str, admin: aio_pika.abc.AbstractChannel
) -> None:
    sub = await broker.subscribe(topic, Inbox().put, group="temp", durable=False)
    assert await consumers(broker.url, f"{topic}.temp") == 1
    await sub.close()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await admin.declare_queue(f"{topic}.temp", passive=True)


async def test_quorum_group_counts_redeliveries(url: str, topic: str) -> None:
    broker = RabbitMQBroker(url, queue_type="quorum")
    seen: list[int] = []
    done = asyncio.Event()

    async def fail_twice(message: Message) -> None:
        seen.append(message.redelivered)
        if len(seen) < 3:
            raise RuntimeError("not yet")
        done.set()

    try:
        await broker.subscribe(topic, fail_twice, group="q")
        await broker.publish(Message(topic, b"x"))
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        await broker.close()
    assert seen == [0, 1, 2]


async def test_dead_letters_are_kept_until_read(url: str, topic: str) -> None:
    bus = EventBus(url, retry=1)

    @bus.subscriber(topic, group="billing")
    async def reject(payload: dict[str, int]) -> None:
        raise ValueError("no thanks")

    async with bus:
        sent = await bus.publish(topic, {"n": 1})
        (sub,) = bus.subscribers
        await sub.wait_for(settled=1, timeout=20)
    assert sub.dead_lettered == 1
    kept = Inbox()
    reader = EventBus(url)
    reader.subscriber(f"{topic}.dlq", group=DEAD_LETTER_GROUP)(kept.put)
    async with reader:
        (record,) = await kept.wait_for(1)
    assert record.id == sent.id
    assert record.headers["eventbus-error-type"] == "ValueError"


async def test_unroutable_topic_is_logged_once(
    broker: RabbitMQBroker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="eventbus"):
        for _ in range(3):
            await broker.publish(Message(topic, b"nobody listens"))
    dropped = [r for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(dropped) == 1
    assert topic in dropped[0].getMessage()


async def test_transient_publish_without_confirm_arrives(
    broker: RabbitMQBroker, topic: str
) -> None:
    inbox = Inbox()
    await broker.subscribe(topic, inbox.put)
    await broker.publish(Message(topic, b"fast"), durable=False)
    (got,) = await inbox.wait_for(1)
    assert got.body == b"fast"


async def test_one_inbox_per_broker_and_requests_need_it(
    broker: RabbitMQBroker, topic: str
) -> None:
    request = Message(topic, b"?", reply_to="amq.rabbitmq.reply-to", correlation_id="1")
    with pytest.raises(ConfigurationError, match="open_inbox"):
        await broker.publish(request)
    inbox = await broker.open_inbox(Inbox().put)
    assert inbox.topic == "amq.rabbitmq.reply-to"
    with pytest.raises(ConfigurationError, match="already has an open inbox"):
        await broker.open_inbox(Inbox().put)
    await inbox.close()
    await (await broker.open_inbox(Inbox().put)).close()


async def test_reply_to_a_vanished_queue_is_undeliverable(
    broker: RabbitMQBroker, admin: aio_pika.abc.AbstractChannel
) -> None:
    gone = await admin.declare_queue("", exclusive=True)  # a plain client's reply queue
    await gone.delete()
    with pytest.raises(UndeliverableError, match="nobody listens"):
        await broker.publish(Message(gone.name, b"late reply", correlation_id="1"))


async def test_reply_to_a_vanished_direct_reply_to_consumer_is_dropped(
    url: str, topic: str
) -> None:
    # RabbitMQ cannot tell a delivered direct reply-to message from a dropped one
    # (rabbitmq-server#6124): the reply goes nowhere and the requester times out.
    server, client = EventBus(url), EventBus(url)
    started, release = asyncio.Event(), asyncio.Event()

    @server.subscriber(topic)
    async def slow(req: dict[str, int]) -> dict[str, int]:
        started.set()
        await release.wait()
        return req

    async with server:
        await client.start()
        request = asyncio.create_task(client.request(topic, {"n": 1}, timeout=30))
        async with asyncio.timeout(20):
            await started.wait()
        await client.close()  # the requester goes away before the reply
        with pytest.raises(ClosedError):
            await request
        release.set()
        (sub,) = server.subscribers
        await sub.wait_for(processed=1, timeout=20)
    assert sub.dead_lettered == 0


async def test_consumer_comes_back_when_its_queue_is_deleted(
    broker: RabbitMQBroker, topic: str, admin: aio_pika.abc.AbstractChannel
) -> None:
    inbox = Inbox()
    await broker.subscribe(topic, inbox.put, group="g")
    await admin.queue_delete(f"{topic}.g")  # RabbitMQ cancels the consumer
    async with asyncio.timeout(30):
        while await _consumer_count(admin, f"{topic}.g") != 1:  # noqa: ASYNC110 - a count
            await asyncio.sleep(0.1)  # on the server, nothing to await
    await broker.publish(Message(topic, b"after"))
    (got,) = await inbox.wait_for(1)
    assert got.body == b"after"


async def _consumer_count(admin: aio_pika.abc.AbstractChannel, queue: str) -> int:
    try:
        declared = await admin.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        await admin.reopen()
        return 0
    return declared.declaration_result.consumer_count or 0
