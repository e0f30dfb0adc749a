"""`NatsBroker`: eventbus on NATS, every topic backed by JetStream unless ``durable=False``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import ssl
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar

import nats.errors

from eventbus.broker import Capabilities, Handler
from eventbus.brokers.nats.acks import NoStream, PublishAcks
from eventbus.brokers.nats.jetstream import API, JetStream
from eventbus.brokers.nats.settings import (
    Settings,
    durable_option,
    quietly,
    translated,
)
from eventbus.brokers.nats.subscriptions import CoreSubscription, JetStreamSubscription
from eventbus.brokers.nats.wire import (
    Connection,
    check_client,
    encode_headers,
    hpub,
    plain,
    validate_topic,
)
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    ReplayNotSupported,
    TopicNotFound,
)
from eventbus.message import Message

__all__ = ["NatsBroker"]

log = logging.getLogger("eventbus")

check_client()
_SKIPS_VALIDATION = "skip_subject_validation" in inspect.signature(Connection.connect).parameters

_INBOX = "_INBOX."
_RECONNECT_WAIT = 1.0
_Subscription = JetStreamSubscription | CoreSubscription
_SPACE = re.compile(r"\s")


class _Topic:
    """What the adapter knows about one topic it publishes to."""

    __slots__ = ("ensuring", "name", "stream", "subject")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subject = name.encode()
        self.stream: str | None = None
        self.ensuring: asyncio.Task[str] | None = None


class NatsBroker:
    """eventbus on NATS: JetStream-backed topics by default, core NATS with ``durable=False``.

    - A topic is a subject, backed by a JetStream stream created on demand (named after
      the topic: ``orders.placed`` -> ``orders_placed``; a stream that already captures
      the subject is used as it is). `publish` returns once JetStream acknowledged the
      message. ``durable=False`` publishes with core NATS without waiting for an
      acknowledgement (the stream, if there is one, still stores it).
    - ``group=``: a durable JetStream pull consumer named after the group, created at
      new messages and keeping its position while all members are away. Without a group
      each subscription gets an ephemeral consumer from new messages on. A message is
      acknowledged after its handler returned; a handler that raises gets a delayed NAK
      (redelivery, `Delivery.redelivered` counts); a member that dies leaves its
      messages to be redelivered after ``ack_wait``; a member that closes NAKs what it
      had not handled so the others get it at once. Order is the stream's for one member
      with ``concurrency=1``; across members and redeliveries it is not kept
      (``capabilities.ordered_by_key`` is ``False``).
    - ``durable=False`` subscriptions are core NATS subscriptions (queue groups with
      ``group=``): at-most-once, fastest, wildcards ``*`` / ``>`` allowed.
    - Request/reply: one core inbox ``_INBOX.<nuid>`` per bus; requests and replies go
      over core NATS (a request to a durable topic is still stored by its stream, without
      waiting for the acknowledgement: the reply is the acknowledgement). A reply to an
      inbox nobody listens on any more is dropped by NATS, which does not tell the
      sender; eventbus cannot raise `UndeliverableError` for it.
    - Bodies that do not fit the server's ``max_payload`` (header block included) are
      stored in the JetStream object store bucket ``object_bucket`` and the message
      carries an empty body and the header ``eventbus-object: <bucket>/<name>``; eventbus
      subscribers and `replay` load the body transparently.
    - Metadata travels in NATS headers: CloudEvents attributes with the ``ce-`` prefix,
      ``content-type``, user headers as they are. A plain client's message without
      headers reads as JSON if it parses, else as bytes.
    - The client reconnects by itself, forever; subscriptions resume without rebuilding
      the bus. A `publish` while disconnected waits up to ``timeout`` for the
      connection to come back, then raises `BrokerUnavailable`.

    Args:
        url: ``nats://host:4222`` or ``tls://host:4222`` (user:password@ allowed);
            several servers separated by commas.
        grace: Seconds `close` waits for in-flight handlers.
        timeout: Seconds to wait for a JetStream acknowledgement, an API call, or the
            connection to come back.
        ack_wait: Seconds a consumer waits for an acknowledgement before redelivering
            (when a group is created; long handlers are kept alive with ``+WPI``).
        prefetch: Messages a consumer member requests ahead of its handlers.
        max_age: Seconds a created stream (and the object bucket) keeps messages;
            ``None`` keeps them until ``max_msgs`` / ``max_bytes``.
        max_msgs: Messages a created stream keeps (oldest discarded first).
        max_bytes: Bytes a created stream keeps.
        storage: ``"file"`` or ``"memory"`` for created streams.
        replicas: Replicas of created streams (in a JetStream cluster).
        object_bucket: Object store bucket for bodies larger than ``max_payload``.
        tls: An `ssl.SSLContext` for ``tls://`` servers (the system's CAs by default).

    Raises:
        ConfigurationError: a bad URL or option.

    Example:
        >>> broker = NatsBroker("nats://127.0.0.1:4222", ack_wait=10.0)
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        retains=True, ordered_by_key=False, durable_groups=True
    )

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        grace: float = 10.0,
        timeout: float = 5.0,
        ack_wait: float = 30.0,
        prefetch: int = 256,
        max_age: float | None = None,
        max_msgs: int | None = None,
        max_bytes: int | None = None,
        storage: str = "file",
        replicas: int = 1,
        object_bucket: str = "eventbus_bodies",
        tls: ssl.SSLContext | None = None,
        **unknown: object,
    ) -> None:
        self.settings = Settings.parse(
            url,
            {
                "grace": grace,
                "timeout": timeout,
                "ack_wait": ack_wait,
                "prefetch": prefetch,
                "max_age": max_age,
                "max_msgs": max_msgs,
                "max_bytes": max_bytes,
                "storage": storage,
                "replicas": replicas,
                "object_bucket": object_bucket,
                "tls": tls,
            },
            unknown,
        )
        """The checked settings."""
        self.url = url
        self.api = API
        self._nc: Connection | None = None
        self._js: JetStream | None = None
        self._closed = False
        self._connected = asyncio.Event()
        self._topics: dict[str, _Topic] = {}
        self._inboxes: dict[str, _Topic] = {}
        self._subscriptions: set[_Subscription] = set()
        self._acks = PublishAcks(url, self.settings.timeout)
        self._ticker: asyncio.Task[None] | None = None
        self._outage = False

    def __repr__(self) -> str:
        return f"NatsBroker({self.url!r})"

    @property
    def connection(self) -> Connection:
        """The nats-py client (connected). Raises `BrokerUnavailable` before `connect`."""
        if self._nc is None:
            raise BrokerUnavailable(f"{self!r} is not connected: call connect() first")
        return self._nc

    @property
    def jetstream(self) -> JetStream:
        """The JetStream side of this connection (``.context`` is nats-py's own)."""
        if self._js is None:
            raise BrokerUnavailable(f"{self!r} is not connected: call connect() first")
        return self._js

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the first server that answers. Safe to call twice.

        Raises:
            BrokerUnavailable: no server answered within ``timeout``.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"{self!r} was closed; create a new one")
        if self._nc is not None:
            return
        nc = Connection()
        extra: dict[str, Any] = {}
        if _SKIPS_VALIDATION:  # eventbus validates each topic once, not per message
            extra["skip_subject_validation"] = True
        try:
            async with asyncio.timeout(self.settings.timeout * 2 + _RECONNECT_WAIT):
                await nc.connect(
                    list(self.settings.servers),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    allow_reconnect=True,
                    max_reconnect_attempts=1,  # for this first connect; forever afterwards
                    reconnect_time_wait=_RECONNECT_WAIT,  # type: ignore[arg-type]  # nats-py says int
                    connect_timeout=self.settings.timeout,  # type: ignore[arg-type]  # nats-py says int
                    tls=self.settings.tls,
                    **extra,
                )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await quietly(nc.close())
            raise BrokerUnavailable(
                f"cannot connect to NATS at {self.url}: {plain(exc)}; is nats-server running "
                "and reachable?"
            ) from exc
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        self._js = JetStream(nc, self.settings)
        self._connected.set()
        await self._acks.open(nc)
        self._ticker = asyncio.create_task(self._tick(), name=f"eventbus:{self!r}:ticker")

    async def close(self) -> None:
        """Close every subscription (in-flight handlers finish, the rest is NAK'ed), flush,
        disconnect. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        subs = list(self._subscriptions)
        await asyncio.gather(*(sub.close() for sub in subs), return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        self._acks.fail(ClosedError("the broker closed before JetStream acknowledged"))
        self._connected.set()  # wake publishers waiting for a reconnect: they see _closed
        if self._nc is not None:
            await quietly(self._nc.close())

    async def forget(self, sub: _Subscription) -> None:
        """Drop a closed subscription from the broker's books (and its ephemeral consumer)."""
        self._subscriptions.discard(sub)
        if isinstance(sub, JetStreamSubscription) and sub.group is None and self._js:
            nc = self._nc
            if nc is not None and nc.is_connected:  # else the server drops it when idle
                await self._js.delete_consumer(sub.stream, sub.consumer)

    async def _on_error(self, exc: Exception) -> None:
        if self._outage or self._closed:
            log.debug("nats: %s", plain(exc))
        else:
            log.warning("nats: %s: %s", self.url, plain(exc))

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        self._acks.fail(
            BrokerUnavailable(
                f"lost the connection to NATS at {self.url} before JetStream acknowledged "
                "the message: it may or may not be stored"
            )
        )
        if not self._closed and not self._outage:
            self._outage = True
            log.warning("nats: disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        self._outage = False
        self._connected.set()
        log.warning("nats: reconnected to %s; resuming consumers", self.url)
        for sub in list(self._subscriptions):
            if isinstance(sub, JetStreamSubscription):
                sub.recover()

    async def _on_closed(self) -> None:
        if not self._closed:
            log.error("nats: the connection to %s closed for good", self.url)

    async def _tick(self) -> None:
        """Expire unanswered publishes; revive silent pulls; keep held messages reserved."""
        loop = asyncio.get_running_loop()
        interval = min(0.25, self.settings.ack_wait / 4)
        stale = self.settings.ack_wait / 2
        beat = 0
        while True:
            await asyncio.sleep(interval)
            beat += 1
            care = beat * interval >= 1.0 or stale < 2.0
            if care:
                beat = 0
            try:
                self._acks.expire(loop.time())
                if care:
                    for sub in list(self._subscriptions):
                        if isinstance(sub, JetStreamSubscription):
                            sub.check(loop.time(), stale)
            except Exception:  # the ticker must outlive any one bad turn
                log.exception("nats: %r: periodic care failed", self)

    async def _wait_connected(self, topic: str) -> Connection:
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BrokerUnavailable(
                f"cannot publish to {topic!r}: NATS at {self.url} is unreachable (still "
                f"reconnecting after {self.settings.timeout:g}s)"
            ) from None
        if self._closed:
            raise ClosedError(f"cannot publish to {topic!r}: the broker is closed")
        return self.connection

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, message: Message, **options: object) -> None:
        """Publish ``message``; return once JetStream acknowledged it.

        With ``durable=False``, and for requests and replies, the message goes out with
        core NATS and `publish` returns once it is buffered on the connection (a stream
        bound to the topic still stores it).

        Raises:
            BrokerUnavailable: not connected within ``timeout``, no acknowledgement within
                ``timeout``, or the connection was lost before the acknowledgement (the
                message may then be stored or not).
            BrokerError: JetStream refused the message.
            EncodeError: a header name NATS cannot carry.
            ConfigurationError: an invalid topic or option.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot publish to {message.topic!r}: the broker is closed")
        durable = True
        if options:
            durable = options.get("durable", True)  # type: ignore[assignment]  # checked next
            if durable.__class__ is not bool or len(options) > 1:
                durable = durable_option(options, "publish")
        nc = self._nc
        if nc is None:
            raise BrokerUnavailable(f"{self!r} is not connected: call connect() first")
        name = message.topic
        state = self._topics.get(name)
        if state is None:
            state = self._topic(name)
        if not nc.is_connected:
            nc = await self._wait_connected(name)
        header = encode_headers(message)
        body = message.body
        if len(header) + len(body) > nc.max_payload:
            header = await self.jetstream.store_body(message, nc.max_payload)
            body = b""
        if not durable or message.reply_to is not None or name.startswith(_INBOX):
            nc.write(hpub(state.subject, b"", header, body))
            if nc.is_backed_up:
                await nc.wait_flushed()
            return
        if state.stream is None:
            await self._ensure_stream(state)
        try:
            await self._acks.publish(nc, state.subject, header, body)
        except NoStream:  # the stream was deleted under us: create it again, once
            state.stream = None
            await self._ensure_stream(state)
            try:
                await self._acks.publish(nc, state.subject, header, body)
            except NoStream:
                raise BrokerError(
                    f"no JetStream stream takes {name!r} even after creating one"
                ) from None

    def _topic(self, name: str) -> _Topic:
        if name.startswith(_INBOX):  # a peer's reply inbox: peers come and go, keep a few
            state = self._inboxes.get(name)
            if state is None:
                if _SPACE.search(name):
                    raise ConfigurationError(f"{name!r} is not a valid NATS reply inbox")
                if len(self._inboxes) >= 1024:
                    self._inboxes.clear()
                state = self._inboxes[name] = _Topic(name)
            return state
        validate_topic(name)
        state = self._topics[name] = _Topic(name)
        return state

    async def _ensure_stream(self, state: _Topic) -> str:
        if state.stream is not None:
            return state.stream
        if state.ensuring is None or (state.ensuring.done() and state.ensuring.exception()):
            state.ensuring = asyncio.create_task(self.jetstream.stream_for(state.name))
        stream = await asyncio.shield(state.ensuring)
        state.stream = stream
        return stream

    # -- subscribing -----------------------------------------------------------------------

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> JetStreamSubscription | CoreSubscription:
        """Deliver ``topic``'s messages to ``handler``; return once the subscription is live.

        Options: ``concurrency`` (handlers at once, default 1: in order) and ``durable``
        (default ``True``: a JetStream consumer, at-least-once; ``False``: a core NATS
        subscription, at-most-once, wildcards allowed). See the class docs for groups,
        acknowledgement and redelivery.

        Raises:
            ConfigurationError: a bad topic, group or option.
            BrokerUnavailable: NATS cannot be reached.
            BrokerError: JetStream refused to create the stream or consumer.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        unknown = sorted(set(options) - {"concurrency", "durable"})
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for subscribing on nats://; it "
                "takes: concurrency, durable"
            )
        concurrency = options.get("concurrency", 1)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {concurrency!r}"
            )
        durable = durable_option(options, "subscribe") if "durable" in options else True
        if group is not None and (
            not isinstance(group, str) or not group or any(c.isspace() for c in group)
        ):
            raise ConfigurationError(f"a group name must be a non-empty word, not {group!r}")
        validate_topic(topic, pattern=not durable)
        self.connection  # noqa: B018  # raises BrokerUnavailable before connect()
        sub: JetStreamSubscription | CoreSubscription
        if not durable:
            sub = CoreSubscription(self, topic, group, handler, concurrency=concurrency)
        else:
            state = self._topics.get(topic) or self._topic(topic)
            stream = await self._ensure_stream(state)
            info = await self.jetstream.create_consumer(stream, topic, group)
            sub = JetStreamSubscription(
                self,
                topic,
                group,
                stream,
                info.name,
                handler,
                concurrency=concurrency,
                last_seq=info.delivered.stream_seq if info.delivered else 0,
            )
        async with translated(f"subscribing to {topic!r}", self.url):
            await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def open_inbox(self, handler: Handler) -> CoreSubscription:
        """Open this connection's reply inbox ``_INBOX.<nuid>`` (core NATS, keeps nothing)."""
        if self._closed:
            raise ClosedError("cannot open an inbox: the broker is closed")
        inbox = CoreSubscription(self, self.connection.new_inbox(), None, handler)
        async with translated("opening the reply inbox", self.url):
            await inbox.start()
        self._subscriptions.add(inbox)
        return inbox

    # -- replay ------------------------------------------------------------------------------

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the topic's retained messages in stream order, from ``since`` on.

        Reads the stream with a temporary consumer (from the start, or from a minute
        before ``since`` by the server's clock), then keeps exactly the messages whose
        `Message.time` is ``since`` or later. Stops at the last message stored when the
        replay began. Bodies kept in the object store are loaded.

        Raises:
            TopicNotFound: no stream holds the topic (nothing was published to it durably).
            ReplayNotSupported: the topic is a reply inbox.
            BrokerUnavailable: NATS cannot be reached.
        """
        if self._closed:
            raise ClosedError(f"cannot replay {topic!r}: the broker is closed")
        if topic.startswith(_INBOX):
            raise ReplayNotSupported(f"{topic!r} is a reply inbox: core NATS keeps nothing")
        validate_topic(topic)
        stream = await self.jetstream.find_stream(topic)
        if stream is None:
            raise TopicNotFound(
                f"no JetStream stream holds {topic!r}: nothing was published to it durably "
                "(durable=False messages are not kept)"
            )
        async for message in self.jetstream.replay(stream, topic, since):
            yield message
