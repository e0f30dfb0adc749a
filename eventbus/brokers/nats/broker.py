"""`NatsBroker`: eventbus on NATS, every topic backed by JetStream unless ``durable=False``."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    ObjectStoreConfig,
    StorageType,
    StreamConfig,
)
from nats.js.object_store import ObjectStore

from eventbus.broker import Capabilities, Handler
from eventbus.brokers.nats.subscriptions import CoreSubscription, JetStreamSubscription
from eventbus.brokers.nats.wire import (
    OBJECT,
    Connection,
    check_client,
    consumer_name,
    decode,
    encode_headers,
    hpub,
    plain,
    pub,
    status,
    stream_name,
    validate_topic,
)
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    EncodeError,
    ReplayNotSupported,
    TopicNotFound,
)
from eventbus.message import Delivery, Message, format_time, new_id

__all__ = ["NatsBroker"]

log = logging.getLogger("eventbus")

check_client()
_SKIPS_VALIDATION = "skip_subject_validation" in inspect.signature(Connection.connect).parameters

_INBOX = "_INBOX."
_RECONNECT_WAIT = 1.0
_MAX_ACK_PENDING = 20_000
_EPHEMERAL_IDLE = 300.0
"""Seconds before the server drops the ephemeral consumer of a fan-out subscriber that went
away without closing (a killed process)."""
_CLOCK_SKEW = timedelta(minutes=1)
"""How far publishers' clocks may run ahead of the server's for `replay` ``since``: the
server starts that much earlier (by its own timestamps), eventbus then filters exactly."""
_Subscription = JetStreamSubscription | CoreSubscription
_SPACE = re.compile(r"\s")


class _NoStream(Exception):
    """JetStream answered 'no responders': the topic's stream is gone."""


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
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))} for nats://; it takes: "
                "grace, timeout, ack_wait, prefetch, max_age, max_msgs, max_bytes, storage, "
                "replicas, object_bucket, tls"
            )
        self.url = url
        self.servers = _servers(url)
        self.grace = _positive("grace", grace, zero=True)
        self.timeout = _positive("timeout", timeout)
        self.ack_wait = _positive("ack_wait", ack_wait)
        self.prefetch = _count("prefetch", prefetch)
        self.max_age = None if max_age is None else _positive("max_age", max_age)
        self.max_msgs = None if max_msgs is None else _count("max_msgs", max_msgs)
        self.max_bytes = None if max_bytes is None else _count("max_bytes", max_bytes)
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', not {storage!r}")
        self.storage = StorageType.FILE if storage == "file" else StorageType.MEMORY
        self.replicas = _count("replicas", replicas)
        if not object_bucket or not all(c.isalnum() or c in "-_" for c in object_bucket):
            raise ConfigurationError(
                f"object_bucket must be letters, digits, '-' and '_', not {object_bucket!r}"
            )
        self.object_bucket = object_bucket
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise ConfigurationError(f"tls must be an ssl.SSLContext, not {tls!r}")
        self._tls = tls
        self.api = "$JS.API"
        self._nc: Connection | None = None
        self._js: JetStreamContext | None = None
        self._closed = False
        self._connected = asyncio.Event()
        self._topics: dict[str, _Topic] = {}
        self._inboxes: dict[str, _Topic] = {}
        self._subscriptions: set[_Subscription] = set()
        self._acks: dict[bytes, tuple[asyncio.Future[None], float]] = {}
        self._ack_prefix = b""
        self._tokens = itertools.count()
        self._ticker: asyncio.Task[None] | None = None
        self._store: ObjectStore | None = None
        self._stores: dict[str, ObjectStore] = {}
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
    def jetstream(self) -> JetStreamContext:
        """nats-py's JetStream context on this connection, for what eventbus does not cover."""
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
            async with asyncio.timeout(self.timeout * 2 + _RECONNECT_WAIT):
                await nc.connect(
                    self.servers,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    allow_reconnect=True,
                    max_reconnect_attempts=1,  # for this first connect; forever afterwards
                    reconnect_time_wait=_RECONNECT_WAIT,  # type: ignore[arg-type]
                    connect_timeout=self.timeout,  # type: ignore[arg-type]
                    tls=self._tls,
                    **extra,
                )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await _quietly(nc.close())
            raise BrokerUnavailable(
                f"cannot connect to NATS at {self.url}: {plain(exc)}; is nats-server running "
                "and reachable?"
            ) from exc
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        self._js = nc.jetstream(timeout=self.timeout)
        self._connected.set()
        acks = nc.new_inbox()
        self._ack_prefix = f"{acks}.".encode()
        sub = await nc.subscribe(f"{acks}.*")
        nc.routes[sub._id] = self._on_puback
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
        self._fail_acks(ClosedError("the broker closed before JetStream acknowledged"))
        self._connected.set()  # wake publishers waiting for a reconnect: they see _closed
        if self._nc is not None:
            await _quietly(self._nc.close())

    async def forget(self, sub: _Subscription) -> None:
        """Drop a closed subscription from the broker's books (and its ephemeral consumer)."""
        self._subscriptions.discard(sub)
        if isinstance(sub, JetStreamSubscription) and sub.group is None and self._js:
            nc = self._nc
            if nc is not None and nc.is_connected:
                try:
                    await self._js.delete_consumer(sub.stream, sub.consumer)
                except Exception as exc:  # it expires after _EPHEMERAL_IDLE anyway
                    log.debug("nats: deleting consumer %s: %s", sub.consumer, plain(exc))

    async def _on_error(self, exc: Exception) -> None:
        if self._outage or self._closed:
            log.debug("nats: %s", plain(exc))
        else:
            log.warning("nats: %s: %s", self.url, plain(exc))

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        self._fail_acks(
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
        interval = min(0.25, self.ack_wait / 4)
        stale = self.ack_wait / 2
        beat = 0
        while True:
            await asyncio.sleep(interval)
            beat += 1
            care = beat * interval >= 1.0 or stale < 2.0
            if care:
                beat = 0
            try:
                self._expire_acks(loop.time())
                if care:
                    for sub in list(self._subscriptions):
                        if isinstance(sub, JetStreamSubscription):
                            sub.check(loop.time(), stale)
            except Exception:  # the ticker must outlive any one bad turn
                log.exception("nats: %r: periodic care failed", self)

    def _expire_acks(self, now: float) -> None:
        acks = self._acks
        expired = []
        for token, (_, deadline) in acks.items():  # oldest first
            if deadline > now:
                break
            expired.append(token)
        for token in expired:
            future = acks.pop(token)[0]
            if not future.done():
                future.set_exception(
                    BrokerUnavailable(
                        f"JetStream at {self.url} did not acknowledge within "
                        f"{self.timeout:g}s: the message may or may not be stored"
                    )
                )

    def _fail_acks(self, exc: Exception) -> None:
        acks, self._acks = self._acks, {}
        for future, _ in acks.values():
            if not future.done():
                future.set_exception(exc)

    async def _wait_connected(self, topic: str) -> Connection:
        try:
            async with asyncio.timeout(self.timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BrokerUnavailable(
                f"cannot publish to {topic!r}: NATS at {self.url} is unreachable (still "
                f"reconnecting after {self.timeout:g}s)"
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
            durable = options.get("durable", True)  # type: ignore[assignment]
            if durable.__class__ is not bool or len(options) > 1:
                durable = _durable(options, "publish")
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
            header = await self._store_body(message, nc.max_payload)
            body = b""
        if not durable or message.reply_to is not None or name.startswith(_INBOX):
            nc.write(hpub(state.subject, b"", header, body))
            if nc.is_backed_up:
                await nc.wait_flushed()
            return
        if state.stream is None:
            await self._ensure_stream(state)
        try:
            await self._publish_acked(nc, state.subject, header, body)
        except _NoStream:  # the stream was deleted under us: create it again, once
            state.stream = None
            await self._ensure_stream(state)
            try:
                await self._publish_acked(nc, state.subject, header, body)
            except _NoStream:
                raise BrokerError(
                    f"no JetStream stream takes {name!r} even after creating one"
                ) from None

    async def _publish_acked(
        self, nc: Connection, subject: bytes, header: bytes, body: bytes
    ) -> None:
        token = b"%x" % next(self._tokens)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._acks[token] = (future, loop.time() + self.timeout)
        nc.write(hpub(subject, self._ack_prefix + token, header, body))
        await future

    def _on_puback(self, subject: bytes, reply: bytes, data: bytes, header: bytes | None) -> None:
        token = subject[len(self._ack_prefix) :]
        if header is not None and status(header) == b"503":
            outcome: BaseException | None = _NoStream()
        elif b'"error"' in data:
            outcome = _api_error(data)
        elif b'"seq"' in data:
            outcome = None
        else:
            # Not JetStream's answer: a core subscriber of the topic that answers every
            # message with a reply subject. Keep waiting for the real acknowledgement.
            log.debug("nats: ignored a stray answer to a publish: %r", data[:80])
            return
        entry = self._acks.pop(token, None)
        if entry is None or entry[0].done():
            return
        if outcome is None:
            entry[0].set_result(None)
        else:
            entry[0].set_exception(outcome)

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
            state.ensuring = asyncio.create_task(self._find_or_create_stream(state.name))
        stream = await asyncio.shield(state.ensuring)
        state.stream = stream
        return stream

    async def _find_or_create_stream(self, topic: str) -> str:
        js = self.jetstream
        async with _translated(f"finding the JetStream stream of {topic!r}", self):
            try:
                return await js.find_stream_name_by_subject(topic)
            except nats.js.errors.NotFoundError:
                pass
            name = stream_name(topic)
            config = StreamConfig(
                name=name,
                description=f"eventbus topic {topic}",
                subjects=[topic],
                storage=self.storage,
                num_replicas=self.replicas,
                max_age=self.max_age,
                max_msgs=self.max_msgs,
                max_bytes=self.max_bytes,
                discard=DiscardPolicy.OLD,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:  # created meanwhile, or a name clash
                try:
                    return await js.find_stream_name_by_subject(topic)
                except nats.js.errors.NotFoundError:
                    raise BrokerError(
                        f"cannot create JetStream stream {name!r} for topic {topic!r}: a stream "
                        "of that name exists for other subjects"
                    ) from None
            log.info("nats: created JetStream stream %s for topic %s", name, topic)
            return name

    # -- large bodies ----------------------------------------------------------------------

    async def _store_body(self, message: Message, limit: int) -> bytes:
        """Put the body in the object store; return the header block that points to it."""
        store = await self._object_store()
        name = new_id()
        async with _translated(f"storing the {len(message.body)}-byte body of a message", self):
            await store.put(name, message.body)
        header = encode_headers(message, f"{OBJECT}: {self.object_bucket}/{name}\r\n")
        if len(header) > limit:
            raise EncodeError(
                f"the headers of the message to {message.topic!r} take {len(header)} bytes, "
                f"more than the server's max_payload of {limit}"
            )
        return header

    async def _object_store(self) -> ObjectStore:
        if self._store is not None:
            return self._store
        js = self.jetstream
        bucket = self.object_bucket
        async with _translated(f"opening object store bucket {bucket!r}", self):
            try:
                store = await js.object_store(bucket)
            except nats.js.errors.NotFoundError:
                config = ObjectStoreConfig(
                    description="eventbus: message bodies larger than max_payload",
                    ttl=self.max_age,
                    storage=self.storage,
                    replicas=self.replicas,
                )
                store = await js.create_object_store(bucket, config)
        self._store = store
        return store

    async def load_body(self, message: Message) -> Message:
        """Return ``message`` with its body loaded from the object store.

        Raises:
            LookupError: the object is gone (expired or deleted).
            BrokerUnavailable: the object store cannot be reached.
        """
        bucket, _, name = message.headers[OBJECT].partition("/")
        js = self.jetstream
        async with _translated(f"loading the body of {message.topic!r}", self):
            try:
                store = self._stores.get(bucket)
                if store is None:
                    store = self._stores[bucket] = await js.object_store(bucket)
                result = await store.get(name)
            except nats.js.errors.NotFoundError:
                raise LookupError(
                    f"the body of {message.topic!r} (id={message.id}) is gone from object "
                    f"store {bucket!r} (object {name!r})"
                ) from None
        headers = {k: v for k, v in message.headers.items() if k != OBJECT}
        return replace(message, body=result.data or b"", headers=headers)

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
        durable = _durable(options, "subscribe") if "durable" in options else True
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
            info = await self._create_consumer(stream, topic, group)
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
        async with _translated(f"subscribing to {topic!r}", self):
            await sub.start()
        self._subscriptions.add(sub)
        return sub

    def _consumer_config(self, topic: str, **settings: Any) -> ConsumerConfig:
        return ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=topic,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=_MAX_ACK_PENDING,
            **settings,
        )

    def _group_consumer(self, stream: str, topic: str, group: str) -> str:
        # In eventbus's own stream the group name is unique; a shared stream (one that
        # captures other subjects too) needs the topic in the name as well.
        if stream == stream_name(topic):
            return consumer_name(group)
        return consumer_name(f"{group}.{topic}")

    async def _create_consumer(
        self, stream: str, topic: str, group: str | None, start: dict[str, Any] | None = None
    ) -> ConsumerInfo:
        js = self.jetstream
        async with _translated(f"creating a consumer on {topic!r}", self):
            if group is None:
                config = self._consumer_config(
                    topic,
                    deliver_policy=DeliverPolicy.NEW,
                    inactive_threshold=_EPHEMERAL_IDLE,
                    mem_storage=True,
                    description=f"eventbus fan-out subscriber of {topic}",
                )
                info: ConsumerInfo = await js.add_consumer(stream, config)
                return info
            name = self._group_consumer(stream, topic, group)
            try:
                info = await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                config = self._consumer_config(
                    topic,
                    durable_name=name,
                    description=f"eventbus group {group} on {topic}",
                    **(start or {"deliver_policy": DeliverPolicy.NEW}),
                )
                try:
                    return await js.add_consumer(stream, config)
                except nats.js.errors.BadRequestError:  # another member created it meanwhile
                    info = await js.consumer_info(stream, name)
            if info.config.filter_subject not in (None, "", topic):
                raise ConfigurationError(
                    f"JetStream consumer {name!r} of stream {stream!r} exists for "
                    f"{info.config.filter_subject!r}, not {topic!r}: pick another group name"
                )
            return info

    async def ensure_consumer(self, sub: JetStreamSubscription) -> str:
        """Make sure ``sub``'s consumer exists (the server may have lost it); return its name.

        A lost consumer is re-created from the message after the last one ``sub``
        received. For a group with several members that is this member's view: messages
        other members had taken but not acknowledged before the loss are not
        redelivered (a warning says so).
        """
        js = self.jetstream
        async with _translated(f"checking consumer {sub.consumer!r}", self):
            try:
                await js.consumer_info(sub.stream, sub.consumer)
                return sub.consumer
            except nats.js.errors.NotFoundError:
                pass
            resume = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": sub.last_seq + 1,
            }
            if sub.group is not None:
                log.warning(
                    "nats: consumer %s of group %s on %s is gone; re-creating it from stream "
                    "sequence %d (what other members had not acknowledged is not redelivered)",
                    sub.consumer,
                    sub.group,
                    sub.topic,
                    sub.last_seq + 1,
                )
                info = await self._create_consumer(sub.stream, sub.topic, sub.group, resume)
                return info.name
            config = self._consumer_config(
                sub.topic,
                inactive_threshold=_EPHEMERAL_IDLE,
                mem_storage=True,
                description=f"eventbus fan-out subscriber of {sub.topic}",
                **resume,
            )
            info = await js.add_consumer(sub.stream, config)
            return info.name

    async def open_inbox(self, handler: Handler) -> CoreSubscription:
        """Open this connection's reply inbox ``_INBOX.<nuid>`` (core NATS, keeps nothing)."""
        if self._closed:
            raise ClosedError("cannot open an inbox: the broker is closed")
        inbox = CoreSubscription(self, self.connection.new_inbox(), None, handler)
        async with _translated("opening the reply inbox", self):
            await inbox.start()
        self._subscriptions.add(inbox)
        return inbox

    # -- replay ------------------------------------------------------------------------------

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the topic's retained messages in stream order, from ``since`` on.

        Reads the stream with a temporary consumer (from the start, or from a minute
        before ``since`` by the server's clock), then keeps exactly the messages whose
        `Message.time` is ``since`` or later. Stops at the last message stored when the
        replay began.

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
        nc = self.connection
        js = self.jetstream
        async with _translated(f"replaying {topic!r}", self):
            try:
                stream = await js.find_stream_name_by_subject(topic)
            except nats.js.errors.NotFoundError:
                raise TopicNotFound(
                    f"no JetStream stream holds {topic!r}: nothing was published to it "
                    "durably (durable=False messages are not kept)"
                ) from None
            settings: dict[str, Any] = {"deliver_policy": DeliverPolicy.ALL}
            if since is not None:
                settings = {
                    "deliver_policy": DeliverPolicy.BY_START_TIME,
                    "opt_start_time": format_time(since - _CLOCK_SKEW),  # str for every nats-py
                }
            config = ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                filter_subject=topic,
                inactive_threshold=60.0,
                mem_storage=True,
                description=f"eventbus replay of {topic}",
                **settings,
            )
            info = await js.add_consumer(stream, config)
        queue: asyncio.Queue[tuple[bytes, bytes, bytes | None]] = asyncio.Queue()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        nc.routes[sub._id] = lambda subject, reply, data, header: queue.put_nowait(
            (reply, data, header)
        )
        next_subject = f"{self.api}.CONSUMER.MSG.NEXT.{stream}.{info.name}".encode()
        remaining = info.num_pending or 0
        try:
            while remaining > 0:
                batch = min(remaining, 512)
                expires = int(self.timeout * 1e9)
                nc.write(
                    pub(
                        next_subject,
                        inbox.encode(),
                        b'{"batch":%d,"expires":%d}' % (batch, expires),
                    )
                )
                for _ in range(batch):
                    try:
                        async with asyncio.timeout(self.timeout + 1.0):
                            reply, data, header = await queue.get()
                    except TimeoutError:
                        raise BrokerUnavailable(
                            f"replay of {topic!r} stalled: no message from JetStream within "
                            f"{self.timeout:g}s"
                        ) from None
                    if not reply:  # 408: the rest was removed meanwhile (retention limits)
                        remaining = 0
                        break
                    tokens = reply.split(b".")
                    seq, pending = (
                        (tokens[5], tokens[8]) if len(tokens) == 9 else (tokens[7], tokens[10])
                    )
                    remaining = int(pending)
                    message = decode(topic, data, header, Delivery(offset=int(seq)))
                    if not data and OBJECT in message.headers:
                        message = await self.load_body(message)
                    if since is None or message.time >= since:
                        yield message
                    if remaining == 0:
                        break
        finally:
            nc.routes.pop(sub._id, None)
            await _quietly(sub.unsubscribe())
            await _quietly(js.delete_consumer(stream, info.name))


# -- helpers -------------------------------------------------------------------------------


def _servers(url: str) -> list[str]:
    servers = []
    scheme = ""
    for part in url.split(","):
        part = part.strip()
        if "://" not in part and scheme:
            part = f"{scheme}://{part}"
        parts = urlsplit(part)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigurationError(
                f"bad NATS URL {url!r}: use nats://host:4222 or tls://host:4222 (several "
                "servers separated by commas)"
            )
        try:
            parts.port  # noqa: B018  # raises on a bad port
        except ValueError as exc:
            raise ConfigurationError(f"bad NATS URL {url!r}: {exc}") from None
        scheme = parts.scheme
        servers.append(part)
    return servers


def _positive(name: str, value: object, *, zero: bool = False) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")
    return value


def _durable(options: dict[str, object], where: str) -> bool:
    unknown = sorted(set(options) - {"durable"}) if where == "publish" else []
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} for publishing on nats://; it takes: durable"
        )
    durable = options.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable must be True or False, not {durable!r}")
    return durable


def _api_error(data: bytes) -> BrokerError:
    import json

    try:
        error = json.loads(data)["error"]
        text = f"{error.get('description', error)} (code {error.get('err_code', '?')})"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = data.decode("utf-8", "replace")
    return BrokerError(f"JetStream refused the message: {text}")


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.debug("nats: while closing: %s", plain(exc))


class _translated:
    """Turn nats-py errors of a management call into eventbus errors (context manager)."""

    def __init__(self, doing: str, broker: NatsBroker) -> None:
        self._doing = doing
        self._broker = broker

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or not isinstance(exc, nats.errors.Error | OSError | TimeoutError):
            return
        url = self._broker.url
        if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
            raise BrokerError(
                f"{self._doing}: JetStream does not answer at {url}: is the server started "
                "with JetStream (nats-server -js)? Use durable=False for core NATS only"
            ) from exc
        if isinstance(exc, nats.js.errors.APIError):
            raise BrokerError(f"{self._doing}: JetStream refused: {plain(exc)}") from exc
        raise BrokerUnavailable(f"{self._doing}: NATS at {url}: {plain(exc)}") from exc
