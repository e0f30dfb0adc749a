"""The registry client on memory://: failover, marks, concurrency, settings."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from eventbus import (
    ConfigurationError,
    EventBus,
    Message,
    RequestTimeout,
    Selector,
    ServiceNotFound,
    UndeliverableError,
    wait_for_nodes,
)
from eventbus.middleware import Next


def url() -> str:
    return f"memory://unit-{uuid.uuid4().hex}"


def node(where: str, service: str = "calc", **settings: object) -> EventBus:
    bus = EventBus(where, name=service, **settings)  # type: ignore[arg-type]

    @bus.subscriber(f"{service}.whoami", group=service, concurrency=8)
    async def whoami(request: dict[str, object]) -> str:
        return bus.node_id

    return bus


async def test_clients_are_kept_per_service_and_settings() -> None:
    bus = EventBus(url())
    assert bus.client("calc") is bus.client("calc")
    assert bus.client("calc") is not bus.client("calc", selector="round_robin")
    assert bus.client("calc", metadata={"a": "1"}) is bus.client("calc", metadata={"a": "1"})
    shared = Selector("round_robin")
    assert bus.client("calc", selector=shared).selector is shared
    with pytest.raises(ConfigurationError, match="Selector"):
        bus.client("calc", selector=shared, version="1")
    with pytest.raises(ConfigurationError, match="timeout"):
        bus.client("calc", timeout=0)
    with pytest.raises(ConfigurationError, match="retries"):
        bus.client("calc", retries=-1)
    with pytest.raises(ConfigurationError, match="service name"):
        bus.client("")
    async with bus:
        with pytest.raises(ConfigurationError, match="timeout"):
            await bus.client("calc").call("x", {}, timeout=-1)


async def test_an_undeliverable_node_is_skipped_and_marked() -> None:
    where = url()
    nodes = [node(where), node(where)]
    refused = nodes[0].node_id

    async def refuse(message: Message, call_next: Next) -> object:
        if message.topic.endswith(refused):
            raise UndeliverableError("nobody listens there (simulated)")
        return await call_next(message)

    client = EventBus(where, publish_middleware=[refuse])
    async with nodes[0], nodes[1], client:
        await wait_for_nodes(client.registry, "calc", 2, timeout=5)
        calc = client.client("calc", selector="round_robin")
        answers = [await calc.call("whoami", {}, timeout=5) for _ in range(6)]
        assert set(answers) == {nodes[1].node_id}
        (bad,) = (n for n in await calc.nodes() if n.id == refused)
        assert calc.selector.is_marked(bad)
        # With no other node to go to, the broker's error comes through as it is.
        only = client.client("calc", selector=Selector(filter=lambda n: n.id == refused))
        with pytest.raises(UndeliverableError, match="simulated"):
            await only.call("whoami", {}, timeout=5, retries=2)


async def test_timeouts_name_every_node_tried() -> None:
    where = url()
    hung = [EventBus(where, name="slow", shutdown_timeout=0.1) for _ in range(2)]
    for bus in hung:

        @bus.subscriber("slow.wait", group="slow", concurrency=4)
        async def wait(request: dict[str, object]) -> None:
            await asyncio.Event().wait()

    client = EventBus(where)
    async with hung[0], hung[1], client:
        await wait_for_nodes(client.registry, "slow", 2, timeout=5)
        slow = client.client("slow")
        with pytest.raises(RequestTimeout) as one:
            await slow.call("wait", {}, timeout=0.1, retries=0)
        with pytest.raises(RequestTimeout) as both:
            await slow.call("wait", {}, timeout=0.1, retries=1)
    assert "0.1s" in str(one.value)
    assert all(bus.node_id in str(both.value) for bus in hung), "both nodes were tried"
    assert isinstance(both.value, TimeoutError)


async def test_least_outstanding_spreads_calls_in_flight() -> None:
    where = url()
    release = asyncio.Event()
    nodes = [EventBus(where, name="calc") for _ in range(2)]
    for bus in nodes:

        def serve(bus: EventBus) -> None:
            @bus.subscriber("calc.hold", group="calc", concurrency=10)
            async def hold(request: dict[str, object]) -> str:
                await release.wait()
                return bus.node_id

        serve(bus)
    client = EventBus(where)
    async with nodes[0], nodes[1], client:
        await wait_for_nodes(client.registry, "calc", 2, timeout=5)
        calc = client.client("calc", selector="least_outstanding")
        calls = [asyncio.create_task(calc.call("hold", {}, timeout=5)) for _ in range(10)]
        await asyncio.sleep(0)  # let every call pick its node
        release.set()
        answers = await asyncio.gather(*calls)
    assert Counter(answers) == {nodes[0].node_id: 5, nodes[1].node_id: 5}
    assert calc.selector.outstanding == {}


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_node_calls_keep_the_endpoints_concurrency(concurrency: int) -> None:
    where = url()
    server = EventBus(where, name="calc")
    running = 0
    peak = 0

    @server.subscriber("calc.work", group="calc", concurrency=concurrency)
    async def work(request: dict[str, object]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    client = EventBus(where)
    async with server, client:
        calc = client.client("calc")
        await asyncio.gather(*(calc.call("work", {}, timeout=5) for _ in range(12)))
    assert peak == concurrency


async def test_headers_raw_replies_and_a_lazy_start() -> None:
    where = url()
    server = EventBus(where, name="calc")

    @server.subscriber("calc.echo", group="calc")
    async def echo(request: dict[str, object], msg: Message) -> dict[str, object]:
        return {"tenant": msg.headers.get("x-tenant"), "topic": msg.topic}

    client = EventBus(where)
    async with server:
        raw = await client.client("calc").call(
            "echo", {}, timeout=5, headers={"x-tenant": "acme"}, response_type=Message
        )
        assert client.is_running, "the first call starts the bus"
        await client.close()
    assert isinstance(raw, Message)
    assert raw.body == b'{"tenant":"acme","topic":"calc.echo"}'


async def test_an_endpoint_added_at_runtime_is_announced_and_callable() -> None:
    where = url()
    server = node(where)
    client = EventBus(where)
    async with server, client:
        await wait_for_nodes(client.registry, "calc", 1, timeout=5)

        async def double(n: int) -> int:
            return 2 * n

        with client.registry.watch() as events:
            await server.subscribe("calc.double", double, group="calc")
            async with asyncio.timeout(5):
                event = await anext(events)
        assert event.kind == "updated"
        assert "calc.double" in event.node.endpoints
        assert await client.client("calc").call("double", 21, timeout=5) == 42


async def test_a_closing_node_finishes_calls_in_flight() -> None:
    where = url()
    started = asyncio.Event()
    server = EventBus(where, name="calc")

    @server.subscriber("calc.slow", group="calc")
    async def slow(request: dict[str, object]) -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "finished"

    client = EventBus(where)
    async with client:
        await server.start()
        call = asyncio.create_task(client.client("calc").call("slow", {}, timeout=5, retries=0))
        await started.wait()
        await server.close()  # goodbye first; the call in flight still gets its answer
        assert await call == "finished"
        assert await client.registry.nodes("calc") == ()


def test_blocking_code_calls_services() -> None:
    from eventbus import BlockingBus

    where = url()
    with BlockingBus(node(where)) as server, BlockingBus(where) as client:
        server.start()
        assert client.call("calc", "whoami", {}, timeout=5) == server.bus.node_id
        with pytest.raises(ServiceNotFound):
            client.call("nothing", "x", {}, timeout=5)
