"""Redis adapter: interop with plain redis-py clients, and what the conformance suite
does not cover (options, errors, trimming, reclaiming entries of a dead member).

Runs on the shared Redis (fresh uuid keys, deleted afterwards).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_py
from pydantic import BaseModel

from eventbus import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    EventBus,
    Message,
    ReplayNotSupported,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.brokers.redis import RedisBroker
from tests.conftest import broker_url
from tests.helpers import Inbox


class Reading(BaseModel):
    sensor: str
    value: float


@pytest.fixture
def url() -> str:
    return broker_url("redis")


@pytest.fixture
async def plain(url: str) -> AsyncIterator[Any]:
    """A plain redis-py client; deletes the keys the test named with ``key()``."""
    client = redis_py.Redis.from_url(url)
    client.made = []  # type: ignore[attr-defined]
    yield client
    if client.made:  # type: ignore[attr-defined]
        await client.delete(*client.made)  # type: ignore[attr-defined]
    await client.aclose()


def key(plain: Any) -> str:
    name = f"t.redis.{uuid.uuid4().hex[:16]}"
    plain.made.append(name)
    return name


# -- interop -----------------------------------------------------------------------------


async def test_plain_entry_of_json_fields_is_read_as_a_json_object(url: str, plain: Any) -> None:
    topic = key(plain)
    inbox = Inbox()
    bus = EventBus(url)
    got: list[tuple[dict[str, str], Message]] = []

    @bus.subscriber(topic, group="interop")
    async def handle(payload: dict[str, str], msg: Message) -> None:
        got.append((payload, msg))
        await inbox.put(msg)

    async with bus:
        entry_id = await plain.xadd(topic, {"sensor": "s1", "value": "20.5"})
        await inbox.wait_for(1)
    ((payload, msg),) = got
    assert payload == {"sensor": "s1", "value": "20.5"}
    assert msg.content_type == "application/json"
    assert msg.id == entry_id.decode(), "a plain entry's id is its stream entry id"
    assert msg.delivery is not None
    assert msg.delivery.raw[0] == entry_id, "raw is (entry id, fields)"


async def test_plain_entry_fields_decode_into_a_model(url: str, plain: Any) -> None:
    topic = key(plain)
    got: list[Reading] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic)
    async def handle(reading: Reading) -> None:
        got.append(reading)
        done.set()

    async with bus:
        await plain.xadd(topic, {"sensor": "s2", "value": "1.25"})
        async with asyncio.timeout(20):
            await done.wait()
    assert got == [Reading(sensor="s2", value=1.25)]


async def test_plain_entry_with_json_body_and_no_metadata(url: str, plain: Any) -> None:
    topic = key(plain)
    got: list[tuple[Reading, Message]] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic, group="interop")
    async def handle(reading: Reading, msg: Message) -> None:
        got.append((reading, msg))
        done.set()

    async with bus:
        await plain.xadd(topic, {"body": orjson.dumps({"sensor": "s3", "value": 7.5})})
        async with asyncio.timeout(20):
            await done.wait()
    ((reading, msg),) = got
    assert reading == Reading(sensor="s3", value=7.5)
    assert msg.content_type is None, "no content type was sent: read as JSON because it parses"
    assert msg.headers == {}


async def test_plain_entry_with_binary_body_reaches_a_bytes_handler(url: str, plain: Any) -> None:
    topic = key(plain)
    got: list[bytes] = []
    done = asyncio.Event()
    bus = EventBus(url)

    @bus.subscriber(topic)
    async def handle(data: bytes) -> None:
        got.append(data)
        done.set()

    async with bus:
        await plain.xadd(topic, {"body": b"\x00\xffnot json", "x-origin": "legacy"})
        async with asyncio.timeout(20):
            await done.wait()
    assert got == [b"\x00\xffnot json"]


async def test_eventbus_entry_is_readable_with_plain_xrange(url: str, plain: Any) -> None:
    topic = key(plain)
    async with EventBus(url, name="interop-svc") as bus:
        sent = await bus.publish(
            topic, {"sensor": "s4", "value": 3.0}, key="k1", headers={"x-tenant": "acme"}
        )
    ((_, fields),) = await plain.xrange(topic)
    assert fields[b"body"] == sent.body == b'{"sensor":"s4","value":3.0}'
    assert orjson.loads(fields[b"body"]) == {"sensor": "s4", "value": 3.0}
    assert fields[b"content-type"] == b"application/json"
    assert fields[b"ce_id"] == sent.id.encode()
    assert fields[b"ce_source"] == b"interop-svc"
    assert fields[b"ce_type"] == topic.encode()
    assert fields[b"ce_specversion"] == b"1.0"
    assert fields[b"ce_partitionkey"] == b"k1"
    assert fields[b"x-tenant"] == b"acme"
    assert fields[b"ce_time"].startswith(str(sent.time.year).encode())


async def test_plain_responder_answers_an_eventbus_request(url: str, plain: Any) -> None:
    """The reply frame on ``reply_to`` is documented: a JSON object of fields, ``\\n``, body."""
    topic = key(plain)
    await plain.xgroup_create(topic, "calc", id="$", mkstream=True)

    async def plain_responder() -> None:
        reply = await plain.xreadgroup("calc", "plain", {topic: ">"}, count=1, block=10_000)
        ((_, ((entry_id, fields),)),) = reply
        request = orjson.loads(fields[b"body"])
        head = {"ce_correlationid": fields[b"ce_correlationid"].decode(),
                "content-type": "application/json"}  # fmt: skip
        frame = orjson.dumps(head) + b"\n" + orjson.dumps({"sum": request["a"] + request["b"]})
        assert await plain.publish(fields[b"ce_replyto"], frame) == 1
        await plain.xack(topic, "calc", entry_id)

    responder = asyncio.create_task(plain_responder())
    async with EventBus(url) as bus:
        assert await bus.request(topic, {"a": 2, "b": 3}, timeout=10) == {"sum": 5}
    await responder


# -- adapter behaviour -------------------------------------------------------------------


def test_unknown_and_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option.*maxlenn"):
        RedisBroker("redis://127.0.0.1:6379/0", maxlenn=10)
    with pytest.raises(ConfigurationError, match="maxlen"):
        RedisBroker("redis://127.0.0.1:6379/0", maxlen=0)
    with pytest.raises(ConfigurationError, match="reclaim_idle"):
        RedisBroker("redis://127.0.0.1:6379/0", reclaim_idle=-1)
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisBroker("nats://127.0.0.1:4222")


async def test_subscribe_and_publish_options_are_checked(url: str) -> None:
    broker = RedisBroker(url)

    async def nothing(message: Message) -> None:
        pass

    try:
        with pytest.raises(ConfigurationError, match="prefetch"):
            await broker.subscribe("t.x", nothing, prefetch=3)
        with pytest.raises(ConfigurationError, match="concurrency"):
            await broker.subscribe("t.x", nothing, concurrency=0)
        with pytest.raises(ConfigurationError, match="open_inbox"):
            await broker.subscribe("_INBOX.x", nothing)
        with pytest.raises(ConfigurationError, match="priority"):
            await broker.publish(Message("t.x", b""), priority=1)
    finally:
        await broker.close()


async def test_header_named_body_is_refused(url: str) -> None:
    broker = RedisBroker(url)
    try:
        with pytest.raises(ConfigurationError, match="body"):
            await broker.publish(Message("t.x", b"{}", {"body": "clash"}))
    finally:
        await broker.close()


async def test_topic_on_a_key_of_another_type_says_so(url: str, plain: Any) -> None:
    topic = key(plain)
    await plain.set(topic, "not a stream")
    broker = RedisBroker(url)
    try:
        with pytest.raises(BrokerError, match="Stream keys"):
            await broker.publish(Message(topic, b"x"))
    finally:
        await broker.close()


async def test_replay_of_missing_topic_and_of_inbox(url: str) -> None:
    broker = RedisBroker(url)
    try:
        with pytest.raises(TopicNotFound):
            [m async for m in broker.replay(f"t.missing.{uuid.uuid4().hex}")]
        with pytest.raises(ReplayNotSupported):
            [m async for m in broker.replay("_INBOX.abc")]
    finally:
        await broker.close()


async def test_replay_reads_plain_entries_too(url: str, plain: Any) -> None:
    topic = key(plain)
    await plain.xadd(topic, {"a": "1"})
    broker = RedisBroker(url)
    try:
        await broker.publish(Message(topic, b"2", content_type="text/plain"))
        got = [m async for m in broker.replay(topic)]
    finally:
        await broker.close()
    assert [(m.body, m.content_type) for m in got] == [
        (b'{"a":"1"}', "application/json"),
        (b"2", "text/plain"),
    ]


async def test_streams_are_trimmed_to_about_maxlen(url: str, plain: Any) -> None:
    topic = key(plain)
    broker = RedisBroker(url, maxlen=100)
    try:
        for i in range(1000):
            await broker.publish(Message(topic, b"%d" % i))
    finally:
        await broker.close()
    length = await plain.xlen(topic)
    assert 100 <= length < 1000, f"MAXLEN ~ 100 should keep about 100 entries, kept {length}"


async def test_reply_to_a_gone_inbox_is_undeliverable(url: str) -> None:
    broker = RedisBroker(url)
    try:

        async def nothing(message: Message) -> None:
            pass

        inbox = await broker.open_inbox(nothing)
        await inbox.close()
        with pytest.raises(UndeliverableError, match="nobody listens"):
            await broker.publish(Message(inbox.topic, b"late reply", correlation_id="c1"))
    finally:
        await broker.close()


async def test_unreachable_redis_raises_broker_unavailable() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", timeout=1.0)  # nothing listens on port 1
    try:
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
            await broker.connect()
        async with asyncio.timeout(10):  # bounded by the timeout option, not hanging
            with pytest.raises(BrokerUnavailable, match=r"publish to 't\.x'"):
                await broker.publish(Message("t.x", b"x"))
    finally:
        await broker.close()


async def test_entries_of_a_dead_member_are_reclaimed(url: str, plain: Any) -> None:
    """A plain consumer takes entries and never acknowledges them: it 'died'."""
    topic = key(plain)
    broker = RedisBroker(url, reclaim_idle=0.5)
    inbox = Inbox()
    try:
        await plain.xgroup_create(topic, "g", id="$", mkstream=True)
        for i in range(5):
            await broker.publish(Message(topic, b"%d" % i))
        taken = await plain.xreadgroup("g", "ghost", {topic: ">"}, count=3)
        assert len(taken[0][1]) == 3
        await broker.subscribe(topic, inbox.put, group="g")
        got = await inbox.wait_for(5, timeout=20)
    finally:
        await broker.close()
    assert sorted(m.body for m in got) == [b"%d" % i for i in range(5)]
    assert sorted(m.redelivered for m in got) == [0, 0, 1, 1, 1]
    assert await plain.xpending(topic, "g") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_live_member_keeps_entries_it_is_slow_on(url: str, plain: Any) -> None:
    """Entries a live member holds longer than reclaim_idle are not taken by another one."""
    topic = key(plain)
    slow_started = asyncio.Event()
    release = asyncio.Event()
    first, second = RedisBroker(url, reclaim_idle=0.3), RedisBroker(url, reclaim_idle=0.3)
    inbox = Inbox()
    record_first = inbox.member("first")

    async def slow(message: Message) -> None:
        if message.body == b"slow":
            slow_started.set()
            await release.wait()
        await record_first(message)

    try:
        await first.subscribe(topic, slow, group="g")
        await first.publish(Message(topic, b"slow"))
        async with asyncio.timeout(20):
            await slow_started.wait()
        await second.subscribe(topic, inbox.member("second"), group="g")
        # Over three reclaim_idle periods: the second member's reclaim rounds ran many times.
        await asyncio.sleep(1.0)
        release.set()
        await first.publish(Message(topic, b"next"))
        await inbox.wait_for(2)
    finally:
        await first.close()
        await second.close()
    assert sorted(inbox.bodies) == [b"next", b"slow"]
    assert next(m.body for m in inbox.by_member["first"]) == b"slow"
    assert b"slow" not in [m.body for m in inbox.by_member.get("second", [])]


async def test_redelivered_counts_come_from_redis(url: str, plain: Any) -> None:
    topic = key(plain)
    broker = RedisBroker(url)
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def fail_twice(message: Message) -> None:
        (row,) = await plain.xpending_range(topic, "g", "-", "+", 10)
        seen.append((message.redelivered, row["times_delivered"]))
        if len(seen) < 3:
            raise RuntimeError("not yet")
        done.set()

    try:
        await broker.subscribe(topic, fail_twice, group="g")
        await broker.publish(Message(topic, b"x"))
        async with asyncio.timeout(20):
            await done.wait()
    finally:
        await broker.close()
    assert seen == [(0, 1), (1, 2), (2, 3)]


def test_decode_responses_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisBroker("redis://127.0.0.1:6379/0?decode_responses=true")


async def test_resp2_works_too(url: str, plain: Any) -> None:
    """``?protocol=2`` (RESP2) changes the shape of replies; everything works the same."""
    topic = key(plain)
    plain.made.append(f"{topic}.fan-out")
    resp2 = url + ("&" if "?" in url else "?") + "protocol=2"
    server, client = EventBus(resp2), EventBus(resp2)
    inbox = Inbox()

    @server.subscriber(topic, group="g")
    async def echo(payload: dict[str, int]) -> dict[str, int]:
        return payload

    server.subscriber(f"{topic}.fan-out")(inbox.put)
    async with server, client:
        assert await client.request(topic, {"n": 1}, timeout=10) == {"n": 1}
        await client.publish(f"{topic}.fan-out", {"n": 1})
        (got,) = await inbox.wait_for(1)
    assert got.body == b'{"n":1}'


async def test_non_durable_topics_are_short_lived(url: str, plain: Any) -> None:
    """``durable=False`` (presence, node-addressed calls): trimmed hard and expiring."""
    topic = key(plain)
    durable = key(plain)
    inbox = Inbox()
    broker = RedisBroker(url)
    try:
        await broker.subscribe(topic, inbox.put, durable=False)
        for i in range(3000):
            await broker.publish(Message(topic, b"%d" % i), durable=False)
        await broker.publish(Message(durable, b"kept"))
        await inbox.wait_for(3000)
    finally:
        await broker.close()
    assert 0 < await plain.ttl(topic) <= 3600
    assert await plain.xlen(topic) < 3000
    assert await plain.ttl(durable) == -1, "a durable topic never expires"
