"""`KafkaBroker`: the ``kafka://`` adapter on confluent-kafka (librdkafka)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic is re-exported
    AdminClient,
    NewTopic,
)

from eventbus.broker import Capabilities, Handler
from eventbus.brokers.kafka.consumer import KafkaSubscription
from eventbus.brokers.kafka.options import KafkaOptions, bootstrap_servers
from eventbus.brokers.kafka.producer import ProducerBridge, ProducerFailed
from eventbus.brokers.kafka.replay import read_topic
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.message import Message, new_id, to_headers

__all__ = ["INBOX_PREFIX", "KafkaBroker"]

log = logging.getLogger("eventbus.kafka")

INBOX_PREFIX = "eventbus-inbox-"
"""Reply topics are named ``eventbus-inbox-<id>``: one per node, deleted when it closes."""

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _check_topic(topic: str) -> None:
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise ConfigurationError(
            f"{topic!r} is not a valid Kafka topic name: use 1-249 of A-Z a-z 0-9 . _ -"
        )


class KafkaBroker:
    """A connection to a Kafka cluster (``kafka://host:9092``, several hosts comma-separated).

    - Topics are created on demand (``partitions``, ``replication``); ``key`` is the
      native Kafka key (murmur2 partitioner, as the Java client), so one key's messages
      stay in one partition, in order.
    - Metadata travels as CloudEvents binary-mode Kafka headers (``ce_id``...).
    - `publish` returns once Kafka acknowledged the message (``acks=all``, idempotent
      producer); concurrent publishes share produce batches.
    - ``group=`` is the Kafka consumer group; without a group each subscription gets a
      group of its own (fan-out). Offsets are committed only for handled messages; a new
      group starts at the end; a group keeps its position while all members are away.
    - Replies go to a reply topic per node (``eventbus-inbox-<id>``), short retention,
      deleted on close.

    Args:
        url: ``kafka://h1:9092,h2:9092``.
        grace: Seconds `close` (and a revoke) wait for in-flight handlers.
        options: See `KafkaOptions`.

    Raises:
        ConfigurationError: a bad URL or an unknown or bad option.

    Example:
        >>> broker = KafkaBroker("kafka://localhost:9092", partitions=3)
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        retains=True, ordered_by_key=True, durable_groups=True, native_key=True
    )

    def __init__(self, url: str = "kafka://", *, grace: float = 10.0, **options: object) -> None:
        self.url = url
        self.bootstrap = bootstrap_servers(url)
        self.options = KafkaOptions.of(options)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ConfigurationError(f"grace must be a number of seconds >= 0, not {grace!r}")
        self.grace = float(grace)
        self._producer: ProducerBridge | None = None
        self._admin: AdminClient | None = None
        self._connecting: asyncio.Lock | None = None
        self._topics: set[str] = set()
        self._creating: dict[str, asyncio.Future[None]] = {}
        self._subscriptions: list[KafkaSubscription] = []
        self._retired: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaBroker({self.url!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the producer and check that the cluster answers. Safe to call twice.

        Raises:
            BrokerUnavailable: no broker answered within ``timeout`` seconds.
            ConfigurationError: librdkafka rejected a setting.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError("this KafkaBroker was closed; create a new one")
        if self._producer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._producer is not None:
                return
            try:
                settings: dict[str, Any] = {**self.options.admin(self.bootstrap), "logger": log}
                admin = AdminClient(settings)
            except (KafkaException, ValueError, TypeError) as exc:
                raise ConfigurationError(f"bad Kafka setting: {exc}") from None
            try:
                await asyncio.to_thread(admin.list_topics, timeout=self.options.timeout)
            except KafkaException as exc:
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {self.bootstrap} within {self.options.timeout:g}s: "
                    f"{exc.args[0].str() if exc.args else exc}"
                ) from None
            self._admin = admin
            self._producer = ProducerBridge(
                self.options.producer(self.bootstrap), self._replace_producer
            )

    async def close(self) -> None:
        """Close every subscription (in-flight handlers finish), flush, disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(sub.close() for sub in list(self._subscriptions)))
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close(self.grace)
        self._admin = None  # librdkafka closes its connections when the client is freed
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    # -- publishing --------------------------------------------------------------------

    async def publish(self, message: Message, **options: object) -> None:
        """Publish; return once Kafka acknowledged the message (``acks=all``).

        Options:
            durable: ``False`` returns as soon as the message is queued in the client
                (not acknowledged yet; a failure is only logged).

        Raises:
            BrokerUnavailable: no acknowledgement within ``publish_timeout`` seconds.
            UndeliverableError: a reply to an inbox topic that no longer exists.
            BrokerError: Kafka refused the message (too large, not authorized...).
            ClosedError: the broker was closed.
        """
        durable = True
        if options:
            durable = _publish_options(options)
        producer = self._producer
        if producer is None:
            producer = await self._open_producer(message.topic)
        topic = message.topic
        if topic not in self._topics:
            await self._prepare(topic)
        key = message.key
        args = (
            topic,
            message.body,
            None if key is None else key.encode(),
            to_headers(message, prefix="ce_", key=False),
        )
        fresh = False
        while True:
            try:
                if not durable:
                    producer.send_and_forget(*args)
                    return
                await producer.send(*args)
                producer.timeouts = 0
                return
            except BufferError:  # librdkafka's queue is full: wait for deliveries
                await producer.wait_for_space()
            except (KafkaException, ProducerFailed) as exc:
                # A fatal producer error (e.g. the broker lost the idempotent producer's
                # state in a restart): the message was not written; retry once on a new
                # producer (at-least-once allows the rare duplicate).
                if fresh or not (isinstance(exc, ProducerFailed) or _is_fatal(exc)):
                    raise _translate_publish(exc, topic) from exc
                fresh = True
                producer = self._replace_producer(producer)
            except (TopicNotFound, BrokerUnavailable) as exc:
                # Check the topic again next time: it may be gone (a reply topic that
                # was deleted, a broker that lost its data in a restart).
                self._topics.discard(topic)
                if isinstance(exc, BrokerUnavailable):
                    self._suspect(producer)
                if isinstance(exc, TopicNotFound) and topic.startswith(INBOX_PREFIX):
                    raise UndeliverableError(
                        f"nobody listens on reply topic {topic!r} any more"
                    ) from None
                raise
            if self._closed:
                raise ClosedError(f"cannot publish to {topic!r}: the broker is closed")

    async def _open_producer(self, topic: str) -> ProducerBridge:
        if self._closed:
            raise ClosedError(f"cannot publish to {topic!r}: the broker is closed")
        await self.connect()
        producer = self._producer
        assert producer is not None
        return producer

    async def publish_many(self, messages: Sequence[Message], **options: object) -> None:
        """Publish a batch; return once Kafka acknowledged every message.

        One wait for all delivery reports instead of one per message: the fastest way
        to publish many messages. Options as `publish`.

        Raises:
            BrokerUnavailable: some message got no acknowledgement within ``publish_timeout``.
            BrokerError: Kafka refused some message; others may have been written
                (publish the batch again: delivery is at-least-once).
            ClosedError: the broker was closed.
        """
        if options and not _publish_options(options):
            for message in messages:
                await self.publish(message, durable=False)
            return
        if not messages:
            return
        producer = self._producer
        if producer is None:
            producer = await self._open_producer(messages[0].topic)
        for topic in {m.topic for m in messages} - self._topics:
            await self._prepare(topic)
        for attempt in (1, 2):
            batch = producer.batch()
            try:
                for message, headers in zip(messages, _batch_headers(messages), strict=True):
                    key = message.key
                    args = (
                        message.topic,
                        message.body,
                        None if key is None else key.encode(),
                        headers,
                    )
                    while True:
                        try:
                            producer.send_to(batch, *args)
                            break
                        except BufferError:  # librdkafka's queue is full: wait for deliveries
                            await producer.wait_for_space()
                await producer.seal(batch)
                producer.timeouts = 0
                return
            except (KafkaException, ProducerFailed) as exc:
                # Settle what was queued before the failure; nobody awaits it any more.
                producer.seal(batch).add_done_callback(_retrieve)
                # A fatal producer error: retry the whole batch once on a new producer.
                if attempt == 2 or not (isinstance(exc, ProducerFailed) or _is_fatal(exc)):
                    raise _translate_publish(exc, messages[0].topic) from exc
                producer = self._replace_producer(producer)
            except (TopicNotFound, BrokerUnavailable) as exc:
                self._topics.difference_update({m.topic for m in messages})
                if isinstance(exc, BrokerUnavailable):
                    self._suspect(producer)
                raise
            if self._closed:
                raise ClosedError("cannot publish the batch: the broker is closed")

    def _suspect(self, producer: ProducerBridge) -> None:
        """Count a publish that timed out; after a few in a row, check the producer.

        An idempotent producer whose message timed out must bump its epoch before it can
        go on; a broker that cannot (Tansu after a restart) leaves it failing forever.
        If the cluster answers while the producer keeps timing out, replace it.
        """
        producer.timeouts += 1
        if producer.timeouts < 3 or producer.checking or self._closed:
            return
        producer.checking = True
        task = asyncio.ensure_future(self._check_producer(producer))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _check_producer(self, producer: ProducerBridge) -> None:
        admin = self._admin
        try:
            if admin is None:
                return
            await asyncio.to_thread(admin.list_topics, timeout=self.options.timeout)
        except KafkaException:
            return  # the cluster is down: the producer is not to blame
        finally:
            producer.checking = False
        if producer.timeouts >= 3 and self._producer is producer:
            log.warning(
                "kafka: the producer got no acknowledgement for %d publishes in a row while "
                "the cluster answers; replacing it",
                producer.timeouts,
            )
            self._replace_producer(producer)

    def _replace_producer(self, failed: ProducerBridge) -> ProducerBridge:
        """Swap a producer that failed (or is stuck) for a new one (on the loop)."""
        current = self._producer
        if current is not failed or self._closed:
            return current or failed
        self._producer = ProducerBridge(
            self.options.producer(self.bootstrap), self._replace_producer
        )
        failed.failed = True  # what it still holds fails with ProducerFailed: retried once
        task = asyncio.ensure_future(failed.close(0.0))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        return self._producer

    async def _prepare(self, topic: str) -> None:
        if topic.startswith(INBOX_PREFIX):
            if not await self._exists(topic):
                raise UndeliverableError(f"nobody listens on reply topic {topic!r} any more")
            self._topics.add(topic)
        else:
            await self.ensure_topic(topic)

    # -- topics ------------------------------------------------------------------------

    async def ensure_topic(
        self, topic: str, *, partitions: int | None = None, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``topic`` unless it exists (concurrent callers share one request).

        Raises:
            ConfigurationError: not a valid Kafka topic name.
            BrokerUnavailable: the cluster did not answer within ``timeout``.
            BrokerError: Kafka refused to create it.
        """
        if topic in self._topics:
            return
        _check_topic(topic)
        future = self._creating.get(topic)
        if future is None:
            future = asyncio.ensure_future(self._create(topic, partitions, config))
            self._creating[topic] = future
        try:
            await asyncio.shield(future)
        except BaseException:
            if future.done() and self._creating.get(topic) is future:
                del self._creating[topic]
            raise
        self._topics.add(topic)
        self._creating.pop(topic, None)

    async def _create(
        self, topic: str, partitions: int | None, config: Mapping[str, str] | None
    ) -> None:
        admin = self._admin
        if admin is None:
            await self.connect()
            admin = self._admin
            assert admin is not None
        settings = {"max.message.bytes": str(self.options.max_message_bytes), **(config or {})}
        new = NewTopic(
            topic,
            num_partitions=partitions or self.options.partitions,
            replication_factor=self.options.replication or -1,
            config=settings,
        )
        timeout = self.options.timeout
        futures = admin.create_topics([new], request_timeout=timeout)
        try:
            async with asyncio.timeout(timeout + 1.0):
                await asyncio.wrap_future(futures[topic])
        except TimeoutError:
            raise BrokerUnavailable(
                f"Kafka did not create topic {topic!r} within {timeout:g}s"
            ) from None
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if error.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                raise BrokerUnavailable(f"cannot create topic {topic!r}: {error.str()}") from None
            raise BrokerError(f"Kafka refused to create topic {topic!r}: {error.str()}") from None

    async def _exists(self, topic: str) -> bool:
        return await self._metadata(topic) is not None

    async def _metadata(self, topic: str) -> Any:
        """The topic's metadata (a ``TopicMetadata``), or ``None`` if it does not exist."""
        admin = self._admin
        assert admin is not None
        try:
            # The whole listing: asking for one topic can auto-create it on some brokers.
            metadata = await asyncio.to_thread(admin.list_topics, timeout=self.options.timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot read Kafka metadata: {exc}") from None
        found = metadata.topics.get(topic)
        return found if found is not None and found.error is None else None

    async def partitions(self, topic: str) -> list[int]:
        """The partition numbers of ``topic``.

        Raises:
            TopicNotFound: the topic does not exist.
            BrokerUnavailable: the cluster did not answer.
        """
        await self.connect()
        found = await self._metadata(topic)
        if found is None or not found.partitions:
            raise TopicNotFound(f"topic {topic!r} does not exist on Kafka at {self.bootstrap}")
        return sorted(found.partitions)

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> KafkaSubscription:
        """Consume ``topic``; return once this member has its partitions.

        With ``group`` (the Kafka consumer group id) each message goes to one member and
        the group keeps its committed position while all members are away; a new group
        starts at the end. Without, the subscription gets a group of its own (fan-out).

        Options:
            concurrency: handlers running at once (default 1); one key's messages are
                still handled one at a time, in order.
            durable: ``False`` commits nothing: a group rejoining starts at the end.

        Offsets are committed only past handled messages; a handler that raises gets its
        message again (``Delivery.redelivered`` counts, locally).

        Raises:
            ConfigurationError: an unknown or bad option, or a bad topic name.
            BrokerUnavailable: Kafka cannot be reached or the group did not assign.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        concurrency, durable = _subscribe_options(options)
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigurationError(f"group must be a non-empty str, not {group!r}")
        await self.connect()
        await self.ensure_topic(topic)
        sub = KafkaSubscription(
            topic,
            handler,
            group=group,
            group_id=group if group is not None else f"eventbus-fanout-{new_id()}",
            commits=group is not None and durable,
            concurrency=concurrency,
            options=self.options,
            bootstrap=self.bootstrap,
            grace=self.grace,
            on_closed=self._forget,
        )
        self._subscriptions.append(sub)
        await sub.start(max(self.options.timeout, self.options.max_poll_interval))
        return sub

    async def open_inbox(self, handler: Handler) -> KafkaSubscription:
        """Open this node's reply topic ``eventbus-inbox-<id>`` (1 partition, short retention).

        Read without a consumer group (no join delay); deleted when the inbox closes, so
        replies are never kept beyond ``inbox_retention``. A reply to a deleted inbox
        raises `UndeliverableError`; to an inbox whose node died without closing, it is
        written and expires with the topic's retention.
        """
        if self._closed:
            raise ClosedError("cannot open an inbox: the broker is closed")
        await self.connect()
        topic = INBOX_PREFIX + new_id()
        retention = str(int(self.options.inbox_retention * 1000))
        await self.ensure_topic(
            topic,
            partitions=1,
            config={"retention.ms": retention, "segment.ms": retention, "cleanup.policy": "delete"},
        )
        sub = KafkaSubscription(
            topic,
            handler,
            group=None,
            group_id=topic,
            commits=False,
            concurrency=1,
            options=self.options,
            bootstrap=self.bootstrap,
            grace=self.grace,
            assign_only=True,
            on_closed=self._forget_inbox,
        )
        self._subscriptions.append(sub)
        await sub.start(self.options.timeout)
        return sub

    def _forget(self, sub: KafkaSubscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def _forget_inbox(self, sub: KafkaSubscription) -> None:
        self._forget(sub)
        self._topics.discard(sub.topic)
        admin = self._admin
        if admin is None:
            return
        # Fire and forget: a reply topic left behind still expires with its retention.
        for future in admin.delete_topics(
            [sub.topic], request_timeout=self.options.timeout
        ).values():
            future.add_done_callback(_log_delete_failure)

    # -- replay ------------------------------------------------------------------------

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the topic's retained messages, each partition in offset order, from ``since`` on.

        Partitions are merged by message time, so a single publisher's messages come
        back in publish order; ``since`` filters exactly on ``Message.time``.

        Raises:
            TopicNotFound: the topic does not exist.
            BrokerUnavailable: the cluster cannot be reached.
        """
        partitions = await self.partitions(topic)
        config = self.options.consumer(self.bootstrap, f"eventbus-replay-{new_id()}")
        async for message in read_topic(config, topic, partitions, since, self.options.timeout):
            yield message


def _log_delete_failure(future: object) -> None:
    exc = future.exception()  # type: ignore[attr-defined]  # a concurrent.futures.Future
    if exc is not None:
        log.warning("kafka: could not delete a reply topic: %s", exc)


def _is_fatal(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (error.fatal() or error.code() == KafkaError._FATAL)


def _translate_publish(exc: Exception, topic: str) -> Exception:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            return BrokerError(
                f"the message to {topic!r} is larger than max_message_bytes allows: {error.str()}"
            )
        return BrokerError(f"Kafka refused the message to {topic!r}: {error.str()}")
    return BrokerError(f"the Kafka producer failed publishing to {topic!r}: {exc}")


def _publish_options(options: Mapping[str, object]) -> bool:
    unknown = sorted(set(options) - {"durable"})
    if unknown:
        raise ConfigurationError(
            f"unknown publish option(s) {', '.join(unknown)} for kafka://; it takes: durable"
        )
    durable = options["durable"]
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable must be a bool, not {durable!r}")
    return durable


def _subscribe_options(options: Mapping[str, object]) -> tuple[int, bool]:
    unknown = sorted(set(options) - {"concurrency", "durable"})
    if unknown:
        raise ConfigurationError(
            f"unknown subscribe option(s) {', '.join(unknown)} for kafka://; "
            "it takes: concurrency, durable"
        )
    concurrency = options.get("concurrency", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    durable = options.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable must be a bool, not {durable!r}")
    return concurrency, durable


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # mark it retrieved: the caller got the error another way


def _batch_headers(messages: Sequence[Message]) -> Iterator[dict[str, str]]:
    """The Kafka headers of each message of a batch, as `to_headers` gives them.

    A batch from `Publisher.publish_many` shares its source, type, time and content
    type, and has no per-message headers: those messages get a copy of one header
    dict with their own ``ce_id`` (five times cheaper than building each).
    """
    shared: dict[str, str] | None = None
    like: Message | None = None
    for message in messages:
        if message.headers or message.reply_to is not None or message.correlation_id is not None:
            yield to_headers(message, prefix="ce_", key=False)
            continue
        if (
            like is None
            or message.time is not like.time
            or message.source is not like.source
            or message.type is not like.type
            or message.content_type is not like.content_type
            or message.topic is not like.topic
        ):
            shared = to_headers(message, prefix="ce_", key=False)
            like = message
        assert shared is not None
        headers = shared.copy()
        headers["ce_id"] = message.id
        yield headers
