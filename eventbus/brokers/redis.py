"""The Redis Streams adapter (``redis://``, ``rediss://``), on redis-py's asyncio client.

- A topic is a Stream key. `publish` is one ``XADD`` trimmed to about ``maxlen``
  entries (``MAXLEN ~``): the payload goes in the field ``body``, the metadata in
  other fields named as in `eventbus.message.to_headers` (``ce_id``, ``ce_time``,
  ``content-type``, user headers...). An entry a plain client wrote without ``body``
  is read as the JSON object of its fields (``application/json``); one without
  ``ce_id`` gets its entry id as message id and its entry time as message time.
- ``group=`` is a consumer group (created at ``$`` with ``MKSTREAM``), read with
  ``XREADGROUP`` in batches. An entry is acknowledged (``XACK``, batched) only after
  its handler returned; when the handler raises it is claimed again (``XCLAIM``,
  which counts the delivery) after a short backoff and handed to the handler again.
  Entries a member has taken stay claimed by it while it lives (their idle time is
  refreshed); entries of members that died are reclaimed by the live ones with
  ``XAUTOCLAIM`` once idle for ``reclaim_idle`` seconds. A member that closes hands
  the entries it had not handled back to the group at once.
  ``Delivery.redelivered`` is the entry's delivery count minus one.
- Without a group, a subscription reads with ``XREAD`` from the stream's end as it
  was when `subscribe` returned: it gets every message published after that.
- Replies to requests travel on Redis pub/sub channels ``_INBOX.<id>`` (one per
  bus), never retained; ``PUBLISH`` reports the number of receivers, so a reply to a
  requester that is gone raises `UndeliverableError`.
- `replay` reads the stream with ``XRANGE``.
- Every command is bounded by ``timeout``; a Redis that cannot be reached raises
  `BrokerUnavailable`. Consumers ride out a Redis restart by themselves: they retry
  with backoff and resume where their group was (with AOF persistence on, nothing
  acknowledged to a publisher is lost).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.broker import Capabilities, Handler
from eventbus.dispatch import Dispatcher
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    ReplayNotSupported,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.message import Delivery, Message, from_headers, new_id, to_headers

__all__ = ["INBOX_PREFIX", "RedisBroker", "RedisOptions", "RedisSubscription"]

log = logging.getLogger("eventbus")

INBOX_PREFIX = "_INBOX."
"""Topics starting with this are reply inboxes: pub/sub channels, not streams."""

BODY = "body"
"""The stream field that holds the payload."""

_PREFIX = "ce_"
_BODY = BODY.encode()
_JSON = "application/json"
_HEIR = "eventbus.released"  # owns entries a closing member handed back, until reclaimed
_HEIR_IDLE_MS = 365 * 24 * 3600 * 1000  # "idle for a year": the next XAUTOCLAIM takes them
_REPLAY_SLACK = timedelta(seconds=10)  # publisher clocks may run ahead of Redis's
_REPLAY_PAGE = 500
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)

# Hands every pending entry of consumer ARGV[2] to consumer ARGV[3], marked idle for
# ARGV[4] ms so that the next XAUTOCLAIM of any live member takes it at once, then
# deletes ARGV[2]. Atomic, so no entry can be left behind in a deleted consumer.
_RELEASE = """
local stream, group, consumer, heir, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local moved = 0
for _ = 1, 1000 do
  local pending = redis.call('XPENDING', stream, group, '-', '+', 500, consumer)
  if #pending == 0 then break end
  local args = {stream, group, heir, 0}
  for _, entry in ipairs(pending) do args[#args + 1] = entry[1] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = idle
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
  moved = moved + #pending
end
if #redis.call('XPENDING', stream, group, '-', '+', 1, consumer) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
end
return moved
"""


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Settings of a `RedisBroker`, checked when built (see `RedisOptions.parse`).

    Attributes:
        maxlen: Entries a stream keeps, about (``XADD MAXLEN ~``); ``None`` keeps
            everything. A group that falls further behind than this loses entries.
        timeout: Seconds any single Redis command may take before the operation
            raises `BrokerUnavailable` (publish included).
        batch: Entries read per ``XREADGROUP`` / ``XREAD``; a subscription holds at
            most ``max(batch, concurrency)`` entries it has not handled yet.
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
        known = [f for f in cls.__dataclass_fields__]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for redis://; "
                f"it takes: grace, {', '.join(known)}"
            )
        made = cls(**options)  # type: ignore[arg-type]  # values are checked below
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
    """A connection to Redis; topics are Streams. See the module docs for semantics.

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
            # No socket timeout: every call is bounded by asyncio.timeout instead, which
            # costs less per command and also bounds redis-py's own reconnect retries.
            self.client: Redis = Redis.from_url(
                url,
                socket_timeout=None,
                socket_connect_timeout=self.options.timeout,
                retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), 3),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from None
        maxlen = self.options.maxlen
        self._trim: tuple[object, ...] = () if maxlen is None else ("MAXLEN", "~", maxlen)
        # redis-py leaves execute_command unannotated; this is the one typed handle on it.
        self.execute: Callable[..., Awaitable[Any]] = self.client.execute_command
        """Run a raw command (no timeout, no error translation: see `call`)."""
        self.release = self.client.register_script(_RELEASE)
        """The script that hands a leaving member's entries back to its group."""
        self._subscriptions: set[RedisSubscription | RedisInbox] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisBroker({self.where!r})"

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
        self._closed = True
        await asyncio.gather(*(sub.close() for sub in list(self._subscriptions)))
        await self.client.aclose()

    def forget(self, sub: RedisSubscription | RedisInbox) -> None:
        self._subscriptions.discard(sub)

    async def call(
        self, *args: object, what: str, timeout: float | None = None, **parse: Any
    ) -> Any:
        """Run one Redis command within ``timeout`` (the broker's by default).

        Raises:
            BrokerUnavailable: Redis cannot be reached or did not answer in time.
            BrokerError: Redis refused the command.
        """
        limit = self.options.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await self.execute(*args, **parse)
        except ResponseError as exc:
            raise refused(exc, what) from exc
        except _UNAVAILABLE as exc:
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

        Options: ``durable`` is accepted and changes nothing (a stream is the only path).

        Raises:
            BrokerUnavailable: Redis cannot be reached, or did not answer within ``timeout``.
            UndeliverableError: a reply to an inbox that nobody listens on any more.
            BrokerError: Redis refused (e.g. the topic's key holds no stream).
            ConfigurationError: a header is named ``body``, or an unknown option.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot publish to {message.topic!r}: the broker is closed")
        if options:
            _check_options(options, ("durable",), "publish")
        topic = message.topic
        if topic.startswith(INBOX_PREFIX):
            await self._reply(message)
            return
        try:
            async with asyncio.timeout(self.options.timeout):
                await self.execute("XADD", topic, *self._trim, "*", *_fields(message))
        except ResponseError as exc:
            raise refused(exc, f"publish to {topic!r}") from exc
        except _UNAVAILABLE as exc:
            raise self.unavailable(f"publish to {topic!r}", exc) from exc

    async def _reply(self, message: Message) -> None:
        topic = message.topic
        frame = orjson.dumps(to_headers(message, prefix=_PREFIX)) + b"\n" + message.body
        receivers = await self.call("PUBLISH", topic, frame, what=f"reply to {topic!r}")
        if not receivers:
            raise UndeliverableError(f"nobody listens on reply inbox {topic!r} any more")

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
            ConfigurationError: an unknown option or bad value, or an ``_INBOX.`` topic.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        _check_options(options, ("concurrency", "durable"), "subscribe")
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
        if not await self.call("EXISTS", topic, what=f"replay {topic!r}"):
            raise TopicNotFound(f"topic {topic!r} does not exist on Redis at {self.where}")
        start = "-"
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            start = f"{max(int((since - _REPLAY_SLACK).timestamp() * 1000), 0)}-0"
        while True:
            entries = await self.call(
                "XRANGE", topic, start, "+", "COUNT", _REPLAY_PAGE, what=f"replay {topic!r}"
            )
            for entry_id, fields in entries:
                message = decode_entry(topic, entry_id, fields, 0)
                if since is None or message.time >= since:
                    yield message
            if len(entries) < _REPLAY_PAGE:
                return
            start = "(" + entries[-1][0].decode()


class RedisSubscription:
    """A subscription to one stream: a reader task feeding a `Dispatcher`.

    With a group it also batches acknowledgements and, every ``reclaim_idle / 4``
    seconds, keeps its own entries claimed and reclaims those of dead members.
    """

    def __init__(
        self,
        broker: RedisBroker,
        topic: str,
        handler: Handler,
        group: str | None,
        concurrency: int,
    ) -> None:
        self.topic = topic
        self.group = group
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{new_id()}"
        """This member's consumer name in its group."""
        self._broker = broker
        self._handler = handler
        self._options = options = broker.options
        self._limit = max(options.batch, concurrency)
        self._low = self._limit // 2
        self._dispatcher: Dispatcher[tuple[bytes, Message]] = Dispatcher(
            self._run,
            concurrency=concurrency,
            name=f"redis:{topic}:{group or 'fan-out'}",
            on_error=self._failed,
        )
        self._room = asyncio.Event()
        self._wants_room = False
        self._last_id = b"$"  # fan-out: where the next XREAD starts
        self._held: dict[bytes, float] = {}  # group: entry id -> when it was last claimed
        self._acks: list[bytes] = []
        self._ack_wanted = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._down = False
        self._closed = False

    def __repr__(self) -> str:
        group = f", group={self.group!r}" if self.group else ""
        return f"RedisSubscription({self.topic!r}{group})"

    async def start(self) -> None:
        """Create the group (or find the stream's end), then start reading."""
        if self.group is not None:
            await self._create_group("$")
        else:
            last = await self._broker.call(
                "XREVRANGE", self.topic, "+", "-", "COUNT", 1, what=f"subscribe to {self.topic!r}"
            )
            self._last_id = last[0][0] if last else b"0-0"
        self._dispatcher.start()
        name = f"eventbus:redis:{self.topic}"
        self._reader = asyncio.create_task(self._read(), name=f"{name}:read")
        if self.group is not None:
            self._acker = asyncio.create_task(self._acknowledge(), name=f"{name}:ack")
            self._keeper = asyncio.create_task(self._maintain(), name=f"{name}:reclaim")

    async def _create_group(self, start: str) -> None:
        try:
            await self._broker.call(
                "XGROUP", "CREATE", self.topic, self.group, start, "MKSTREAM",
                what=f"create group {self.group!r} on {self.topic!r}",
            )  # fmt: skip
        except BrokerError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def close(self) -> None:
        """Stop reading; in-flight handlers finish (up to ``grace``); leave the group.

        Entries taken but not handled are handed back to the group at once, so
        another member takes them on its next reclaim. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        # The acknowledging task stops last: it acknowledges what in-flight handlers finish.
        stopping = [t for t in (self._reader, self._keeper, *self._retries) if t is not None]
        for task in stopping:
            task.cancel()
        await self._dispatcher.stop(self._broker.grace)  # stops taking items at once
        await asyncio.gather(*stopping, return_exceptions=True)
        if self._acker is not None:
            self._acker.cancel()
            await asyncio.gather(self._acker, return_exceptions=True)
            await self._leave()
        self._broker.forget(self)

    async def _leave(self) -> None:
        broker = self._broker
        assert self.group is not None
        try:
            if self._acks:
                await broker.call(
                    "XACK", self.topic, self.group, *self._acks, what="acknowledge on close"
                )
                self._acks.clear()
            async with asyncio.timeout(broker.options.timeout):
                moved = await broker.release(
                    keys=[self.topic], args=[self.group, self.consumer, _HEIR, _HEIR_IDLE_MS]
                )
        except (BrokerError, ResponseError, *_UNAVAILABLE) as exc:
            log.warning(
                "redis: %s could not hand its unfinished entries back to group %r (%s); "
                "other members reclaim them after reclaim_idle=%gs",
                self.consumer, self.group, exc, self._options.reclaim_idle,
            )  # fmt: skip
            return
        if moved:
            log.info(
                "redis: %d unfinished entr%s of %r handed back to group %r",
                moved, "y" if moved == 1 else "ies", self.topic, self.group,
            )  # fmt: skip

    # -- reading -----------------------------------------------------------------------

    async def _read(self) -> None:
        broker = self._broker
        execute = broker.execute
        dispatcher = self._dispatcher
        block_ms = int(self._options.block * 1000)
        limit = self._options.block + self._options.timeout
        backoff = 0.05
        while True:
            pending = dispatcher.pending
            if pending > self._low:
                self._room.clear()
                self._wants_room = True
                await self._room.wait()
                continue
            count = self._limit - pending
            if self.group is not None:
                args: tuple[object, ...] = (
                    "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
                    "BLOCK", block_ms, "STREAMS", self.topic, ">",
                )  # fmt: skip
            else:
                args = ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", self.topic,
                        self._last_id)  # fmt: skip
            try:
                async with asyncio.timeout(limit):
                    reply = await execute(*args)
            except ResponseError as exc:
                if self.group is not None and str(exc).startswith("NOGROUP"):
                    # The stream or group vanished (deleted, or Redis lost its data):
                    # recreate it from the start of whatever the stream holds now.
                    log.warning("redis: group %r on %r is gone; recreating it", self.group,
                                self.topic)  # fmt: skip
                    try:
                        await self._create_group("0")
                        continue
                    except BrokerError as again:
                        self._outage(again)
                        await asyncio.sleep(backoff)
                else:
                    self._outage(refused(exc, f"read {self.topic!r}"))
                    await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except _UNAVAILABLE as exc:
                self._outage(broker.unavailable(f"read {self.topic!r}", exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self._down:
                self._down = False
                log.warning("redis: reading %r again", self.topic)
            backoff = 0.05
            if reply:
                self._take(reply[0][1], None)

    def _outage(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            log.warning("redis: %s; retrying", exc)

    def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]], counts: Any) -> None:
        topic = self.topic
        put = self._dispatcher.put
        if self.group is None:
            for entry_id, fields in entries:
                put((entry_id, decode_entry(topic, entry_id, fields, 0)))
            if entries:
                self._last_id = entries[-1][0]
            return
        held = self._held
        now = time.monotonic()
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending (Redis 6.2 XAUTOCLAIM)
                continue
            held[entry_id] = now
            redelivered = 0 if counts is None else counts.get(entry_id, 2) - 1
            put((entry_id, decode_entry(topic, entry_id, fields, redelivered)))

    async def _run(self, item: tuple[bytes, Message]) -> None:
        await self._handler(item[1])
        if self.group is not None:
            entry_id = item[0]
            self._held.pop(entry_id, None)
            self._acks.append(entry_id)
            if not self._ack_wanted.is_set():
                self._ack_wanted.set()
        if self._wants_room and self._dispatcher.pending <= self._low + 1:
            self._wants_room = False
            self._room.set()

    def _failed(self, item: tuple[bytes, Message], exc: Exception) -> None:
        entry_id, message = item
        count = message.redelivered + 1
        log.warning(
            "redis: handler failed on %s (id=%s): %s: %s; delivering it again (%d)",
            message.topic, message.id, type(exc).__name__, exc, count,
        )  # fmt: skip
        if self._wants_room and self._dispatcher.pending <= self._low + 1:
            self._wants_room = False
            self._room.set()
        # Back off a little so a handler that always fails cannot spin the loop.
        delay = min(0.01 * 2**count, 1.0)
        if self.group is None:
            raw = None if message.delivery is None else message.delivery.raw
            again = replace(message, delivery=Delivery(redelivered=count, raw=raw))
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self._redeliver_local, entry_id, again)
            return
        task = asyncio.create_task(self._redeliver(entry_id, count, delay))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _redeliver_local(self, entry_id: bytes, message: Message) -> None:
        if not self._closed:
            self._dispatcher.put((entry_id, message))

    async def _redeliver(self, entry_id: bytes, count: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            # XCLAIM (to this member) counts the delivery and returns the entry as it is.
            entries = await self._broker.call(
                "XCLAIM", self.topic, self.group, self.consumer, 0, entry_id,
                what=f"redeliver {entry_id.decode()} of {self.topic!r}",
            )  # fmt: skip
        except BrokerError as exc:
            self._held.pop(entry_id, None)  # pending still: reclaimed when idle
            log.warning("redis: %s; it is reclaimed after reclaim_idle", exc)
            return
        if not entries or entries[0][1] is None:
            self._held.pop(entry_id, None)
            log.warning(
                "redis: entry %s of %r is gone (trimmed by maxlen?); not delivered again",
                entry_id.decode(), self.topic,
            )  # fmt: skip
            return
        self._take(entries, {entry_id: count + 1})

    # -- group upkeep ------------------------------------------------------------------

    async def _acknowledge(self) -> None:
        wanted = self._ack_wanted
        backoff = 0.05
        while True:
            await wanted.wait()
            wanted.clear()
            while self._acks:
                ids, self._acks = self._acks, []
                try:
                    await self._broker.call(
                        "XACK", self.topic, self.group, *ids, what=f"acknowledge on {self.topic!r}"
                    )
                    backoff = 0.05
                except BaseException as exc:
                    self._acks[:0] = ids  # keep them for the next try (or the close)
                    if not isinstance(exc, BrokerError):
                        raise
                    self._outage(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    async def _maintain(self) -> None:
        interval = min(self._options.reclaim_idle / 4, 5.0)
        while True:
            try:
                await self._keep_held()
                await self._reclaim()
            except BrokerError as exc:
                self._outage(exc)
            await asyncio.sleep(interval)

    async def _keep_held(self) -> None:
        """Reset the idle time of entries this member still holds, so nobody reclaims them."""
        half = self._options.reclaim_idle / 2
        now = time.monotonic()
        stale = [entry_id for entry_id, since in self._held.items() if now - since > half]
        if not stale:
            return
        await self._broker.call(
            "XCLAIM", self.topic, self.group, self.consumer, int(half * 1000), *stale, "JUSTID",
            what=f"keep entries of {self.topic!r}", parse_justid=True,
        )  # fmt: skip
        for entry_id in stale:
            if entry_id in self._held:
                self._held[entry_id] = now

    async def _reclaim(self) -> None:
        """Take entries idle for ``reclaim_idle`` (their member died or handed them back)."""
        min_idle = int(self._options.reclaim_idle * 1000)
        cursor: bytes | str = "0-0"
        for _ in range(10):  # bounded work per round; the next round goes on
            room = self._limit - self._dispatcher.pending
            if room <= 0:
                return
            reply = await self._broker.call(
                "XAUTOCLAIM", self.topic, self.group, self.consumer, min_idle, cursor,
                "COUNT", room, what=f"reclaim entries of {self.topic!r}",
            )  # fmt: skip
            cursor, entries = reply[0], reply[1]
            if len(reply) > 2 and reply[2]:
                log.warning(
                    "redis: %d entries pending in group %r were trimmed from %r (maxlen) "
                    "before they were handled", len(reply[2]), self.group, self.topic,
                )  # fmt: skip
            fresh = [e for e in entries if e[0] not in self._held and e[1] is not None]
            if fresh:
                log.info(
                    "redis: reclaimed %d idle entries of %r for group %r",
                    len(fresh), self.topic, self.group,
                )  # fmt: skip
                self._take(fresh, await self._delivery_counts(fresh))
            if cursor in (b"0-0", "0-0"):
                return

    async def _delivery_counts(self, entries: list[tuple[bytes, Any]]) -> dict[bytes, int]:
        rows = await self._broker.call(
            "XPENDING", self.topic, self.group, entries[0][0], entries[-1][0],
            len(entries) + len(self._held), self.consumer,
            what=f"read delivery counts on {self.topic!r}", parse_detail=True,
        )  # fmt: skip
        return {row["message_id"]: row["times_delivered"] for row in rows}


class RedisInbox:
    """A reply inbox: a subscription to the pub/sub channel ``_INBOX.<id>``.

    Replies are handed to the handler in arrival order, one at a time; nothing is
    retained, so replies sent while Redis restarts are lost (the request times out).
    """

    def __init__(self, broker: RedisBroker, topic: str, handler: Handler) -> None:
        self.topic = topic
        self.group: str | None = None
        self._broker = broker
        self._handler = handler
        self._pubsub: PubSub = broker.client.pubsub()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> None:
        """Subscribe, and return once Redis confirmed the subscription."""
        pubsub = self._pubsub
        try:
            async with asyncio.timeout(self._broker.options.timeout):
                await pubsub.subscribe(self.topic)
                while True:  # a reply published after this returns must reach us
                    reply = await pubsub.parse_response(block=True)
                    if reply and reply[0] == b"subscribe":
                        break
        except _UNAVAILABLE as exc:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: unannotated
            raise self._broker.unavailable(f"open reply inbox {self.topic!r}", exc) from exc
        self._task = asyncio.create_task(self._listen(), name=f"eventbus:redis:{self.topic}")

    async def _listen(self) -> None:
        pubsub = self._pubsub
        topic = self.topic
        handler = self._handler
        backoff = 0.05
        down = False
        while True:
            try:
                reply = await pubsub.parse_response(block=True)
            except _UNAVAILABLE as exc:
                if not down:
                    down = True
                    log.warning("redis: reply inbox %s lost its connection (%s); retrying",
                                topic, exc)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if down:
                down = False
                log.warning("redis: reply inbox %s listens again", topic)
            if not reply or reply[0] != b"message":
                continue
            try:
                await handler(decode_reply(topic, reply[2]))
            except Exception:
                log.exception("redis: reply handler of %s raised", topic)

    async def close(self) -> None:
        """Stop listening and unsubscribe. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(self._broker.options.timeout):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: unannotated
        except _UNAVAILABLE:
            pass  # the connection is dropped either way
        self._broker.forget(self)


# -- wire format -------------------------------------------------------------------------


def _fields(message: Message) -> list[object]:
    """The XADD field list of a message: ``body``, then its metadata."""
    headers = to_headers(message, prefix=_PREFIX)
    if BODY in headers:
        raise ConfigurationError(
            f"a message to {message.topic!r} has a header named {BODY!r}: on redis:// that "
            "field holds the payload; rename the header"
        )
    fields: list[object] = [BODY, message.body]
    for item in headers.items():
        fields.extend(item)
    return fields


def decode_entry(
    topic: str, entry_id: bytes, fields: dict[bytes, bytes], redelivered: int
) -> Message:
    """Build the `Message` of one stream entry (the inverse of what `publish` writes).

    An entry without a ``body`` field (a plain client's) is read as the JSON object of
    its fields. Without ``ce_id`` / ``ce_time`` the entry's id and time stand in.
    """
    delivery = Delivery(redelivered=redelivered, raw=(entry_id, fields))
    body = fields.get(_BODY)
    if body is None:
        payload = {
            str(k, "utf-8", "replace"): str(v, "utf-8", "replace") for k, v in fields.items()
        }
        return Message(
            topic,
            orjson.dumps(payload),
            None,
            _JSON,
            entry_id.decode(),
            _entry_time(entry_id),
            delivery=delivery,
        )
    headers = {
        str(k, "utf-8", "replace"): str(v, "utf-8", "replace")
        for k, v in fields.items()
        if k != _BODY
    }
    message = from_headers(topic, body, headers, prefix=_PREFIX, delivery=delivery)
    if "ce_id" not in headers:
        message = replace(
            message,
            id=entry_id.decode(),
            time=message.time if "ce_time" in headers else _entry_time(entry_id),
        )
    return message


def decode_reply(topic: str, frame: bytes) -> Message:
    """Build a reply `Message` from a pub/sub frame: a JSON object of headers, ``\\n``, body.

    A frame that does not start with such an object is all body (a plain client's).
    """
    head, newline, body = frame.partition(b"\n")
    if newline and head.startswith(b"{"):
        try:
            headers = orjson.loads(head)
        except orjson.JSONDecodeError:
            headers = None
        if isinstance(headers, dict):
            return from_headers(topic, body, {str(k): str(v) for k, v in headers.items()})
    return Message(topic, frame)


def _entry_time(entry_id: bytes) -> datetime:
    millis = int(entry_id.partition(b"-")[0])
    return datetime.fromtimestamp(millis / 1000, UTC)


def refused(exc: ResponseError, what: str) -> BrokerError:
    """Translate a Redis error reply into a `BrokerError` that says what to do."""
    text = str(exc)
    if text.startswith("WRONGTYPE"):
        return BrokerError(
            f"{what}: the Redis key holds another type than a stream; eventbus topics on "
            "Redis are Stream keys, so pick a topic name no other data uses"
        )
    return BrokerError(f"{what}: Redis refused: {text}")


def _check_options(options: dict[str, object], known: Iterable[str], where: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} for redis:// {where}; "
            f"it takes: {', '.join(known) or 'none'}"
        )
