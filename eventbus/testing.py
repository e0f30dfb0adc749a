"""The test kit: run any bus in memory, wait for handlers without sleeping, inspect traffic.

``TestBus`` puts a bus (whatever its URL: ``kafka://``, ``nats://``...) on a private
in-memory broker for the length of a test. Nothing is contacted and no client library
is imported; the handlers, middleware, codecs, retries and dead-lettering are the real
ones. Recordings (`save`, `load`) and `EventBus.redeliver` turn captured traffic into
regression tests.

Example:
    >>> from eventbus import EventBus
    >>> from eventbus.testing import TestBus
    >>> bus = EventBus("kafka://prod:9092")
    >>> @bus.subscriber("orders.placed", group="billing")
    ... async def bill(order: dict) -> None:
    ...     await bus.publish("invoices", {"order": order["id"]})
    >>> async def test_bill() -> None:
    ...     async with TestBus(bus) as tb:
    ...         await tb.publish("orders.placed", {"id": 1})
    ...         await tb.wait_for(bill, processed=1)
    ...         assert tb.payloads("invoices") == [{"order": 1}]
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar

from eventbus.broker import Broker, Capabilities, Handler, Subscription
from eventbus.brokers.memory import MemoryBroker, MemoryHub
from eventbus.bus import EventBus, default_bus
from eventbus.errors import ConfigurationError, RecordingError
from eventbus.message import DLQ_TOPIC, ERROR, ERROR_TYPE, Message, new_id
from eventbus.presence import NODE_TOPIC_PREFIX, PRESENCE_TOPIC
from eventbus.recording import (
    Redelivery,
    RedeliveryStatus,
    format_line,
    load,
    parse_line,
    read,
    save,
)
from eventbus.subscriber import Outcome, Subscriber

__all__ = [
    "Outcome",
    "RecordingError",
    "Redelivery",
    "RedeliveryStatus",
    "TestBus",
    "format_line",
    "load",
    "parse_line",
    "read",
    "save",
]

_INBOX_PREFIX = "_INBOX."
# Plumbing left out of `TestBus.topics`: reply inboxes, presence, node-addressed calls.
_INTERNAL = (_INBOX_PREFIX, PRESENCE_TOPIC, NODE_TOPIC_PREFIX)


class _RecordingBroker:
    """A `MemoryBroker` that also keeps every message published through it, in order."""

    capabilities: ClassVar[Capabilities] = MemoryBroker.capabilities

    def __init__(self, inner: MemoryBroker, sink: list[Message]) -> None:
        self._inner = inner
        self._sink = sink

    async def connect(self) -> None:
        await self._inner.connect()

    async def close(self) -> None:
        await self._inner.close()

    async def publish(self, message: Message, **options: object) -> None:
        # Kept first: the memory broker may let handlers run (and publish) before it
        # returns, and `messages` is in publish order.
        self._sink.append(message)
        try:
            await self._inner.publish(message, **options)
        except BaseException:
            self._sink.remove(message)
            raise

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> Subscription:
        return await self._inner.subscribe(topic, handler, group=group, **options)

    async def open_inbox(self, handler: Handler) -> Subscription:
        return await self._inner.open_inbox(handler)

    def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        return self._inner.replay(topic, since=since)


class TestBus:
    """Run buses on a private in-memory broker for one test, then give them back as they were.

    ``async with TestBus(bus):`` swaps the bus's broker for an in-memory one (whatever
    the bus's URL; its adapter is never built, so its client library need not even be
    installed), starts it, and on exit closes it and puts the original broker back, so
    the same application bus can be used by the next test. Subscriber counters
    (``processed``, ``failed``, ``dead_lettered``) start from zero.

    Several buses share the private broker, so services can talk to each other:
    ``TestBus(billing_bus, shipping_bus)``. Every message any of them publishes
    (handlers included, dead-letter records included) is kept for `published`,
    `payloads` and `dead_lettered`, also after the block ends.

    Args:
        buses: The buses under test; the default bus when none is given. None may be
            running.

    Raises:
        ConfigurationError: a bus is already running (on entering).

    Example:
        >>> # async with TestBus(app.bus) as tb:
        >>> #     await tb.publish("orders.placed", {"id": 1})
        >>> #     await tb.wait_for(app.bill, processed=1)
        >>> #     assert tb.payloads("invoices") == [{"order": 1}]
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, *buses: EventBus) -> None:
        self.buses: tuple[EventBus, ...] = buses or (default_bus(),)
        self.messages: list[Message] = []
        """Every message published on the private broker, in publish order."""
        self._saved: list[Broker | None] | None = None
        self._hub: MemoryHub | None = None
        self._hub_url = f"memory://eventbus-testbus-{new_id()}"

    @property
    def bus(self) -> EventBus:
        """The first bus under test (the one `publish` and `request` use)."""
        return self.buses[0]

    def __repr__(self) -> str:
        return f"TestBus({', '.join(repr(bus) for bus in self.buses)})"

    async def __aenter__(self) -> TestBus:
        for bus in self.buses:
            if bus.is_running:
                raise ConfigurationError(
                    f"{bus!r} is already running; TestBus needs it before start() "
                    "(or after close()) to put it on the in-memory broker"
                )
        saved: list[Broker | None] = []
        self._saved = saved
        try:
            for bus in self.buses:
                memory = MemoryBroker(self._hub_url, grace=bus.shutdown_timeout)
                self._hub = memory.hub
                saved.append(bus.use_broker(_RecordingBroker(memory, self.messages)))
                for sub in bus.subscribers:
                    sub.processed = sub.failed = sub.dead_lettered = 0
            for bus in self.buses:
                await bus.start()
        except BaseException:
            await self._restore()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._restore()

    async def _restore(self) -> None:
        saved, self._saved = self._saved or [], None
        swapped = self.buses[: len(saved)]
        try:
            for bus in swapped:
                await bus.close()
        finally:
            for bus, broker in zip(swapped, saved, strict=True):
                bus.use_broker(broker)
            if self._hub is not None:
                self._hub.clear()  # what the test may still inspect is in self.messages

    # -- acting ------------------------------------------------------------------------

    async def publish(self, topic: str, value: object = None, **kwargs: Any) -> Message:
        """Publish on the first bus (arguments as `Publisher.publish`); return the message."""
        message: Message = await self.bus.publish(topic, value, **kwargs)
        return message

    async def request(self, topic: str, value: object = None, **kwargs: Any) -> Any:
        """Send a request on the first bus and return the reply (as `Publisher.request`)."""
        return await self.bus.request(topic, value, **kwargs)

    async def redeliver(
        self, messages: Iterable[Message] | AsyncIterable[Message]
    ) -> list[Redelivery]:
        """Run recorded messages through the first bus's subscribers (`EventBus.redeliver`)."""
        return await self.bus.redeliver(messages)

    # -- waiting -----------------------------------------------------------------------

    def subscriber(self, handler: object) -> Subscriber:
        """Find the `Subscriber` of ``handler``: the function itself, its topic, or the subscriber.

        Raises:
            LookupError: no subscriber (or more than one) matches.
        """
        if isinstance(handler, Subscriber):
            return handler
        subs = [sub for bus in self.buses for sub in bus.subscribers]
        if isinstance(handler, str):
            found = [sub for sub in subs if sub.topic == handler]
        else:
            target = inspect.unwrap(handler) if callable(handler) else handler
            found = [sub for sub in subs if sub.fn is handler or inspect.unwrap(sub.fn) is target]
        if len(found) == 1:
            return found[0]
        known = ", ".join(f"{sub.name} on {sub.topic!r}" for sub in subs) or "none"
        what = "no subscriber" if not found else f"{len(found)} subscribers"
        raise LookupError(
            f"{what} for {handler!r} on {self!r}; pass the Subscriber itself. Subscribers: {known}"
        )

    async def wait_for(
        self,
        handler: object,
        *,
        processed: int | None = None,
        settled: int | None = None,
        timeout: float = 5.0,
    ) -> Subscriber:
        """Wait until a handler has processed (or settled) N messages since the test began.

        ``processed`` counts messages the handler finished; ``settled`` also counts those
        that failed for good (dead-lettered, or answered with an error). No sleeping: the
        subscriber wakes the waiter when its count moves.

        Args:
            handler: The handler function, its `Subscriber`, or its topic.
            processed: Messages finished without error.
            settled: Messages finished either way (processed + failed).
            timeout: Seconds to wait.

        Returns:
            The subscriber, for further assertions on its counters.

        Raises:
            TimeoutError: the count was not reached; the message says where the handler
                is and the last dead-letter error.
            LookupError: ``handler`` names no subscriber (or several).
        """
        if (processed is None) == (settled is None):
            raise ConfigurationError("wait_for() takes exactly one of processed= or settled=")
        sub = self.subscriber(handler)
        try:
            await sub.wait_for(processed=processed, settled=settled, timeout=timeout)
        except TimeoutError:
            wanted = f"processed={processed}" if processed is not None else f"settled={settled}"
            last = self.dead_lettered(sub.topic)
            why = ""
            if last:
                headers = last[-1].headers
                why = f"; last dead-letter: {headers.get(ERROR_TYPE)}: {headers.get(ERROR)}"
            raise TimeoutError(
                f"{sub.name} on {sub.topic!r} did not reach {wanted} within {timeout:g}s: "
                f"processed {sub.processed}, failed {sub.failed}, "
                f"dead-lettered {sub.dead_lettered}{why}"
            ) from None
        return sub

    # -- inspecting --------------------------------------------------------------------

    def published(self, topic: str) -> list[Message]:
        """The messages published to ``topic`` so far (by the test or by handlers), in order."""
        return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str, into: Any = None) -> list[Any]:
        """The values published to ``topic``, decoded (``into`` a type, or natural values)."""
        codecs = self.bus.codecs
        return [codecs.decode(m.body, m.content_type, into) for m in self.published(topic)]

    def dead_lettered(self, topic: str | None = None) -> list[Message]:
        """Dead-letter records (of messages that failed on ``topic``, or on any topic).

        Each carries the original body and headers plus the error: headers
        ``eventbus-error-type``, ``eventbus-error``, ``eventbus-dlq-topic`` and
        ``eventbus-dlq-attempts`` (`eventbus.message.ERROR_TYPE`...).
        """
        return [
            m
            for m in self.messages
            if DLQ_TOPIC in m.headers
            and not m.topic.startswith(_INBOX_PREFIX)
            and (topic is None or m.headers[DLQ_TOPIC] == topic)
        ]

    @property
    def topics(self) -> list[str]:
        """Topics something was published to, in order of first use.

        Plumbing is left out: reply inboxes, ``eventbus.presence`` and node addresses
        (``eventbus.node.<id>``, where registry clients send their calls).
        """
        seen = dict.fromkeys(m.topic for m in self.messages if not m.topic.startswith(_INTERNAL))
        return list(seen)
