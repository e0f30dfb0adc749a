"""`Publisher`: publishes values to one topic, and makes requests to it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventbus.broker import PublishesMany
from eventbus.codecs import Encoder
from eventbus.errors import ConfigurationError
from eventbus.message import DEADLINE, Message, new_id
from eventbus.middleware import Middleware, chain
from eventbus.rpc import decode_reply

if TYPE_CHECKING:
    from eventbus.broker import Broker
    from eventbus.bus import EventBus

__all__ = ["Publisher"]

T = TypeVar("T")


def _headers(base: Mapping[str, str] | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(base) if base else {}
    if extra:
        for name, value in extra.items():
            merged[name] = value if type(value) is str else str(value)
    return merged


class Publisher:
    """Publishes to one topic; ``Publisher("events")`` uses the default bus.

    A publisher is cheap and reusable; keep one per topic. It starts its bus on first
    use if the bus was not started (``memory://`` needs no set-up at all).

    Args:
        topic: Where messages go.
        bus: The bus to publish on; the default bus (``EVENTBUS_URL``) when omitted.
        content_type: Encode every value with this content type instead of inferring
            it from the value (bytes -> octet-stream, str -> text/plain, protobuf
            messages -> protobuf, anything else -> JSON).
        headers: Headers added to every message.
        type: CloudEvents ``type`` (the topic when empty).
        durable: ``False`` skips the broker's acknowledgement where it has a faster
            path (NATS core instead of JetStream): at-most-once, fastest.
        middleware: Publish middleware for this publisher (inside the bus's).

    Example:
        >>> orders = Publisher("orders.placed")
        >>> # await orders.publish({"id": 1, "total": 9.5}, key="1", headers={"x-tenant": "acme"})
    """

    def __init__(
        self,
        topic: str,
        *,
        bus: EventBus | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str = "",
        durable: bool = True,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if not topic or not isinstance(topic, str):
            raise ConfigurationError(f"a publisher needs a topic name, not {topic!r}")
        self.topic = topic
        self.content_type = content_type
        self.headers: dict[str, str] = _headers(None, headers)
        self.type = type
        self.durable = durable
        self.middleware = tuple(middleware)
        self._bus = bus
        self._encoders: dict[tuple[str | None, Any], tuple[str, Encoder]] = {}
        self._send: Callable[[Message], Awaitable[Any]] | None = None
        self._send_broker: Broker | None = None

    def __repr__(self) -> str:
        return f"Publisher({self.topic!r})"

    @property
    def bus(self) -> EventBus:
        """The bus this publisher publishes on."""
        if self._bus is None:
            from eventbus.bus import default_bus

            self._bus = default_bus()
        return self._bus

    def _sender(self, bus: EventBus) -> Callable[[Message], Awaitable[Any]]:
        broker = bus.broker
        if self._send is None or self._send_broker is not broker:
            last: Callable[[Message], Awaitable[Any]] = (
                broker.publish if self.durable else partial(broker.publish, durable=False)
            )
            steps = [*bus.publish_middleware, *self.middleware]
            self._send = chain(steps, last) if steps else last
            self._send_broker = broker
        return self._send

    def _encode(self, bus: EventBus, value: object, content_type: str | None) -> tuple[str, bytes]:
        # Resolved once per (content type, value type): the hot path is one dict lookup.
        content_type = content_type or self.content_type
        cache_key = (content_type, value.__class__)
        found = self._encoders.get(cache_key)
        if found is None:
            found = self._encoders[cache_key] = bus.codecs.encoder(value, content_type)
        return found[0], found[1](value)

    async def publish(
        self,
        value: object = None,
        *,
        key: object = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        id: str | None = None,
        type: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> Message:
        """Encode ``value`` and publish it; return once the broker accepted it.

        Args:
            value: The payload: a pydantic model, dataclass, dict, list, str, bytes,
                protobuf message...
            key: Partition / ordering key (messages with one key stay in order); a
                non-str key is converted with ``str()``.
            headers: Extra headers for this message (values converted to str).
            content_type: Overrides the publisher's / inferred content type.
            id: CloudEvents id (a new unique id by default).
            type: CloudEvents type for this message.
            reply_to: Where a reply should go (`request` sets it for you).
            correlation_id: Ties a reply to its request.

        Returns:
            The `Message` that was published.

        Raises:
            EncodeError: the value cannot be encoded with the content type.
            BrokerUnavailable: the broker cannot be reached.
            ClosedError: the bus was closed.
        """
        bus = self._bus or self.bus
        if not bus.is_running:
            await bus.start()
        ct, body = self._encode(bus, value, content_type)
        if key is not None and key.__class__ is not str:
            key = str(key)
        message = Message(
            self.topic,
            body,
            _headers(self.headers, headers),
            ct,
            id,
            None,
            key,
            reply_to,
            correlation_id,
            bus.source,
            type or self.type,
        )
        send = self._send if self._send_broker is bus._broker else self._sender(bus)
        await send(message)  # type: ignore[misc]  # _sender() set it when None
        return message

    async def publish_many(
        self,
        values: Iterable[object],
        *,
        key: object | Callable[[Any], object] = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> list[Message]:
        """Publish many values; return once the broker accepted all of them.

        The fastest way to publish a batch: on brokers that support it (Kafka) one wait
        covers every acknowledgement; elsewhere the messages are published concurrently.
        Order is kept per key where the broker orders by key.

        Args:
            values: The payloads.
            key: One key for every message, or a function giving each value's key.
            headers: Extra headers for every message.
            content_type: Overrides the publisher's / inferred content type.

        Returns:
            The published messages, in the order of ``values``.

        Raises:
            EncodeError: a value cannot be encoded (nothing was published).
            BrokerError: some message was refused; others may have been accepted
                (publish again: delivery is at-least-once).
        """
        bus = self._bus or self.bus
        if not bus.is_running:
            await bus.start()
        keyed = callable(key)
        messages = []
        topic, source, kind = self.topic, bus.source, self.type
        now = datetime.now(UTC)  # one batch, one time (and one formatting of it on the wire)
        for value in values:
            ct, body = self._encode(bus, value, content_type)
            k = key(value) if keyed else key  # type: ignore[operator]  # callable checked
            if k is not None and type(k) is not str:
                k = str(k)
            messages.append(
                Message(
                    topic, body, _headers(self.headers, headers), ct, None, now, k,
                    None, None, source, kind,
                )
            )  # fmt: skip
        broker = bus.broker
        plain = self.durable and not bus.publish_middleware and not self.middleware
        if plain and isinstance(broker, PublishesMany):
            await broker.publish_many(messages)
        elif messages:
            send = self._sender(bus)
            await asyncio.gather(*(send(m) for m in messages))
        return messages

    @overload
    async def request(
        self,
        value: object = ...,
        *,
        timeout: float = ...,
        response_type: None = ...,
        key: object = ...,
        headers: Mapping[str, str] | None = ...,
        content_type: str | None = ...,
    ) -> Any: ...

    @overload
    async def request(
        self,
        value: object = ...,
        *,
        timeout: float = ...,
        response_type: type[T],
        key: object = ...,
        headers: Mapping[str, str] | None = ...,
        content_type: str | None = ...,
    ) -> T: ...

    async def request(
        self,
        value: object = None,
        *,
        timeout: float = 5.0,
        response_type: Any = None,
        key: object = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:
        """Publish ``value`` as a request and return the decoded reply.

        The handler's return value is the reply; ``response_type`` decodes it into a
        model, dataclass or other type (``Message`` gives the raw reply).

        Raises:
            RequestTimeout: no reply within ``timeout`` seconds (a `TimeoutError`).
            RemoteError: the handler raised; ``remote_type`` / ``remote_message`` say what.
            DecodeError: the reply does not decode into ``response_type``.
            BrokerUnavailable: the broker cannot be reached.
        """
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        bus = self._bus or self.bus
        if not bus.is_running:
            await bus.start()
        address = await bus.replies.address()
        extra = {DEADLINE: str(int(timeout * 1000))}
        if headers:
            extra.update(headers)
        ct, body = self._encode(bus, value, content_type)
        message = Message(
            self.topic,
            body,
            _headers(self.headers, extra),
            ct,
            key=None if key is None else str(key),
            reply_to=address,
            correlation_id=new_id(),
            source=bus.source,
            type=self.type,
        )
        reply = await bus.replies.request(message, timeout, self._sender(bus))
        return decode_reply(reply, response_type, bus, self.topic)
