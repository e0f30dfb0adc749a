"""The registry's view (NodeTable, Watch) and the presence registry, on memory://."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from eventbus import ConfigurationError, EventBus, Message, RemoteError
from eventbus.presence import PRESENCE_TOPIC, PresenceRegistry
from eventbus.registry import Node, NodeTable, Registry, RegistryEvent, Watch, wait_for_nodes
from tests.helpers import Inbox


def node(node_id: str, service: str = "calc", **fields: object) -> Node:
    return Node(service, node_id, f"eventbus.node.{node_id}", **fields)  # type: ignore[arg-type]


def url() -> str:
    return f"memory://unit-{uuid.uuid4().hex}"


async def test_table_emits_added_updated_removed_and_keeps_tuples_stable() -> None:
    table = NodeTable()
    with Watch(table) as events:
        table.upsert(node("a"), ttl=60)
        first = table.nodes("calc")
        table.upsert(node("a"), ttl=60)  # a heartbeat: nothing changed
        assert table.nodes("calc") is first, "unchanged nodes keep the same tuple"
        table.upsert(node("b"), ttl=60)
        table.upsert(node("a", version="2"), ttl=60)
        table.remove("b", "goodbye")
        assert table.remove("b", "goodbye") is None
        got = [await anext(events) for _ in range(4)]
    assert [(e.kind, e.node.id, e.reason) for e in got] == [
        ("added", "a", ""),
        ("added", "b", ""),
        ("updated", "a", ""),
        ("removed", "b", "goodbye"),
    ]
    assert table.nodes("calc") == (node("a", version="2"),)
    assert table.services() == ["calc"]


async def test_table_expires_nodes_past_their_ttl() -> None:
    table = NodeTable()
    with Watch(table) as events:
        table.upsert(node("short"), ttl=0.05)
        table.upsert(node("long"), ttl=60)
        async with asyncio.timeout(5):
            added = [await anext(events), await anext(events)]
            removed = await anext(events)
    assert [e.kind for e in added] == ["added", "added"]
    assert (removed.kind, removed.node.id, removed.reason) == ("removed", "short", "expired")
    assert [n.id for n in table.nodes("calc")] == ["long"]
    table.clear()


async def test_a_refreshed_node_outlives_its_first_ttl() -> None:
    table = NodeTable()
    table.upsert(node("a"), ttl=0.2)
    for _ in range(5):
        await asyncio.sleep(0.1)  # heartbeats of a live node, each within the TTL
        table.upsert(node("a"), ttl=0.2)
    assert [n.id for n in table.nodes("calc")] == ["a"]
    assert await table.wait(lambda: not table.nodes("calc"), timeout=5)
    table.clear()


async def test_watch_ends_when_the_table_clears() -> None:
    table = NodeTable()
    events = Watch(table)
    table.clear()
    assert [e async for e in events] == []


async def test_presence_settings_are_checked() -> None:
    bus = EventBus(url())
    with pytest.raises(ConfigurationError, match="heartbeat"):
        PresenceRegistry(bus, heartbeat=0)
    with pytest.raises(ConfigurationError, match="ttl"):
        PresenceRegistry(bus, heartbeat=5, ttl=5)
    with pytest.raises(ConfigurationError, match="ttl"):
        PresenceRegistry(bus, heartbeat=5, ttl=10**9)
    with pytest.raises(ConfigurationError, match="default registry"):
        EventBus(url(), registry=PresenceRegistry(bus), heartbeat=1.0)
    registry = PresenceRegistry(bus, heartbeat=2.0)
    assert registry.ttl == 6.0
    assert isinstance(registry, Registry)


async def test_a_named_bus_announces_heartbeats_and_says_goodbye() -> None:
    where = url()
    watcher = EventBus(where)
    seen = Inbox()
    async with watcher:
        await watcher.broker.subscribe(PRESENCE_TOPIC, seen.put, durable=False)
        node_bus = EventBus(where, name="calc", version="3", metadata={"zone": "a"}, heartbeat=0.05)
        async with node_bus:
            local = await node_bus.registry.nodes("calc")
            assert [n.id for n in local] == [node_bus.node_id], "a node sees itself at once"
            await seen.wait_until(
                lambda: sum(b'"announce"' in m.body for m in seen.messages) >= 3,
                timeout=5,
                what="a start announcement and two heartbeats",
            )
        bodies = [orjson.loads(m.body) for m in seen.messages]
    kinds = [b["kind"] for b in bodies]
    assert kinds[0] == "query", "a starting node asks the others to announce"
    assert kinds[-1] == "goodbye"
    announce = next(b for b in bodies if b["kind"] == "announce")
    assert announce["service"] == "calc"
    assert announce["node"] == node_bus.node_id
    assert announce["version"] == "3"
    assert announce["metadata"] == {"zone": "a"}
    assert announce["ttl"] == pytest.approx(0.15)
    assert all(m.content_type == "application/json" for m in seen.messages)


async def test_queries_are_answered_by_every_node() -> None:
    where = url()
    nodes = [EventBus(where, name=f"svc{i}") for i in range(3)]
    for bus in nodes:
        await bus.start()
    try:
        late = EventBus(where)
        async with late:
            # The view converges from the answers to the start query, not a heartbeat.
            registry = late.registry
            assert await registry.services() == ["svc0", "svc1", "svc2"]
    finally:
        for bus in nodes:
            await bus.close()


async def test_an_unnamed_bus_only_watches_when_asked() -> None:
    where = url()
    bus = EventBus(where)
    async with bus:
        registry = bus.registry
        assert isinstance(registry, PresenceRegistry)
        assert registry._subscription is None, "no presence subscription until a lookup"
        assert await registry.nodes("nothing") == ()
        assert registry._subscription is not None


async def test_wait_for_nodes_times_out_with_a_clear_message() -> None:
    bus = EventBus(url())
    async with bus:
        with pytest.raises(TimeoutError, match="has 0 live node"):
            await wait_for_nodes(bus.registry, "ghost", 1, timeout=0.6)


async def test_closing_the_bus_ends_watches_and_clears_the_view() -> None:
    bus = EventBus(url(), name="calc")
    await bus.start()
    events = bus.registry.watch()
    await bus.close()
    remaining: list[RegistryEvent] = [e async for e in events]
    assert [e.kind for e in remaining] == ["removed"], "its own goodbye, then the end"
    assert await bus.registry.nodes("calc") == ()


async def test_a_goodbye_is_best_effort_when_the_broker_is_gone() -> None:
    bus = EventBus(url(), name="calc", heartbeat=0.05)
    await bus.start()
    await bus.broker.close()  # the connection dies under the bus
    await bus.close()  # the goodbye fails; close still completes
    assert not bus.is_running


async def test_presence_from_plain_clients_is_read_too() -> None:
    where = url()
    bus = EventBus(where)
    async with bus:
        await bus.registry.start()
        body = orjson.dumps({"kind": "announce", "service": "legacy", "node": "n-1", "ttl": 30})
        await bus.broker.publish(Message(PRESENCE_TOPIC, body), durable=False)  # no content type
        (found,) = await wait_for_nodes(bus.registry, "legacy", 1, timeout=5)
    assert found.address == "eventbus.node.n-1"
    assert found.started is None


async def test_a_bus_restarted_after_close_registers_again() -> None:
    where = url()
    bus = EventBus(where, name="calc")
    await bus.start()
    await bus.close()
    bus.use_broker(None)  # how TestBus reuses one app bus across tests
    async with bus:
        assert [n.id for n in await bus.registry.nodes("calc")] == [bus.node_id]
        with pytest.raises(RemoteError, match="EndpointNotFound"):  # its node topic answers
            await bus.client("calc").call("missing", {}, timeout=5, retries=0)
