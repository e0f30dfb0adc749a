"""The in-memory broker (``memory://``): the embedded default and the test broker.

Not a mock: it keeps the semantics the network adapters have.

- A topic is a retained log (the last ``retention`` messages, default 10,000), so
  ``replay()`` works; publishing never blocks.
- A group gets each message once: messages without a key go round-robin over its
  members, messages with a key always to the same member (ordered per key, like a
  Kafka partition). A group created once keeps its backlog while all its members are
  away, and gets it when one comes back.
- A subscription without group gets every message published after it went live.
- At-least-once: a handler that raises gets the message again (``Delivery.redelivered``
  counts); messages a closing member had not finished go back to its group.
- Replies go to inboxes (``_INBOX.`` topics) that keep nothing; a reply to an inbox
  that is gone raises `UndeliverableError`.

All buses of one process on ``memory://`` share one hub of topics, so several service
nodes can run in one process; ``memory://NAME`` is a separate hub. Each bus holds its
own `MemoryBroker` on the hub. Buses on different event loops (threads) can talk:
deliveries cross loops with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from eventbus.broker import Capabilities, Handler
from eventbus.dispatch import Dispatcher
from eventbus.errors import ClosedError, ConfigurationError, TopicNotFound, UndeliverableError
from eventbus.message import Delivery, Message, new_id

__all__ = ["MemoryBroker", "MemoryHub"]

log = logging.getLogger("eventbus")

INBOX_PREFIX = "_INBOX."
_GRACE = 10.0
_HIGH_WATER = 256  # buffered messages per member before publishers yield to consumers


class _Member:
    """One subscription's share of a group: a dispatcher on the subscriber's loop."""

    __slots__ = ("dispatcher", "group", "loop")

    def __init__(self, group: _Group, dispatcher: Dispatcher[Message]) -> None:
        self.group = group
        self.dispatcher = dispatcher
        self.loop = asyncio.get_running_loop()

    def offer(self, message: Message) -> bool:
        """Queue the message; True when this member has fallen behind (see `publish`)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            dispatcher = self.dispatcher
            dispatcher.put(message)
            return dispatcher.waiting > _HIGH_WATER
        if self.loop.is_closed():
            self.group.leave(self)  # its loop is gone (a finished test): never deliver there
            return self.group.offer(message)
        self.loop.call_soon_threadsafe(self.dispatcher.put, message)
        return False


class _Group:
    """A group's members and its backlog while it has none."""

    __slots__ = ("backlog", "durable", "members", "name", "next")

    def __init__(self, name: str, *, durable: bool) -> None:
        self.name = name
        self.durable = durable
        self.members: list[_Member] = []
        self.backlog: deque[Message] = deque()
        self.next = 0

    def offer(self, message: Message) -> bool:
        members = self.members
        if not members:
            self.backlog.append(message)
            return False
        if message.key is None:
            self.next += 1
            member = members[self.next % len(members)]
        else:
            member = members[hash(message.key) % len(members)]
        return member.offer(message)

    def join(self, member: _Member) -> None:
        # `members` (and `_Topic.groups`) are replaced, never changed in place: a publish
        # on another thread (buses on several loops share a hub) may be iterating them.
        self.members = [*self.members, member]
        while self.backlog:
            self.offer(self.backlog.popleft())

    def leave(self, member: _Member) -> None:
        if member in self.members:
            self.members = [m for m in self.members if m is not member]


class _Topic:
    __slots__ = ("groups", "log", "offset")

    def __init__(self, retention: int) -> None:
        self.log: deque[Message] = deque(maxlen=retention)
        self.groups: dict[str, _Group] = {}
        self.offset = 0


class MemoryHub:
    """The topics of one ``memory://`` name: shared by every `MemoryBroker` on it."""

    def __init__(self, *, retention: int = 10_000) -> None:
        self.retention = retention
        self.topics: dict[str, _Topic] = {}

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic(self.retention)
        return topic

    def clear(self) -> None:
        """Forget every topic, group and retained message (for test isolation)."""
        self.topics.clear()


_hubs: dict[str, MemoryHub] = {}


def hub(name: str = "", *, retention: int | None = None) -> MemoryHub:
    """Return the process-wide hub called ``name`` (``""`` is plain ``memory://``)."""
    found = _hubs.get(name)
    if found is None:
        found = _hubs[name] = MemoryHub(retention=retention or 10_000)
    return found


class MemorySubscription:
    """A subscription on the in-memory broker."""

    def __init__(
        self, broker: MemoryBroker, topic: str, group: _Group, member: _Member, anonymous: bool
    ) -> None:
        self.topic = topic
        self.group: str | None = None if anonymous else group.name
        self._broker = broker
        self._group = group
        self._member = member
        self._anonymous = anonymous
        self._closed = False

    async def close(self) -> None:
        """Leave the group; in-flight handlers finish; unhandled messages go back to the group."""
        if self._closed:
            return
        self._closed = True
        self._group.leave(self._member)
        left = await self._member.dispatcher.stop(self._broker.grace)
        topic = self._broker.hub.topics.get(self.topic)
        if self._anonymous:
            if topic is not None:
                gone = self._group.name
                topic.groups = {n: g for n, g in topic.groups.items() if n != gone}
        else:
            for message in left:
                self._group.offer(message)
        self._broker.forget(self)


