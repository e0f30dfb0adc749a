"""Replay through the bus, and recordings made from it, on every broker.

A broker that retains (``capabilities.retains``) must give back every message in
publish order (per key where it orders per partition) and honour ``since``; one that
does not must say so with `ReplayNotSupported`. A recording of a real topic, saved
and loaded, goes through a bus's handlers with the very same bytes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventbus import EventBus, Message, ReplayNotSupported, TopicNotFound
from eventbus.testing import TestBus, load, save
from tests.conformance.conftest import MakeBus


async def collect(bus: EventBus, topic: str, since: datetime | None = None) -> list[Message]:
    return [m async for m in bus.replay(topic, since=since)]


def retains(bus: EventBus) -> bool:
    return bus.broker.capabilities.retains


async def test_replay_gives_back_1000_messages_in_publish_order(
    make_bus: MakeBus, topic: str
) -> None:
    bus = make_bus()
    async with bus:
        # One key: one partition on brokers that order per partition, so one total order.
        sent = [await bus.publish(topic, {"n": i}, key="one") for i in range(1000)]
        if not retains(bus):
            with pytest.raises(ReplayNotSupported, match="keeps no messages"):
                await collect(bus, topic)
            return
        got = await collect(bus, topic)
    assert len(got) == 1000
    assert [m.id for m in got] == [m.id for m in sent]
    assert [m.body for m in got] == [b'{"n":%d}' % i for i in range(1000)]
    assert all(m.key == "one" and m.topic == topic for m in got)


async def test_replay_keeps_order_per_key_and_loses_nothing(make_bus: MakeBus, topic: str) -> None:
    bus = make_bus()
    async with bus:
        if not retains(bus):
            pytest.skip(f"{type(bus.broker).__name__} keeps no messages")
        sent = [await bus.publish(topic, {"n": i}, key=f"k{i % 4}") for i in range(200)]
        got = await collect(bus, topic)
    assert sorted(m.id for m in got) == sorted(m.id for m in sent)
    for key in ("k0", "k1", "k2", "k3"):
        assert [m.id for m in got if m.key == key] == [m.id for m in sent if m.key == key]


async def test_replay_since_starts_at_that_time(make_bus: MakeBus, topic: str) -> None:
    bus = make_bus()
    async with bus:
        if not retains(bus):
            pytest.skip(f"{type(bus.broker).__name__} keeps no messages")
        for i in range(5):
            await bus.publish(topic, {"old": i})
        # Brokers keep times to the millisecond: keep the two batches a few ms apart.
        await asyncio.sleep(0.005)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.005)
        newer = [await bus.publish(topic, {"new": i}) for i in range(5)]
        got = await collect(bus, topic, since=middle)
        everything = await collect(bus, topic)
    assert [m.id for m in got] == [m.id for m in newer]
    assert len(everything) == 10, "since must not consume anything"


async def test_replay_of_a_topic_that_does_not_exist_is_a_clear_error(
    make_bus: MakeBus, topic: str
) -> None:
    bus = make_bus()
    async with bus:
        expected = TopicNotFound if retains(bus) else ReplayNotSupported
        with pytest.raises(expected) as caught:
            await collect(bus, f"{topic}.never-published")
    assert f"{topic}.never-published" in str(caught.value)


async def test_recording_a_topic_and_redelivering_it_keeps_every_byte(
    make_bus: MakeBus, topic: str, tmp_path: Path
) -> None:
    bus = make_bus()
    async with bus:
        if not retains(bus):
            pytest.skip(f"{type(bus.broker).__name__} keeps no messages")
        sent = [
            await bus.publish(topic, {"id": 1, "total": 9.5}, key="c-1", headers={"x-t": "acme"}),
            await bus.publish(topic, b'{"spaced": true,  "n": 1}', content_type="application/json"),
            await bus.publish(topic, "héllo\nwörld", headers={"x-empty": "", "x-ü": "ü"}),
            await bus.publish(topic, b"\xff\x00\xfe not utf-8 \x80", key="bin"),
            await bus.publish(
                topic, b"", headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
            ),
        ]
        recorded = await collect(bus, topic)
    path = tmp_path / "recording.jsonl"
    assert save(path, recorded) == len(sent)
    loaded = load(path)

    fields = ("topic", "id", "body", "headers", "content_type", "key", "time", "source", "type")
    for original, back in zip(recorded, loaded, strict=True):
        for name in fields:
            assert getattr(back, name) == getattr(original, name), name
    for original, back in zip(sent, loaded, strict=True):
        assert back.body == original.body
        assert back.id == original.id
        assert back.key == original.key
        assert back.content_type == original.content_type
        assert dict(original.headers).items() <= dict(back.headers).items()

    # The recording becomes a test: the same bus code, now on the in-memory broker.
    seen: list[Message] = []
    replayer = make_bus()

    @replayer.subscriber(topic, group="audit")
    async def audit(msg: Message) -> None:
        seen.append(msg)

    async with TestBus(replayer) as tb:
        report = await tb.redeliver(load(path))
    assert [r.status for r in report] == ["processed"] * len(sent)
    assert [(m.body, dict(m.headers)) for m in seen] == [
        (m.body, dict(m.headers)) for m in recorded
    ]
