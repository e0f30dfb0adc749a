"""Delivery guarantees: at-least-once, retries, dead-letter, graceful close, broker contract."""

from __future__ import annotations

import asyncio

import pytest

from eventbus import ClosedError, Message, RetryPolicy
from eventbus.broker import Broker
from eventbus.message import DLQ_ATTEMPTS, DLQ_TOPIC, ERROR, ERROR_TYPE
from tests.conformance.conftest import MakeBus
from tests.helpers import Inbox


async def test_offline_group_gets_everything_when_back(make_bus: MakeBus, topic: str) -> None:
    first = Inbox()
    member = make_bus()
    member.subscriber(topic, group="billing")(first.put)
    async with member:  # creates the group, then leaves
        pass
    producer = make_bus()
    async with producer:
        sent = [await producer.publish(topic, {"n": i}) for i in range(500)]
    later = Inbox()
    back = make_bus()
    back.subscriber(topic, group="billing", concurrency=8)(later.put)
    async with back:
        await later.wait_for(500, timeout=60)
    assert sorted(m.id for m in later.messages) == sorted(m.id for m in sent)
    assert first.messages == []


async def test_failing_handler_is_retried_then_acked_once(make_bus: MakeBus, topic: str) -> None:
    calls: list[str] = []
    done = asyncio.Event()
    bus = make_bus(retry=RetryPolicy(attempts=3, backoff=0.01))

    @bus.subscriber(topic, group="flaky")
    async def flaky(payload: dict[str, str]) -> None:
        calls.append(payload["v"])
        if payload["v"] == "first" and calls.count("first") < 3:
            raise RuntimeError("transient")
        if payload["v"] == "sentinel":
            done.set()

    async with bus:
        # One key: order is promised per key (a Kafka topic has several partitions).
        await bus.publish(topic, {"v": "first"}, key="k")
        await bus.publish(topic, {"v": "sentinel"}, key="k")
        async with asyncio.timeout(30):
            await done.wait()
    assert calls == ["first", "first", "first", "sentinel"]
    (sub,) = bus.subscribers
    assert (sub.processed, sub.failed, sub.dead_lettered) == (2, 0, 0)


async def test_poison_message_is_dead_lettered_and_consumer_goes_on(
    make_bus: MakeBus, topic: str
) -> None:
    good: list[dict[str, int]] = []
    dead = Inbox()
    done = asyncio.Event()
    bus = make_bus()

    @bus.subscriber(topic, group="consumer")
    async def handle(payload: dict[str, int]) -> None:
        good.append(payload)
        done.set()

    bus.subscriber(f"{topic}.dlq")(dead.put)
    async with bus:
        poison = await bus.publish(topic, b"{not json", content_type="application/json")
        await bus.publish(topic, {"ok": 1})
        async with asyncio.timeout(20):
            await done.wait()
        (record,) = await dead.wait_for(1)
    assert good == [{"ok": 1}]
    assert record.body == b"{not json"
    assert record.id == poison.id
    assert record.headers[ERROR_TYPE] == "DecodeError"
    assert "malformed JSON" in record.headers[ERROR]
    assert record.headers[DLQ_TOPIC] == topic
    assert record.headers[DLQ_ATTEMPTS] == "1"


async def test_graceful_close_loses_no_in_flight_message(make_bus: MakeBus, topic: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    handled_by_first: list[str] = []
    first = make_bus()

    @first.subscriber(topic, group="drain")
    async def slow(msg: Message) -> None:
        started.set()
        await release.wait()
        handled_by_first.append(msg.id)

    producer = make_bus()
    async with producer:
        await first.start()
        sent = [await producer.publish(topic, {"n": i}) for i in range(20)]
        async with asyncio.timeout(20):
            await started.wait()
        closing = asyncio.create_task(first.close())
        await asyncio.sleep(0)  # let close() begin while the handler is still running
        release.set()
        await closing
        assert len(handled_by_first) >= 1, "the in-flight handler should have finished"
        rest = Inbox()
        second = make_bus()
        second.subscriber(topic, group="drain", concurrency=4)(rest.put)
        async with second:
            await rest.wait_until(
                lambda: (
                    {m.id for m in rest.messages} | set(handled_by_first) >= {m.id for m in sent}
                ),
                60,
                "the rest of the 20 messages",
            )


async def test_unfinished_handler_is_not_acknowledged(
    url: str, broker_name: str, topic: str
) -> None:
    from eventbus.brokers import open_broker
    from tests.conformance.conftest import BROKER_OPTIONS

    options = {**BROKER_OPTIONS.get(broker_name, {}), "grace": 0.2}
    hung = asyncio.Event()
    first = open_broker(url, **options)
    await first.connect()

    async def hang(message: Message) -> None:
        hung.set()
        await asyncio.Event().wait()  # never finishes: cancelled by close()

    await first.subscribe(topic, hang, group="g")
    second = open_broker(url, **options)
    await second.connect()
    try:
        sent = Message(topic, b'{"n": 1}', content_type="application/json")
        await second.publish(sent)
        async with asyncio.timeout(20):
            await hung.wait()
        await first.close()
        again = Inbox()
        await second.subscribe(topic, again.put, group="g")
        (got,) = await again.wait_for(1, timeout=60)
        assert got.id == sent.id
    finally:
        await first.close()
        await second.close()


async def test_close_is_idempotent_and_publish_after_close_raises(
    broker: Broker, topic: str
) -> None:
    await broker.close()
    await broker.close()
    with pytest.raises(ClosedError):
        await broker.publish(Message(topic, b"late"))


async def test_handler_error_redelivers_at_broker_level(broker: Broker, topic: str) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def fail_once(message: Message) -> None:
        seen.append(message.redelivered)
        if len(seen) == 1:
            raise RuntimeError("not yet")
        done.set()

    await broker.subscribe(topic, fail_once, group="redeliver")
    await broker.publish(Message(topic, b"x"))
    async with asyncio.timeout(60):
        await done.wait()
    assert len(seen) == 2
    assert seen[1] >= 1, "a redelivered message says so in Delivery.redelivered"
