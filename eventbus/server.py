"""The server side of a service node: its node address, and class-based services.

A bus with a ``name`` is a service node. Besides its ordinary subscriptions it takes
*node-addressed calls* on one topic of its own, ``eventbus.node.<node id>``: a
`Client` sends a request there with the endpoint (the topic it means) in the
``eventbus-endpoint`` header, and the node runs that endpoint's own subscriber
pipeline (decode, middleware, handler, reply) on it. One topic per node, whatever the
number of endpoints, keeps the broker's load flat (on Kafka each topic is a topic).

Each endpoint keeps its subscriber's ``concurrency`` for node-addressed calls (the
node subscription has as many workers as all endpoints together; no task per
message). The node topic is subscribed with ``durable=False``: a call is only worth
answering while its caller waits, and the caller fails over to another node when
this one does not answer.

A class is turned into endpoints with `EventBus.service` (`register_service`)::

    class Greeter:
        async def hello(self, req: HelloRequest) -> HelloReply:
            return HelloReply(message=f"Hello {req.name}")

    bus = EventBus(name="greeter")
    bus.service(Greeter())          # endpoint greeter.hello, group "greeter"
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus.broker import Subscription
from eventbus.errors import ConfigurationError, EndpointNotFound, UndeliverableError
from eventbus.message import TRACEPARENT, Message
from eventbus.presence import node_address
from eventbus.registry import Node
from eventbus.subscriber import Subscriber
from eventbus.tracing import _context, call_context, trace_id

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = ["ENDPOINT", "Server", "endpoint", "register_service"]

log = logging.getLogger("eventbus.server")

ENDPOINT = "eventbus-endpoint"
"""On a node-addressed call: the endpoint (topic) it is meant for."""

F = TypeVar("F", bound=Callable[..., Any])
_ENDPOINT_ATTR = "__eventbus_endpoint__"
_UNSET: Any = object()


class _Endpoint:
    """One endpoint's pipeline for node-addressed calls, within its subscriber's concurrency.

    A call runs on the node subscription's worker that received it while the endpoint
    has a free slot; beyond its ``concurrency`` it waits in the endpoint's queue and a
    worker already running the endpoint takes it next. No worker ever blocks on a busy
    endpoint, so one flooded endpoint cannot starve the others.
    """

    __slots__ = ("running", "subscriber", "take", "topic", "waiting")

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.topic = topic = subscriber.topic
        self.running = 0
        self.waiting: deque[Message] = deque()
        limit = subscriber.concurrency
        waiting = self.waiting
        pipeline = subscriber.build()
        enter = call_context
        context = _context

        async def take(message: Message) -> None:
            if self.running >= limit:
                waiting.append(message)
                return
            self.running += 1
            try:
                while True:
                    # The handler runs in the caller's trace and deadline, and sees the
                    # endpoint's topic rather than the node address.
                    token = context.set(enter(message))
                    try:
                        if log.isEnabledFor(logging.DEBUG):
                            log.debug(
                                "serving %r (id=%s) [trace %s]", topic, message.id, trace_id()
                            )
                        await pipeline(
                            Message(
                                topic,
                                message.body,
                                message.headers,
                                message.content_type,
                                message.id,
                                message.time,
                                message.key,
                                message.reply_to,
                                message.correlation_id,
                                message.source,
                                message.type,
                                message.delivery,
                            )
                        )
                    except Exception:  # the pipeline settles handler errors; this is the rest
                        log.exception("node-addressed call to %r (id=%s) failed", topic, message.id)
                    finally:
                        context.reset(token)
                    if not waiting:
                        return
                    message = waiting.popleft()
            finally:
                self.running -= 1

        self.take = take


class Server:
    """A named bus's node: its address, its endpoints, and its registration.

    Created and driven by the bus (started once its subscribers are live, stopped
    before they stop); users do not build one.
    """

    def __init__(self, bus: EventBus) -> None:
        if not bus.name:
            raise ConfigurationError("only a bus with a name is a service node")
        self.bus = bus
        self.service = bus.name
        self.address = node_address(bus.node_id)
        self.started = datetime.now(UTC)
        self._endpoints: dict[str, _Endpoint] = {}
        self._subscription: Subscription | None = None
        self._node: Node | None = None

    def describe(self) -> Node:
        """The node as it is announced: service, id, address, version, endpoints, metadata."""
        bus = self.bus
        return Node(
            self.service,
            bus.node_id,
            self.address,
            bus.version,
            frozenset(sub.topic for sub in bus.subscribers),
            dict(bus.metadata),
            self.started,
        )

    async def start(self) -> None:
        """Take node-addressed calls, then register the node (announce it).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """
        # Enough workers for every endpoint to run at its own concurrency at once.
        workers = max(sum(sub.concurrency for sub in self.bus.subscribers), 1)
        # Both subscriptions at once: on Kafka each one is a group join.
        subscribed, started = await asyncio.gather(
            self.bus.broker.subscribe(
                self.address, self._route, durable=False, concurrency=workers
            ),
            self.bus.registry.start(),
            return_exceptions=True,
        )
        if isinstance(subscribed, BaseException) or isinstance(started, BaseException):
            if not isinstance(subscribed, BaseException):
                await subscribed.close()
            failure = subscribed if isinstance(subscribed, BaseException) else started
            assert isinstance(failure, BaseException)
            raise failure
        self._subscription = subscribed
        try:
            await self.refresh()
        except BaseException:
            await self._close_endpoints()
            raise
        node = self._node
        assert node is not None
        log.info(
            "registered node %s of service %r%s with endpoints: %s",
            node.id,
            node.service,
            f" {node.version}" if node.version else "",
            ", ".join(sorted(node.endpoints)) or "(none)",
        )

    async def refresh(self) -> None:
        """Re-announce the node after its endpoints changed (a subscriber added at runtime)."""
        self._node = self.describe()
        await self.bus.registry.register(self._node)

    async def stop(self) -> None:
        """Say goodbye, stop taking node calls, let in-flight ones finish (up to the grace).

        Calls queued but not started are not answered; their callers fail over.
        """
        node, self._node = self._node, None
        if node is not None:
            await self.bus.registry.deregister(node)
        await self._close_endpoints()

    async def _close_endpoints(self) -> None:
        sub, self._subscription = self._subscription, None
        if sub is not None:
            await sub.close()
        endpoints, self._endpoints = self._endpoints, {}
        left = sum(len(target.waiting) for target in endpoints.values())
        if left:
            log.warning(
                "node %s stopped with %d node-addressed call(s) unanswered; callers fail over",
                self.bus.node_id,
                left,
            )

    async def _route(self, message: Message) -> None:
        name = message.headers.get(ENDPOINT)
        target = self._endpoints.get(name) if name is not None else None
        if target is None:
            target = self._find(name)
            if target is None:
                await self._unknown(message, name)
                return
        await target.take(message)

    def _find(self, name: str | None) -> _Endpoint | None:
        if name is None:
            return None
        for sub in self.bus.subscribers:  # the first subscriber on the topic serves it
            if sub.topic == name:
                target = self._endpoints[name] = _Endpoint(sub)
                return target
        return None

    async def _unknown(self, message: Message, name: str | None) -> None:
        served = ", ".join(sorted({sub.topic for sub in self.bus.subscribers})) or "nothing"
        if name is None:
            problem = f"a call to node {self.bus.node_id} has no {ENDPOINT!r} header"
        else:
            problem = f"service {self.service!r} (node {self.bus.node_id}) has no endpoint {name!r}"
        error = EndpointNotFound(f"{problem}; it serves: {served}")
        if message.reply_to is None:
            log.warning("dropped a node-addressed message (id=%s): %s", message.id, error)
            return
        log.info(
            "answered a call (id=%s) with an error: %s [trace %s]",
            message.id,
            error,
            (message.headers.get(TRACEPARENT) or "-")[3:35] or "-",
        )
        try:
            await self.bus.replies.send_error(message, error)
        except UndeliverableError as exc:
            log.info("the caller of %r is gone: %s", name, exc)


def endpoint(name: str | None = None, **settings: Any) -> Callable[[F], F]:
    """Mark a method of a service class: its endpoint name and subscriber settings.

    Unmarked public methods are endpoints too, named after the method. Settings are
    those of `EventBus.subscriber` (``concurrency``, ``timeout``, ``retry``, ...).

    Example:
        >>> class Greeter:
        ...     @endpoint("say-hello", concurrency=8)
        ...     async def hello(self, req: dict) -> dict:
        ...         return {"message": "Hello " + req["name"]}
    """

    def mark(fn: F) -> F:
        setattr(fn, _ENDPOINT_ATTR, (name, settings))
        return fn

    return mark


def register_service(
    bus: EventBus, service: object, *, name: str | None = None, group: Any = _UNSET, **settings: Any
) -> list[Subscriber]:
    """Register every public method of ``service`` as an endpoint ``<name>.<method>``.

    Args:
        bus: The bus (not running yet).
        service: An instance, or a class to instantiate without arguments.
        name: The endpoint prefix; the bus's name by default.
        group: The subscribers' group; the prefix by default, so every node of the
            service shares plain requests to ``<name>.<method>`` too.
        settings: Subscriber settings for every method (`endpoint` overrides them).

    Returns:
        The subscribers, in method-name order.

    Raises:
        ConfigurationError: no name, no public method, or a method eventbus cannot call.
    """
    prefix = name or bus.name
    if not prefix:
        raise ConfigurationError(
            "a service needs a name: give the bus one (EventBus(name=...)) or pass name="
        )
    instance = service() if isinstance(service, type) else service
    cls = type(instance)
    shared_group = prefix if group is _UNSET else group
    subscribers: list[Subscriber] = []
    for attr, fn in inspect.getmembers(cls, inspect.isfunction):
        if attr.startswith("_"):
            continue
        marked: tuple[str | None, dict[str, Any]] = getattr(fn, _ENDPOINT_ATTR, (None, {}))
        endpoint_name, own = marked
        options = {"group": shared_group, **settings, **own}
        topic = f"{prefix}.{endpoint_name or attr}"
        subscribers.append(bus.add_subscriber(topic, getattr(instance, attr), **options))
    if not subscribers:
        raise ConfigurationError(
            f"{cls.__qualname__} has no public method to serve; endpoints are its "
            "methods whose names do not start with '_'"
        )
    return subscribers
