"""`EventBus`: one broker connection, its subscribers and publishers, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus.broker import Broker
from eventbus.client import Client
from eventbus.codecs import CodecRegistry, default_registry
from eventbus.errors import ClosedError, ConfigurationError, ReplayNotSupported
from eventbus.message import Message, new_id
from eventbus.middleware import Middleware, RetryPolicy
from eventbus.presence import PresenceRegistry
from eventbus.publisher import Publisher
from eventbus.registry import Registry
from eventbus.rpc import Replies
from eventbus.selector import Selector
from eventbus.server import Server, register_service
from eventbus.subscriber import Subscriber

if TYPE_CHECKING:
    from eventbus.blocking import BlockingBus
    from eventbus.recording import Redelivery

__all__ = ["EventBus", "default_bus", "set_default_bus", "subscriber"]

log = logging.getLogger("eventbus")

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")

_NEW, _STARTING, _RUNNING, _CLOSING, _CLOSED = range(5)
_DEFAULT_RETRY = RetryPolicy()


class EventBus:
    """A connection to one broker with its subscribers, publishers and request/reply.

    The URL picks the broker: ``memory://`` (in-process, the default), ``redis://``,
    ``nats://``, ``amqp://`` or ``kafka://``. The same code runs on any of them.

    Args:
        url: Broker URL; ``EVENTBUS_URL`` or ``memory://`` when omitted.
        name: Service name. A named bus is a service node in the registry.
        version: Service version, announced with the node.
        metadata: Free-form node metadata, announced with the node.
        broker: A ready `Broker` to use instead of building one from ``url``.
        middleware: Handler middleware for every subscriber of this bus (outermost).
        publish_middleware: Publish middleware for every publisher of this bus.
        retry: Default retry policy of this bus's subscribers (3 attempts, 0.1 s
            backoff doubling); an int is a number of attempts, 1 disables retries.
        codecs: Codec registry; the process-wide default when omitted.
        shutdown_timeout: Seconds `close` waits for in-flight handlers.
        registry: The service registry (a `Registry`, or a function building one from
            the bus); presence on the bus itself (`PresenceRegistry`) by default.
        heartbeat: Seconds between presence announcements of a named bus (default 5).
        ttl: Seconds a node stays in registries without an announcement (default 3
            heartbeats).
        broker_options: Passed to the adapter (e.g. ``maxlen=`` for Redis).

    Example:
        >>> bus = EventBus("memory://", name="billing")
        >>> @bus.subscriber("orders.placed", group="billing")
        ... async def bill(order: dict) -> None: ...
        >>> # async with bus:
        >>> #     await bus.publish("orders.placed", {"id": 1})
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str | None = None,
        version: str = "",
        metadata: Mapping[str, str] | None = None,
        broker: Broker | None = None,
        middleware: Sequence[Middleware] = (),
        publish_middleware: Sequence[Middleware] = (),
        retry: RetryPolicy | int = _DEFAULT_RETRY,
        codecs: CodecRegistry | None = None,
        shutdown_timeout: float = 10.0,
        registry: Registry | Callable[[EventBus], Registry] | None = None,
        heartbeat: float = 5.0,
        ttl: float | None = None,
        **broker_options: object,
    ) -> None:
        self.url = url or os.environ.get("EVENTBUS_URL") or "memory://"
        self.name = name
        self.version = version
        self.metadata: dict[str, str] = dict(metadata or {})
        self.node_id = new_id()
        self.source = name or "eventbus"
        self.middleware: list[Middleware] = list(middleware)
        self.publish_middleware: list[Middleware] = list(publish_middleware)
        self.retry = RetryPolicy.of(retry)
        self.codecs = codecs or default_registry()
        self.shutdown_timeout = shutdown_timeout
        self.subscribers: list[Subscriber] = []
        self.replies = Replies(self)
        self._broker = broker
        self._broker_options = broker_options
        self._publishers: dict[str, Publisher] = {}
        self._state = _NEW
        self._starting: asyncio.Lock | None = None
        if registry is None:
            self._make_registry: Callable[[EventBus], Registry] = partial(
                PresenceRegistry, heartbeat=heartbeat, ttl=ttl
            )
        elif heartbeat != 5.0 or ttl is not None:
            raise ConfigurationError("heartbeat= and ttl= configure the default registry only")
        elif isinstance(registry, Registry):
            given = registry
            self._make_registry = lambda bus: given
        else:
            self._make_registry = registry
        self._registry = self._make_registry(self)
        self._server: Server | None = None
        self._clients: dict[tuple[object, ...], Client] = {}
        self.is_running = False
        """True between a successful `start` and `close`."""

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"EventBus({self.url!r}{name})"

    @property
    def broker(self) -> Broker:
        """The bus's `Broker`, created from the URL on first use."""
        if self._broker is None:
            from eventbus.brokers import open_broker

            options = dict(self._broker_options)
            options.setdefault("grace", self.shutdown_timeout)
            self._broker = open_broker(self.url, **options)
        return self._broker

    @property
    def registry(self) -> Registry:
        """The live view of the services on this bus's broker (see `Registry`).

        A named bus registers itself in it when it starts; reads on an unnamed bus
        start watching on first use.
        """
        return self._registry

    def use_broker(self, broker: Broker | None) -> Broker | None:
        """Replace the broker of a bus that is not running; return the one replaced.

        This is how `eventbus.testing.TestBus` runs a bus on the in-memory broker. A
        closed bus given a broker can start again (one app bus, many tests). ``None``
        means "build one from the URL on first use". The replaced broker is returned
        as it is (``None`` if none was built yet): it is not connected or closed here.

        Raises:
            ConfigurationError: the bus is starting, running or closing.
        """
        if self._state not in (_NEW, _CLOSED):
            raise ConfigurationError(
                "use_broker() needs a bus that is not running: call it before start() "
                "or after close()"
            )
        if self._state == _CLOSED:
            # Fresh per-run state: locks and futures of the last run belong to its loop.
            self._state = _NEW
            self._starting = None
            self.replies = Replies(self)
            self._registry = self._make_registry(self)  # the last run's registry is closed
        previous, self._broker = self._broker, broker
        return previous

    # -- subscribing -------------------------------------------------------------------

    def subscriber(
        self,
        topic: str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: RetryPolicy | int | None = None,
        timeout: float | None = None,
        dead_letter: str | None = None,
        middleware: Sequence[Middleware] = (),
        **options: object,
    ) -> Callable[[F], F]:
        """Decorator: run the function for each message on ``topic``.

        The first parameter's annotation picks how the body is decoded (pydantic
        model, dataclass, protobuf class, ``dict``/``list``, ``str``, ``bytes``, or
        ``Message`` for the raw envelope); an optional ``msg: Message`` parameter gets
        the envelope. A return value is the reply when the message is a request.

        Args:
            topic: The topic to consume.
            group: Competing-consumer group: each message goes to one member. Without
                a group every subscriber gets every message (fan-out).
            concurrency: Messages handled at once by this subscriber (default 1:
                strictly in order).
            retry: Retry policy on handler errors (the bus's by default; 1 = none).
            timeout: Seconds a handler may run before it is cancelled and counted failed.
            dead_letter: Dead-letter topic (``<topic>.dlq`` by default).
            middleware: Handler middleware for this subscriber (inside the bus's).
            options: Adapter-specific options (e.g. ``durable=False``).

        Raises:
            ConfigurationError: a bad option or a handler signature eventbus cannot call.
        """

        def register(fn: F) -> F:
            self.add_subscriber(
                topic,
                fn,
                group=group,
                concurrency=concurrency,
                retry=retry,
                timeout=timeout,
                dead_letter=dead_letter,
                middleware=middleware,
                **options,
            )
            return fn

        return register

    def add_subscriber(self, topic: str, fn: Callable[..., Any], **settings: Any) -> Subscriber:
        """Register ``fn`` on ``topic`` (the decorator's non-decorator form); started with the bus.

        Raises:
            ConfigurationError: the bus is running (use `subscribe`), or bad settings.
        """
        if self._state != _NEW:
            raise ConfigurationError(
                f"the bus is running; add the handler for {topic!r} with `await bus.subscribe(...)`"
            )
        sub = self._make_subscriber(topic, fn, settings)
        self.subscribers.append(sub)
        return sub

    def _make_subscriber(
        self, topic: str, fn: Callable[..., Any], settings: dict[str, Any]
    ) -> Subscriber:
        known = ("group", "concurrency", "retry", "timeout", "dead_letter", "middleware")
        options = {k: v for k, v in settings.items() if k not in known}
        fields = {k: v for k, v in settings.items() if k in known}
        return Subscriber(self, topic, fn, options=options, **fields)

    async def subscribe(self, topic: str, fn: Callable[..., Any], **settings: Any) -> Subscriber:
        """Add and start a subscriber on a running bus (starting the bus if needed).

        Takes the same settings as `subscriber`. Returns once the subscription is live.
        """
        sub = self._make_subscriber(topic, fn, settings)
        self.subscribers.append(sub)
        if self.is_running:
            await sub.start()
            if self._server is not None:
                await self._server.refresh()  # announce the new endpoint
        else:
            await self.start()
        return sub

    def service(self, service: S, *, name: str | None = None, **settings: Any) -> S:
        """Serve the public methods of ``service`` as endpoints ``<name>.<method>``.

        ``service`` is an instance, or a class instantiated without arguments (so this
        works as a class decorator). ``name`` defaults to the bus's name; the methods'
        subscribers share the group ``name`` unless ``group=`` says otherwise. Other
        settings are `subscriber`'s; `eventbus.endpoint` overrides them per method.

        Example:
            >>> class Greeter:
            ...     async def hello(self, req: dict) -> dict:
            ...         return {"message": "Hello " + req["name"]}
            >>> bus = EventBus("memory://", name="greeter")
            >>> greeter = bus.service(Greeter())   # endpoint greeter.hello

        Raises:
            ConfigurationError: the bus is running, has no name and none is given, or a
                method cannot be a handler.
        """
        register_service(self, service, name=name, **settings)
        return service

    def client(
        self,
        service: str,
        *,
        selector: Selector | str = "random",
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        retries: int = 1,
    ) -> Client:
        """A `Client` calling ``service``'s endpoints on nodes chosen client-side.

        Clients built from the same settings (with a strategy name) are one object,
        so the selector's state (turns, marked nodes) is kept across calls.

        Example:
            >>> bus = EventBus("memory://")
            >>> calc = bus.client("calculator", selector="round_robin")
            >>> # await calc.call("add", {"a": 1, "b": 2}, timeout=2.0)
        """
        build = functools.partial(
            Client,
            self,
            service,
            selector=selector,
            version=version,
            metadata=metadata,
            timeout=timeout,
            retries=retries,
        )
        if isinstance(selector, Selector):  # the caller's own selector: its own client
            return build()
        key = (
            service,
            selector,
            version,
            tuple(sorted((metadata or {}).items())),
            timeout,
            retries,
        )
        found = self._clients.get(key)
        if found is None:
            found = self._clients[key] = build()
        return found

    # -- publishing --------------------------------------------------------------------

    def publisher(self, topic: str, **settings: Any) -> Publisher:
        """Return a `Publisher` for ``topic`` on this bus (settings as `Publisher`'s)."""
        return Publisher(topic, bus=self, **settings)

    def _publisher(self, topic: str) -> Publisher:
        pub = self._publishers.get(topic)
        if pub is None:
            pub = self._publishers[topic] = Publisher(topic, bus=self)
        return pub

    async def publish(self, topic: str, value: object = None, **kwargs: Any) -> Any:
        """Publish ``value`` to ``topic`` (see `Publisher.publish`)."""
        return await self._publisher(topic).publish(value, **kwargs)

    async def publish_many(self, topic: str, values: Iterable[object], **kwargs: Any) -> Any:
        """Publish many values to ``topic`` (see `Publisher.publish_many`)."""
        return await self._publisher(topic).publish_many(values, **kwargs)

    async def request(self, topic: str, value: object = None, **kwargs: Any) -> Any:
        """Send a request to ``topic`` and return the decoded reply (see `Publisher.request`)."""
        return await self._publisher(topic).request(value, **kwargs)

    # -- replay and redelivery ---------------------------------------------------------

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the messages the broker retained on ``topic``, in publish order.

        Order is the broker's: total on memory, Redis Streams, JetStream and RabbitMQ
        stream queues; per partition (so per key) on Kafka. Each message carries its
        position in ``delivery.offset`` where the broker has one. Starts the bus if it
        is not running, as publishing does. Nothing is acknowledged or consumed: groups
        keep their positions.

        Args:
            topic: The topic to read.
            since: Only messages from this time on (timezone-aware).

        Raises:
            ReplayNotSupported: the broker (or this topic) keeps no messages; the
                adapter says which option would make it keep them.
            TopicNotFound: the topic does not exist on the broker.
            ConfigurationError: ``since`` has no timezone.

        Example:
            >>> # async for message in bus.replay("orders.placed", since=yesterday):
            >>> #     print(message.id, message.body)
        """
        if since is not None and since.tzinfo is None:
            raise ConfigurationError(
                f"replay since={since.isoformat()} has no timezone; "
                "pass an aware datetime such as datetime.now(UTC) - timedelta(hours=1)"
            )
        if not self.is_running:
            await self.start()
        messages: AsyncIterator[Message] | None = None
        try:
            messages = self.broker.replay(topic, since=since)
            async for message in messages:
                yield message
        except ReplayNotSupported as exc:
            raise ReplayNotSupported(
                f"{exc}; or record live traffic instead: eventbus tail {topic} --json > FILE"
            ) from exc
        finally:
            close = getattr(messages, "aclose", None)  # None when replay() itself raised
            if close is not None:  # the caller stopped early: release the broker's cursor
                await close()

    async def redeliver(
        self, messages: Iterable[Message] | AsyncIterable[Message]
    ) -> list[Redelivery]:
        """Run recorded messages through this bus's subscribers and report what happened.

        Each message goes to every subscriber of its topic on this bus (one per group,
        as a broker would deliver it) through the real pipeline: middleware, decode,
        handler, retry, timeout and dead-letter, one message at a time, in order. A
        request's reply is not sent (its requester is gone): the return value is in
        the report. Dead-letter records and whatever handlers publish go to this bus's
        broker. Starts the bus if it is not running.

        Args:
            messages: Messages from `eventbus.testing.load`, `replay`, or built by hand.

        Returns:
            One `Redelivery` per message, in order: its status (``processed``,
            ``failed``, ``dead_lettered`` or ``no_subscriber``) and each subscriber's
            `Outcome` (result, error, attempts).

        Raises:
            BrokerError: a dead-letter publish failed; the report so far is lost,
                the messages are not (they are still in your recording).

        Example:
            >>> # report = await bus.redeliver(eventbus.testing.load("orders.jsonl"))
            >>> # assert all(r.status == "processed" for r in report)
        """
        from eventbus.recording import redeliver

        return await redeliver(self, messages)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start every subscriber, and return once all are live.

        A message published after `start` returns reaches every subscriber. Safe to
        call twice; concurrent callers wait for the same start.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            ClosedError: the bus was closed.
        """
        if self._state == _RUNNING:
            return
        if self._state >= _CLOSING:
            raise ClosedError(f"{self!r} was closed; create a new EventBus")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._state == _RUNNING:
                return
            self._state = _STARTING
            try:
                await self.broker.connect()
                await asyncio.gather(*(sub.start() for sub in self.subscribers))
                await self._on_started()
            except BaseException:
                self._state = _NEW
                await self._stop_subscribers()
                raise
            self._state = _RUNNING
            self.is_running = True
            log.info(
                "%s started with %d subscriber(s)", self.name or self.url, len(self.subscribers)
            )

    async def _on_started(self) -> None:
        """Once subscribers are live: a named bus takes node calls and announces itself."""
        if self.name:
            server = Server(self)
            await server.start()
            self._server = server

    async def _on_closing(self) -> None:
        """Before subscribers stop: goodbye, finish node calls, stop watching presence."""
        server, self._server = self._server, None
        try:
            if server is not None:
                await server.stop()
        finally:
            await self._registry.close()

    async def close(self) -> None:
        """Stop subscribers (in-flight handlers finish), close the inbox and the broker.

        Messages taken but not handled stay unacknowledged, so the broker redelivers
        them. Safe to call twice.
        """
        if self._state >= _CLOSING:
            return
        was_running = self._state == _RUNNING
        self._state = _CLOSING
        self.is_running = False
        try:
            if was_running:
                await self._on_closing()
            await self._stop_subscribers()
            await self.replies.close()
        finally:
            if self._broker is not None:
                await self._broker.close()
            self._state = _CLOSED
            log.info("%s closed", self.name or self.url)

    async def _stop_subscribers(self) -> None:
        await asyncio.gather(*(sub.stop() for sub in self.subscribers), return_exceptions=False)

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully.

        In-flight handlers finish (up to ``shutdown_timeout``) before the bus closes.
        """
        stop = asyncio.Event()
        try:
            with setting_on_signals(stop):
                await self.start()
                log.info("%s running; SIGINT or SIGTERM stops it", self.name or self.url)
                await stop.wait()
                log.info("%s stopping: finishing in-flight handlers", self.name or self.url)
        finally:
            await self.close()

    def blocking(self) -> BlockingBus:
        """A synchronous facade running this bus on a background thread (see `BlockingBus`)."""
        from eventbus.blocking import BlockingBus

        return BlockingBus(self)


@contextlib.contextmanager
def setting_on_signals(event: asyncio.Event) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM set ``event`` (where they can be caught:
    the main thread of a loop that supports signal handlers)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


_default_bus: EventBus | None = None


def default_bus() -> EventBus:
    """The process's default bus, created on first use from ``EVENTBUS_URL`` (or ``memory://``)."""
    global _default_bus
    if _default_bus is None:
        _default_bus = EventBus(os.environ.get("EVENTBUS_URL") or "memory://")
    return _default_bus


def set_default_bus(bus: EventBus | None) -> None:
    """Replace the default bus (``None``: create a fresh one from the environment on next use)."""
    global _default_bus
    _default_bus = bus


def subscriber(
    topic: str,
    *,
    bus: EventBus | None = None,
    **settings: Any,
) -> Callable[[F], F]:
    """Decorator registering a handler on the default bus (or ``bus=``).

    Takes the same settings as `EventBus.subscriber`.

    Example:
        >>> @subscriber("math.add")
        ... async def add(req: dict) -> dict:
        ...     return {"sum": req["a"] + req["b"]}
    """
    return (bus or default_bus()).subscriber(topic, **settings)
