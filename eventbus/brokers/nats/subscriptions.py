"""Subscriptions of the NATS adapter: JetStream consumer members and core subscriptions.

`JetStreamSubscription` is one member of a JetStream pull consumer (a group's durable
consumer, or a fan-out subscription's own ephemeral one). It keeps up to ``prefetch``
messages requested or in hand: pull requests (``batch``, ``expires``) are sent as the
handlers make room, so messages stream in without a round trip per batch. Each message
is acknowledged after its handler returned; a handler that raises gets a delayed NAK
(redelivery); on close, what was taken but not handled is NAK'ed at once so other
members get it without waiting for the ack wait. Messages held longer than half the ack
wait (slow handlers, a deep buffer) are kept reserved with ``+WPI`` (work in progress),
so the server does not hand them to another member while this one still has them.

`CoreSubscription` is a core NATS subscription (``durable=False``, and reply inboxes):
at-most-once, nothing to acknowledge.

Both run handlers on a `Dispatcher` (``concurrency`` workers, no task per message), and
keep delivery order while a large body is fetched from the object store (`Loader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from nats.aio.subscription import Subscription as NatsSubscription

from eventbus.broker import Handler
from eventbus.brokers.nats.wire import (
    OBJECT,
    ack_metadata,
    decode,
    header_int,
    plain,
    pub,
    status,
)
from eventbus.dispatch import Dispatcher
from eventbus.message import Delivery, Message

if TYPE_CHECKING:
    from eventbus.brokers.nats.broker import NatsBroker

__all__ = ["CoreSubscription", "JetStreamSubscription", "Loader"]

log = logging.getLogger("eventbus")

T = TypeVar("T")

EXPIRES = 5.0
"""Seconds a pull request waits on the server before it answers 408 (then we pull again)."""
_EXPIRES_NS = int(EXPIRES * 1e9)
_LOST = EXPIRES + 5.0
"""No word on an open pull request for this long: the consumer or the request is gone."""
CORE_LIMIT = 65_536
"""Messages a core subscription buffers before it drops (like NATS's slow-consumer limit)."""

_ACK = b" 4\r\n+ACK\r\n"
_NAK = b" 4\r\n-NAK\r\n"
_WPI = b" 4\r\n+WPI\r\n"


class Loader(Generic[T]):
    """Keeps delivery order while large bodies are fetched from the object store.

    While it has a backlog, every message goes through it (in order), so a small message
    never overtakes a large one that came first. Callers check `backlog` is ``None``
    before handing a small message to the dispatcher directly.
    """

    def __init__(
        self, put: Callable[[T], None], load: Callable[[T], Awaitable[T | None]], name: str
    ) -> None:
        self.backlog: deque[T] | None = None
        self._put = put
        self._load = load
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def add(self, item: T) -> None:
        if self.backlog is None:
            self.backlog = deque()
            self._task = asyncio.create_task(self._run(self.backlog), name=self._name)
        self.backlog.append(item)

    async def _run(self, backlog: deque[T]) -> None:
        try:
            while backlog:
                item = await self._load(backlog[0])
                backlog.popleft()
                if item is not None:
                    self._put(item)
        finally:
            if self.backlog is backlog:
                self.backlog = None

    async def close(self) -> list[T]:
        """Stop loading; return the items not handed on yet."""
        left = list(self.backlog or ())
        self.backlog = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return left


def _is_large(message: Message) -> bool:
    return not message.body and OBJECT in message.headers


class JetStreamSubscription:
    """One member of a JetStream consumer (see the module docs).

    Attributes:
        topic: The topic consumed.
        group: The group (durable consumer), or ``None`` for fan-out (an ephemeral
            consumer of its own, deleted on close).
    """

    def __init__(
        self,
        broker: NatsBroker,
        topic: str,
        group: str | None,
        stream: str,
        consumer: str,
        handler: Handler,
        *,
        concurrency: int,
        last_seq: int,
    ) -> None:
        self.topic = topic
        self.group = group
        self.stream = stream
        self.consumer = consumer
        self.last_seq = last_seq
        """Stream sequence of the last message received (an ephemeral consumer lost in a
        server restart is re-created from the next one)."""
        self._broker = broker
        self._nc = broker.connection
        self._handler = handler
        self._prefetch = max(broker.settings.prefetch, concurrency)
        self._low = self._prefetch // 2
        name = f"nats:{topic}:{group or 'fan-out'}"
        self._dispatcher: Dispatcher[tuple[Message, bytes]] = Dispatcher(
            self._handle, concurrency=concurrency, name=name, on_error=self._failed
        )
        self._loader: Loader[tuple[Message, bytes]] = Loader(
            self._dispatcher.put, self._load, name + ":loader"
        )
        self._held: dict[bytes, float] = {}
        self._returned: list[bytes] = []
        self._requested = 0
        self._active = 0.0
        self._inbox = b""
        self._next = b""
        self._sub: NatsSubscription | None = None
        self._sid = 0
        self._closing = False
        self._recovering: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return (
            f"JetStreamSubscription({self.topic!r}, group={self.group!r}, stream={self.stream!r})"
        )

    async def start(self) -> None:
        """Open the delivery inbox and send the first pull request."""
        nc = self._nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        self._sub = sub
        self._sid = sub._id
        nc.routes[self._sid] = self._on_message
        self._inbox = inbox.encode()
        self._set_consumer(self.consumer)
        self._dispatcher.start()
        self._pull()

    def _set_consumer(self, consumer: str) -> None:
        self.consumer = consumer
        self._next = f"{self._broker.api}.CONSUMER.MSG.NEXT.{self.stream}.{consumer}".encode()

    # -- the hot path ----------------------------------------------------------------------

    def _pull(self) -> None:
        want = self._prefetch - self._requested - len(self._held)
        if want <= 0 or self._closing or not self._nc.is_connected:
            return
        self._requested += want
        self._active = self._loop.time()
        request = b'{"batch":%d,"expires":%d}' % (want, _EXPIRES_NS)
        self._nc.write(pub(self._next, self._inbox, request))

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, header: bytes | None) -> None:
        self._active = now = self._loop.time()
        if not reply:
            self._on_status(header)
            return
        delivered, seq = ack_metadata(reply)  # raises on a stray non-JetStream message
        self._requested -= 1
        if self._closing:
            self._returned.append(reply)
            return
        self.last_seq = seq
        message = decode(self.topic, data, header, Delivery(delivered - 1, seq))
        self._held[reply] = now
        if self._loader.backlog is None and (data or OBJECT not in message.headers):
            self._dispatcher.put((message, reply))
        else:
            self._loader.add((message, reply))

    async def _handle(self, item: tuple[Message, bytes]) -> None:
        message, reply = item
        await self._handler(message)
        self._nc.write_soon(b"PUB " + reply + _ACK)
        self._held.pop(reply, None)
        if self._requested + len(self._held) <= self._low:
            self._pull()

    def _settle(self, reply: bytes, command: bytes) -> None:
        self._nc.write(command)
        self._held.pop(reply, None)
        if self._requested + len(self._held) <= self._low:
            self._pull()

    def _failed(self, item: tuple[Message, bytes], exc: Exception) -> None:
        message, reply = item
        delay = min(0.1 * 2**message.redelivered, 10.0)
        log.warning(
            "nats: handler failed on %s (id=%s): %s: %s; redelivery in %.1fs",
            self.topic,
            message.id,
            type(exc).__name__,
            exc,
            delay,
        )
        self._settle(reply, pub(reply, b"", b'-NAK {"delay":%d}' % int(delay * 1e9)))

    async def _load(self, item: tuple[Message, bytes]) -> tuple[Message, bytes] | None:
        message, reply = item
        if not _is_large(message):
            return item
        try:
            return await self._broker.jetstream.load_body(message), reply
        except LookupError as exc:
            log.error("nats: %s; delivering %s (id=%s) without it", exc, self.topic, message.id)
            return item
        except Exception as exc:
            log.warning(
                "nats: cannot load the body of %s (id=%s): %s; redelivering it later",
                self.topic,
                message.id,
                plain(exc),
            )
            self._settle(reply, pub(reply, b"", b'-NAK {"delay":%d}' % int(1e9)))
            return None

    # -- control messages, recovery, keep-alive ---------------------------------------------

    def _on_status(self, header: bytes | None) -> None:
        code = status(header)
        if code in (b"408", b"409", b"404") and header is not None:
            pending = header_int(header, b"Nats-Pending-Messages")
            self._requested = 0 if pending is None else max(self._requested - pending, 0)
            if code == b"409":
                if b"Consumer Deleted" in header:
                    self.recover()
                    return
                # e.g. "Exceeded MaxWaiting": pull again, but not in a tight loop
                log.debug("nats: pull on %s: %r", self.consumer, header)
                self._loop.call_later(0.5, self._pull_if_room)
                return
            self._pull_if_room()
        elif code == b"503":
            self.recover()

    def _pull_if_room(self) -> None:
        if self._requested + len(self._held) <= self._low:
            self._pull()

    def recover(self) -> None:
        """Re-check the consumer (re-create it if the server lost it), then pull anew.

        Called after a reconnect and when an open pull request went silent.
        """
        if self._closing:
            return
        if self._recovering is not None and not self._recovering.done():
            self._recovering.cancel()
        self._recovering = asyncio.create_task(self._recover(), name=f"eventbus:recover:{self}")

    async def _recover(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                consumer = await self._broker.jetstream.ensure_consumer(self)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "nats: cannot resume %r yet: %s; retrying in %.1fs", self, plain(exc), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._set_consumer(consumer)
            self._requested = 0
            self._pull_if_room()
            return

    def check(self, now: float, stale: float) -> None:
        """Periodic care (the broker's ticker): revive a silent pull; keep held messages.

        Messages held longer than ``stale`` seconds get ``+WPI`` so the server keeps them
        for this member instead of redelivering them after the ack wait.
        """
        if self._closing or not self._nc.is_connected:
            return
        if self._requested > 0 and now - self._active > _LOST:
            self._active = now
            self.recover()
        elif self._requested == 0:
            self._pull_if_room()
        held = self._held
        if not held:
            return
        old = []
        for reply, since in held.items():  # oldest first: insertion order
            if now - since < stale:
                break
            old.append(reply)
        for reply in old:
            del held[reply]
            held[reply] = now
            self._nc.write_soon(b"PUB " + reply + _WPI)

    async def close(self) -> None:
        """Let in-flight handlers finish (up to the grace period); NAK what was not handled.

        Messages taken but not handled go back to the consumer at once, so other members
        of the group get them without waiting for the ack wait. A fan-out
        subscription's ephemeral consumer is deleted. Safe to call twice.
        """
        if self._closing:
            return
        self._closing = True
        if self._recovering is not None:
            self._recovering.cancel()
        nc = self._nc
        stopping = asyncio.ensure_future(self._dispatcher.stop(self._broker.settings.grace))
        # End interest in the delivery inbox before NAKing: the server then drops our
        # open pull requests, so what we NAK goes to other members instead of straight
        # back to us. Messages arriving until the flush's PONG are kept in _returned.
        if self._sub is not None and not nc.is_closed:
            try:
                await self._sub.unsubscribe()
                if nc.is_connected:
                    await nc.flush(timeout=self._broker.settings.timeout)  # type: ignore[arg-type]  # nats-py says int; seconds as float work
            except Exception as exc:  # closing anyway; the ack wait redelivers stragglers
                log.debug("nats: unsubscribing %r: %s", self, plain(exc))
        nc.routes.pop(self._sid, None)
        left = await self._loader.close()
        left += await stopping
        for reply in [*(reply for _, reply in left), *self._returned]:
            nc.write(b"PUB " + reply + _NAK)
        self._held.clear()
        self._returned.clear()
        await self._broker.forget(self)


class CoreSubscription:
    """A core NATS subscription (``durable=False``, reply inboxes): at-most-once.

    With ``group`` it is a NATS queue group: each message goes to one member. A handler
    that raises cannot get the message again (core NATS keeps nothing); messages still
    buffered when the subscription closes are dropped, with a warning.
    """

    def __init__(
        self,
        broker: NatsBroker,
        topic: str,
        group: str | None,
        handler: Handler,
        *,
        concurrency: int = 1,
    ) -> None:
        self.topic = topic
        self.group = group
        self._broker = broker
        self._nc = broker.connection
        self._exact = "*" not in topic and ">" not in topic
        name = f"nats-core:{topic}:{group or 'fan-out'}"
        self._dispatcher: Dispatcher[Message] = Dispatcher(
            handler, concurrency=concurrency, name=name, on_error=self._failed
        )
        self._loader: Loader[Message] = Loader(self._dispatcher.put, self._load, name + ":loader")
        self._sub: NatsSubscription | None = None
        self._sid = 0
        self._closing = False
        self._dropped = 0

    def __repr__(self) -> str:
        return f"CoreSubscription({self.topic!r}, group={self.group!r})"

    async def start(self) -> None:
        """Subscribe; return once the server has the subscription (a PING round trip)."""
        nc = self._nc
        sub = await nc.subscribe(self.topic, queue=self.group or "")
        self._sub = sub
        self._sid = sub._id
        nc.routes[self._sid] = self._on_message  # messages wait in the dispatcher's buffer
        try:
            await nc.flush(timeout=self._broker.settings.timeout)  # type: ignore[arg-type]  # nats-py says int; seconds as float work
        except BaseException:
            nc.routes.pop(self._sid, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            raise
        self._dispatcher.start()

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, header: bytes | None) -> None:
        if self._closing:
            return
        dispatcher = self._dispatcher
        if dispatcher.pending >= CORE_LIMIT:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 10_000 == 0:
                log.warning(
                    "nats: %r is %d messages behind; dropped %d (durable=False keeps nothing: "
                    "raise concurrency or use durable topics)",
                    self,
                    dispatcher.pending,
                    self._dropped,
                )
            return
        message = decode(self.topic if self._exact else subject.decode(), data, header, None)
        if self._loader.backlog is None and (data or OBJECT not in message.headers):
            dispatcher.put(message)
        else:
            self._loader.add(message)

    def _failed(self, message: Message, exc: Exception) -> None:
        log.error(
            "nats: handler failed on %s (id=%s): %s: %s; durable=False: core NATS cannot "
            "redeliver it",
            self.topic,
            message.id,
            type(exc).__name__,
            exc,
        )

    async def _load(self, message: Message) -> Message | None:
        if not _is_large(message):
            return message
        try:
            return await self._broker.jetstream.load_body(message)
        except LookupError as exc:
            log.error("nats: %s; delivering %s (id=%s) without it", exc, self.topic, message.id)
            return message
        except Exception as exc:
            log.error(
                "nats: cannot load the body of %s (id=%s): %s; durable=False: dropped",
                self.topic,
                message.id,
                plain(exc),
            )
            return None

    async def close(self) -> None:
        """Unsubscribe, let in-flight handlers finish; buffered messages are dropped."""
        if self._closing:
            return
        self._closing = True
        nc = self._nc
        if self._sub is not None and not nc.is_closed:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("nats: unsubscribing %r: %s", self, plain(exc))
        nc.routes.pop(self._sid, None)
        left = await self._loader.close()
        left += await self._dispatcher.stop(self._broker.settings.grace)
        if left:
            log.warning(
                "nats: %r closed with %d message(s) not handled; durable=False: dropped",
                self,
                len(left),
            )
        await self._broker.forget(self)