class MemoryBroker:
    """A bus's connection to an in-memory hub. See the module docs for semantics.

    Args:
        url: ``memory://`` or ``memory://NAME``; ``?retention=N`` sets how many
            messages a topic keeps (when the hub is first created).
        grace: Seconds `close` waits for in-flight handlers.

    Example:
        >>> broker = MemoryBroker("memory://example")
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        retains=True, ordered_by_key=True, durable_groups=True
    )

    def __init__(self, url: str = "memory://", *, grace: float = _GRACE, **options: object) -> None:
        _check_options(options, ())
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigurationError(f"MemoryBroker takes memory:// URLs, not {url!r}")
        query = parse_qs(parts.query)
        retention: int | None = None
        if "retention" in query:
            try:
                retention = int(query["retention"][0])
            except ValueError:
                raise ConfigurationError(
                    f"retention must be a whole number of messages, not {query['retention'][0]!r}"
                ) from None
        self.hub = hub(parts.netloc + parts.path, retention=retention)
        self.grace = grace
        self._subscriptions: list[MemorySubscription] = []
        self._closed = False
        self._connected = False

    async def connect(self) -> None:
        """Nothing to connect to; marks the broker open."""
        if self._closed:
            raise ClosedError("this MemoryBroker was closed; create a new one")
        self._connected = True

    async def close(self) -> None:
        """Close every subscription of this broker (in-flight handlers finish). Idempotent."""
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()

    def forget(self, sub: MemorySubscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    async def publish(self, message: Message, **options: object) -> None:
        """Append the message to its topic's log and hand it to every group.

        Never waits for a consumer, but yields to the event loop once when a
        subscriber has more than a few hundred messages buffered, so that a producer
        in a tight loop lets consumers keep up.
        """
        if self._closed:
            raise ClosedError(f"cannot publish to {message.topic!r}: the broker is closed")
        if options:
            _check_options(options, ("durable",))
        name = message.topic
        if name.startswith(INBOX_PREFIX):
            inbox = self.hub.topics.get(name)
            if inbox is None or not inbox.groups:
                raise UndeliverableError(f"nobody listens on reply inbox {name!r} any more")
            for group in inbox.groups.values():
                group.offer(message)
            return
        topic = self.hub.topics.get(name) or self.hub.topic(name)
        topic.log.append(message)
        topic.offset += 1
        behind = False
        for group in topic.groups.values():
            if group.offer(message):
                behind = True
        if behind:
            # A consumer has fallen behind: let it run. Its worker drains its buffer in
            # one go when handlers do not suspend, so this rarely costs more than one
            # loop turn per _HIGH_WATER messages, and keeps buffers (and GC work) small.
            await asyncio.sleep(0)

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> MemorySubscription:
        """Subscribe ``handler`` (see `Broker.subscribe`). Options: ``concurrency``, ``durable``."""
        if self._closed:
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        _check_options(options, ("concurrency", "durable"))
        concurrency = options.get("concurrency", 1)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {concurrency!r}"
            )
        state = self.hub.topic(topic)
        anonymous = group is None
        name = group if group is not None else f"_fanout.{new_id()}"
        found = state.groups.get(name)
        if found is None:
            found = _Group(name, durable=not anonymous)
            state.groups = {**state.groups, name: found}
        member_group = found
        dispatcher: Dispatcher[Message] = Dispatcher(
            handler,
            concurrency=concurrency,
            name=f"memory:{topic}:{name}",
            on_error=lambda message, exc: self._redeliver(member_group, message, exc),
            key=_message_key,  # one key's messages in order, however many workers
        )
        member = _Member(found, dispatcher)
        dispatcher.start()
        found.join(member)
        sub = MemorySubscription(self, topic, found, member, anonymous)
        self._subscriptions.append(sub)
        return sub

    def _redeliver(self, group: _Group, message: Message, exc: Exception) -> None:
        count = message.redelivered + 1
        log.warning(
            "memory: handler failed on %s (id=%s): %s: %s; redelivery %d",
            message.topic,
            message.id,
            type(exc).__name__,
            exc,
            count,
        )
        again = replace(message, delivery=Delivery(redelivered=count))
        # Back off a little so a handler that always fails cannot spin the loop.
        asyncio.get_running_loop().call_later(min(0.01 * 2**count, 1.0), group.offer, again)

    async def open_inbox(self, handler: Handler) -> MemorySubscription:
        """Open a reply inbox ``_INBOX.<id>``; its topic goes in ``reply_to``."""
        return await self.subscribe(INBOX_PREFIX + new_id(), handler)

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the topic's retained messages in publish order, from ``since`` on.

        Raises:
            TopicNotFound: nothing was ever published to or subscribed on the topic.
        """
        state = self.hub.topics.get(topic)
        if state is None:
            raise TopicNotFound(f"topic {topic!r} does not exist on this memory:// hub")
        first = state.offset - len(state.log)
        for index, message in enumerate(list(state.log)):
            if since is None or message.time >= since:
                yield replace(message, delivery=Delivery(offset=first + index))


def _message_key(message: Message) -> str | None:
    return message.key


def _check_options(options: dict[str, object], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "none"
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} for memory://; it takes: {takes}"
        )
