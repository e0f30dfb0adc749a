"""TestBus: any bus on a private in-memory broker, waits without sleeps, traffic to inspect."""

from __future__ import annotations

import sys

import pytest
from pydantic import BaseModel

from eventbus import ConfigurationError, EventBus, Message, RetryPolicy
from eventbus.message import DLQ_ATTEMPTS, DLQ_TOPIC, ERROR, ERROR_TYPE
from eventbus.testing import TestBus


class Order(BaseModel):
    id: int
    total: float


def make_shop(url: str = "kafka://kafka.prod.internal:9092") -> EventBus:
    """An application bus as users write it: configured for a real broker."""
    bus = EventBus(url, name="shop", retry=RetryPolicy(attempts=2, backoff=0.001), acks="all")

    @bus.subscriber("orders.placed", group="billing")
    async def bill(order: Order) -> None:
        if order.total < 0:
            raise ValueError(f"order {order.id} has a negative total")
        await bus.publish("invoices", {"order": order.id, "amount": order.total}, key=order.id)

    @bus.subscriber("math.add")
    async def add(req: dict[str, int]) -> dict[str, int]:
        return {"sum": req["a"] + req["b"]}

    return bus


def handler(bus: EventBus, topic: str) -> object:
    (sub,) = [s for s in bus.subscribers if s.topic == topic]
    return sub.fn


async def test_a_kafka_bus_runs_without_kafka_or_its_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Neither the client library nor the adapter can be imported in this test.
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    monkeypatch.setitem(sys.modules, "eventbus.brokers.kafka", None)
    bus = make_shop()
    bill = handler(bus, "orders.placed")
    async with TestBus(bus) as tb:
        await tb.publish("orders.placed", Order(id=7, total=9.5))
        await tb.wait_for(bill, processed=1)
        assert tb.payloads("invoices") == [{"order": 7, "amount": 9.5}]
        assert tb.published("invoices")[0].key == "7"
        assert await tb.request("math.add", {"a": 2, "b": 3}) == {"sum": 5}
    assert bus.url == "kafka://kafka.prod.internal:9092"
    with pytest.raises((ImportError, ConfigurationError), match="kafka"):
        bus.broker  # noqa: B018 - outside the TestBus the bus wants its real adapter again


async def test_failures_are_dead_lettered_and_inspectable() -> None:
    bus = make_shop("memory://")
    bill = handler(bus, "orders.placed")
    async with TestBus(bus) as tb:
        await tb.publish("orders.placed", {"id": 1, "total": -5})
        await tb.publish("orders.placed", b"{broken", content_type="application/json")
        await tb.publish("orders.placed", {"id": 2, "total": 1})
        sub = await tb.wait_for(bill, settled=3)
        assert (sub.processed, sub.failed, sub.dead_lettered) == (1, 2, 2)
        (refused, broken) = tb.dead_lettered("orders.placed")
    assert refused.headers[ERROR_TYPE] == "ValueError"
    assert refused.headers[ERROR] == "order 1 has a negative total"
    assert refused.headers[DLQ_ATTEMPTS] == "2"
    assert refused.headers[DLQ_TOPIC] == "orders.placed"
    assert refused.topic == "orders.placed.dlq"
    assert broken.headers[ERROR_TYPE] == "DecodeError"
    assert broken.body == b"{broken"
    assert tb.dead_lettered("math.add") == []
    assert tb.dead_lettered() == [refused, broken]
    assert tb.topics == ["orders.placed", "orders.placed.dlq", "invoices"]


async def test_one_app_bus_serves_many_tests_and_counts_start_at_zero() -> None:
    bus = make_shop()
    bill = handler(bus, "orders.placed")
    for run in range(3):
        async with TestBus(bus) as tb:
            assert not tb.published("invoices"), "each TestBus starts empty"
            await tb.publish("orders.placed", {"id": run, "total": 1.0})
            sub = await tb.wait_for(bill, processed=1)
            assert sub.processed == 1
        assert not bus.is_running


async def test_waiting_too_long_says_where_the_handler_is() -> None:
    bus = make_shop()
    async with TestBus(bus) as tb:
        await tb.publish("orders.placed", {"id": 1, "total": -1})
        with pytest.raises(TimeoutError) as caught:
            await tb.wait_for("orders.placed", processed=1, timeout=0.5)
    text = str(caught.value)
    assert "did not reach processed=1 within 0.5s" in text
    assert "dead-lettered 1" in text
    assert "ValueError: order 1 has a negative total" in text


