"""Publish/subscribe scenarios: codecs, metadata, fan-out, groups, ordering, sizes."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from pydantic import BaseModel

from eventbus import Message
from tests.conformance.conftest import MakeBus
from tests.helpers import Inbox
from tests.protos import Greeting


class Order(BaseModel):
    id: int
    total: float
    tags: list[str] = []


@dataclass
class Reading:
    sensor: str
    value: float


async def test_each_codec_round_trips(make_bus: MakeBus, topic: str) -> None:
    bus = make_bus()
    got: dict[str, object] = {}
    done = asyncio.Event()

    def record(kind: str, value: object) -> None:
        got[kind] = value
        if len(got) == 6:
            done.set()

    @bus.subscriber(f"{topic}.model")
    async def on_model(order: Order) -> None:
        record("model", order)

    @bus.subscriber(f"{topic}.dataclass")
    async def on_dataclass(reading: Reading) -> None:
        record("dataclass", reading)

    @bus.subscriber(f"{topic}.text")
    async def on_text(text: str) -> None:
        record("text", text)

    @bus.subscriber(f"{topic}.bytes")
    async def on_bytes(data: bytes, msg: Message) -> None:
        record("bytes", (data, msg.content_type))

    @bus.subscriber(f"{topic}.protobuf")
    async def on_protobuf(greeting: Greeting) -> None:
        record("protobuf", greeting)

    @bus.subscriber(f"{topic}.avro")
    async def on_avro(reading: Reading, msg: Message) -> None:
        record("avro", (reading, msg.content_type))

    async with bus:
        await bus.publish(f"{topic}.model", Order(id=1, total=9.5, tags=["a"]))
        await bus.publish(f"{topic}.dataclass", Reading("s1", 20.5))
        await bus.publish(f"{topic}.text", "héllo")
        await bus.publish(f"{topic}.bytes", b"\x00\xff raw")
        await bus.publish(f"{topic}.protobuf", Greeting(name="ann", count=3))
        await bus.publish(f"{topic}.avro", Reading("s2", 1.25), content_type="application/avro")
        async with asyncio.timeout(20):
            await done.wait()
    assert got["model"] == Order(id=1, total=9.5, tags=["a"])
    assert got["dataclass"] == Reading("s1", 20.5)
    assert got["text"] == "héllo"
    assert got["bytes"] == (b"\x00\xff raw", "application/octet-stream")
    assert got["protobuf"] == Greeting(name="ann", count=3)
    assert got["avro"] == (Reading("s2", 1.25), "application/avro")


async def test_metadata_round_trips(make_bus: MakeBus, topic: str) -> None:
    bus = make_bus(name="conformance-svc")
    inbox = Inbox()
    bus.subscriber(topic)(inbox.put)
    async with bus:
        sent = await bus.publish(
            topic,
            {"id": 7},
            key="customer-42",
            headers={"x-tenant": "acme", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
            id="fixed-id-1",
            type="com.example.order.placed",
        )
        (got,) = await inbox.wait_for(1)
    assert got.body == b'{"id":7}'
    assert got.content_type == "application/json"
    assert got.key == "customer-42"
    assert got.id == "fixed-id-1"
    assert got.type == "com.example.order.placed"
    assert got.source == "conformance-svc"
    assert got.time == sent.time
    assert got.headers["x-tenant"] == "acme"
    assert got.headers["traceparent"] == sent.headers["traceparent"]
    assert got.topic == topic


async def test_fan_out_reaches_every_subscriber(make_bus: MakeBus, topic: str) -> None:
    a, b = Inbox(), Inbox()
    bus1, bus2 = make_bus(), make_bus()
    bus1.subscriber(topic)(a.put)
    bus2.subscriber(topic)(b.put)
    async with bus1, bus2:
        for i in range(20):
            await bus1.publish(topic, {"n": i})
        await a.wait_for(20)
        await b.wait_for(20)
    # Order is promised per key only: a partitioned topic (Kafka) interleaves partitions.
    assert sorted(a.bodies) == sorted(b.bodies)
    assert len(set(a.bodies)) == 20


async def test_group_members_split_without_duplicates(make_bus: MakeBus, topic: str) -> None:
    inbox = Inbox()
    bus1, bus2, producer = make_bus(), make_bus(), make_bus()
    bus1.subscriber(topic, group="workers", concurrency=4)(inbox.member("a"))
    bus2.subscriber(topic, group="workers", concurrency=4)(inbox.member("b"))
    async with bus1, bus2, producer:
        sent = [await producer.publish(topic, {"n": i}, key=str(i)) for i in range(1000)]
        await inbox.wait_for(1000, timeout=60)
    assert Counter(m.id for m in inbox.messages) == Counter(m.id for m in sent)
    assert inbox.by_member["a"], "both members should get a share"
    assert inbox.by_member["b"], "both members should get a share"


async def test_order_is_kept_per_key(make_bus: MakeBus, topic: str) -> None:
    inbox = Inbox()
    bus = make_bus()
    bus.subscriber(topic, group="ordered")(inbox.put)
    async with bus:
        for i in range(200):
            await bus.publish(topic, {"n": i}, key=f"k{i % 4}")
        await inbox.wait_for(200)
    for key in ("k0", "k1", "k2", "k3"):
        seen = [
            int(m.body.decode().split(":")[1].rstrip("}")) for m in inbox.messages if m.key == key
        ]
        assert seen == sorted(seen), f"messages with key {key} out of order"


async def test_many_topics_and_subscribers(make_bus: MakeBus, topic: str) -> None:
    bus1, bus2 = make_bus(), make_bus()
    inboxes = {}
    for i in range(20):
        for bus in (bus1, bus2):
            inbox = inboxes[(i, id(bus))] = Inbox()
            bus.subscriber(f"{topic}.{i}")(inbox.put)
    async with bus1, bus2:
        for i in range(20):
            for n in range(5):
                await bus1.publish(f"{topic}.{i}", {"topic": i, "n": n})
        for inbox in inboxes.values():
            await inbox.wait_for(5)
    for (i, _), inbox in inboxes.items():
        assert [m.topic for m in inbox.messages] == [f"{topic}.{i}"] * 5


async def test_one_mebibyte_body(make_bus: MakeBus, topic: str) -> None:
    inbox = Inbox()
    bus = make_bus()
    bus.subscriber(topic)(inbox.put)
    body = bytes(range(256)) * 4096
    assert len(body) == 1024 * 1024
    async with bus:
        await bus.publish(topic, body)
        (got,) = await inbox.wait_for(1)
    assert got.body == body


async def test_empty_body(make_bus: MakeBus, topic: str) -> None:
    got: list[tuple[bytes, str | None]] = []
    done = asyncio.Event()
    bus = make_bus()

    @bus.subscriber(topic)
    async def handle(data: bytes, msg: Message) -> None:
        got.append((data, msg.content_type))
        done.set()

    async with bus:
        await bus.publish(topic, b"")
        async with asyncio.timeout(20):
            await done.wait()
    assert got == [(b"", "application/octet-stream")]


async def test_publish_many_delivers_every_message(make_bus: MakeBus, topic: str) -> None:
    inbox = Inbox()
    bus = make_bus()
    bus.subscriber(topic, group="batch")(inbox.put)
    async with bus:
        sent = await bus.publish_many(
            topic, ({"n": i} for i in range(300)), key=lambda v: v["n"] % 3
        )
        assert [m.key for m in sent[:4]] == ["0", "1", "2", "0"]
        assert await bus.publish_many(topic, []) == []
        tagged = await bus.publish_many(topic, ["a", "b"], headers={"x-tenant": "acme"})
        await inbox.wait_for(302)
    got = {m.id: m for m in inbox.messages}
    assert sorted(got) == sorted(m.id for m in [*sent, *tagged])
    for m in [*sent, *tagged]:  # every message keeps its own id and the batch's metadata
        received = got[m.id]
        kind = received.type or topic  # an empty type travels as the topic
        assert (received.body, received.content_type, received.source, kind) == (
            m.body, m.content_type, m.source, m.type or topic,
        )  # fmt: skip
        assert received.time == m.time
    assert [got[m.id].headers.get("x-tenant") for m in tagged] == ["acme", "acme"]
    assert all("x-tenant" not in got[m.id].headers for m in sent)
    for key in ("0", "1", "2"):
        order = [m.id for m in inbox.messages if m.key == key]
        assert order == [m.id for m in sent if m.key == key], "order kept per key"
