"""`RedisSubscription`: one subscription to a stream, with or without a consumer group."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from eventbus.broker import Handler
from eventbus.brokers.redis.pipeline import UNAVAILABLE, pack
from eventbus.brokers.redis.wire import decode_entry, entries_of, refused
from eventbus.dispatch import Dispatcher
from eventbus.errors import BrokerError, ClosedError
from eventbus.message import Delivery, Message, new_id

if TYPE_CHECKING:
    from eventbus.brokers.redis.broker import RedisBroker

__all__ = ["RedisSubscription"]

log = logging.getLogger("eventbus")

HEIR = "eventbus.released"
"""The consumer that owns entries a closing member handed back, until one is reclaimed."""
_HEIR_IDLE_MS = 365 * 24 * 3600 * 1000  # "idle for a year": the next XAUTOCLAIM takes them

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

Item = tuple[bytes, Message]
"""What the dispatcher carries: the entry id and its message."""


class RedisSubscription:
    """A subscription to one stream: a reader feeding a `Dispatcher` of handler workers.

    The reader has a connection of its own. It asks for more entries when a worker
    is free (so a batch is as large as what arrived meanwhile, up to
    ``max(batch, concurrency)``) and, with a group, sends the acknowledgements of the
    handled entries in the same write. With a group it also, every
    ``reclaim_idle / 4`` seconds (at most 5 s), keeps the entries it holds claimed
    and reclaims those of dead members.
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
        self._concurrency = concurrency
        self._limit = max(options.batch, concurrency)
        self._dispatcher: Dispatcher[Item] = Dispatcher(
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
        try:
            if self._acks:
                await broker.call("XACK", self.topic, self.group, *self._acks, what="acknowledge")
                self._acks.clear()
            moved = await broker.call(
                "EVAL", _RELEASE, 1, self.topic, self.group, self.consumer, HEIR, _HEIR_IDLE_MS,
                what=f"hand entries of {self.topic!r} back to group {self.group!r}",
            )  # fmt: skip
        except (BrokerError, ClosedError) as exc:
            log.warning(
                "redis: %s; other members reclaim them after reclaim_idle=%gs",
                exc, self._options.reclaim_idle,
            )  # fmt: skip
            return
        if moved:
            log.info(
                "redis: %d unfinished entr%s of %r handed back to group %r",
                moved, "y" if moved == 1 else "ies", self.topic, self.group,
            )  # fmt: skip

    # -- reading -----------------------------------------------------------------------

    async def _read(self) -> None:
        conn = self._broker.connection()
        try:
            await self._read_on(conn)
        finally:
            await conn.disconnect(nowait=True)

    async def _read_on(self, conn: AbstractConnection) -> None:
        dispatcher = self._dispatcher
        block_ms = int(self._options.block * 1000)
        limit = self._options.block + self._options.timeout
        group, topic = self.group, self.topic
        backoff = 0.05
        while True:
            pending = dispatcher.pending
            if pending >= self._concurrency:  # no free worker: wait for one
                self._room.clear()
                self._wants_room = True
                await self._room.wait()
                continue
            count = self._limit - pending
            acks: list[bytes] = []
            commands: list[bytes] = []
            if group is not None:
                if self._acks:  # handled meanwhile: acknowledged in the same write
                    acks, self._acks = self._acks, []
                    commands.append(pack(("XACK", topic, group, *acks)))
                commands.append(pack((
                    "XREADGROUP", "GROUP", group, self.consumer, "COUNT", count,
                    "BLOCK", block_ms, "STREAMS", topic, ">",
                )))  # fmt: skip
            else:
                commands.append(pack((
                    "XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", topic, self._last_id,
                )))  # fmt: skip
            try:
                async with asyncio.timeout(limit):
                    await conn.send_packed_command(commands, check_health=False)
                    if acks:
                        try:
                            await conn.read_response()
                        except ResponseError as exc:  # the read's reply says more
                            log.debug("redis: XACK on %r refused: %s", topic, exc)
                        acks = []
                    reply = await conn.read_response()
            except ResponseError as exc:
                if group is not None and str(exc).startswith("NOGROUP"):
                    await self._recreate_group(backoff)
                else:
                    self._outage(refused(exc, f"read {topic!r}"))
                    await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception as exc:
                self._acks[:0] = acks  # perhaps not acknowledged: again with the next read
                if isinstance(exc, UNAVAILABLE):
                    self._outage(self._broker.unavailable(f"read {topic!r}", exc))
                else:  # a bug or a reply we cannot parse: say so, never stop reading
                    log.exception("redis: reading %r failed; retrying", topic)
                await conn.disconnect(nowait=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except BaseException:
                self._acks[:0] = acks
                raise
            if self._down:
                self._down = False
                log.warning("redis: reading %r again", topic)
            backoff = 0.05
            entries = entries_of(reply)
            if entries:
                self._take(entries, None)

    async def _recreate_group(self, backoff: float) -> None:
        # The stream or group vanished (deleted, or Redis lost its data): recreate it
        # from the start of whatever the stream holds now.
        log.warning("redis: group %r on %r is gone; recreating it", self.group, self.topic)
        try:
            await self._create_group("0")
        except BrokerError as exc:
            self._outage(exc)
            await asyncio.sleep(backoff)

    def _outage(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            log.warning("redis: %s; retrying", exc)

    def _take(self, entries: list[Any], counts: dict[bytes, int] | None) -> None:
        topic = self.topic
        put = self._dispatcher.put
        if self.group is None:
            for entry_id, fields in entries:
                put((entry_id, decode_entry(topic, entry_id, fields, 0)))
            self._last_id = entries[-1][0]
            return
        held = self._held
        now = time.monotonic()
        for entry in entries:
            if entry is None or entry[1] is None:  # deleted while pending (Redis 6.2)
                continue
            entry_id = entry[0]
            held[entry_id] = now
            redelivered = 0 if counts is None else counts.get(entry_id, 2) - 1
            put((entry_id, decode_entry(topic, entry_id, entry[1], redelivered)))

    async def _run(self, item: Item) -> None:
        await self._handler(item[1])
        if self.group is not None:
            entry_id = item[0]
            self._held.pop(entry_id, None)
            self._acks.append(entry_id)
        if self._wants_room and self._dispatcher.pending <= self._concurrency:
            # pending still counts this item: a worker is free now. The reader reads
            # next and carries the acknowledgements.
            self._wants_room = False
            self._room.set()
        elif self.group is not None and not self._ack_wanted.is_set():
            self._ack_wanted.set()  # the reader is busy: the acknowledging task sends them

    def _failed(self, item: Item, exc: Exception) -> None:
        entry_id, message = item
        count = message.redelivered + 1
        log.warning(
            "redis: handler failed on %s (id=%s): %s: %s; delivering it again (%d)",
            message.topic, message.id, type(exc).__name__, exc, count,
        )  # fmt: skip
        if self._wants_room and self._dispatcher.pending <= self._concurrency:
            self._wants_room = False
            self._room.set()
        # Back off a little so a handler that always fails cannot spin the loop.
        delay = min(0.01 * 2**count, 1.0)
        if self.group is None:
            raw = None if message.delivery is None else message.delivery.raw
            again = replace(message, delivery=Delivery(redelivered=count, raw=raw))
            asyncio.get_running_loop().call_later(delay, self._redeliver_local, entry_id, again)
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
                what=f"deliver {entry_id.decode()} of {self.topic!r} again",
            )  # fmt: skip
        except (BrokerError, ClosedError) as exc:
            self._held.pop(entry_id, None)  # pending still: reclaimed when idle
            log.warning("redis: %s; it is reclaimed after reclaim_idle", exc)
            return
        if not entries or entries[0] is None or entries[0][1] is None:
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
                    self._acks[:0] = ids  # kept for the next try (or the close)
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
        # Only entries idle that long: one another member took meanwhile stays with it.
        await self._broker.call(
            "XCLAIM", self.topic, self.group, self.consumer, int(half * 1000), *stale, "JUSTID",
            what=f"keep entries of {self.topic!r}",
        )  # fmt: skip
        for entry_id in stale:
            if entry_id in self._held:
                self._held[entry_id] = now

    async def _reclaim(self) -> None:
        """Take entries idle for ``reclaim_idle`` (their member died or handed them back)."""
        min_idle = int(self._options.reclaim_idle * 1000)
        cursor: bytes = b"0-0"
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
            fresh = [e for e in entries if e is not None and e[1] is not None]
            fresh = [e for e in fresh if e[0] not in self._held]
            if fresh:
                log.info(
                    "redis: reclaimed %d idle entr%s of %r for group %r",
                    len(fresh), "y" if len(fresh) == 1 else "ies", self.topic, self.group,
                )  # fmt: skip
                self._take(fresh, await self._delivery_counts(fresh))
            if cursor == b"0-0":
                return

    async def _delivery_counts(self, entries: list[Any]) -> dict[bytes, int]:
        rows = await self._broker.call(
            "XPENDING", self.topic, self.group, entries[0][0], entries[-1][0],
            len(entries) + len(self._held), self.consumer,
            what=f"read delivery counts on {self.topic!r}",
        )  # fmt: skip
        return {row[0]: row[3] for row in rows}
