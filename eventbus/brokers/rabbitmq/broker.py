"""`RabbitMQBroker`: eventbus on RabbitMQ through aio-pika's robust connection.

Topology:

- Every message goes to one durable topic exchange (``eventbus`` by default) with the
  topic as routing key, as a persistent message, with publisher confirms: `publish`
  returns once RabbitMQ has the message.
- A group is a durable queue ``<topic>.<group>`` bound to the topic: its members
  compete for its messages, and it keeps them while all members are away.
- A subscription without group gets an exclusive, auto-deleted queue
  ``<topic>:fanout:<id>``: every message published after it went live.
- Replies use direct reply-to (``amq.rabbitmq.reply-to``): no reply queue at all.
- Topics opted in with ``streams=`` also get a stream queue ``<topic>:stream`` that
  retains everything published to them, for `replay`.

aio-pika reconnects after a restart; declarations are restored by aio-pika and each
consumer registers itself again (see ``consumer.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from eventbus.broker import Capabilities, Handler
from eventbus.brokers.rabbitmq.consumer import RabbitMQInbox, RabbitMQSubscription
from eventbus.brokers.rabbitmq.options import BrokerOptions, publish_durable, subscribe_options
from eventbus.brokers.rabbitmq.replay import StreamReader, StreamStopped
from eventbus.brokers.rabbitmq.topology import DEAD_LETTER_GROUP, Topology
from eventbus.brokers.rabbitmq.wire import DIRECT_REPLY_TO, properties
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    ReplayNotSupported,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.message import DLQ_TOPIC, Message, new_id

__all__ = ["DEAD_LETTER_GROUP", "RabbitMQBroker"]

log = logging.getLogger("eventbus")

_GRACE = 10.0
_REOPEN_POLL = 0.05
_CHANNEL_ERRORS = (aiormq.exceptions.AMQPChannelError,)
_CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)


class RabbitMQBroker:
    """A connection to RabbitMQ (``amqp://`` or ``amqps://``). See the module docs.

    Args:
        url: ``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS); query
            parameters go to aio-pika (``heartbeat``, ``name``...).
        grace: Seconds `close` waits for in-flight handlers.
        exchange: The topic exchange every topic lives on (default ``eventbus``).
        confirm: Publisher confirms (default on): `publish` returns once RabbitMQ has
            the message. Off, it returns once the message is written to the socket.
        timeout: Seconds to connect, and for each publish (confirm included), before
            `BrokerUnavailable` (default 10).
        reconnect_interval: Seconds between reconnection attempts (default 1).
        streams: Topics that also get a stream queue, so `replay` works on them:
            ``True`` for every topic, or AMQP topic patterns (``["orders.#"]``).
        stream_max_age: Retention of those streams (RabbitMQ's ``x-max-age``, e.g.
            ``"7D"``); unlimited by default.
        stream_max_bytes: Size limit of each stream (``x-max-length-bytes``).
        queue_type: ``"classic"`` (default) or ``"quorum"`` (replicated, counts
            deliveries) for the durable group queues.

    Subscribe options: ``concurrency`` (handlers at once, default 1), ``durable``
    (default ``True``; ``False`` makes a group's queue go away with its last member)
    and ``prefetch`` (unacknowledged messages per subscription; default
    ``max(20, 4 * concurrency)``). Publish option: ``durable=False`` publishes a
    transient message without waiting for a confirm (at-most-once, fastest).

    Raises:
        ConfigurationError: an unknown option or a bad value.

    Example:
        >>> broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1:5672/", streams=["audit.#"])
    """

    capabilities: Capabilities
    """``retains`` is true when every topic has a stream (``streams=True``)."""

    def __init__(self, url: str, *, grace: float = _GRACE, **options: object) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"RabbitMQBroker takes amqp:// or amqps:// URLs, not {url!r}")
        self.options = BrokerOptions.parse(options)
        self.url = url
        self.grace = grace
        self.exchange = self.options.exchange
        self.timeout = self.options.timeout
        self.reconnect_interval = self.options.reconnect_interval
        self.capabilities = Capabilities(
            retains=self.options.streams is True, ordered_by_key=False, durable_groups=True
        )
        self._where = f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 5672}"
        self._topology = Topology(self.options, where=self._where)
        self._connection: AbstractRobustConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._publish_underlay: AbstractChannel | None = None
        self._fast_channel: AbstractRobustChannel | None = None
        self._fast_underlay: AbstractChannel | None = None
        self._unroutable: set[str] = set()
        self._subscriptions: set[RabbitMQSubscription] = set()
        self._inbox: RabbitMQInbox | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self._where!r}, exchange={self.exchange!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, open the publish channel and declare the exchange. Idempotent.

        Raises:
            BrokerUnavailable: RabbitMQ cannot be reached within ``timeout``.
            BrokerError: RabbitMQ refused the login or the virtual host.
            ConfigurationError: the exchange exists with another type.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError("this RabbitMQBroker was closed; create a new one")
        if self._connection is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None:
                await self._open()

    async def _open(self) -> None:
        try:
            connection = await aio_pika.connect_robust(
                self.url,
                timeout=self.timeout,
                reconnect_interval=self.reconnect_interval,
            )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerError(
                f"RabbitMQ at {self._where} refused the login ({exc}); "
                "check the user and password in the URL"
            ) from exc
        except aiormq.exceptions.ConnectionNotAllowed as exc:
            raise BrokerError(
                f"RabbitMQ at {self._where} refused the connection ({exc}); "
                "check the virtual host in the URL and the user's permissions"
            ) from exc
        except (TimeoutError, *_CONNECTION_ERRORS, RuntimeError) as exc:
            raise BrokerUnavailable(
                f"cannot reach RabbitMQ at {self._where} within {self.timeout:g}s "
                f"({type(exc).__name__}: {exc}); is it running?"
            ) from exc
        try:
            publish = await self._channel(connection, confirm=self.options.confirm)
            try:
                await publish.declare_exchange(
                    self.exchange, aio_pika.ExchangeType.TOPIC, durable=True, timeout=self.timeout
                )
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise ConfigurationError(
                    f"the exchange {self.exchange!r} exists on RabbitMQ with another type or "
                    f"durability ({exc}); eventbus needs a durable topic exchange: pick "
                    "another name with exchange=... or delete it"
                ) from exc
            publish.reopen_callbacks.add(self._on_publish_reopen)
            self._publish_underlay = await publish.get_underlay_channel()
            self._topology.channel = await self._channel(connection, confirm=False)
        except BaseException:
            await connection.close()
            raise
        self._publish_channel = publish
        self._connection = connection

    async def _channel(
        self, connection: AbstractRobustConnection, *, confirm: bool
    ) -> AbstractRobustChannel:
        channel = connection.channel(publisher_confirms=confirm)
        await asyncio.wait_for(channel.initialize(), self.timeout)
        return channel

    async def _on_publish_reopen(self, _channel: object) -> None:
        if self._publish_channel is not None:
            self._publish_underlay = await self._publish_channel.get_underlay_channel()

    async def _on_fast_reopen(self, _channel: object) -> None:
        if self._fast_channel is not None:
            self._fast_underlay = await self._fast_channel.get_underlay_channel()

    async def close(self) -> None:
        """Close subscriptions (in-flight handlers finish), the inbox and the connection.

        Safe to call twice; `publish` raises `ClosedError` afterwards.
        """
        self._closed = True
        subscriptions = list(self._subscriptions)
        await asyncio.gather(*(sub.close() for sub in subscriptions), return_exceptions=True)
        if self._inbox is not None:
            await self._inbox.close()
        connection, self._connection = self._connection, None
        self._publish_underlay = self._fast_underlay = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    @property
    def queues(self) -> frozenset[str]:
        """The durable queues this broker declared: groups, streams, dead-letter parking.

        They outlive the broker on purpose (a group keeps its messages while its members
        are away); tooling and test suites delete them with this list when done.
        """
        return frozenset(self._topology.queues)

    def forget(self, sub: RabbitMQSubscription) -> None:
        """Drop a closed subscription from the broker's books (called by the subscription)."""
        self._subscriptions.discard(sub)

    def forget_inbox(self, inbox: RabbitMQInbox) -> None:
        """Drop the closed inbox (called by the inbox)."""
        if self._inbox is inbox:
            self._inbox = None

    # -- publishing --------------------------------------------------------------------

    async def publish(self, message: Message, **options: object) -> None:
        """Publish ``message``; return once RabbitMQ confirmed it (publisher confirms).

        A topic goes through the exchange with the topic as routing key, a persistent
        message; a reply (a ``reply_to`` address, ``amq.…``) straight to its queue.
        A topic no queue is bound to (no group, no subscriber, no stream) is dropped
        by RabbitMQ: a warning is logged once per topic.

        Options:
            durable: ``False`` publishes a transient message on a channel without
                confirms: returns once written to the socket (at-most-once).

        Raises:
            BrokerUnavailable: RabbitMQ cannot be reached or did not confirm in time
                (then the message may or may not have been stored).
            BrokerError: RabbitMQ refused the message.
            UndeliverableError: a reply to an inbox that no longer exists.
            ClosedError: the broker was closed.
        """
        confirmed = persistent = True
        if options:
            confirmed = persistent = publish_durable(options)
        if message.reply_to is not None:
            # A request is worthless after its caller's deadline: never written to disk.
            persistent = False
            if message.reply_to == DIRECT_REPLY_TO:
                confirmed = True  # on the publish channel: it consumes the replies
                if self._inbox is None:
                    raise ConfigurationError(
                        "a request with reply_to=amq.rabbitmq.reply-to needs open_inbox() first"
                    )
        underlay = self._publish_underlay if confirmed else self._fast_underlay
        if underlay is None or underlay.is_closed:
            underlay = await self._publish_target(message.topic, confirmed)
        topic = message.topic
        # mandatory: RabbitMQ returns what no queue takes; a confirm follows the return.
        mandatory = confirmed and self.options.confirm
        if topic.startswith("amq."):  # a queue name: direct reply-to or a plain client's queue
            exchange = ""
            persistent = False  # a reply, like its request
            if topic.startswith(DIRECT_REPLY_TO):
                # RabbitMQ returns every mandatory direct reply-to message as NO_ROUTE,
                # delivered or not (rabbitmq-server#6124): it cannot tell, so neither can we.
                mandatory = False
        else:
            exchange = self.exchange
            if topic not in self._topology.prepared:
                await self._topology.prepare(topic)
            if DLQ_TOPIC in message.headers:
                await self._topology.park(topic)
        try:
            result = await underlay.basic_publish(
                message.body,
                exchange=exchange,
                routing_key=topic,
                properties=properties(message, persistent=persistent),
                mandatory=mandatory,
                timeout=self.timeout,
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels pending confirms when the connection drops under them.
            raise self._unconfirmed(topic, "the connection was lost before the confirm") from None
        except TimeoutError:
            raise self._unconfirmed(topic, f"no confirm within {self.timeout:g}s") from None
        except aiormq.exceptions.DeliveryError as exc:
            raise BrokerError(f"RabbitMQ refused the message to {topic!r} (nack): {exc}") from exc
        except _CHANNEL_ERRORS as exc:
            raise BrokerError(f"RabbitMQ rejected the publish to {topic!r}: {exc}") from exc
        except _CONNECTION_ERRORS as exc:
            raise self._unconfirmed(topic, f"{type(exc).__name__}: {exc}") from exc
        if result is not None and result.__class__ is not Basic.Ack:
            self._returned(message)

    async def _publish_target(self, topic: str, durable: bool) -> AbstractChannel:
        """The channel to publish on: waits (up to ``timeout``) while reconnecting."""
        if self._closed:
            raise ClosedError(f"cannot publish to {topic!r}: the broker is closed")
        if self._connection is None:
            await self.connect()
        if durable:
            channel = self._publish_channel
        else:
            if self._fast_channel is None:
                self._fast_channel = await self._open_channel(topic, confirm=False)
                self._fast_channel.reopen_callbacks.add(self._on_fast_reopen)
            channel = self._fast_channel
        assert channel is not None
        try:
            async with asyncio.timeout(self.timeout):
                await channel.ready()
                underlay = await channel.get_underlay_channel()
                while underlay.is_closed:
                    # aio-pika notices a dead channel a moment after it died and reports
                    # it ready until then: wait for the reopened one, never spin.
                    await asyncio.sleep(_REOPEN_POLL)
                    await channel.ready()
                    underlay = await channel.get_underlay_channel()
        except TimeoutError:
            raise self._unconfirmed(topic, f"still reconnecting after {self.timeout:g}s") from None
        if self._closed:
            raise ClosedError(f"cannot publish to {topic!r}: the broker is closed")
        if durable:
            self._publish_underlay = underlay
        else:
            self._fast_underlay = underlay
        return underlay

    async def _open_channel(self, topic: str, *, confirm: bool) -> AbstractRobustChannel:
        connection = self._connection
        if connection is None:
            raise ClosedError(f"cannot use {topic!r}: the broker is closed")
        try:
            async with asyncio.timeout(self.timeout):
                await connection.ready()  # while reconnecting, wait (up to timeout)
            return await self._channel(connection, confirm=confirm)
        except (TimeoutError, RuntimeError, *_CONNECTION_ERRORS) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else "reconnecting"
            raise self._unavailable(f"cannot open a channel for {topic!r}", why) from exc

    def _unavailable(self, what: str, why: str) -> BrokerUnavailable:
        return BrokerUnavailable(f"RabbitMQ at {self._where} is unavailable: {what} ({why})")

    def _unconfirmed(self, topic: str, why: str) -> BrokerUnavailable:
        return self._unavailable(f"the message to {topic!r} was not confirmed", why)

    def _returned(self, message: Message) -> None:
        topic = message.topic
        if topic.startswith("amq."):
            raise UndeliverableError(f"nobody listens on reply address {topic!r} any more")
        if topic not in self._unroutable:
            if len(self._unroutable) < 10_000:
                self._unroutable.add(topic)
            log.warning(
                "rabbitmq: RabbitMQ dropped a message to %r: no queue is bound to it (no group, "
                "no subscriber, no stream). Subscribe with a group to keep messages while "
                "nobody runs, or enable a stream for the topic. (Logged once per topic.)",
                topic,
            )

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> RabbitMQSubscription:
        """Consume ``topic``; return once the consumer is live (see `Broker.subscribe`).

        With ``group``: the durable queue ``<topic>.<group>``, shared by the group's
        members. Without: an exclusive queue of this subscription. The message is
        acknowledged after ``handler`` returned, rejected with requeue if it raised.

        Raises:
            ConfigurationError: an unknown option, a bad value, or the queue exists
                with other settings.
            BrokerUnavailable: RabbitMQ cannot be reached.
            ClosedError: the broker was closed.
        """
        if self._closed:
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        concurrency, durable, prefetch = subscribe_options(options)
        if group is not None and not group:
            raise ConfigurationError("group must be a non-empty name or None (fan-out)")
        await self.connect()
        if topic not in self._topology.prepared:
            await self._topology.prepare(topic)
        channel = await self._open_channel(topic, confirm=False)
        name = f"{topic}.{group}" if group is not None else f"{topic}:fanout:{new_id()}"
        try:
            async with asyncio.timeout(self.timeout):
                await channel.set_qos(prefetch_count=prefetch)
                if group is None:
                    queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
                else:
                    queue = await channel.declare_queue(
                        name,
                        durable=durable,
                        auto_delete=not durable,
                        arguments=self.options.group_arguments() if durable else None,
                    )
                await queue.bind(self.exchange, routing_key=topic)
                if group is not None and durable:
                    self._topology.queues.add(name)
                sub = RabbitMQSubscription(
                    self,
                    topic,
                    group,
                    channel,
                    queue,
                    handler,
                    concurrency=concurrency,
                    prefetch=prefetch,
                )
                await sub.start()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                raise ConfigurationError(
                    f"queue {name!r} exists on RabbitMQ with other settings ({exc}); subscribe "
                    "with the settings it was created with (durable=, queue_type=) or delete it"
                ) from exc
            if isinstance(exc, TimeoutError | _CONNECTION_ERRORS):
                raise BrokerUnavailable(
                    f"cannot subscribe to {topic!r} on RabbitMQ at {self._where}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise
        if self._closed:  # closed while we subscribed: leave again
            await sub.close()
            raise ClosedError(f"cannot subscribe to {topic!r}: the broker is closed")
        self._subscriptions.add(sub)
        return sub

    async def open_inbox(self, handler: Handler) -> RabbitMQInbox:
        """Start taking replies through direct reply-to; the inbox's topic goes in ``reply_to``.

        Requests must be published through this broker (its publish channel consumes
        the replies, as RabbitMQ requires). A reply to an inbox that is gone raises
        `UndeliverableError` on the replying side.

        Raises:
            ConfigurationError: this broker already has an open inbox (RabbitMQ allows
                one direct reply-to consumer per channel).
        """
        if self._closed:
            raise ClosedError("cannot open an inbox: the broker is closed")
        if self._inbox is not None:
            raise ConfigurationError(
                "this RabbitMQBroker already has an open inbox; close it first "
                "(direct reply-to allows one reply consumer per channel)"
            )
        await self.connect()
        assert self._publish_channel is not None
        inbox = RabbitMQInbox(self, self._publish_channel, handler)
        self._inbox = inbox
        try:
            await inbox.start()
        except BaseException:
            self._inbox = None
            raise
        return inbox

    # -- replay ------------------------------------------------------------------------

    async def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the topic's messages retained in its stream, in publish order.

        Reads the stream from ``since`` (RabbitMQ's timestamp offset, then filtered
        exactly by message time) up to the end it had when the replay began: every
        message whose publish was confirmed before is included.

        Raises:
            ReplayNotSupported: the topic has no stream (see the ``streams`` option).
            TopicNotFound: its stream does not exist yet (nothing was published).
            BrokerUnavailable: RabbitMQ cannot be reached.
        """
        if not self._topology.has_stream(topic):
            raise ReplayNotSupported(
                f"topic {topic!r} has no stream on RabbitMQ, so nothing is retained to "
                "replay; enable one with RabbitMQBroker(..., streams=True) or "
                f"streams=[{topic!r}] (an AMQP topic pattern)"
            )
        await self.connect()
        queue = Topology.stream_queue(topic)
        probe = await self._open_channel(topic, confirm=False)
        try:
            # A missing queue closes the channel that asked: ask on a throwaway one.
            async with asyncio.timeout(self.timeout):
                await probe.declare_queue(queue, passive=True, robust=False)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise TopicNotFound(
                f"topic {topic!r} has no stream queue {queue!r} on RabbitMQ yet: nothing "
                "was published to it"
            ) from None
        except TimeoutError:
            raise self._unavailable(
                f"cannot look up the stream of {topic!r}", "no answer"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        channel = await self._open_channel(topic, confirm=True)
        try:
            reader = StreamReader(channel, queue, topic, since, timeout=self.timeout)
            async for message in reader.messages():
                yield message
        except StreamStopped as exc:
            raise self._unavailable(f"the replay of {topic!r} stopped", str(exc)) from None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
