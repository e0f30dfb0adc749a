"""EventBus, Publisher and subscribers on the in-memory broker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

import eventbus
from eventbus import (
    ClosedError,
    ConfigurationError,
    EventBus,
    Message,
    Publisher,
    RemoteError,
    RequestTimeout,
    subscriber,
)
from eventbus.message import DEADLINE, new_id
from eventbus.middleware import Next
from tests.helpers import Inbox


class Order(BaseModel):
    id: int
    total: float


@dataclass
class Point:
    x: int
    y: int


def fresh_url() -> str:
    return f"memory://bus-{new_id()}"


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    bus = EventBus(fresh_url(), name="svc")
    yield bus
    await bus.close()


async def test_design_example_on_the_default_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_URL", fresh_url())
    eventbus.set_default_bus(None)
    billed: list[Order] = []
    try:

        @subscriber("orders.placed", group="billing")
        async def bill(order: Order) -> None:
            billed.append(order)

        @subscriber("math.add")
        async def add(req: dict[str, int]) -> dict[str, int]:
            return {"sum": req["a"] + req["b"]}

        await Publisher("orders.placed").publish(
            Order(id=1, total=9.5), key="1", headers={"x-tenant": "acme"}
        )
        reply = await Publisher("math.add").request({"a": 1, "b": 2}, timeout=2.0)
        assert reply == {"sum": 3}
        default = eventbus.default_bus()
        assert default.url == os.environ["EVENTBUS_URL"]
        await default.subscribers[0].wait_for(processed=1, timeout=5)
        assert billed == [Order(id=1, total=9.5)]
    finally:
        await eventbus.default_bus().close()
        eventbus.set_default_bus(None)


async def test_default_url_is_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTBUS_URL", raising=False)
    assert EventBus().url == "memory://"


async def test_handler_gets_typed_payload_and_envelope(bus: EventBus) -> None:
    seen: list[Any] = []

    @bus.subscriber("points")
    async def on_point(point: Point, msg: Message) -> None:
        seen.append((point, msg.key, msg.headers.get("h"), msg.source))

    @bus.subscriber("raw")
    async def on_raw(message: Message) -> None:
        seen.append(message.body)

    @bus.subscriber("untyped")
    async def on_untyped(value) -> None:  # type: ignore[no-untyped-def]
        seen.append(value)

    @bus.subscriber("sync")
    def on_sync(text: str) -> None:
        seen.append(text.upper())

    @bus.subscriber("nothing")
    async def on_nothing() -> None:
        seen.append("called")

    async with bus:
        await bus.publish("points", Point(1, 2), key=7, headers={"h": 1})  # type: ignore[dict-item]
        await bus.publish("raw", b"\x00")
        await bus.publish("untyped", [1, 2])
        await bus.publish("sync", "shout")
        await bus.publish("nothing", None)
        for sub in bus.subscribers:
            await sub.wait_for(processed=1)
    assert (Point(1, 2), "7", "1", "svc") in seen
    assert b"\x00" in seen
    assert [1, 2] in seen
    assert "SHOUT" in seen
    assert "called" in seen


def test_bad_handler_signatures_are_refused() -> None:
    bus = EventBus(fresh_url())

    async def two_payloads(a: dict[str, Any], b: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="parameter 'b' has no default"):
        bus.subscriber("t")(two_payloads)
    with pytest.raises(ConfigurationError, match="needs a topic"):
        bus.subscriber("")(lambda m: None)
    with pytest.raises(ConfigurationError, match="concurrency"):
        bus.subscriber("t", concurrency=0)(lambda m: None)
    with pytest.raises(ConfigurationError, match="timeout"):
        bus.subscriber("t", timeout=-1)(lambda m: None)
    with pytest.raises(ConfigurationError, match="retry attempts"):
        bus.subscriber("t", retry=0)(lambda m: None)


async def test_unknown_broker_option_is_a_configuration_error() -> None:
    bus = EventBus(fresh_url(), shards=3)
    with pytest.raises(ConfigurationError, match="unknown option"):
        await bus.start()
    bus2 = EventBus(fresh_url())
    bus2.subscriber("t", colour="blue")(lambda m: None)
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) colour"):
        await bus2.start()
    await bus2.close()


def test_unknown_scheme_and_missing_adapter_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="scheme must be one of"):
        _ = EventBus("mqtt://localhost").broker


async def test_group_members_share_and_fan_out_subscribers_all_get(bus: EventBus) -> None:
    group, fan = Inbox(), Inbox()
    bus.subscriber("jobs", group="workers")(group.member("w1"))
    bus.subscriber("jobs", group="workers")(group.member("w2"))
    bus.subscriber("jobs")(fan.member("f1"))
    bus.subscriber("jobs")(fan.member("f2"))
    async with bus:
        for i in range(10):
            await bus.publish("jobs", {"n": i})
        await group.wait_for(10)
        await fan.wait_for(20)
    assert len(group.by_member["w1"]) == len(group.by_member["w2"]) == 5
    assert len(fan.by_member["f1"]) == len(fan.by_member["f2"]) == 10


async def test_concurrency_limit_is_respected(bus: EventBus) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    @bus.subscriber("slow", concurrency=3)
    async def slow(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with bus:
        for i in range(10):
            await bus.publish("slow", i)
        for _ in range(50):
            if running == 3:
                break
            await asyncio.sleep(0)
        assert running == 3
        release.set()
        await bus.subscribers[0].wait_for(processed=10)
    assert peak == 3


async def test_request_reply_errors_and_timeouts(bus: EventBus) -> None:
    @bus.subscriber("calc.div")
    async def div(req: dict[str, float]) -> float:
        return req["a"] / req["b"]

    @bus.subscriber("calc.slow")
    async def slow(req: dict[str, Any], msg: Message) -> str:
        deadlines.append(msg.headers[DEADLINE])
        await asyncio.sleep(10)
        return "late"

    deadlines: list[str] = []
    async with bus:
        assert await bus.request("calc.div", {"a": 1, "b": 4}) == 0.25
        with pytest.raises(RemoteError, match="ZeroDivisionError: float division by zero") as err:
            await bus.request("calc.div", {"a": 1, "b": 0})
        assert err.value.remote_type == "ZeroDivisionError"
        with pytest.raises(RequestTimeout, match=r"no reply from 'calc\.slow' within 0\.2s"):
            await bus.request("calc.slow", {}, timeout=0.2)
        assert deadlines == ["200"]
        with pytest.raises(RequestTimeout):
            await bus.request("calc.nobody", {}, timeout=0.05)
        with pytest.raises(ConfigurationError):
            await bus.request("calc.div", {}, timeout=0)
        reply = await bus.request("calc.div", {"a": 1, "b": 1}, response_type=Message)
        assert isinstance(reply, Message)
        assert reply.body == b"1.0"


async def test_server_gives_up_at_the_request_deadline(bus: EventBus) -> None:
    cancelled = asyncio.Event()

    @bus.subscriber("work", group="workers")
    async def work(req: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with bus:
        with pytest.raises(RequestTimeout):
            await bus.request("work", {}, timeout=0.1)
        async with asyncio.timeout(5):
            await cancelled.wait()


async def test_late_reply_is_dropped_quietly(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    @bus.subscriber("late")
    async def late(req: dict[str, Any], msg: Message) -> str:
        await release.wait()
        return "too late"

    async with bus:
        # A deadline header far in the future keeps the server from giving up.
        with pytest.raises(RequestTimeout):
            await bus.publisher("late").request({}, timeout=0.05, headers={DEADLINE: "60000"})
        release.set()
        await bus.subscribers[0].wait_for(settled=1)
    assert "Traceback" not in caplog.text


async def test_middleware_wraps_handlers_and_publishes_in_order() -> None:
    order: list[str] = []

    def named(name: str) -> Any:
        async def mw(message: Message, call_next: Next) -> Any:
            order.append(f"{name}>")
            result = await call_next(message)
            order.append(f"<{name}")
            return result

        return mw

    bus = EventBus(fresh_url(), middleware=[named("bus")], publish_middleware=[named("bus-pub")])

    @bus.subscriber("t", middleware=[named("sub")])
    async def handle(value: int) -> None:
        order.append("handler")

    async with bus:
        pub = bus.publisher("t", middleware=[named("pub")])
        await pub.publish(1)
        await bus.subscribers[0].wait_for(processed=1)
    assert order == [
        "bus-pub>", "pub>", "<pub", "<bus-pub",
        "bus>", "sub>", "handler", "<sub", "<bus",
    ]  # fmt: skip


async def test_lifecycle_start_twice_close_twice_and_publish_after_close() -> None:
    bus = EventBus(fresh_url())
    await bus.start()
    await bus.start()
    assert bus.is_running
    await bus.close()
    await bus.close()
    assert not bus.is_running
    with pytest.raises(ClosedError):
        await bus.publish("t", 1)
    with pytest.raises(ClosedError):
        await bus.start()


async def test_subscribe_at_runtime(bus: EventBus) -> None:
    inbox = Inbox()
    async with bus:
        with pytest.raises(ConfigurationError, match=r"await bus\.subscribe"):
            bus.subscriber("late")(inbox.put)
        await bus.subscribe("late", inbox.put)
        await bus.publish("late", 1)
        await inbox.wait_for(1)


async def test_publisher_encodes_with_explicit_content_type(bus: EventBus) -> None:
    inbox = Inbox()
    bus.subscriber("typed")(inbox.put)
    async with bus:
        pub = bus.publisher("typed", content_type="application/avro", headers={"a": "1"})
        sent = await pub.publish(Point(1, 2))
        await pub.publish(b"<xml/>", content_type="application/xml")
        await inbox.wait_for(2)
    first, second = inbox.messages
    assert first.content_type == "application/avro"
    assert first.headers == {"a": "1"}
    assert first.id == sent.id
    assert second.content_type == "application/xml"
    assert second.body == b"<xml/>"


async def test_run_stops_gracefully_on_sigterm() -> None:
    bus = EventBus(fresh_url())
    started = asyncio.Event()
    finished: list[int] = []

    @bus.subscriber("t")
    async def handle(n: int) -> None:
        started.set()
        await asyncio.sleep(0.05)
        finished.append(n)

    runner = asyncio.create_task(bus.run())
    await bus.publish("t", 1)  # starts the bus too; run() waits for the same start
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(10):
        await runner
    assert finished == [1], "the in-flight handler finished before the bus closed"
    assert not bus.is_running


async def test_handlers_declared_none_never_answer_requests(bus: EventBus) -> None:
    audited: list[int] = []

    @bus.subscriber("calc.double")
    async def audit(req: int) -> None:  # a group-less observer declared -> None
        audited.append(req)

    @bus.subscriber("calc.double", group="calc")
    async def double(req: int) -> int:
        return 2 * req

    @bus.subscriber("calc.reset", group="calc")
    async def reset(req: int) -> None:  # a command in a group: answers with null
        audited.append(-req)

    async with bus:
        replies = [await bus.request("calc.double", i, timeout=5) for i in range(20)]
        await bus.subscribers[0].wait_for(processed=20)
        assert await bus.request("calc.reset", 1, timeout=5) is None
    assert replies == [2 * i for i in range(20)], "only the answering handler replies"
    assert audited == [*range(20), -1]


async def test_publish_many_runs_publish_middleware_per_message(bus: EventBus) -> None:
    seen: list[str] = []

    async def tag(message: Message, call_next: Next) -> Any:
        seen.append(message.id)
        return await call_next(message)

    inbox = Inbox()
    bus.subscriber("batch")(inbox.put)
    async with bus:
        sent = await bus.publisher("batch", middleware=[tag]).publish_many([1, 2, 3], key="k")
        await inbox.wait_for(3)
    assert seen == [m.id for m in sent]
    assert len({m.time for m in sent}) == 1, "one batch, one time"
