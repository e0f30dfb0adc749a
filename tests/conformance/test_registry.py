"""The service registry, client-side load balancing and RPC services, on every broker.

Each test uses a fresh service name and short heartbeats. A node "crash" is the broker
connection going away under a running bus (`crash`): no goodbye is said and no
heartbeat gets out any more, which is what a killed process looks like to the others.
The SIGKILL test runs a real subprocess on network brokers; memory:// cannot be shared
across processes, so there it crashes an in-process node the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel

from eventbus import EventBus, Message, RemoteError, RequestTimeout, ServiceNotFound
from eventbus.message import DEADLINE
from eventbus.presence import PRESENCE_TOPIC, PresenceRegistry
from eventbus.registry import Node, RegistryEvent, wait_for_nodes
from eventbus.tracing import trace, trace_id
from tests.conformance.conftest import BROKER_OPTIONS, MakeBus

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0  # seconds any single expected event may take on a slow broker


@pytest.fixture
def service(topic: str) -> str:
    """A fresh service name under the test's topic, so the clean-up finds its topics."""
    return f"{topic}.svc"


def make_node(make_bus: MakeBus, service: str, **settings: object) -> EventBus:
    """A node of ``service`` whose endpoint ``whoami`` answers with its node id."""
    bus = make_bus(name=service, **settings)

    @bus.subscriber(f"{service}.whoami", group=service, concurrency=8)
    async def whoami(request: dict[str, object]) -> dict[str, str]:
        return {"node": bus.node_id}

    return bus


async def start(*buses: EventBus) -> None:
    """Start buses and their registries at once (on Kafka each subscription is a group join).

    The ``make_bus`` fixture closes them after the test.
    """

    async def up(bus: EventBus) -> None:
        await bus.start()
        await bus.registry.start()

    await asyncio.gather(*(up(bus) for bus in buses))


async def crash(bus: EventBus) -> None:
    """The bus's process 'dies': its broker connection closes, no goodbye is said."""
    await bus.broker.close()


async def next_removal(events: object, node_id: str, timeout: float) -> RegistryEvent:
    async with asyncio.timeout(timeout):
        async for event in events:  # type: ignore[attr-defined]
            if event.kind == "removed" and event.node.id == node_id:
                assert isinstance(event, RegistryEvent)
                return event
    raise AssertionError("the watch ended before the node was removed")


async def test_two_nodes_appear_within_one_heartbeat(make_bus: MakeBus, service: str) -> None:
    heartbeat = 3.0
    first = make_node(make_bus, service, heartbeat=heartbeat, version="1.2.0", metadata={"z": "a"})
    second = make_node(make_bus, service, heartbeat=heartbeat, version="1.2.0")
    client = make_bus()
    await first.start()  # announced before the client watches: found by its query
    await client.start()
    await client.registry.start()
    await second.start()  # announced after: seen from its start announcement
    nodes = await wait_for_nodes(client.registry, service, 2, timeout=heartbeat)
    assert {n.id for n in nodes} == {first.node_id, second.node_id}
    by_id = {n.id: n for n in nodes}
    node = by_id[first.node_id]
    assert node.service == service
    assert node.version == "1.2.0"
    assert node.endpoints == frozenset({f"{service}.whoami"})
    assert node.metadata == {"z": "a"}
    assert node.address == f"eventbus.node.{first.node_id}"
    assert node.started is not None
    assert service in await client.registry.services()


async def test_graceful_close_removes_the_node_at_once(make_bus: MakeBus, service: str) -> None:
    # TTL 30 s: only the goodbye can remove the node within the wait below.
    leaving = make_node(make_bus, service, heartbeat=10.0)
    staying = make_node(make_bus, service, heartbeat=10.0)
    client = make_bus()
    await start(leaving, staying, client)
    await wait_for_nodes(client.registry, service, 2, timeout=WAIT)
    with client.registry.watch() as events:
        await leaving.close()
        event = await next_removal(events, leaving.node_id, timeout=5.0)
    assert event.reason == "goodbye"
    assert [n.id for n in await client.registry.nodes(service)] == [staying.node_id]


