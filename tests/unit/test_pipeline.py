"""The handler pipeline on bad input: every failure is logged, dead-lettered, and survived."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from eventbus import BrokerUnavailable, EventBus, Message, RetryPolicy
from eventbus.message import DLQ_ATTEMPTS, DLQ_GROUP, DLQ_TOPIC, ERROR, ERROR_TYPE, new_id
from tests.helpers import Inbox


class Order(BaseModel):
    id: int
    total: float


TOPIC = "orders"


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    bus = EventBus(f"memory://pipeline-{new_id()}", retry=RetryPolicy(attempts=3, backoff=0.001))
    yield bus
    await bus.close()


async def run_case(
    bus: EventBus,
    handler: Any,
    bad: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    handler_runs_on_bad: bool = False,
    **settings: Any,
) -> tuple[Message, list[Any]]:
    """Publish one bad message then a good one; return the dead-letter record and the good ones."""
    handled: list[Any] = []
    dead = Inbox()

    async def wrapped(order: Order) -> Any:
        result = await handler(order)
        handled.append(order)
        return result

    wrapped.__annotations__ = handler.__annotations__
    bus.subscriber(TOPIC, group="billing", **settings)(wrapped)
    bus.subscriber(f"{TOPIC}.dlq")(dead.put)
    caplog.set_level(logging.WARNING, logger="eventbus")
    async with bus:
        await bus.publish(TOPIC, **bad)
        await bus.publish(TOPIC, Order(id=2, total=1.0))
        (record,) = await dead.wait_for(1, timeout=5)
        await bus.subscribers[0].wait_for(processed=1, timeout=5)
    expected = [1, 2] if handler_runs_on_bad else [2]
    assert [o.id for o in handled] == expected, "the next good message is still handled"
    assert record.headers[DLQ_TOPIC] == TOPIC
    assert record.headers[DLQ_GROUP] == "billing"
    return record, handled


async def ok(order: Order) -> None:
    return None


async def test_malformed_json_goes_to_dead_letter(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    record, _ = await run_case(
        bus, ok, {"value": b'{"id": 1, "total": ', "content_type": "application/json"}, caplog
    )
    assert record.body == b'{"id": 1, "total": '
    assert record.headers[ERROR_TYPE] == "DecodeError"
    assert record.headers[ERROR].startswith("malformed JSON")
    assert record.headers[DLQ_ATTEMPTS] == "1", "bad bytes are not retried"
    assert "malformed JSON" in caplog.text
    assert "dead-lettered to 'orders.dlq'" in caplog.text


async def test_validation_failure_goes_to_dead_letter(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    record, _ = await run_case(bus, ok, {"value": {"id": "x", "total": 1}}, caplog)
    assert record.headers[ERROR_TYPE] == "DecodeError"
    assert "not a valid Order: id: Input should be a valid integer" in record.headers[ERROR]
    assert "not a valid Order" in caplog.text


async def test_unknown_content_type_goes_to_dead_letter(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    record, _ = await run_case(
        bus, ok, {"value": b"\x01\x02", "content_type": "application/x-unheard-of"}, caplog
    )
    assert record.content_type == "application/x-unheard-of"
    assert record.headers[ERROR_TYPE] == "DecodeError"
    assert "no codec for content type 'application/x-unheard-of'" in record.headers[ERROR]
    assert "no codec for content type" in caplog.text


async def test_raising_handler_is_retried_then_dead_lettered(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    async def fragile(order: Order) -> None:
        calls.append(order.id)
        if order.id == 1:
            raise ValueError("order 1 is cursed")

    record, _ = await run_case(bus, fragile, {"value": Order(id=1, total=1)}, caplog)
    assert calls.count(1) == 3
    assert record.headers[ERROR_TYPE] == "ValueError"
    assert record.headers[ERROR] == "order 1 is cursed"
    assert record.headers[DLQ_ATTEMPTS] == "3"
    assert "try 1 of 3" in caplog.text
    assert "after 3 attempt(s): ValueError: order 1 is cursed" in caplog.text
    sub = bus.subscribers[0]
    assert (sub.processed, sub.failed, sub.dead_lettered) == (1, 1, 1)


async def test_hanging_handler_times_out_and_is_dead_lettered(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def hang_on_first(order: Order) -> None:
        if order.id == 1:
            await asyncio.Event().wait()

    record, _ = await run_case(
        bus, hang_on_first, {"value": Order(id=1, total=1)}, caplog, timeout=0.05, retry=1
    )
    assert record.headers[ERROR_TYPE] == "HandlerTimeout"
    assert "did not finish within 0.05s" in record.headers[ERROR]
    assert "HandlerTimeout" in caplog.text


async def test_reply_to_nobody_is_logged_and_dead_lettered(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(order: Order) -> dict[str, int]:
        return {"ok": order.id}

    record, _ = await run_case(
        bus,
        answer,
        {"value": Order(id=1, total=1), "reply_to": "_INBOX.long-gone", "correlation_id": "c"},
        caplog,
        handler_runs_on_bad=True,
    )
    assert record.headers[ERROR_TYPE] == "UndeliverableError"
    assert "_INBOX.long-gone" in record.headers[ERROR]
    assert record.reply_to is None
    assert "nobody takes the reply at '_INBOX.long-gone'" in caplog.text


async def test_failed_dead_letter_publish_leaves_message_for_redelivery(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    broker = bus.broker
    real_publish = broker.publish
    refused: list[str] = []

    async def flaky_publish(message: Message, **options: object) -> None:
        if message.topic.endswith(".dlq") and not refused:
            refused.append(message.id)
            raise BrokerUnavailable("dead-letter topic unreachable (test)")
        await real_publish(message, **options)

    broker.publish = flaky_publish  # type: ignore[method-assign]
    record, _ = await run_case(bus, ok, {"value": b"{", "content_type": "application/json"}, caplog)
    assert refused == [record.id], "the first dead-letter attempt failed..."
    assert record.headers[ERROR_TYPE] == "DecodeError", "...and the redelivery was dead-lettered"
    assert "redelivery 1" in caplog.text


async def test_consumer_survives_a_burst_of_bad_messages(bus: EventBus) -> None:
    good: list[int] = []
    dead = Inbox()

    @bus.subscriber(TOPIC, retry=1)
    async def handle(order: Order) -> None:
        if order.id < 0:
            raise RuntimeError("negative")
        good.append(order.id)

    bus.subscriber(f"{TOPIC}.dlq")(dead.put)
    async with bus:
        for i in range(50):
            await bus.publish(TOPIC, b"garbage", content_type="application/json")
            await bus.publish(TOPIC, {"id": -1, "total": 0})
            await bus.publish(TOPIC, {"id": i, "total": 0})
        await dead.wait_for(100)
        await bus.subscribers[0].wait_for(processed=50)
    assert good == list(range(50))
