"""Handler lanes of a Kafka subscription, and the per-partition state behind its commits.

`Lanes` runs ``concurrency`` worker tasks: a keyed message always on the lane of its
key (so one key's messages are handled one at a time, in offset order), unkeyed
messages on any free lane. `PartitionState` tracks which offsets were taken and
handled, so only the contiguous handled prefix is ever committed. `decode` turns a
Kafka record into a `Message`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

import confluent_kafka
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from eventbus.broker import Handler
from eventbus.message import Delivery, Message, from_headers

__all__ = ["Item", "Lanes", "PartitionState", "decode", "settled", "stopped"]

log = logging.getLogger("eventbus.kafka")


class Owner(Protocol):
    """What the lanes need from their subscription."""

    @property
    def commit_timer(self) -> object | None:
        """The pending commit, or None when none is scheduled."""
        ...

    def release(self) -> None: ...
    def handled(self) -> None: ...
    def wake_revoke(self) -> None: ...


def decode(topic: str, raw: confluent_kafka.Message) -> Message:
    """Build a `Message` from a Kafka record: CloudEvents ``ce_`` headers, native key.

    A record without ``ce_time`` (a plain client's) gets the record's timestamp as time.
    Header values that are not UTF-8 are decoded with replacement characters.
    """
    # A received record's headers are always a list of (name, bytes | None) pairs.
    pairs: list[tuple[str, bytes | None]] | None = raw.headers()  # type: ignore[assignment]
    headers: dict[str, str]
    if not pairs:
        headers = {}
    else:
        try:  # the common case, at a quarter of the cost of passing an error handler
            headers = {name: value.decode() for name, value in pairs}  # type: ignore[union-attr]
        except (UnicodeDecodeError, AttributeError):  # not UTF-8, or a null value
            headers = {name: _text(value) for name, value in pairs}
    key = raw.key()
    delivery = _new_delivery(Delivery)
    _set_redelivered(delivery, 0)
    _set_offset(delivery, raw.offset())
    _set_partition(delivery, raw.partition())
    _set_raw(delivery, raw)
    message = from_headers(
        topic,
        raw.value() or b"",
        headers,
        key=None if key is None else _text(key),
        delivery=delivery,
    )
    if "ce_time" not in headers:
        kind, stamp = raw.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE:
            message = replace(message, time=datetime.fromtimestamp(stamp / 1000, UTC))
    return message


# Delivery is a frozen dataclass: its generated __init__ costs 2x these slot stores.
_new_delivery = object.__new__
_set_redelivered, _set_offset, _set_partition, _set_raw = (
    Delivery.__dict__[name].__set__ for name in ("redelivered", "offset", "partition", "raw")
)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class PartitionState:
    """Loop-side state of one assigned partition: what was taken and what was handled."""

    __slots__ = (
        "committed",
        "cutoff",
        "done",
        "highest",
        "next",
        "number",
        "received",
        "revoked",
        "running",
    )

    def __init__(self, number: int, start: int | None) -> None:
        self.number = number
        self.received: deque[int] = deque()  # offsets taken and not yet part of the prefix
        self.done: set[int] = set()  # handled offsets behind an unhandled one
        self.next = start  # the position when everything received was handled
        self.committed = start
        self.running = 0
        self.highest = -1  # the highest offset a handler started on
        self.revoked = False
        self.cutoff = 0  # once revoked: offsets below still get handled, the rest dropped

    def revoke(self) -> None:
        """Stop taking new work, but fill the gaps below the highest offset started, so
        the committed position covers everything handled (no re-handling by the next
        owner)."""
        self.revoked = True
        self.cutoff = self.highest + 1

    def is_settled(self) -> bool:
        """Revoked, nothing running, and every offset below the cutoff handled."""
        position = self.position()
        return not self.running and (position is None or position >= self.cutoff)

    def position(self) -> int | None:
        """The offset to commit: the first message not handled yet."""
        return self.received[0] if self.received else self.next

    def finish(self, offset: int) -> None:
        received = self.received
        if received and received[0] == offset:
            received.popleft()
            self.next = offset + 1
            done = self.done
            while done and received and received[0] in done:
                first = received.popleft()
                done.discard(first)
                self.next = first + 1
        else:
            self.done.add(offset)


Item = tuple[PartitionState, int, Message]


def settled(state: PartitionState) -> bool:
    return state.is_settled()


def stopped(state: PartitionState) -> bool:
    return not state.running


class Lanes:
    """``concurrency`` worker tasks; one key's messages always run on the same one, in order.

    A handler that raises gets its message again on the same lane (``redelivered``
    counts), after a short backoff, before anything queued behind it: a seek back
    without re-fetching. The offset is not committed past it meanwhile.
    """

    def __init__(self, sub: Owner, handler: Handler, concurrency: int) -> None:
        self._sub = sub
        self._handler = handler
        self._n = concurrency
        self._own: list[deque[Item]] = [deque() for _ in range(concurrency)]
        self._shared: deque[Item] = deque()
        self._waiting: list[asyncio.Future[None] | None] = [None] * concurrency
        self._idle: set[int] = set()
        self._current: list[Item | None] = [None] * concurrency
        self._abandon = [False] * concurrency
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    def start(self, name: str) -> None:
        for i in range(self._n):
            self._tasks.append(asyncio.create_task(self._work(i), name=f"{name}:{i}"))

    def put(self, item: Item, key: str | None) -> None:
        if self._n == 1:
            self._own[0].append(item)
            lane = 0
        elif key is None:
            self._shared.append(item)
            if not self._idle:
                return
            lane = next(iter(self._idle))
        else:
            lane = hash(key) % self._n
            self._own[lane].append(item)
        waiter = self._waiting[lane]
        if waiter is not None:
            self._waiting[lane] = None
            self._idle.discard(lane)
            if not waiter.done():
                waiter.set_result(None)

    async def _work(self, lane: int) -> None:
        own = self._own[lane]
        shared = self._shared
        sub = self._sub
        handler = self._handler
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        while not self.stopping:
            if own:
                item = own.popleft()
            elif shared:
                item = shared.popleft()
            else:
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiting[lane] = waiter
                self._idle.add(lane)
                try:
                    await waiter
                finally:
                    self._waiting[lane] = None
                    self._idle.discard(lane)
                continue
            state, offset, _ = item
            if state.revoked and offset >= state.cutoff:
                sub.release()
                continue
            self._current[lane] = item
            state.running += 1
            if offset > state.highest:
                state.highest = offset
            try:
                try:
                    await handler(item[2])
                except Exception as exc:
                    await self._retry(item, exc)
                else:
                    state.finish(offset)
                    if sub.commit_timer is None:
                        sub.handled()
            except asyncio.CancelledError:
                if not self._abandon[lane]:
                    raise
                # Cancelled by a revoke that could wait no longer: the partition's next
                # owner gets this message; this lane goes on with other partitions.
                self._abandon[lane] = False
                task.uncancel()
            finally:
                state.running -= 1
                self._current[lane] = None
                sub.release()
                if state.revoked:
                    sub.wake_revoke()

    async def _retry(self, item: Item, exc: Exception) -> None:
        """The handler raised: hand the message again, after a backoff, until it succeeds
        or its partition is given up (then the offset is not committed past it)."""
        state, offset, message = item
        attempt = 0
        while True:
            attempt += 1
            if state.revoked or self.stopping:
                state.cutoff = min(state.cutoff, offset)  # the position stops here
                log.warning(
                    "kafka: handler failed on %s[%d]@%d while its partition was given up: "
                    "%s: %s; the next owner gets it",
                    message.topic,
                    state.number,
                    offset,
                    type(exc).__name__,
                    exc,
                )
                return
            log.warning(
                "kafka: handler failed on %s[%d]@%d (id=%s): %s: %s; redelivery %d",
                message.topic,
                state.number,
                offset,
                message.id,
                type(exc).__name__,
                exc,
                attempt,
            )
            delivery = message.delivery or Delivery()
            message = replace(message, delivery=replace(delivery, redelivered=attempt))
            await asyncio.sleep(min(0.01 * 2**attempt, 1.0))
            if state.revoked or self.stopping:
                state.cutoff = min(state.cutoff, offset)
                return
            try:
                await self._handler(message)
            except Exception as again:
                exc = again
                continue
            state.finish(offset)
            self._sub.handled()
            return

    def abandon(self, states: Sequence[PartitionState]) -> int:
        """Cancel the handlers running for ``states``; returns how many were cancelled."""
        count = 0
        for lane, item in enumerate(self._current):
            if item is not None and item[0] in states:
                self._abandon[lane] = True
                self._tasks[lane].cancel()
                count += 1
        return count

    async def stop(self, grace: float) -> None:
        """Stop taking messages; running handlers get ``grace`` seconds, then are cancelled."""
        self.stopping = True
        for waiter in self._waiting:
            if waiter is not None:
                waiter.cancel()
        busy = [t for lane, t in enumerate(self._tasks) if self._current[lane] is not None]
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                task.cancel()
        for task in self._tasks:
            if not task.done() and task not in busy:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._shared.clear()
        for own in self._own:
            own.clear()
