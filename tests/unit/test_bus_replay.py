"""`EventBus.replay`: clear errors, and what it does around the broker's replay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import ClassVar

import pytest

from eventbus import (
    Capabilities,
    ConfigurationError,
    EventBus,
    Message,
    ReplayNotSupported,
    TopicNotFound,
)
from eventbus.brokers.memory import MemoryBroker
from eventbus.message import new_id


class ForgetfulBroker(MemoryBroker):
    """The memory broker keeping nothing, as a non-retaining adapter does."""

    capabilities: ClassVar[Capabilities] = Capabilities(retains=False, ordered_by_key=False)

    def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        raise ReplayNotSupported(
            f"ForgetfulBroker keeps no messages, so {topic!r} cannot be replayed"
        )


async def test_a_broker_that_keeps_nothing_says_so_and_how_to_record_instead() -> None:
    bus = EventBus(broker=ForgetfulBroker(f"memory://{new_id()}"))
    async with bus:
        await bus.publish("orders", {"id": 1})
        with pytest.raises(ReplayNotSupported) as caught:
            async for _ in bus.replay("orders"):
                pass
    text = str(caught.value)
    assert "ForgetfulBroker keeps no messages, so 'orders' cannot be replayed" in text
    assert "record live traffic instead: eventbus tail orders --json > FILE" in text
    assert isinstance(caught.value, NotImplementedError)


async def test_an_unknown_topic_is_named_in_the_error() -> None:
    async with EventBus(f"memory://{new_id()}") as bus:
        with pytest.raises(TopicNotFound, match=r"'no\.such\.topic' does not exist"):
            async for _ in bus.replay("no.such.topic"):
                pass


async def test_since_must_have_a_timezone() -> None:
    async with EventBus(f"memory://{new_id()}") as bus:
        await bus.publish("orders", {"id": 1})
        with pytest.raises(ConfigurationError, match="has no timezone"):
            async for _ in bus.replay("orders", since=datetime(2024, 1, 1)):
                pass


async def test_replay_starts_the_bus_and_consumes_nothing() -> None:
    url = f"memory://{new_id()}"
    async with EventBus(url) as producer:
        sent = [await producer.publish("orders", {"n": i}) for i in range(5)]
    reader = EventBus(url)
    try:
        first = [m async for m in reader.replay("orders")]
        assert reader.is_running
        again = [m async for m in reader.replay("orders")]
    finally:
        await reader.close()
    assert [m.id for m in first] == [m.id for m in again] == [m.id for m in sent]
    assert [m.delivery.offset for m in first if m.delivery] == [0, 1, 2, 3, 4]


async def test_stopping_early_closes_the_brokers_iterator() -> None:
    closed: list[bool] = []

    class Watched(MemoryBroker):
        async def replay(self, topic: str, *, since: datetime | None = None):  # type: ignore[no-untyped-def, override]  # a generator with a finally, under test
            try:
                async for message in super().replay(topic, since=since):
                    yield message
            finally:
                closed.append(True)

    async with EventBus(broker=Watched(f"memory://{new_id()}")) as bus:
        for i in range(5):
            await bus.publish("orders", {"n": i})
        replay = bus.replay("orders")
        async for message in replay:
            assert message.body == b'{"n":0}'
            break
        await replay.aclose()  # type: ignore[attr-defined]  # an async generator
    assert closed == [True]
