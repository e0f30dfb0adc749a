"""The JetStream side of eventbus topics: streams on demand, consumers, replay, large bodies.

`JetStream` holds what one `NatsBroker` connection needs from JetStream's management
API; the per-message paths (publish acknowledgements, pulls, acks) are in `broker` and
`subscriptions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    ObjectStoreConfig,
    StreamConfig,
)
from nats.js.object_store import ObjectStore

from eventbus.brokers.nats.settings import Settings, quietly, translated
from eventbus.brokers.nats.wire import (
    OBJECT,
    Connection,
    consumer_name,
    decode,
    encode_headers,
    pub,
    stream_name,
)
from eventbus.errors import BrokerError, BrokerUnavailable, ConfigurationError, EncodeError
from eventbus.message import Delivery, Message, format_time, new_id

if TYPE_CHECKING:
    from eventbus.brokers.nats.subscriptions import JetStreamSubscription

__all__ = ["API", "JetStream"]

log = logging.getLogger("eventbus")

API = "$JS.API"
"""JetStream's API subject prefix (no domain)."""
_MAX_ACK_PENDING = 20_000
_EPHEMERAL_IDLE = 300.0
"""Seconds before the server drops the ephemeral consumer of a fan-out subscriber that
went away without closing (a killed process)."""
_CLOCK_SKEW = timedelta(minutes=1)
"""How far publishers' clocks may run ahead of the server's for `replay` ``since``: the
server starts that much earlier (by its own timestamps), eventbus then filters exactly."""


