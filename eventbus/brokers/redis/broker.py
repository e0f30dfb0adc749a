"""`RedisBroker`: the connection to Redis, publishing, replay and reply inboxes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.broker import Capabilities, Handler
from eventbus.brokers.redis.pipeline import UNAVAILABLE, AutoPipeline, new_connection, pack
from eventbus.brokers.redis.streams import RedisSubscription
from eventbus.brokers.redis.wire import (
    decode_entry,
    decode_reply,
    encode_fields,
    encode_reply,
    refused,
)
from eventbus.errors import (
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    ReplayNotSupported,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.message import Message, new_id

__all__ = ["INBOX_PREFIX", "RedisBroker", "RedisInbox", "RedisOptions"]

log = logging.getLogger("eventbus")

INBOX_PREFIX = "_INBOX."
"""Topics starting with this are reply inboxes: pub/sub channels, not streams."""


_EPHEMERAL_TRIM = ("MAXLEN", "~", 1000)  # a durable=False publish: kept briefly
_EPHEMERAL_TTL = 3600  # seconds a durable=False topic lives after its last publish
_REPLAY_SLACK = timedelta(seconds=10)  # publisher clocks may run ahead of Redis's
_REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Settings of a `RedisBroker`, checked when built (see `RedisOptions.parse`).

    Attributes:
        maxlen: Entries a stream keeps, about (``XADD MAXLEN ~``); ``None`` keeps
            everything. A group that falls further behind than this loses entries.
        timeout: Seconds a Redis command may take before the operation raises
            `BrokerUnavailable` (publish included).
        batch: Entries read at most per ``XREADGROUP`` / ``XREAD``; a subscription
            holds at most ``max(batch, concurrency)`` entries it has not handled yet.
        block: Seconds a read waits on an idle stream before asking again.
        reclaim_idle: Seconds an entry taken by a group member may stay
            unacknowledged, with its member gone, before another member takes it
            (``XAUTOCLAIM`` min-idle time). Live members keep their entries.
    """

    maxlen: int | None = 100_000
    timeout: float = 5.0
    batch: int = 100
    block: float = 1.0
    reclaim_idle: float = 60.0

    @classmethod
    def parse(cls, options: dict[str, object]) -> RedisOptions:
        """Build options from keyword arguments.

        Raises:
            ConfigurationError: an unknown option or a bad value.
        """
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for redis://; "
                f"it takes: grace, {', '.join(known)}"
            )
        made = cls(**options)  # type: ignore[arg-type]  # the values are checked below
        if made.maxlen is not None and (type(made.maxlen) is not int or made.maxlen < 1):
            raise ConfigurationError(
                f"maxlen must be a whole number of entries >= 1 (or None), not {made.maxlen!r}"
            )
        if type(made.batch) is not int or made.batch < 1:
            raise ConfigurationError(f"batch must be a whole number >= 1, not {made.batch!r}")
        for name in ("timeout", "block", "reclaim_idle"):
            value = getattr(made, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
        return made


class RedisBroker:
    """A connection to Redis; topics are Streams. See `eventbus.brokers.redis`.

    Commands of all publishers, handlers and acknowledgements of the broker share one
    connection, written together when they are issued together; each subscription
    reads on a connection of its own.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS);
            redis-py's query options work too.
        grace: Seconds `close` waits for in-flight handlers.
        options: `RedisOptions` fields: ``maxlen``, ``timeout``, ``batch``,
            ``block``, ``reclaim_idle``.

    Raises:
        ConfigurationError: not a redis URL, or an unknown option or bad value.

    Example:
        >>> broker = RedisBroker("redis://127.0.0.1:6379/0", maxlen=10_000)
        >>> broker.options.maxlen
        10000
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        retains=True, ordered_by_key=False, durable_groups=True
    )

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", *, grace: float = 10.0, **options: object
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"RedisBroker takes redis:// or rediss:// URLs, not {url!r}")
        self.options = RedisOptions.parse(options)
        self.url = url
        self.grace = grace
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        """``host:port`` of the server, for messages (the URL may hold a password)."""
        try:
            # No socket timeout: calls are bounded by asyncio.timeout instead. (redis-py
            # sends with asyncio.wait_for when one is set, which on Python 3.11 can
            # swallow a task's cancellation and hang a close.)
            self.client: Redis = Redis.from_url(
                url,
                socket_timeout=None,
                socket_connect_timeout=self.options.timeout,
                # Only connecting goes through redis-py's retries (commands are sent
                # here): fail fast, so an outage reads "connection refused", not a timeout.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from None
        if self.client.connection_pool.connection_kwargs.get("decode_responses") in (True, "true"):
            raise ConfigurationError(
                f"{url!r} asks for decode_responses: eventbus reads bodies as bytes; "
                "drop it from the URL"
            )
        maxlen = self.options.maxlen
        self._trim: tuple[object, ...] = () if maxlen is None else ("MAXLEN", "~", maxlen)
        self._pipeline = AutoPipeline(self.client.connection_pool)
        self._subscriptions: set[RedisSubscription | RedisInbox] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisBroker({self.where!r})"

    def connection(self) -> AbstractConnection:
        """A new connection of its own (not connected yet), for a blocking reader."""
        return new_connection(self.client.connection_pool)

    async def connect(self) -> None:
        """Check that Redis answers.

        Raises:
            BrokerUnavailable: Redis cannot be reached within ``timeout``.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError("this RedisBroker was closed; create a new one")
        await self.call("PING", what="PING")

    async def close(self) -> None:
        """Close every subscription (in-flight handlers finish), then the connections.

        Entries taken but not handled go back to their groups. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True  # no more publish or subscribe; what closes may still call()
        await asyncio.gather(*(sub.close() for sub in list(self._subscriptions)))
        await self._pipeline.close()
        await self.client.aclose()

    def forget(self, sub: RedisSubscription | RedisInbox) -> None:
        self._subscriptions.discard(sub)

    async def call(self, *args: object, what: str) -> Any:
        """Run one command (on the shared pipeline) within ``timeout``; return the raw reply.

        Raises:
            BrokerUnavailable: Redis cannot be reached or did not answer in time.
            BrokerError: Redis refused the command.
            ClosedError: the broker was closed.
        """
        return await self._send(pack(args), what)

    async def _send(self, command: bytes, what: str) -> Any:
        try:
            async with asyncio.timeout(self.options.timeout):
                try:
                    return await self._pipeline.call(command)
                except RedisConnectionError:
                    # Once more on a new connection, as redis-py retries: the old one may
                    # have died while idle (a Redis restart). If Redis did run the command,
                    # it runs twice: at least once, like every delivery here.
                    return await self._pipeline.call(command)
        except ResponseError as exc:
            raise refused(exc, what) from exc
        except UNAVAILABLE as exc:
            if isinstance(exc, TimeoutError):
                await self._pipeline.reset()  # a connection that stopped answering
            raise self.unavailable(what, exc) from exc

    def unavailable(self, what: str, exc: BaseException) -> BrokerUnavailable | ClosedError:
        """The error to raise when ``what`` failed for want of a working connection."""
        if self._closed:
            return ClosedError(f"{what}: the broker is closed")
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            why = f"no answer within {self.options.timeout:g}s (the `timeout` option)"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return BrokerUnavailable(
            f"{what}: Redis at {self.where} cannot be reached ({why}); is it running?"
        )

    async def publish(self, message: Message, **options: object) -> None:
        """``XADD`` the message to its topic's stream; return once Redis accepted it.

        A topic starting with ``_INBOX.`` is a reply inbox: the reply is sent on that
        pub/sub channel instead and is not retained.

        Options: ``durable=False`` marks the topic as only worth anything live (presence,
        node-addressed calls): its stream is trimmed to about 1,000 entries and expires
        an hour after the last such publish, so short-lived topics do not pile up.

        Raises:
            BrokerUnavailable: Redis cannot be reached, or did not answer within ``timeout``.
            UndeliverableError: a reply to an inbox that nobody listens on any more.
            BrokerError: Redis refused (e.g. the topic's key holds no stream).
            ConfigurationError: a header is named ``body``, or an unknown option.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot publish to {message.topic!r}: the broker is closed")
        durable = True
        if options:
            check_options(options, ("durable",), "publish")
            durable = options.get("durable", True) is not False
        topic = message.topic
        if topic.startswith(INBOX_PREFIX):
            command = pack(("PUBLISH", topic, encode_reply(message)))
            if not await self._send(command, f"reply to {topic!r}"):
                raise UndeliverableError(f"nobody listens on reply inbox {topic!r} any more")
            return
        if durable:
            command = pack(("XADD", topic, *self._trim, "*", *encode_fields(message)))
            await self._send(command, f"publish to {topic!r}")
            return
        command = pack(("XADD", topic, *_EPHEMERAL_TRIM, "*", *encode_fields(message)))
        await self._send(command, f"publish to {topic!r}")
        # Sent after the entry, in order on the same connection; a failure only delays
        # the expiry to the next publish.
        expiry = self._pipeline.call(pack(("EXPIRE", topic, _EPHEMERAL_TTL)))
        expiry.add_done_callback(_ignore_failure)

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> RedisSubscription:
        """Deliver the topic's entries to ``handler``; return once the subscription is live.

        With ``group``, each entry goes to one member of the consumer group, and the
        group keeps its position while all members are away; without, every
        subscription gets every entry added after it went live. An entry is
        acknowledged after ``handler`` returned; if it raises, it is delivered again.
        With ``concurrency=1`` entries are handled in stream order.

        Options: ``concurrency`` (handlers at once, default 1), ``durable`` (accepted;
        a group is always durable, a subscription without one never is).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
            BrokerError: the topic's key holds something else than a stream.
            ConfigurationError: an unknown option or bad value, or an ``_INBOX.`` topic.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        check_options(options, ("concurrency", "durable"), "subscribe")
        concurrency = options.get("concurrency", 1)
        if type(concurrency) is not int or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {concurrency!r}"
            )
        if topic.startswith(INBOX_PREFIX):
            raise ConfigurationError(
                f"{topic!r}: topics starting with {INBOX_PREFIX!r} are reply inboxes on "
                "redis://; use open_inbox()"
            )
        if group is not None and not group:
            raise ConfigurationError("group must be a non-empty name or None")
        sub = RedisSubscription(self, topic, handler, group, concurrency)
        await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def open_inbox(self, handler: Handler) -> RedisInbox:
        """Open a reply inbox: the pub/sub channel ``_INBOX.<id>``; live when returned.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError("cannot open an inbox: the broker is closed")
        inbox = RedisInbox(self, INBOX_PREFIX + new_id(), handler)
        await inbox.open()
        self._subscriptions.add(inbox)
        return inbox

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the stream's entries in order (``XRANGE``), those from ``since`` on.

        ``since`` is compared with each message's own time; the scan starts a little
        before it in the stream (publisher clocks may run ahead of Redis's).

        Raises:
            TopicNotFound: the topic's stream does not exist.
            ReplayNotSupported: the topic is a reply inbox.
            BrokerUnavailable: Redis cannot be reached.
        """
        if topic.startswith(INBOX_PREFIX):
            raise ReplayNotSupported(f"{topic!r} is a reply inbox: replies are never kept")
        if self._closed:
            raise ClosedError(f"cannot replay {topic!r}: the broker is closed")
        what = f"replay {topic!r}"
        if not await self.call("EXISTS", topic, what=what):
            raise TopicNotFound(f"topic {topic!r} does not exist on Redis at {self.where}")
        start = "-"
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            start = f"{max(int((since - _REPLAY_SLACK).timestamp() * 1000), 0)}-0"
        while True:
            entries = await self.call("XRANGE", topic, start, "+", "COUNT", _REPLAY_PAGE, what=what)
            for entry_id, fields in entries:
                message = decode_entry(topic, entry_id, fields, 0)
                if since is None or message.time >= since:
                    yield message
            if len(entries) < _REPLAY_PAGE:
                return
            start = "(" + entries[-1][0].decode()


class RedisInbox:
    """A reply inbox: a subscription to the pub/sub channel ``_INBOX.<id>``.

    It listens on a connection of its own and hands replies to the handler in arrival
    order, one at a time. Nothing is retained: replies sent while the connection is
    down are lost (their requests time out); it subscribes again by itself.
    """

    def __init__(self, broker: RedisBroker, topic: str, handler: Handler) -> None:
        self.topic = topic
        self.group: str | None = None
        self._broker = broker
        self._handler = handler
        self._conn = broker.connection()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> None:
        """Subscribe, and return once Redis confirmed the subscription.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        try:
            await self._subscribe()
        except UNAVAILABLE as exc:
            await self._conn.disconnect(nowait=True)
            raise self._broker.unavailable(f"open reply inbox {self.topic!r}", exc) from exc
        self._task = asyncio.create_task(self._listen(), name=f"eventbus:redis:{self.topic}")

    async def _subscribe(self) -> None:
        conn = self._conn
        async with asyncio.timeout(self._broker.options.timeout):
            await conn.send_packed_command([pack(("SUBSCRIBE", self.topic))], check_health=False)
            while True:  # a reply published after this returns must reach us
                reply = await conn.read_response(push_request=True)
                if reply and reply[0] == b"subscribe":
                    return

    async def _listen(self) -> None:
        conn = self._conn
        topic = self.topic
        handler = self._handler
        backoff = 0.05
        down = False
        while True:
            try:
                if not conn.is_connected:
                    await self._subscribe()
                reply = await conn.read_response(push_request=True)
            except UNAVAILABLE as exc:
                if not down:
                    down = True
                    log.warning("redis: reply inbox %s lost its connection (%s); retrying",
                                topic, exc)  # fmt: skip
                await conn.disconnect(nowait=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if down:
                down = False
                backoff = 0.05
                log.warning("redis: reply inbox %s listens again", topic)
            if not reply or reply[0] != b"message":
                continue
            try:
                await handler(decode_reply(topic, reply[2]))
            except Exception:
                log.exception("redis: reply handler of %s raised", topic)

    async def close(self) -> None:
        """Stop listening; closing the connection unsubscribes. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._conn.disconnect(nowait=True)
        self._broker.forget(self)


def _ignore_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


def check_options(options: dict[str, object], known: Iterable[str], where: str) -> None:
    """Raise `ConfigurationError` naming the unknown keys of ``options``."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} for redis:// {where}; "
            f"it takes: {', '.join(known) or 'none'}"
        )