async def test_killed_node_disappears_within_its_ttl(
    make_bus: MakeBus, url: str, broker_name: str, service: str
) -> None:
    heartbeat = 0.5
    ttl = 3 * heartbeat
    client = make_bus()
    await client.start()
    if broker_name == "memory":
        # memory:// lives in one process: crash an in-process node instead of SIGKILL.
        node = make_node(make_bus, service, heartbeat=heartbeat)
        await node.start()
        node_id = node.node_id
        await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
        with client.registry.watch() as events:
            await crash(node)
            event = await next_removal(events, node_id, timeout=ttl + 1.0)
    else:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.conformance.node_process",
            url,
            broker_name,
            service,
            str(heartbeat),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(60):
                line = (await proc.stdout.readline()).decode().split()
            assert line[:1] == ["ready"], f"the node process failed to start: {line}"
            node_id = line[1]
            nodes = await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
            assert [n.id for n in nodes] == [node_id]
            assert await client.client(service).call("ping", {}, timeout=10) == {
                "pid": proc.pid,
                "node": node_id,
            }
            with client.registry.watch() as events:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                event = await next_removal(events, node_id, timeout=ttl + 1.0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert event.reason == "expired"
    assert await client.registry.nodes(service) == ()


async def test_round_robin_splits_calls_evenly(make_bus: MakeBus, service: str) -> None:
    nodes = [make_node(make_bus, service), make_node(make_bus, service)]
    client = make_bus()
    await start(nodes[0], nodes[1], client)
    await wait_for_nodes(client.registry, service, 2, timeout=WAIT)
    calc = client.client(service, selector="round_robin")
    replies = await asyncio.gather(*(calc.call("whoami", {}, timeout=WAIT) for _ in range(200)))
    assert Counter(r["node"] for r in replies) == {nodes[0].node_id: 100, nodes[1].node_id: 100}


async def test_random_spreads_calls(make_bus: MakeBus, service: str) -> None:
    nodes = [make_node(make_bus, service), make_node(make_bus, service)]
    client = make_bus()
    await start(nodes[0], nodes[1], client)
    await wait_for_nodes(client.registry, service, 2, timeout=WAIT)
    calc = client.client(service)
    replies = await asyncio.gather(*(calc.call("whoami", {}, timeout=WAIT) for _ in range(200)))
    counts = Counter(r["node"] for r in replies)
    assert sum(counts.values()) == 200
    assert counts[nodes[0].node_id] >= 60, counts
    assert counts[nodes[1].node_id] >= 60, counts


async def test_call_fails_over_when_the_node_dies_mid_call(make_bus: MakeBus, service: str) -> None:
    stuck: asyncio.Future[EventBus] = asyncio.get_running_loop().create_future()
    nodes: list[EventBus] = []
    for _ in range(2):
        bus = make_bus(name=service, shutdown_timeout=0.5)

        def serve(bus: EventBus) -> None:
            @bus.subscriber(f"{service}.work", group=service, concurrency=4)
            async def work(request: dict[str, int]) -> dict[str, object]:
                if not stuck.done():  # the first node called hangs, then dies
                    stuck.set_result(bus)
                    await asyncio.Event().wait()
                return {"node": bus.node_id, "n": request["n"]}

        serve(bus)
        nodes.append(bus)
    client = make_bus()
    await start(nodes[0], nodes[1], client)
    await wait_for_nodes(client.registry, service, 2, timeout=WAIT)
    call = asyncio.create_task(
        client.client(service).call("work", {"n": 7}, timeout=2.0, retries=1)
    )
    async with asyncio.timeout(WAIT):
        dead = await stuck
    await crash(dead)
    reply = await call
    (alive,) = (n for n in nodes if n is not dead)
    assert reply == {"node": alive.node_id, "n": 7}


async def test_unknown_service_fails_fast(make_bus: MakeBus, service: str) -> None:
    node = make_node(make_bus, service)
    client = make_bus()
    await start(node, client)
    await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
    with pytest.raises(ServiceNotFound) as caught:
        await client.client(f"{service}-missing").call("whoami", {}, timeout=30)
    message = str(caught.value)
    assert f"{service}-missing" in message
    assert service in message, "the error lists the services that do exist"


async def test_unknown_endpoint_is_a_clear_remote_error(make_bus: MakeBus, service: str) -> None:
    node = make_node(make_bus, service)
    client = make_bus()
    await start(node, client)
    await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
    with pytest.raises(RemoteError) as caught:
        await client.client(service).call("divide", {"a": 1}, timeout=WAIT, retries=0)
    assert caught.value.remote_type == "EndpointNotFound"
    assert f"{service}.divide" in caught.value.remote_message
    assert f"{service}.whoami" in caught.value.remote_message, "it says what the node serves"


async def test_remote_error_keeps_type_and_message(make_bus: MakeBus, service: str) -> None:
    node = make_bus(name=service)

    @node.subscriber(f"{service}.divide", group=service)
    async def divide(request: dict[str, int]) -> float:
        return request["a"] / request["b"]

    client = make_bus()
    await start(node, client)
    await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
    calc = client.client(service)
    assert await calc.call("divide", {"a": 6, "b": 3}, timeout=WAIT) == 2.0
    with pytest.raises(RemoteError) as caught:
        await calc.call("divide", {"a": 1, "b": 0}, timeout=WAIT)
    assert caught.value.remote_type == "ZeroDivisionError"
    assert caught.value.remote_message == "division by zero"
    assert "Traceback" not in str(caught.value)


class HelloRequest(BaseModel):
    name: str


class HelloReply(BaseModel):
    message: str


class Greeter:
    def __init__(self) -> None:
        self.traces: list[str | None] = []

    async def hello(self, request: HelloRequest) -> HelloReply:
        self.traces.append(trace_id())
        return HelloReply(message=f"Hello {request.name}")

    def _helper(self) -> None:
        raise AssertionError("private methods are not endpoints")


async def test_class_service_and_shared_trace_id(make_bus: MakeBus, service: str) -> None:
    server = make_bus(name=service, version="1.0.0")
    greeter = server.service(Greeter())
    client = make_bus()
    await start(server, client)
    nodes = await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
    assert nodes[0].endpoints == frozenset({f"{service}.hello"})
    with trace() as context:
        reply = await client.client(service).call(
            "hello", HelloRequest(name="World"), timeout=WAIT, response_type=HelloReply
        )
    assert reply == HelloReply(message="Hello World")
    # The endpoint is an ordinary topic too: plain requests reach the service's group.
    plain = await client.request(f"{service}.hello", {"name": "Ann"}, timeout=WAIT)
    assert plain == {"message": "Hello Ann"}
    assert greeter.traces[0] == context.trace_id, "callee logs share the caller's trace id"


async def test_malformed_presence_is_ignored(
    make_bus: MakeBus, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(make_bus, service)
    client = make_bus()
    good = {"kind": "announce", "service": service, "node": "fake1", "ttl": 60.0}
    bad: list[bytes] = [
        b"\x00\xff\xfe not json at all",
        b"[]",
        b'{"kind": "announce"}',
        b'{"kind": "explode", "node": "x"}',
        orjson.dumps({**good, "service": 5}),
        orjson.dumps({**good, "ttl": -1}),
        orjson.dumps({**good, "ttl": 1e12}),
        orjson.dumps({**good, "ttl": "60"}),
        orjson.dumps({**good, "node": "../../etc/passwd"}),
        orjson.dumps({**good, "endpoints": ["e"] * 5000}),
        orjson.dumps({**good, "metadata": {"k": 1}}),
        orjson.dumps({**good, "node": node.node_id, "ttl": 0}),  # impersonation, absurd TTL
        orjson.dumps({"kind": "goodbye", "service": 7, "node": node.node_id}),
    ]
    await start(node, client)
    await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
    before = await client.registry.nodes(service)
    registry = client.registry
    assert isinstance(registry, PresenceRegistry)
    caplog.set_level(logging.WARNING, logger="eventbus.registry")
    for body in bad:
        # One key: on partitioned brokers the sentinel below comes after the garbage.
        await client.broker.publish(Message(PRESENCE_TOPIC, body, key="p"), durable=False)
    # A goodbye naming the wrong service is well-formed but must not remove the node.
    wrong = {"kind": "goodbye", "service": "other", "node": node.node_id}
    await client.broker.publish(
        Message(PRESENCE_TOPIC, orjson.dumps(wrong), key="p"), durable=False
    )
    await client.broker.publish(Message(PRESENCE_TOPIC, orjson.dumps(good), key="p"), durable=False)
    nodes = await wait_for_nodes(registry, service, 2, timeout=WAIT)
    assert registry.rejected == len(bad)
    assert before[0] in nodes
    (real,) = (n for n in nodes if n.id == node.node_id)
    assert real == before[0], "the real node is untouched"
    goodbye = {"kind": "goodbye", "service": service, "node": "fake1"}
    with registry.watch() as events:
        await client.broker.publish(
            Message(PRESENCE_TOPIC, orjson.dumps(goodbye), key="p"), durable=False
        )
        await next_removal(events, "fake1", timeout=WAIT)
    assert await client.client(service).call("whoami", {}, timeout=WAIT) == {"node": node.node_id}
    warnings = [r for r in caplog.records if "malformed presence" in r.getMessage()]
    assert warnings, "a rejected presence message is logged"


async def test_late_reply_is_dropped_quietly(
    make_bus: MakeBus, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    node = make_bus(name=service)

    @node.subscriber(f"{service}.slow", group=service, concurrency=2)
    async def slow(request: dict[str, int]) -> dict[str, int]:
        if request["n"] == 1:
            await release.wait()
        return request

    dropped = asyncio.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "dropped a late or unknown reply" in record.getMessage():
                dropped.set()

    spy = Spy(level=logging.DEBUG)
    logger = logging.getLogger("eventbus")
    logger.addHandler(spy)
    caplog.set_level(logging.DEBUG, logger="eventbus")
    client = make_bus()
    try:
        await start(node, client)
        await wait_for_nodes(client.registry, service, 1, timeout=WAIT)
        calc = client.client(service)
        assert await calc.call("slow", {"n": 0}, timeout=WAIT) == {"n": 0}
        with pytest.raises(RequestTimeout):
            # The deadline header is widened so the node answers after we gave up.
            await calc.call("slow", {"n": 1}, timeout=0.3, retries=0, headers={DEADLINE: "60000"})
        release.set()
        (sub,) = node.subscribers
        await sub.wait_for(processed=2, timeout=WAIT)
        async with asyncio.timeout(WAIT):
            await dropped.wait()
        assert await calc.call("slow", {"n": 2}, timeout=WAIT) == {"n": 2}
    finally:
        logger.removeHandler(spy)
    noisy = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith("eventbus")
        and "reply" in r.getMessage()
    ]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_watch_reports_added_updated_removed(make_bus: MakeBus, service: str) -> None:
    node = make_node(make_bus, service)
    client = make_bus()
    await client.start()
    await client.registry.start()  # an unnamed bus watches presence from here on
    seen: list[tuple[str, Node]] = []
    with client.registry.watch() as events:
        await node.start()

        async def extra(request: dict[str, object]) -> str:
            return "extra"

        await node.subscribe(f"{service}.extra", extra, group=service)
        await node.close()
        async with asyncio.timeout(WAIT):
            async for event in events:
                if event.node.service == service:
                    seen.append((event.kind, event.node))
                if event.kind == "removed" and event.node.service == service:
                    break
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "added"
    assert kinds[-1] == "removed"
    assert "updated" in kinds
    updated = next(n for kind, n in seen if kind == "updated")
    assert updated.endpoints == frozenset({f"{service}.whoami", f"{service}.extra"})


async def test_version_filter_picks_matching_nodes(make_bus: MakeBus, service: str) -> None:
    old = make_node(make_bus, service, version="1.0")
    new = make_node(make_bus, service, version="2.0", metadata={"zone": "b"})
    client = make_bus()
    await start(old, new, client)
    await wait_for_nodes(client.registry, service, 2, timeout=WAIT)
    v2 = client.client(service, version="2.0")
    replies = await asyncio.gather(*(v2.call("whoami", {}, timeout=WAIT) for _ in range(20)))
    assert {r["node"] for r in replies} == {new.node_id}
    zone_b = client.client(service, metadata={"zone": "b"})
    assert await zone_b.call("whoami", {}, timeout=WAIT) == {"node": new.node_id}
    with pytest.raises(ServiceNotFound, match="none passes"):
        await client.client(service, version="3.0").call("whoami", {}, timeout=WAIT)


async def test_cli_lists_services_and_calls_endpoints(
    make_bus: MakeBus,
    url: str,
    broker_name: str,
    service: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from eventbus.cli import main as cli

    options = [
        f"-o{k}={orjson.dumps(v).decode()}" for k, v in BROKER_OPTIONS.get(broker_name, {}).items()
    ]

    def main(argv: list[str]) -> int:
        return cli([*argv, *options])

    server = make_bus(name=service, version="2.1.0")
    server.service(Greeter())
    async with server:
        # The CLI runs its own bus on its own loop (a thread), as from a shell.
        code = await asyncio.to_thread(main, ["services", "--url", url])
        out = capsys.readouterr().out
        assert code == 0
        (line,) = (row for row in out.splitlines() if row.startswith(service))
        assert "2.1.0" in line
        assert server.node_id in line
        assert f"{service}.hello" in line
        assert out.splitlines()[0].split() == ["SERVICE", "VERSION", "NODE", "AGE", "ENDPOINTS"]

        code = await asyncio.to_thread(
            main, ["call", f"{service}.hello", '{"name": "CLI"}', "--url", url, "--timeout", "20"]
        )
        assert code == 0
        assert orjson.loads(capsys.readouterr().out) == {"message": "Hello CLI"}

        code = await asyncio.to_thread(main, ["call", f"{service}.nope", "{}", "--url", url])
        assert code == 1
        assert "EndpointNotFound" in capsys.readouterr().err

        code = await asyncio.to_thread(
            main, ["call", f"{service}.hello", "{not json", "--url", url]
        )
        assert code == 2
        assert "must be JSON" in capsys.readouterr().err

        code = await asyncio.to_thread(main, ["call", "no-such-service.x", "--url", url])
        assert code == 1
        assert "no live service matches" in capsys.readouterr().err