class JetStream:
    """JetStream management for one connection (see the module docs)."""

    def __init__(self, nc: Connection, settings: Settings) -> None:
        self.context: JetStreamContext = nc.jetstream(timeout=settings.timeout)
        """nats-py's JetStream context on the connection."""
        self._nc = nc
        self._settings = settings
        self._store: ObjectStore | None = None
        self._stores: dict[str, ObjectStore] = {}

    def _translated(self, doing: str) -> translated:
        return translated(doing, self._settings.url)

    # -- streams -----------------------------------------------------------------------------

    async def find_stream(self, topic: str) -> str | None:
        """The stream that captures ``topic``, or ``None``."""
        async with self._translated(f"finding the JetStream stream of {topic!r}"):
            try:
                name: str = await self.context.find_stream_name_by_subject(topic)
            except nats.js.errors.NotFoundError:
                return None
            return name

    async def stream_for(self, topic: str) -> str:
        """The stream that captures ``topic``; eventbus creates one if there is none.

        Raises:
            BrokerError: JetStream is off, or refused to create the stream.
            BrokerUnavailable: NATS cannot be reached.
        """
        found = await self.find_stream(topic)
        if found is not None:
            return found
        settings = self._settings
        name = stream_name(topic)
        config = StreamConfig(
            name=name,
            description=f"eventbus topic {topic}",
            subjects=[topic],
            storage=settings.storage,
            num_replicas=settings.replicas,
            max_age=settings.max_age,
            max_msgs=settings.max_msgs,
            max_bytes=settings.max_bytes,
            discard=DiscardPolicy.OLD,
        )
        async with self._translated(f"creating the JetStream stream of {topic!r}"):
            try:
                await self.context.add_stream(config)
            except nats.js.errors.BadRequestError:  # created meanwhile, or a name clash
                found = await self.find_stream(topic)
                if found is None:
                    raise BrokerError(
                        f"cannot create JetStream stream {name!r} for topic {topic!r}: a stream "
                        "of that name exists for other subjects"
                    ) from None
                return found
        log.info("nats: created JetStream stream %s for topic %s", name, topic)
        return name

    # -- consumers ---------------------------------------------------------------------------

    def _config(self, topic: str, **settings: Any) -> ConsumerConfig:
        return ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=topic,
            ack_wait=self._settings.ack_wait,
            max_deliver=-1,
            max_ack_pending=_MAX_ACK_PENDING,
            **settings,
        )

    def _ephemeral(self, topic: str, **start: Any) -> ConsumerConfig:
        return self._config(
            topic,
            inactive_threshold=_EPHEMERAL_IDLE,
            mem_storage=True,
            description=f"eventbus fan-out subscriber of {topic}",
            **start,
        )

    async def create_consumer(
        self, stream: str, topic: str, group: str | None, start: dict[str, Any] | None = None
    ) -> ConsumerInfo:
        """A fan-out subscriber's ephemeral consumer, or ``group``'s durable one (joined if
        it exists). Both start at new messages unless ``start`` says otherwise.

        Raises:
            ConfigurationError: the group's consumer exists for another subject.
            BrokerError, BrokerUnavailable: JetStream refused, or cannot be reached.
        """
        start = start or {"deliver_policy": DeliverPolicy.NEW}
        js = self.context
        async with self._translated(f"creating a consumer on {topic!r}"):
            if group is None:
                info: ConsumerInfo = await js.add_consumer(stream, self._ephemeral(topic, **start))
                return info
            # In eventbus's own stream the group name is unique; a shared stream (one that
            # captures other subjects too) needs the topic in the name as well.
            own = stream == stream_name(topic)
            name = consumer_name(group if own else f"{group}.{topic}")
            try:
                info = await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                config = self._config(
                    topic,
                    durable_name=name,
                    description=f"eventbus group {group} on {topic}",
                    **start,
                )
                try:
                    info = await js.add_consumer(stream, config)
                    return info
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
        async with self._translated(f"checking consumer {sub.consumer!r}"):
            try:
                await self.context.consumer_info(sub.stream, sub.consumer)
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
        info = await self.create_consumer(sub.stream, sub.topic, sub.group, resume)
        return info.name

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Delete a consumer (a closed fan-out subscriber's); errors are only logged."""
        await quietly(self.context.delete_consumer(stream, name))

    # -- large bodies --------------------------------------------------------------------

    async def store_body(self, message: Message, limit: int) -> bytes:
        """Put the body in the object store; return the header block that points to it.

        Raises:
            EncodeError: even the headers alone exceed ``limit``.
            BrokerError, BrokerUnavailable: the object store refused or cannot be reached.
        """
        store = await self._object_store()
        name = new_id()
        async with self._translated(f"storing the {len(message.body)}-byte body of a message"):
            await store.put(name, message.body)
        header = encode_headers(message, f"{OBJECT}: {self._settings.object_bucket}/{name}\r\n")
        if len(header) > limit:
            raise EncodeError(
                f"the headers of the message to {message.topic!r} take {len(header)} bytes, "
                f"more than the server's max_payload of {limit}"
            )
        return header

    async def _object_store(self) -> ObjectStore:
        if self._store is not None:
            return self._store
        settings = self._settings
        bucket = settings.object_bucket
        async with self._translated(f"opening object store bucket {bucket!r}"):
            try:
                store = await self.context.object_store(bucket)
            except nats.js.errors.NotFoundError:
                config = ObjectStoreConfig(
                    description="eventbus: message bodies larger than max_payload",
                    ttl=settings.max_age,
                    storage=settings.storage,
                    replicas=settings.replicas,
                )
                store = await self.context.create_object_store(bucket, config)
        self._store = store
        return store

    async def load_body(self, message: Message) -> Message:
        """Return ``message`` with its body loaded from the object store.

        Raises:
            LookupError: the object is gone (expired or deleted).
            BrokerUnavailable: the object store cannot be reached.
        """
        bucket, _, name = message.headers[OBJECT].partition("/")
        async with self._translated(f"loading the body of {message.topic!r}"):
            try:
                store = self._stores.get(bucket)
                if store is None:
                    store = self._stores[bucket] = await self.context.object_store(bucket)
                result = await store.get(name)
            except nats.js.errors.NotFoundError:
                raise LookupError(
                    f"the body of {message.topic!r} (id={message.id}) is gone from object "
                    f"store {bucket!r} (object {name!r})"
                ) from None
        headers = {k: v for k, v in message.headers.items() if k != OBJECT}
        return replace(message, body=result.data or b"", headers=headers)

    # -- replay ------------------------------------------------------------------------------

    async def replay(
        self, stream: str, topic: str, since: datetime | None
    ) -> AsyncIterator[Message]:
        """Yield ``topic``'s messages in ``stream`` (see `NatsBroker.replay`)."""
        settings: dict[str, Any] = {"deliver_policy": DeliverPolicy.ALL}
        if since is not None:
            settings = {
                "deliver_policy": DeliverPolicy.BY_START_TIME,
                "opt_start_time": format_time(since - _CLOCK_SKEW),  # text for every nats-py
            }
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            filter_subject=topic,
            inactive_threshold=60.0,
            mem_storage=True,
            description=f"eventbus replay of {topic}",
            **settings,
        )
        async with self._translated(f"replaying {topic!r}"):
            info = await self.context.add_consumer(stream, config)
        nc = self._nc
        timeout = self._settings.timeout
        queue: asyncio.Queue[tuple[bytes, bytes, bytes | None]] = asyncio.Queue()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        nc.routes[sub._id] = lambda subject, reply, data, header: queue.put_nowait(
            (reply, data, header)
        )
        pull = f"{API}.CONSUMER.MSG.NEXT.{stream}.{info.name}".encode()
        remaining = info.num_pending or 0
        try:
            while remaining > 0:
                batch = min(remaining, 512)
                request = b'{"batch":%d,"expires":%d}' % (batch, int(timeout * 1e9))
                nc.write(pub(pull, inbox.encode(), request))
                for _ in range(batch):
                    try:
                        async with asyncio.timeout(timeout + 1.0):
                            reply, data, header = await queue.get()
                    except TimeoutError:
                        raise BrokerUnavailable(
                            f"replay of {topic!r} stalled: no message from JetStream within "
                            f"{timeout:g}s"
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
            await quietly(sub.unsubscribe())
            await quietly(self.context.delete_consumer(stream, info.name))
