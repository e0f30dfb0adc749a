"""Request/reply over the bus: one reply inbox per bus, replies matched by correlation id.

A request is an ordinary message with ``reply_to`` (this bus's inbox) and
``correlation_id`` set, and the caller's remaining patience in the
``eventbus-deadline-ms`` header so the server can give up too. The handler's return
value comes back as the reply; an exception comes back as an error reply (headers
``eventbus-error-type`` / ``eventbus-error``, no traceback) and is raised as
`RemoteError`. No reply in time raises `RequestTimeout`; a reply arriving after that
is dropped quietly.

Each adapter's ``open_inbox`` picks its fastest reply path (NATS inboxes, RabbitMQ
direct reply-to, a reply topic per node elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from eventbus.broker import Subscription
from eventbus.codecs import Decoder, Encoder
from eventbus.deadlines import Deadlines
from eventbus.errors import ClosedError, RemoteError, RequestTimeout
from eventbus.message import ERROR, ERROR_TYPE, TRACEPARENT, Message

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = ["Replies", "decode_reply"]

log = logging.getLogger("eventbus")


class Replies:
    """A bus's request/reply state: its inbox and the requests waiting for an answer."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._inbox: Subscription | None = None
        self._opening: asyncio.Lock | None = None
        self._pending: dict[str, asyncio.Future[Message]] = {}
        # Resolved once per type, as publishers do: replies are on the hot path of RPC.
        self._encoders: dict[type, tuple[str, Encoder]] = {}
        self._decoders: dict[tuple[str | None, Any], Decoder] = {}
        # Request timeouts share coarse timers (see `eventbus.deadlines`).
        self._deadlines: Deadlines | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def decoder(self, content_type: str | None, into: Any) -> Decoder:
        """The decoder for replies of ``content_type`` into ``into`` (cached)."""
        key = (content_type, into)
        found = self._decoders.get(key)
        if found is None:
            found = self._decoders[key] = self._bus.codecs.decoder(content_type, into)
        return found

    async def address(self) -> str:
        """The inbox address requests put in ``reply_to``; opens the inbox on first use."""
        inbox = self._inbox
        if inbox is not None:
            return inbox.topic
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._inbox is None:
                self._inbox = await self._bus.broker.open_inbox(self._on_reply)
            return self._inbox.topic

    async def request(
        self, message: Message, timeout: float, send: Callable[[Message], Awaitable[None]]
    ) -> Message:
        """Send ``message`` (which carries this inbox in ``reply_to``) and await its reply.

        Raises:
            RequestTimeout: no reply within ``timeout`` seconds.
        """
        key = message.correlation_id or message.id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        self._pending[key] = future
        deadlines = self._deadlines
        if deadlines is None or self._loop is not loop:
            deadlines = self._deadlines = Deadlines(loop, _expire)
            self._loop = loop
        slot = deadlines.add(timeout, key, (future, message.topic, timeout))
        try:
            await send(message)
            return await future
        finally:
            slot.pop(key, None)
            self._pending.pop(key, None)

    async def _on_reply(self, message: Message) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            log.debug(
                "dropped a late or unknown reply (correlation_id=%s)",
                message.correlation_id,
            )
            return
        future.set_result(message)

    async def send(self, request: Message, result: object) -> None:
        """Publish ``result`` as the reply to ``request``.

        Raises:
            EncodeError: the result cannot be encoded.
            UndeliverableError: nobody listens at ``reply_to`` any more.
        """
        bus = self._bus
        found = self._encoders.get(result.__class__)
        if found is None:
            found = self._encoders[result.__class__] = bus.codecs.encoder(result)
        content_type, encode = found
        body = encode(result)
        reply = Message(
            request.reply_to or "",
            body,
            _reply_headers(request),
            content_type,
            correlation_id=request.correlation_id or request.id,
            source=bus.source,
        )
        await bus.broker.publish(reply)

    async def send_error(self, request: Message, exc: BaseException) -> None:
        """Publish an error reply carrying the exception's type and message (no traceback)."""
        headers = _reply_headers(request)
        headers[ERROR_TYPE] = type(exc).__name__
        headers[ERROR] = str(exc)[:2000]
        reply = Message(
            request.reply_to or "",
            b"",
            headers,
            correlation_id=request.correlation_id or request.id,
            source=self._bus.source,
        )
        await self._bus.broker.publish(reply)

    async def close(self) -> None:
        """Close the inbox; requests still waiting fail with `ClosedError`."""
        inbox, self._inbox = self._inbox, None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClosedError("the bus closed while the request waited"))
        self._pending.clear()
        if inbox is not None:
            await inbox.close()


def _reply_headers(request: Message) -> dict[str, str]:
    trace = request.headers.get(TRACEPARENT)
    return {TRACEPARENT: trace} if trace is not None else {}


def _expire(key: str, waiting: tuple[asyncio.Future[Message], str, float]) -> None:
    future, topic, timeout = waiting
    if not future.done():
        future.set_exception(RequestTimeout(f"no reply from {topic!r} within {timeout:g}s"))


def decode_reply(reply: Message, into: Any, bus: EventBus, topic: str) -> Any:
    """Return the reply's payload decoded into ``into``, or raise the remote error.

    Raises:
        RemoteError: the remote handler raised.
        DecodeError: the reply does not decode into ``into``.
    """
    headers = reply.headers
    if ERROR_TYPE in headers:
        raise RemoteError(headers[ERROR_TYPE], headers.get(ERROR, ""), topic=topic)
    if into is Message:
        return reply
    return bus.replies.decoder(reply.content_type, into)(reply.body)