async def test_handlers_are_found_by_function_topic_or_subscriber() -> None:
    bus = make_shop()
    async with TestBus(bus) as tb:
        sub = tb.subscriber("math.add")
        assert tb.subscriber(sub.fn) is sub
        assert tb.subscriber(sub) is sub
        with pytest.raises(LookupError, match="no subscriber for 'nope'"):
            tb.subscriber("nope")
        with pytest.raises(ConfigurationError, match="exactly one"):
            await tb.wait_for(sub, processed=1, settled=1)


async def test_services_talk_to_each_other_on_one_private_broker() -> None:
    shop = make_shop()
    shipping = EventBus("nats://nats.prod:4222", name="shipping")
    shipped: list[int] = []

    @shipping.subscriber("invoices", group="shipping")
    async def ship(invoice: dict[str, float]) -> None:
        shipped.append(int(invoice["order"]))

    async with TestBus(shop, shipping) as tb:
        await tb.publish("orders.placed", {"id": 3, "total": 2.5})
        await tb.wait_for(ship, processed=1)
        assert await shipping.request("math.add", {"a": 1, "b": 1}) == {"sum": 2}
    assert shipped == [3]


async def test_a_running_bus_is_refused_and_left_alone() -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(ConfigurationError, match="already running"):
            async with TestBus(bus):
                pass
        assert bus.is_running


async def test_redelivery_runs_the_real_pipeline_and_reports_each_message() -> None:
    bus = make_shop()
    bill = handler(bus, "orders.placed")
    audit: list[str] = []

    @bus.subscriber("orders.placed", group="audit")
    async def record(msg: Message) -> None:
        audit.append(msg.id)

    @bus.subscriber("orders.placed", group="audit")  # a second member of the same group
    async def record_again(msg: Message) -> None:
        audit.append(msg.id)

    @bus.subscriber("math.add")
    async def unencodable(req: dict[str, int]) -> object:
        return object() if req.get("weird") else None

    recorded = [
        Message("orders.placed", b'{"id":1,"total":2.0}', content_type="application/json"),
        Message("orders.placed", b'{"id":2,"total":-2.0}', content_type="application/json"),
        Message("orders.placed", b"\xff", content_type="application/json"),
        Message(
            "math.add",
            b'{"a":1,"b":2}',
            {"eventbus-deadline-ms": "5000"},
            "application/json",
            reply_to="_INBOX.long-gone",
            correlation_id="c-1",
        ),
        Message("math.add", b'{"a":1}', content_type="application/json", reply_to="_INBOX.x"),
        Message("nobody.listens", b"{}", content_type="application/json"),
    ]
    async with TestBus(bus) as tb:
        report = await tb.redeliver(recorded)
        assert [r.status for r in report] == [
            "processed",
            "dead_lettered",
            "dead_lettered",
            "processed",
            "failed",
            "no_subscriber",
        ]
        first, refused, undecodable, request, bad_request, lost = report
        assert [o.subscriber.name.rsplit(".", 1)[-1] for o in first.outcomes] == ["bill", "record"]
        assert tb.payloads("invoices") == [{"order": 1, "amount": 2.0}]
        assert audit == [m.id for m in recorded[:3]], "one member per group gets each message"
        assert refused.outcomes[0].attempts == 2
        assert isinstance(refused.error, ValueError)
        assert undecodable.outcomes[0].error.__class__.__name__ == "DecodeError"
        assert undecodable.outcomes[0].attempts == 1, "bad bytes are not retried"
        assert request.result == {"sum": 3}
        assert request.outcomes[1].result is None
        assert isinstance(bad_request.error, KeyError)
        assert lost.outcomes == ()
        assert [m.headers[DLQ_TOPIC] for m in tb.dead_lettered()] == ["orders.placed"] * 2
        assert not tb.published("_INBOX.long-gone"), "no reply goes to a recorded requester"
        sub = tb.subscriber(bill)
        assert (sub.processed, sub.failed, sub.dead_lettered) == (1, 2, 2)

        (weird,) = await tb.redeliver(
            [Message("math.add", b'{"a":1,"b":1,"weird":1}', reply_to="_INBOX.y")]
        )
    assert [o.status for o in weird.outcomes] == ["processed", "dead_lettered"]
    assert weird.status == "dead_lettered", "a reply that cannot be encoded is dead-lettered"


async def test_redeliver_takes_a_replay_directly() -> None:
    bus = make_shop()
    async with TestBus(bus) as tb:
        for i in range(3):
            await tb.publish("orders.placed", {"id": i, "total": 1.0})
        await tb.wait_for("orders.placed", processed=3)
        report = await bus.redeliver(bus.replay("orders.placed"))
        assert [r.status for r in report] == ["processed"] * 3
        assert len(tb.published("invoices")) == 6
