"""The service registry: which nodes of which service are alive, and where to reach them.

`Registry` is the contract callers use (`EventBus.registry`, `Client`, the CLI). The
default implementation, `eventbus.presence.PresenceRegistry`, carries presence on the
bus itself (topic ``eventbus.presence``); another backend (etcd, Consul...) implements
the same protocol and is passed as ``EventBus(registry=...)`` without changing callers.

Every implementation keeps a local view current (Go Micro's cache registry): reads
cost a dictionary lookup once the view is warm. `NodeTable` is that view, with expiry
and change events, for implementations to share.

Example:
    >>> async def show(bus) -> None:
    ...     for name in await bus.registry.services():
    ...         for node in await bus.registry.nodes(name):
    ...             print(name, node.id, node.version, sorted(node.endpoints))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "Node",
    "NodeTable",
    "Registry",
    "RegistryEvent",
    "Watch",
    "wait_for_nodes",
]

EventKind = Literal["added", "updated", "removed"]


@dataclass(frozen=True, slots=True)
class Node:
    """One running instance of a service, as the registry knows it. Immutable.

    Attributes:
        service: The service's name (the bus's ``name``).
        id: The node id (the bus's ``node_id``), unique per running bus.
        address: The topic where the node takes node-addressed calls.
        version: The service version the node announced.
        endpoints: The topics the node serves.
        metadata: Free-form labels the node announced (region, zone, ...).
        started: When the node started (its own clock, UTC); ``None`` if unknown.
    """

    service: str
    id: str
    address: str
    version: str = ""
    endpoints: frozenset[str] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)
    started: datetime | None = field(default=None, compare=False)

    def __hash__(self) -> int:
        return hash((self.service, self.id))


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """A change in the registry's view.

    Attributes:
        kind: ``"added"`` (a new node), ``"updated"`` (a known node announced a
            different version, endpoints or metadata) or ``"removed"``.
        node: The node as it is now (for ``removed``: as it was last known).
        reason: For ``removed``: ``"goodbye"`` (it closed) or ``"expired"`` (its TTL
            passed without a heartbeat). Empty otherwise.
    """

    kind: EventKind
    node: Node
    reason: str = ""


@runtime_checkable
class Registry(Protocol):
    """Where services register their nodes and clients find them.

    Reads are served from a local view the implementation keeps current, so they
    are cheap enough for every call. A registry is bound to one bus; the bus starts
    it when it announces a node, and reads start it on first use.
    """

    async def start(self) -> None:
        """Begin keeping the view current. Idempotent.

        Raises:
            BrokerUnavailable: the backend cannot be reached.
        """
        ...

    async def close(self) -> None:
        """Deregister what it registered, stop watching, end every `watch`. Idempotent."""
        ...

    async def register(self, node: Node) -> None:
        """Publish ``node`` as alive and keep it alive until `deregister`.

        Registering the same node id again replaces its description (new endpoints).
        """
        ...

    async def deregister(self, node: Node) -> None:
        """Remove ``node`` at once (the graceful goodbye). Best effort; never raises."""
        ...

    async def services(self) -> list[str]:
        """The names of the services with at least one live node, sorted.

        Right after start this waits until the view has settled.
        """
        ...

    async def nodes(self, service: str) -> tuple[Node, ...]:
        """The live nodes of ``service`` (empty if none), ordered by node id.

        Returns the same tuple object while the service's nodes do not change, so
        callers can cache what they derive from it. Right after start, an unknown
        service is waited for until the view has settled.
        """
        ...

    def watch(self) -> AsyncIterator[RegistryEvent]:
        """Changes from now on: ``added``, ``updated`` and ``removed`` events, in order.

        The returned iterator is registered before this returns, so no change the
        registry sees after a `nodes` snapshot is missed; a registry not started yet
        starts on the first iteration (and sees changes from then on). It ends when
        the registry closes.
        """
        ...


class Watch:
    """An async iterator of `RegistryEvent`, fed by a `NodeTable`.

    Use it as ``with registry.watch() as events: async for event in events: ...``
    (or close it with `close`): an unclosed watch keeps queueing events.
    """

    def __init__(
        self, table: NodeTable, before_first: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._table = table
        self._queue: asyncio.Queue[RegistryEvent | None] = asyncio.Queue()
        self._before_first = before_first
        self._closed = False
        table.watches.append(self)

    def put(self, event: RegistryEvent | None) -> None:
        if not self._closed:
            self._queue.put_nowait(event)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> RegistryEvent:
        if self._before_first is not None:
            first, self._before_first = self._before_first, None
            if not self._closed:
                await first()
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop receiving events; a pending `__anext__` ends the iteration. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):
            self._table.watches.remove(self)
        self._queue.put_nowait(None)

    async def aclose(self) -> None:
        """`close`, for ``contextlib.aclosing`` and friends."""
        self.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NodeTable:
    """The live view of a registry: nodes by service, expiry past each node's TTL, events.

    Not thread-safe; used from the loop of its bus. Expiry is one timer set for the
    earliest deadline (not a poll), so a node disappears when its TTL passes.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[Node, float]] = {}  # id -> (node, expires at, loop time)
        self._by_service: dict[str, tuple[Node, ...]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self.watches: list[Watch] = []

    def nodes(self, service: str) -> tuple[Node, ...]:
        """The live nodes of ``service`` (the same tuple until they change)."""
        return self._by_service.get(service, ())

    def services(self) -> list[str]:
        """Names of the services with live nodes, sorted."""
        return sorted(self._by_service)

    def get(self, node_id: str) -> Node | None:
        """The node with this id, if it is alive."""
        found = self._nodes.get(node_id)
        return None if found is None else found[0]

    def upsert(self, node: Node, ttl: float) -> None:
        """Record that ``node`` is alive for ``ttl`` more seconds; emit added/updated on change."""
        loop = asyncio.get_running_loop()
        expires = loop.time() + ttl
        known = self._nodes.get(node.id)
        self._nodes[node.id] = (node, expires)
        if known is None:
            self._rebuild(node.service)
            self._emit(RegistryEvent("added", node))
        elif known[0] != node:
            self._rebuild(node.service)
            if known[0].service != node.service:
                self._rebuild(known[0].service)
            self._emit(RegistryEvent("updated", node))
        # A refreshed node only expires later: the timer then fires early and re-arms.
        if self._timer is None or expires < self._timer.when():
            self._arm(loop, expires)

    def remove(self, node_id: str, reason: str) -> Node | None:
        """Forget a node now; emit ``removed``. Returns it, or ``None`` if unknown."""
        found = self._nodes.pop(node_id, None)
        if found is None:
            return None
        node = found[0]
        self._rebuild(node.service)
        self._emit(RegistryEvent("removed", node, reason))
        return node

    def clear(self) -> None:
        """Forget everything without events (the registry closed); end every watch."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._nodes.clear()
        self._by_service.clear()
        for watch in list(self.watches):
            watch.close()
        for _, future in self._waiters:
            if not future.done():
                future.set_result(None)

    async def wait(self, reached: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``reached()`` holds after a change, for up to ``timeout`` s; return it."""
        if reached():
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (reached, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
        return reached()

    def _rebuild(self, service: str) -> None:
        found = sorted(
            (node for node, _ in self._nodes.values() if node.service == service),
            key=lambda n: n.id,
        )
        if found:
            self._by_service[service] = tuple(found)
        else:
            self._by_service.pop(service, None)

    def _emit(self, event: RegistryEvent) -> None:
        for watch in self.watches:
            watch.put(event)
        for reached, future in self._waiters:
            if not future.done() and reached():
                future.set_result(None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for node_id, (_, expires) in list(self._nodes.items()):
            if expires <= now:
                self.remove(node_id, "expired")
        if self._nodes:
            self._arm(loop, min(expires for _, expires in self._nodes.values()))


async def wait_for_nodes(
    registry: Registry, service: str, count: int = 1, *, timeout: float = 10.0
) -> tuple[Node, ...]:
    """Wait until ``service`` has at least ``count`` live nodes (``count=0``: none left).

    Works with any `Registry`: it reads a snapshot, then follows `Registry.watch`.

    Returns:
        The service's nodes at that moment.

    Raises:
        TimeoutError: the count was not reached within ``timeout`` seconds.
    """

    def reached(nodes: tuple[Node, ...]) -> bool:
        return len(nodes) >= count if count > 0 else not nodes

    events = registry.watch()
    try:
        async with asyncio.timeout(timeout):
            nodes = await registry.nodes(service)
            while not reached(nodes):
                event = await anext(events)
                if event.node.service == service:
                    nodes = await registry.nodes(service)
    except (TimeoutError, StopAsyncIteration):
        have = len(await registry.nodes(service))
        raise TimeoutError(
            f"service {service!r} has {have} live node(s) after {timeout:g}s; wanted "
            + (f"at least {count}" if count > 0 else "none")
        ) from None
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    return nodes
