"""`PresenceRegistry`: the default `Registry`, carried by the bus itself.

Every node announces itself on the fan-out topic ``eventbus.presence`` (no group,
``durable=False``: presence is only worth anything live). Three kinds of JSON
messages travel there::

    {"kind": "announce", "service": "greeter", "node": "9f3c...", "version": "1.0.0",
     "endpoints": ["greeter.hello"], "metadata": {"zone": "a"}, "ttl": 15.0,
     "started": 1767000000.5}
    {"kind": "goodbye", "service": "greeter", "node": "9f3c..."}
    {"kind": "query", "node": "77ab..."}

- A node announces when it starts, then every ``heartbeat`` seconds; it says goodbye
  when it closes. A node that stops announcing drops out when its ``ttl`` passes
  (3 heartbeats by default), so a killed process disappears within its TTL.
- Whoever starts watching sends a query; every node answers with an announce, so a
  new client sees the existing services at once instead of after a heartbeat.
  Queries arriving while an answer is being sent share that answer.
- A node's address (the topic where it takes node-addressed calls) is derived from
  its id: ``eventbus.node.<id>``. It is not on the wire, so no message can point
  callers at another topic.

Every message is validated (pydantic, strict): garbage bytes, wrong fields, a node id
that is not a plain token or an absurd TTL (not in (0, 86400] seconds) are ignored
with a warning and never touch the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from eventbus.broker import Subscription
from eventbus.codecs import JSON
from eventbus.errors import ClosedError, ConfigurationError
from eventbus.message import Message
from eventbus.registry import Node, NodeTable, Watch

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = [
    "MAX_TTL",
    "NODE_TOPIC_PREFIX",
    "PRESENCE_TOPIC",
    "PresenceRegistry",
    "node_address",
]

log = logging.getLogger("eventbus.registry")

PRESENCE_TOPIC = "eventbus.presence"
"""The fan-out topic every node announces itself on."""
NODE_TOPIC_PREFIX = "eventbus.node."
"""A node takes node-addressed calls on ``eventbus.node.<node id>``."""
MAX_TTL = 86_400.0
"""Presence with a longer TTL (a day) is rejected as absurd."""

_WARN_EVERY = 10.0  # seconds between warnings about rejected presence messages


def node_address(node_id: str) -> str:
    """The topic where node ``node_id`` takes node-addressed calls."""
    return NODE_TOPIC_PREFIX + node_id


_Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]
_Short = Annotated[str, StringConstraints(max_length=255)]
_Value = Annotated[str, StringConstraints(max_length=4096)]


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Announce(_Wire):
    kind: Literal["announce"]
    service: _Name
    node: _Token
    version: _Short = ""
    endpoints: Annotated[list[_Name], Field(max_length=1000)] = []
    metadata: Annotated[dict[_Short, _Value], Field(max_length=100)] = {}
    ttl: Annotated[float, Field(gt=0, le=MAX_TTL, allow_inf_nan=False)]
    started: Annotated[float, Field(ge=0, lt=1e11, allow_inf_nan=False)] | None = None


class _Goodbye(_Wire):
    kind: Literal["goodbye"]
    service: _Name
    node: _Token


class _Query(_Wire):
    kind: Literal["query"]
    node: _Token


_PRESENCE: TypeAdapter[_Announce | _Goodbye | _Query] = TypeAdapter(
    Annotated[_Announce | _Goodbye | _Query, Field(discriminator="kind")]
)


class PresenceRegistry:
    """The default `Registry`: presence announced on ``eventbus.presence``.

    Built by the bus (``EventBus(name=..., heartbeat=, ttl=)``); see the module docs
    for the protocol. Reads start watching on first use (an unnamed bus pays for the
    presence subscription only when it looks something up).

    Args:
        bus: The bus whose broker carries presence.
        heartbeat: Seconds between announcements of a registered node (default 5).
        ttl: Seconds a node stays alive without an announcement (default 3 heartbeats).
        settle: Seconds after start during which a lookup of an unknown service waits
            for answers to the start query before concluding it has no nodes
            (default 0.5; after that, unknown services fail at once).

    Raises:
        ConfigurationError: a setting is out of range.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        heartbeat: float = 5.0,
        ttl: float | None = None,
        settle: float = 0.5,
    ) -> None:
        ttl = 3 * heartbeat if ttl is None else ttl
        if not 0 < heartbeat <= MAX_TTL:
            raise ConfigurationError(f"heartbeat must be in (0, {MAX_TTL:g}] s, not {heartbeat!r}")
        if not heartbeat < ttl <= MAX_TTL:
            raise ConfigurationError(
                f"ttl must be longer than the heartbeat ({heartbeat:g}s) and at most "
                f"{MAX_TTL:g}s, not {ttl!r}; 3 heartbeats is usual"
            )
        if settle < 0:
            raise ConfigurationError(f"settle must be >= 0 seconds, not {settle!r}")
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.settle = settle
        self._bus = bus
        self._table = NodeTable()
        self._subscription: Subscription | None = None
        self._starting: asyncio.Lock | None = None
        self._settled_at = 0.0
        self._local: Node | None = None
        self._started = time.time()
        self._beating: asyncio.Task[None] | None = None
        self._answering: asyncio.Task[None] | None = None
        self.rejected = 0
        """Presence messages ignored as malformed (each also logged, at most every 10 s)."""
        self._warned_at = -_WARN_EVERY
        self._closed = False

    def __repr__(self) -> str:
        return f"PresenceRegistry({self._bus!r}, heartbeat={self.heartbeat:g}, ttl={self.ttl:g})"

    # -- reads ---------------------------------------------------------------------------

    async def services(self) -> list[str]:
        """Names of services with live nodes, sorted; waits for the view to settle first."""
        await self._ensure()
        remaining = self._settled_at - asyncio.get_running_loop().time()
        if remaining > 0:
            await asyncio.sleep(remaining)  # answers to the start query are still coming
        return self._table.services()

    async def nodes(self, service: str) -> tuple[Node, ...]:
        """The live nodes of ``service``, ordered by id (the same tuple until they change)."""
        found = self._table.nodes(service)
        if found:
            return found
        await self._ensure()
        remaining = self._settled_at - asyncio.get_running_loop().time()
        if remaining > 0:
            table = self._table
            await table.wait(lambda: bool(table.nodes(service)), remaining)
        return self._table.nodes(service)

    def watch(self) -> Watch:
        """Changes from now on (see `Registry.watch`); starts watching on first iteration."""
        return Watch(self._table, self._ensure)

    def local(self) -> Node | None:
        """The node this registry keeps alive, if any."""
        return self._local

    # -- lifecycle -----------------------------------------------------------------------

    async def _ensure(self) -> None:
        if self._subscription is not None or self._closed:
            return  # a closed registry reads as empty
        if not self._bus.is_running:
            await self._bus.start()  # a named bus starts the registry itself
        await self.start()

    async def start(self) -> None:
        """Subscribe to presence and ask every node to announce. Idempotent.

        Raises:
            ClosedError: the registry was closed.
            BrokerUnavailable: the broker cannot be reached.
        """
        if self._subscription is not None:
            return
        if self._closed:
            raise ClosedError(f"{self!r} was closed")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._subscription is not None:
                return
            self._subscription = await self._bus.broker.subscribe(
                PRESENCE_TOPIC, self._on_presence, durable=False, concurrency=1
            )
            loop = asyncio.get_running_loop()
            self._settled_at = loop.time() + self.settle
            await self._publish({"kind": "query", "node": self._bus.node_id})

    async def register(self, node: Node) -> None:
        """Announce ``node`` now and every heartbeat until `deregister` or `close`.

        Registering again (new endpoints) re-announces at once.

        Raises:
            BrokerUnavailable: the first announcement could not be published.
        """
        await self.start()
        self._local = node
        self._table.upsert(node, self.ttl)  # see ourselves without the round trip
        await self._announce()
        if self._beating is None:
            self._beating = asyncio.create_task(
                self._beat(), name=f"eventbus:heartbeat:{node.service}"
            )

    async def deregister(self, node: Node) -> None:
        """Stop the heartbeat and say goodbye; best effort (a dead broker is logged)."""
        if self._local is None or self._local.id != node.id:
            return
        self._local = None
        for task in (self._beating, self._answering):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._beating = self._answering = None
        self._table.remove(node.id, "goodbye")
        try:
            await self._publish({"kind": "goodbye", "service": node.service, "node": node.id})
        except Exception as exc:
            log.warning("could not say goodbye for node %s of %r: %s", node.id, node.service, exc)

    async def close(self) -> None:
        """Say goodbye (if registered), leave the presence topic, end every watch. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            await self.deregister(self._local)
        sub, self._subscription = self._subscription, None
        if sub is not None:
            await sub.close()
        self._table.clear()

    # -- presence protocol -----------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._announce()
            except Exception as exc:  # an outage must not end the heartbeat
                log.warning("presence heartbeat failed: %s: %s", type(exc).__name__, exc)

    async def _announce(self) -> None:
        node = self._local
        if node is None:
            return
        started = node.started.timestamp() if node.started is not None else self._started
        await self._publish(
            {
                "kind": "announce",
                "service": node.service,
                "node": node.id,
                "version": node.version,
                "endpoints": sorted(node.endpoints),
                "metadata": dict(node.metadata),
                "ttl": self.ttl,
                "started": started,
            }
        )

    async def _publish(self, payload: Mapping[str, object]) -> None:
        message = Message(
            PRESENCE_TOPIC, orjson.dumps(payload), content_type=JSON, source=self._bus.source
        )
        await self._bus.broker.publish(message, durable=False)

    async def _on_presence(self, message: Message) -> None:
        try:
            event = _PRESENCE.validate_json(message.body)
        except ValidationError as exc:
            self._reject(message, exc)
            return
        if isinstance(event, _Announce):
            started = None
            if event.started is not None:
                started = datetime.fromtimestamp(event.started, UTC)
            node = Node(
                event.service,
                event.node,
                node_address(event.node),
                event.version,
                frozenset(event.endpoints),
                event.metadata,
                started,
            )
            self._table.upsert(node, event.ttl)
        elif isinstance(event, _Goodbye):
            known = self._table.get(event.node)
            if known is not None and known.service == event.service:
                self._table.remove(event.node, "goodbye")
        elif (
            self._local is not None
            and event.node != self._bus.node_id
            and self._answering is None  # queries arriving meanwhile share the answer
        ):
            self._answering = asyncio.create_task(self._answer())

    async def _answer(self) -> None:
        try:
            await self._announce()
        except Exception as exc:
            log.warning("could not answer a presence query: %s: %s", type(exc).__name__, exc)
        finally:
            self._answering = None

    def _reject(self, message: Message, exc: ValidationError) -> None:
        self.rejected += 1
        now = time.monotonic()
        if now - self._warned_at < _WARN_EVERY:
            return
        self._warned_at = now
        problem = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        log.warning(
            "ignored a malformed presence message (id=%s, source=%r): %s: %s "
            "(%d rejected so far; warnings at most every %gs)",
            message.id,
            message.source,
            where,
            problem["msg"],
            self.rejected,
            _WARN_EVERY,
        )
