"""Kafka subscriptions: one consumer thread each, bridged to handler lanes on the event loop.

librdkafka's consumer is driven from one thread per subscription: since
confluent-kafka 2.x every call on a consumer waits while another thread is inside
``poll()``, so the loop never calls it. The thread polls (GIL released while it
waits), decodes messages and posts them to the loop in batches; it also runs what the
loop queues for it (commits) and the rebalance callbacks, which ask the loop to stop
and account for a revoked partition before it is given up.

On the loop, messages go to ``concurrency`` worker tasks ("lanes"): a keyed message
always to the same lane, so one key's messages are handled one at a time in offset
order; unkeyed messages to any free lane. Offsets are committed only up to the first
message not yet handled in each partition (the contiguous handled prefix), every
``commit_interval`` and when a partition is revoked or the subscription closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import confluent_kafka
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from eventbus.broker import Handler
from eventbus.errors import BrokerUnavailable, ConfigurationError
from eventbus.message import Delivery, Message, from_headers

if TYPE_CHECKING:
    from eventbus.brokers.kafka.options import KafkaOptions

__all__ = ["KafkaSubscription", "decode"]

log = logging.getLogger("eventbus.kafka")

T = TypeVar("T")
Command = Callable[[confluent_kafka.Consumer], object]

_POLL = 0.1  # how long the thread waits for messages; also the latency of queued commands
_POLL_PAUSED = 0.005  # while paused for flow control, look again soon
_ROOM_WAIT = 0.5  # longest the thread waits for handlers to catch up before polling again
_BATCH = 500


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


class _Partition:
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


_Item = tuple[_Partition, int, Message]


def _settled(state: _Partition) -> bool:
    return state.is_settled()


def _stopped(state: _Partition) -> bool:
    return not state.running


class _Lanes:
    """``concurrency`` worker tasks; one key's messages always run on the same one, in order.

    A handler that raises gets its message again on the same lane (``redelivered``
    counts), after a short backoff, before anything queued behind it: a seek back
    without re-fetching. The offset is not committed past it meanwhile.
    """

    def __init__(self, sub: KafkaSubscription, handler: Handler, concurrency: int) -> None:
        self._sub = sub
        self._handler = handler
        self._n = concurrency
        self._own: list[deque[_Item]] = [deque() for _ in range(concurrency)]
        self._shared: deque[_Item] = deque()
        self._waiting: list[asyncio.Future[None] | None] = [None] * concurrency
        self._idle: set[int] = set()
        self._current: list[_Item | None] = [None] * concurrency
        self._abandon = [False] * concurrency
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    def start(self, name: str) -> None:
        for i in range(self._n):
            self._tasks.append(asyncio.create_task(self._work(i), name=f"{name}:{i}"))

    def put(self, item: _Item, key: str | None) -> None:
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

    async def _retry(self, item: _Item, exc: Exception) -> None:
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

    def abandon(self, states: Sequence[_Partition]) -> int:
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


class KafkaSubscription:
    """A live subscription: a group member (or a fan-out reader, or an inbox) on one topic.

    Offsets are committed only for handled messages (the contiguous handled prefix per
    partition). On a revoke, the partition's queued messages below the highest one
    already started are still handled (so the committed position covers everything
    handled and the next owner re-handles nothing), the rest are dropped, and the
    position is committed before the partition is given up; all within ``grace`` and
    the rebalance timeout, after which running handlers are cancelled. `close` lets
    running handlers finish (up to ``grace``) and commits the handled prefix.
    """

    def __init__(
        self,
        topic: str,
        handler: Handler,
        *,
        group: str | None,
        group_id: str,
        commits: bool,
        concurrency: int,
        options: KafkaOptions,
        bootstrap: str,
        grace: float,
        assign_only: bool = False,
        on_closed: Callable[[KafkaSubscription], None] | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.group_id = group_id
        self.outstanding = 0
        """Messages taken from Kafka and not yet handled or dropped (read by the thread)."""
        self._commits = commits
        self._options = options
        self._bootstrap = bootstrap
        self._grace = grace
        self._assign_only = assign_only
        self._on_closed = on_closed
        self._cooperative = options.assignment == "cooperative-sticky"
        self._lanes = _Lanes(self, handler, concurrency)
        self._partitions: dict[int, _Partition] = {}
        self._commands: deque[Command] = deque()
        self._local: dict[int, int] = {}  # last known positions, for partitions that come back
        self._final: list[TopicPartition] = []
        self._stop_thread = False
        self._thread_closing = False
        self._paused = False
        self._low = options.max_buffered // 2
        self._room = threading.Event()  # set by the loop when handlers caught up
        self._wants_room = False
        self._closed = False
        self.commit_timer: asyncio.TimerHandle | None = None
        """Pending commit of handled offsets (None: none scheduled)."""
        self._revoke_idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._joined: asyncio.Future[None] = self._loop.create_future()
        self._finished: asyncio.Future[None] = self._loop.create_future()
        self._consumer: confluent_kafka.Consumer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"KafkaSubscription({self.topic!r}, group={self.group!r})"

    # -- loop side ---------------------------------------------------------------------

    async def start(self, join_timeout: float) -> None:
        """Start consuming; return once the member has its (possibly empty) assignment.

        Raises:
            ConfigurationError: librdkafka rejected a consumer setting.
            BrokerUnavailable: no assignment within ``join_timeout`` seconds.
        """
        config = self._options.consumer(self._bootstrap, self.group_id)
        config.setdefault("logger", log)
        config["error_cb"] = self._on_error
        config["on_commit"] = self._on_commit
        try:
            self._consumer = confluent_kafka.Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Kafka consumer setting: {exc}") from None
        self._lanes.start(f"eventbus:kafka:{self.topic}")
        self._thread = threading.Thread(
            target=self._run, name=f"eventbus-kafka:{self.topic}", daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(join_timeout):
                await asyncio.shield(self._joined)
        except TimeoutError:
            await self.close()
            what = "the topic's partitions" if self._assign_only else f"group {self.group_id!r}"
            raise BrokerUnavailable(
                f"kafka: could not join {what} on {self.topic!r} within {join_timeout:g}s; "
                "is the cluster reachable?"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop taking messages, let running handlers finish (up to grace), commit, leave.

        Messages not handled are not committed, so the group's next owner gets them.
        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        if self.commit_timer is not None:
            self.commit_timer.cancel()
        await self._lanes.stop(self._grace)
        if self._commits:
            self._final = [
                TopicPartition(self.topic, s.number, position)
                for s in self._partitions.values()
                if (position := s.position()) is not None
            ]
        self._stop_thread = True
        if self._thread is not None:
            try:
                async with asyncio.timeout(self._options.timeout + self._grace):
                    await asyncio.shield(self._finished)
            except TimeoutError:
                log.warning("kafka: the consumer of %r did not stop in time", self.topic)
        if self._on_closed is not None:
            self._on_closed(self)

    def release(self) -> None:
        """A message was handled or dropped: wake the thread if it waits for room."""
        self.outstanding -= 1
        if self._wants_room and self.outstanding <= self._low:
            self._wants_room = False
            self._room.set()

    def handled(self) -> None:
        """A handler finished: make sure a commit is coming."""
        if self.commit_timer is None and self._commits:
            self.commit_timer = self._loop.call_later(self._options.commit_interval, self._commit)

    def wake_revoke(self) -> None:
        self._revoke_idle.set()

    def _commit(self) -> None:
        self.commit_timer = None
        offsets = []
        for state in self._partitions.values():
            position = state.position()
            if position is not None and position != state.committed:
                state.committed = position
                offsets.append(TopicPartition(self.topic, state.number, position))
        if offsets:
            self._commands.append(
                lambda consumer: consumer.commit(offsets=offsets, asynchronous=True)
            )

    def _receive(self, items: list[tuple[int, int, Message]]) -> None:
        if self._closed:
            return
        partitions = self._partitions
        put = self._lanes.put
        taken = 0
        for number, offset, message in items:
            state = partitions.get(number)
            if state is None:  # not ours any more
                continue
            state.received.append(offset)
            put((state, offset, message), message.key)
            taken += 1
        self.outstanding += taken

    def _assigned(self, starts: dict[int, int]) -> None:
        for number, start in starts.items():
            self._partitions[number] = _Partition(number, start if start >= 0 else None)

    def _mark_joined(self, error: BaseException | None = None) -> None:
        if not self._joined.done():
            if error is None:
                self._joined.set_result(None)
            else:
                self._joined.set_exception(error)

    async def _revoke(self, numbers: list[int]) -> dict[int, int]:
        states = [s for n in numbers if (s := self._partitions.pop(n, None)) is not None]
        for state in states:
            state.revoke()
        if not all(s.is_settled() for s in states):
            wait = min(self._grace, self._options.revoke_timeout)
            if not await self._wait_idle(states, wait, _settled):
                for state in states:
                    state.cutoff = 0  # take nothing more of these partitions
                cancelled = self._lanes.abandon(states)
                log.warning(
                    "kafka: %d handler(s) on %r still ran %gs after their partitions were "
                    "revoked; cancelled, the next owner handles those messages again",
                    cancelled,
                    self.topic,
                    wait,
                )
                await self._wait_idle(states, 5.0, _stopped)
        return {s.number: p for s in states if (p := s.position()) is not None}

    async def _wait_idle(
        self, states: list[_Partition], timeout: float, done: Callable[[_Partition], bool]
    ) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not all(done(s) for s in states):
                    self._revoke_idle.clear()
                    await self._revoke_idle.wait()
        except TimeoutError:
            return False
        return True

    def _set_finished(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    # -- thread side -------------------------------------------------------------------

    def _call(self, fn: Callable[..., object], *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody to deliver to
            self._stop_thread = True
            return False
        return True

    def _ask(self, coro: Coroutine[Any, Any, T], timeout: float) -> T | None:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            return None
        try:
            return future.result(timeout)
        except Exception as exc:
            future.cancel()
            log.warning(
                "kafka: the event loop did not answer a rebalance of %r: %r", self.topic, exc
            )
            return None

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            if self._assign_only:
                self._assign_all(consumer)
            else:
                consumer.subscribe(
                    [self.topic],
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
            self._poll(consumer)
        except Exception as exc:
            log.exception("kafka: the consumer of %r failed", self.topic)
            self._call(self._mark_joined, BrokerUnavailable(f"kafka consumer failed: {exc}"))
        finally:
            self._shutdown(consumer)
            self._call(self._set_finished)

    def _poll(self, consumer: confluent_kafka.Consumer) -> None:
        commands = self._commands
        high = self._options.max_buffered
        low = self._low
        topic = self.topic
        while not self._stop_thread:
            while commands:
                try:
                    commands.popleft()(consumer)
                except KafkaException as exc:
                    log.warning("kafka: consumer of %r: %s", topic, exc)
            if self._paused:
                if self.outstanding <= low:
                    consumer.resume(consumer.assignment())
                    self._paused = False
            elif self.outstanding >= 2 * high:
                # Handlers are far behind: stop fetching (librdkafka drops what it had
                # prefetched and fetches it again on resume).
                consumer.pause(consumer.assignment())
                self._paused = True
            elif self.outstanding >= high:
                # Let the handlers catch up, keeping librdkafka's prefetched messages;
                # poll again after a while anyway (rebalances, max.poll.interval.ms).
                self._room.clear()
                self._wants_room = True
                if self.outstanding >= high:
                    self._room.wait(_ROOM_WAIT)
                self._wants_room = False
            first = consumer.poll(_POLL_PAUSED if self._paused else _POLL)
            if first is None:
                continue
            batch = consumer.consume(_BATCH - 1, 0)
            batch.insert(0, first)
            items = []
            for raw in batch:
                error = raw.error()
                if error is None:
                    items.append((raw.partition(), raw.offset(), decode(topic, raw)))
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: consumer of %r: %s", topic, error.str())
            if items and not self._call(self._receive, items):
                return

    def _assign_all(self, consumer: confluent_kafka.Consumer) -> None:
        metadata = consumer.list_topics(self.topic, timeout=self._options.timeout)
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise BrokerUnavailable(f"kafka: topic {self.topic!r} has no partitions")
        starts = [TopicPartition(self.topic, n, OFFSET_BEGINNING) for n in sorted(found.partitions)]
        self._call(self._assigned, {tp.partition: tp.offset for tp in starts})
        consumer.assign(starts)
        self._call(self._mark_joined)

    def _on_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        try:
            if partitions:
                try:
                    starts = self._start_offsets(consumer, partitions)
                except KafkaException as exc:
                    log.warning(
                        "kafka: could not read the positions of group %r on %r (%s); "
                        "resuming from its committed offsets or the earliest",
                        self.group_id,
                        self.topic,
                        exc,
                    )
                    starts = [
                        TopicPartition(self.topic, tp.partition, OFFSET_STORED) for tp in partitions
                    ]
                self._call(self._assigned, {tp.partition: tp.offset for tp in starts})
                if self._cooperative:
                    consumer.incremental_assign(starts)
                else:
                    consumer.assign(starts)
                if self._paused:
                    consumer.pause(starts)
        except Exception:
            log.exception("kafka: assigning partitions of %r failed", self.topic)
        finally:
            self._call(self._mark_joined)

    def _start_offsets(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        """Where to start each partition: committed, else where we were, else the end.

        A new group starts at the end, and that position is committed at once so the
        group keeps it even if every member leaves before a message arrives. A group
        whose commit vanished re-reads the partition (at-least-once after data loss).
        """
        topic = self.topic
        timeout = self._options.timeout
        committed = consumer.committed(partitions, timeout=timeout) if self._commits else partitions
        starts: list[TopicPartition] = []
        missing: list[TopicPartition] = []
        for tp in committed:
            if self._commits and tp.offset >= 0:
                starts.append(TopicPartition(topic, tp.partition, tp.offset))
            elif tp.partition in self._local and self._commits:
                # This group had committed here (at the latest when it got the partition)
                # and the commit is gone: the cluster lost data (a broker restarted empty).
                # Offsets start over, so the old position means nothing: read it all.
                log.warning(
                    "kafka: group %r lost its committed offset on %s[%d] (did the cluster "
                    "lose data?); reading that partition from its earliest offset",
                    self.group_id,
                    topic,
                    tp.partition,
                )
                starts.append(TopicPartition(topic, tp.partition, OFFSET_BEGINNING))
            elif tp.partition in self._local:
                starts.append(TopicPartition(topic, tp.partition, self._local[tp.partition]))
            else:
                missing.append(TopicPartition(topic, tp.partition, OFFSET_END))
        if missing:
            ends = consumer.offsets_for_times(missing, timeout=timeout)
            known = [
                TopicPartition(topic, tp.partition, tp.offset) for tp in ends if tp.offset >= 0
            ]
            if self._commits and known:
                consumer.commit(offsets=known, asynchronous=False)
            starts.extend(known)
            resolved = {tp.partition for tp in known}
            starts.extend(tp for tp in missing if tp.partition not in resolved)
        return starts

    def _on_revoke(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        self._give_up(consumer, partitions, commit=True)

    def _on_lost(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        # Lost (fenced, session timed out): they may already be someone else's, so there
        # is nothing to commit; still stop handling them.
        self._give_up(consumer, partitions, commit=False)

    def _give_up(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition], *, commit: bool
    ) -> None:
        if self._thread_closing or not partitions:
            return
        numbers = [tp.partition for tp in partitions]
        wait = min(self._grace, self._options.revoke_timeout) + 10.0
        positions = self._ask(self._revoke(numbers), wait)
        if not positions:
            return
        self._local.update(positions)
        if commit and self._commits:
            offsets = [TopicPartition(self.topic, n, p) for n, p in positions.items()]
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning(
                    "kafka: could not commit revoked partitions of %r (%s); their next owner "
                    "may handle some messages again",
                    self.topic,
                    exc,
                )

    def _shutdown(self, consumer: confluent_kafka.Consumer) -> None:
        self._thread_closing = True
        if self._final:
            try:
                consumer.commit(offsets=self._final, asynchronous=False)
            except KafkaException as exc:
                log.warning("kafka: final commit on %r failed: %s", self.topic, exc)
        try:
            consumer.close()
        except Exception as exc:
            log.warning("kafka: closing the consumer of %r: %s", self.topic, exc)

    def _on_error(self, error: KafkaError) -> None:
        log.warning("kafka consumer (%s): %s", self.topic, error.str())

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.warning("kafka: commit on %r failed: %s", self.topic, error.str())
