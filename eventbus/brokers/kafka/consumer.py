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
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import confluent_kafka
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from eventbus.broker import Handler
from eventbus.brokers.kafka.lanes import Lanes, PartitionState, decode, settled, stopped
from eventbus.errors import BrokerUnavailable, ConfigurationError
from eventbus.message import Message

if TYPE_CHECKING:
    from eventbus.brokers.kafka.options import KafkaOptions

__all__ = ["KafkaSubscription"]

log = logging.getLogger("eventbus.kafka")

T = TypeVar("T")
Command = Callable[[confluent_kafka.Consumer], object]

_POLL = 0.1  # how long the thread waits for messages; also the latency of queued commands
_POLL_PAUSED = 0.005  # while paused for flow control, look again soon
_ROOM_WAIT = 0.5  # longest the thread waits for handlers to catch up before polling again
_BATCH = 500


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
        # Messages posted by the thread (counted there, before the loop sees them) and
        # released by the loop (handled or dropped): each counter has a single writer.
        self._posted = 0
        self._released = 0
        self._commits = commits
        self._options = options
        self._bootstrap = bootstrap
        self._grace = grace
        self._assign_only = assign_only
        self._on_closed = on_closed
        self._cooperative = options.assignment == "cooperative-sticky"
        self._lanes = Lanes(self, handler, concurrency)
        self._partitions: dict[int, PartitionState] = {}
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
        self._released += 1
        if self._wants_room and self._posted - self._released <= self._low:
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

    @property
    def outstanding(self) -> int:
        """Messages taken from Kafka and not yet handled or dropped."""
        return self._posted - self._released

    def _receive(self, items: list[tuple[int, int, Message]]) -> None:
        if self._closed:
            self._released += len(items)
            return
        partitions = self._partitions
        put = self._lanes.put
        for number, offset, message in items:
            state = partitions.get(number)
            if state is None:  # not ours any more
                self._released += 1
                continue
            state.received.append(offset)
            put((state, offset, message), message.key)

    def _assigned(self, starts: dict[int, int]) -> None:
        for number, start in starts.items():
            self._partitions[number] = PartitionState(number, start if start >= 0 else None)

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
            if not await self._wait_idle(states, wait, settled):
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
                await self._wait_idle(states, 5.0, stopped)
        return {s.number: p for s in states if (p := s.position()) is not None}

    async def _wait_idle(
        self, states: list[PartitionState], timeout: float, done: Callable[[PartitionState], bool]
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
            if items:
                self._posted += len(items)
                if not self._call(self._receive, items):
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
