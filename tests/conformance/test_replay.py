"""Replay of retained messages, on every broker that retains."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventbus import ReplayNotSupported
from eventbus.broker import Broker
from eventbus.message import Message


async def collect(broker: Broker, topic: str, since: datetime | None = None) -> list[Message]:
    return [m async for m in broker.replay(topic, since=since)]


async def test_replay_returns_retained_messages_in_order(broker: Broker, topic: str) -> None:
    if not broker.capabilities.retains:
        with pytest.raises(ReplayNotSupported):
            await collect(broker, topic)
        return
    sent = [Message(topic, b'{"n": %d}' % i, content_type="application/json") for i in range(50)]
    for m in sent:
        await broker.publish(m)
    got = await collect(broker, topic)
    assert [m.id for m in got] == [m.id for m in sent]
    assert [m.body for m in got] == [m.body for m in sent]
    assert all(m.content_type == "application/json" for m in got)


async def test_replay_since_skips_older_messages(broker: Broker, topic: str) -> None:
    if not broker.capabilities.retains:
        pytest.skip(f"{type(broker).__name__} keeps no messages")
    for i in range(5):
        await broker.publish(Message(topic, b"old %d" % i))
    middle = datetime.now(UTC)
    newer = [Message(topic, b"new %d" % i) for i in range(5)]
    for m in newer:
        await broker.publish(m)
    got = await collect(broker, topic, since=middle)
    assert [m.id for m in got] == [m.id for m in newer]
