"""Kafka adapter specifics: URL and options, interop with plain confluent-kafka clients,
commits, rebalances, inboxes, replay and errors. Runs on the test Tansu broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from eventbus import (
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    EventBus,
    Message,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.brokers.kafka import INBOX_PREFIX, KafkaBroker
from eventbus.brokers.kafka.options import bootstrap_servers
from tests.conformance.conftest import BROKER_OPTIONS
from tests.conftest import broker_url
from tests.helpers import Inbox
from tests.tansu import TansuServer, free_port

OPTIONS = BROKER_OPTIONS["kafka"]


@pytest.fixture
def url() -> str:
    return broker_url("kafka")


@pytest.fixture
async def broker(url: str) -> AsyncIterator[KafkaBroker]:
    b = KafkaBroker(url, **OPTIONS)  # type: ignore[arg-type]
    await b.connect()
    yield b
    await b.close()


def plain_config(url: str) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap_servers(url)}


def read_all(url: str, topic: str, count: int, timeout: float = 20.0) -> list[object]:
    """Read ``count`` records of ``topic`` from the start with a plain consumer (blocking)."""
    consumer = Consumer({**plain_config(url), "group.id": f"plain-{uuid.uuid4().hex}"})
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = md.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got: list[object] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            raw = consumer.poll(0.2)
            if raw is not None and raw.error() is None:
                got.append(raw)
        return got
    finally:
        consumer.close()


# -- URL and options (no broker needed) ----------------------------------------------------


def test_url_names_one_or_several_hosts() -> None:
    assert bootstrap_servers("kafka://h1:9092") == "h1:9092"
    assert bootstrap_servers("kafka://h1:9092,h2:9093,h3") == "h1:9092,h2:9093,h3:9092"
    assert bootstrap_servers("kafka://") == "localhost:9092"
    for bad in ("redis://h:1", "kafka://u:p@h:9092", "kafka://h:9092/x", "kafka://h:99999"):
        with pytest.raises(ConfigurationError):
            bootstrap_servers(bad)


def test_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        KafkaBroker("kafka://h:9092", partitons=3)
    with pytest.raises(ConfigurationError, match="partitions"):
        KafkaBroker("kafka://h:9092", partitions=0)
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        KafkaBroker("kafka://h:9092", session_timeout=1.0, heartbeat_interval=2.0)
    with pytest.raises(ConfigurationError, match="assignment"):
        KafkaBroker("kafka://h:9092", assignment="sticky")
    with pytest.raises(ConfigurationError, match="grace"):
        KafkaBroker("kafka://h:9092", grace=-1)
    assert KafkaBroker("kafka://h:9092", linger=0).options.linger == 0


async def test_bad_subscribe_and_publish_options_are_refused() -> None:
    broker = KafkaBroker("kafka://127.0.0.1:1")

    async def nothing(message: Message) -> None: ...

    with pytest.raises(ConfigurationError, match="unknown subscribe option"):
        await broker.subscribe("t", nothing, prefetch=10)
    with pytest.raises(ConfigurationError, match="concurrency"):
        await broker.subscribe("t", nothing, concurrency=0)
    with pytest.raises(ConfigurationError, match="unknown publish option"):
        await broker.publish(Message("t", b"x"), priority=1)


async def test_unreachable_cluster_is_broker_unavailable() -> None:
    broker = KafkaBroker(f"kafka://127.0.0.1:{free_port()}", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot reach Kafka"):
        await broker.connect()
    assert time.monotonic() - started < 10
    await broker.close()


# -- interop with plain confluent-kafka clients --------------------------------------------


async def test_plain_producer_to_eventbus(url: str, topic: str) -> None:
    bus = EventBus(url, **OPTIONS)
    got: list[tuple[object, Message]] = []
    done = asyncio.Event()

    @bus.subscriber(topic)
    async def handle(payload: object, msg: Message) -> None:
        got.append((payload, msg))
        if len(got) == 2:
            done.set()

    async with bus:
        producer = Producer(plain_config(url))
        before = time.time()
        producer.produce(topic, json.dumps({"n": 1}).encode(), b"k-1", headers={"x-app": "plain"})
        producer.produce(topic, b"\x00raw", None)
        await asyncio.to_thread(producer.flush, 10)
        async with asyncio.timeout(20):
            await done.wait()
    by_key = {msg.key: (payload, msg) for payload, msg in got}
    payload, msg = by_key["k-1"]
    assert payload == {"n": 1}  # no content type: read as JSON because it parses
    assert msg.headers == {"x-app": "plain"}
    assert msg.content_type is None
    assert abs(msg.time.timestamp() - before) < 60  # the record's timestamp
    assert msg.delivery is not None
    assert msg.delivery.offset is not None
    payload, msg = by_key[None]
    assert payload == b"\x00raw"


async def test_eventbus_to_plain_consumer(url: str, topic: str) -> None:
    bus = EventBus(url, name="interop", **OPTIONS)
    async with bus:
        sent = await bus.publish(topic, {"n": 2}, key="order-7", headers={"x-tenant": "acme"})
    (raw,) = await asyncio.to_thread(read_all, url, topic, 1)
    assert raw.value() == b'{"n":2}'  # type: ignore[attr-defined]
    assert raw.key() == b"order-7"  # type: ignore[attr-defined]
    headers = dict(raw.headers())  # type: ignore[attr-defined]
    assert headers["ce_id"] == sent.id.encode()
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"interop"
    assert headers["ce_type"] == topic.encode()
    assert headers["content-type"] == b"application/json"
    assert headers["x-tenant"] == b"acme"
    assert "ce_partitionkey" not in headers  # the key travels as the native Kafka key


async def test_key_picks_the_partition_like_the_java_client(url: str, topic: str) -> None:
    broker = KafkaBroker(url, **OPTIONS)  # type: ignore[arg-type]
    await broker.connect()
    try:
        for _ in range(3):
            await broker.publish(Message(topic, b"x", key="same-key"))
    finally:
        await broker.close()
    records = await asyncio.to_thread(read_all, url, topic, 3)
    assert len({r.partition() for r in records}) == 1  # type: ignore[attr-defined]


# -- groups, commits, rebalances -------------------------------------------------------------


async def test_new_group_starts_at_the_end_and_keeps_its_position(
    broker: KafkaBroker, topic: str
) -> None:
    for i in range(3):
        await broker.publish(Message(topic, b"before %d" % i))
    inbox = Inbox()
    sub = await broker.subscribe(topic, inbox.put, group="fresh")
    await broker.publish(Message(topic, b"after"))
    await inbox.wait_for(1)
    await sub.close()
    await broker.publish(Message(topic, b"while away"))
    back = Inbox()
    await broker.subscribe(topic, back.put, group="fresh")
    await back.wait_for(1)
    assert inbox.bodies == [b"after"]
    assert back.bodies == [b"while away"]


async def test_commit_covers_only_the_handled_prefix(url: str, topic: str) -> None:
    broker = KafkaBroker(url, **{**OPTIONS, "partitions": 1})  # type: ignore[arg-type]
    await broker.connect()
    group = f"prefix-{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    handled = Inbox()

    async def handle(message: Message) -> None:
        if message.body == b"2":
            await release.wait()
        await handled.put(message)

    def committed() -> int:
        consumer = Consumer({**plain_config(url), "group.id": group})
        try:
            (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
            return int(tp.offset)
        finally:
            consumer.close()

    try:
        await broker.subscribe(topic, handle, group=group, concurrency=4)
        start = await asyncio.to_thread(committed)
        for i in range(6):
            await broker.publish(Message(topic, b"%d" % i))
        await handled.wait_for(5)  # everything but message 2
        await asyncio.sleep(OPTIONS["commit_interval"] * 3)  # type: ignore[operator]
        assert await asyncio.to_thread(committed) == start + 2  # stuck at the unhandled one
        release.set()
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(committed) != start + 6:
            assert time.monotonic() < deadline, "the prefix never moved past message 2"
            await asyncio.sleep(0.1)
    finally:
        release.set()
        await broker.close()


async def test_keys_stay_in_order_with_concurrency(broker: KafkaBroker, topic: str) -> None:
    seen: dict[str, list[int]] = {}
    count = 0
    done = asyncio.Event()

    async def handle(message: Message) -> None:
        nonlocal count
        key, n = message.body.decode().split(":")
        await asyncio.sleep(0.001 * (int(n) % 3))
        seen.setdefault(key, []).append(int(n))
        count += 1
        if count == 200:
            done.set()

    await broker.subscribe(topic, handle, group="lanes", concurrency=8)
    await asyncio.gather(
        *(
            broker.publish(Message(topic, b"k%d:%d" % (i % 5, i), key=f"k{i % 5}"))
            for i in range(200)
        )
    )
    async with asyncio.timeout(30):
        await done.wait()
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), f"key {key} handled out of order"


async def test_rebalance_loses_nothing_and_handles_nothing_twice(url: str, topic: str) -> None:
    inbox = Inbox()
    first = KafkaBroker(url, **OPTIONS)  # type: ignore[arg-type]
    second = KafkaBroker(url, **OPTIONS)  # type: ignore[arg-type]
    producer = KafkaBroker(url, **OPTIONS)  # type: ignore[arg-type]
    for b in (first, second, producer):
        await b.connect()

    def slow(name: str):  # type: ignore[no-untyped-def]
        put = inbox.member(name)

        async def handle(message: Message) -> None:
            await asyncio.sleep(0.002)
            await put(message)

        return handle

    try:
        await first.subscribe(topic, slow("a"), group="rebalance", concurrency=4)
        sent = [Message(topic, b"%d" % i, key=str(i)) for i in range(600)]
        await asyncio.gather(*(producer.publish(m) for m in sent[:300]))
        await second.subscribe(topic, slow("b"), group="rebalance", concurrency=4)
        await asyncio.gather(*(producer.publish(m) for m in sent[300:]))
        await inbox.wait_for(600, timeout=60)
        await asyncio.sleep(0.5)  # let a duplicate show up if there is one
    finally:
        for b in (first, second, producer):
            await b.close()
    counts = Counter(m.id for m in inbox.messages)
    assert set(counts) == {m.id for m in sent}
    assert [i for i, n in counts.items() if n > 1] == []
    assert inbox.by_member["b"], "the second member should take over some partitions"


async def test_durable_false_publishes_without_waiting_and_subscribes_without_commits(
    url: str, broker: KafkaBroker, topic: str
) -> None:
    group = f"volatile-{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    await broker.subscribe(topic, inbox.put, group=group, durable=False)
    await broker.publish(Message(topic, b"fire and forget"), durable=False)
    (got,) = await inbox.wait_for(1)
    assert got.body == b"fire and forget"
    await asyncio.sleep(OPTIONS["commit_interval"] * 3)  # type: ignore[operator]
    consumer = Consumer({**plain_config(url), "group.id": group})
    try:
        parts = await broker.partitions(topic)
        committed = await asyncio.to_thread(
            consumer.committed, [TopicPartition(topic, p) for p in parts], 10
        )
    finally:
        consumer.close()
    assert all(tp.offset < 0 for tp in committed), "durable=False commits nothing"


# -- request/reply inboxes, replay, errors ------------------------------------------------------


async def test_inbox_is_deleted_on_close_and_a_late_reply_is_undeliverable(
    broker: KafkaBroker,
) -> None:
    got = Inbox()
    inbox = await broker.open_inbox(got.put)
    assert inbox.topic.startswith(INBOX_PREFIX)
    await broker.publish(Message(inbox.topic, b"reply", correlation_id="c1"))
    (reply,) = await got.wait_for(1)
    assert reply.correlation_id == "c1"
    await inbox.close()
    other = KafkaBroker(broker.url, **OPTIONS)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 20
        while True:  # topic deletion is asynchronous on the cluster
            try:
                await other.publish(Message(inbox.topic, b"late"))
            except UndeliverableError:
                break
            other._topics.discard(inbox.topic)
            assert time.monotonic() < deadline, "the reply topic was not deleted"
            await asyncio.sleep(0.2)
    finally:
        await other.close()


async def test_replay_of_a_missing_topic_raises(broker: KafkaBroker) -> None:
    with pytest.raises(TopicNotFound):
        async for _ in broker.replay(f"missing.{uuid.uuid4().hex}"):
            pass


async def test_replay_keeps_partition_order_and_reads_plain_records(
    broker: KafkaBroker, url: str, topic: str
) -> None:
    await broker.publish(Message(topic, b"first", key="a"))
    producer = Producer(plain_config(url))
    producer.produce(topic, b"plain", b"a")
    await asyncio.to_thread(producer.flush, 10)
    await broker.publish(Message(topic, b"last", key="a"))
    got = [m async for m in broker.replay(topic)]
    assert [m.body for m in got] == [b"first", b"plain", b"last"]


async def test_publish_after_close_is_closed_error(url: str, topic: str) -> None:
    broker = KafkaBroker(url, **OPTIONS)  # type: ignore[arg-type]
    await broker.connect()
    await broker.close()
    with pytest.raises(ClosedError):
        await broker.publish(Message(topic, b"x"))
    with pytest.raises(ClosedError):
        await broker.connect()


async def test_publish_while_kafka_is_down_fails_within_the_timeout(topic: str) -> None:
    server = TansuServer()
    server.start()
    broker = KafkaBroker(server.url, publish_timeout=2.0, timeout=5.0)
    try:
        await broker.connect()
        for attempt in range(5):  # the first publish also creates the topic: give it time
            try:
                await broker.publish(Message(topic, b"up"))
                break
            except BrokerUnavailable:
                assert attempt < 4, "Tansu never acknowledged a publish"
        server.kill()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not acknowledge"):
            await broker.publish(Message(topic, b"down"))
        assert time.monotonic() - started < 2.0 + 3.0
    finally:
        server.stop()
        await broker.close()


async def test_oversized_message_is_a_clear_error(url: str, topic: str) -> None:
    broker = KafkaBroker(url, **{**OPTIONS, "max_message_bytes": 64 * 1024})  # type: ignore[arg-type]
    await broker.connect()
    try:
        with pytest.raises(Exception, match="max_message_bytes"):
            await broker.publish(Message(topic, b"x" * 100_000))
    finally:
        await broker.close()
