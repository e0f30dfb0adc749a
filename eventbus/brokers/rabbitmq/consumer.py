"""Consumers: a subscription's queue consumer, and the direct reply-to inbox.

Deliveries are taken from aio-pika's underlying aiormq channel: one `Dispatcher` per
subscription runs the handler on ``concurrency`` workers, without aio-pika's
``IncomingMessage`` and the extra task it starts per message (aiormq itself still runs
each delivery callback as a task; ours only hands the delivery to the dispatcher).
Because that bypasses
aio-pika's own consumer bookkeeping, each consumer re-registers itself when its robust
channel is reopened (after a reconnect or a channel error) and when RabbitMQ cancels
it (the queue was deleted): a consumer that silently stays away after a broker restart
is the failure this module exists to prevent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from eventbus.broker import Handler
from eventbus.brokers.rabbitmq.wire import DIRECT_REPLY_TO, from_amqp
from eventbus.dispatch import Dispatcher
from eventbus.message import Message, new_id

if TYPE_CHECKING:
    from eventbus.brokers.rabbitmq.broker import RabbitMQBroker

__all__ = ["RabbitMQInbox", "RabbitMQSubscription"]

log = logging.getLogger("eventbus")

_CHANNEL_GONE = (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError)
_ACK_DELAY = 0.05  # seconds a handled message may wait for its (batched) ack


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("rabbitmq: sending acks failed", exc_info=task.exception())


class RabbitMQSubscription:
    """A live consumer of one queue (a group's durable queue or a fan-out queue).

    Acknowledges a message after the handler returned; when the handler raises, the
    message is rejected with requeue so RabbitMQ redelivers it (after a short pause
    when it was already redelivered, so a handler that keeps failing cannot spin).
    At most ``prefetch`` messages are unacknowledged at once.
    """

    def __init__(
        self,
        broker: RabbitMQBroker,
        topic: str,
        group: str | None,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        handler: Handler,
        *,
        concurrency: int,
        prefetch: int,
    ) -> None:
        self.topic = topic
        self.group = group
        self.queue = queue.name
        """The RabbitMQ queue this subscription consumes."""
        self._broker = broker
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._exchange = broker.exchange
        self._tag = f"eventbus.{new_id()}"
        self._dispatcher: Dispatcher[DeliveredMessage] = Dispatcher(
            self._handle, concurrency=concurrency, name=f"rabbitmq:{queue.name}"
        )
        # One worker handles messages in delivery order, so one ack with multiple=True
        # settles a run of them: up to a quarter of the prefetch window is acked at once
        # (or sooner when nothing else is waiting), which halves the frames per message.
        self._batch_acks = concurrency == 1
        self._ack_every = max(1, prefetch // 4)
        self._held = 0
        self._held_tag = 0
        self._held_channel: AbstractChannel | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._underlay: AbstractChannel | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RabbitMQSubscription(topic={self.topic!r}, queue={self.queue!r})"

    async def start(self) -> None:
        """Start consuming; returns once RabbitMQ confirmed the consumer."""
        self._dispatcher.start()
        self._channel.reopen_callbacks.add(self._on_reopen)
        await self._consume()

    async def _consume(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        if self._underlay is not underlay:
            underlay.on_consumer_cancel_callbacks.add(self._on_cancelled)
        await underlay.basic_consume(self.queue, self._deliver, consumer_tag=self._tag)
        self._underlay = underlay

    async def _on_reopen(self, _channel: object) -> None:
        # aio-pika has re-declared and re-bound the queue when this runs.
        if self._closed:
            return
        try:
            await self._consume()
        except Exception as exc:
            log.warning("rabbitmq: cannot consume %r again yet: %s; retrying", self.queue, exc)
            self._start_recovery()
        else:
            log.info("rabbitmq: consuming %r again after the channel was restored", self.queue)

    def _on_cancelled(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag != self._tag or self._closed:
            return
        log.warning("rabbitmq: the broker cancelled the consumer of %r; re-subscribing", self.queue)
        self._start_recovery()

    def _start_recovery(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        while not self._closed:
            try:
                await self._queue.restore()  # declare and bind again
                await self._consume()
                log.info("rabbitmq: consuming %r again", self.queue)
                return
            except Exception as exc:
                log.warning("rabbitmq: cannot consume %r yet: %s; retrying", self.queue, exc)
                await asyncio.sleep(self._broker.reconnect_interval)

    async def _deliver(self, delivered: DeliveredMessage) -> None:
        self._dispatcher.put(delivered)

    async def _handle(self, delivered: DeliveredMessage) -> None:
        channel = delivered.channel
        if channel.is_closed:
            return  # RabbitMQ requeued it with its channel and delivers it again
        frame: Basic.Deliver = delivered.delivery  # type: ignore[assignment]  # consumed, not got
        topic = frame.routing_key if frame.exchange == self._exchange else self.topic
        message = from_amqp(topic or self.topic, delivered)
        tag: int = frame.delivery_tag  # type: ignore[assignment]  # set on every delivery
        try:
            await self._handler(message)
        except Exception as exc:
            await self._flush_acks()
            await self._requeue(channel, message, tag, exc)
            return
        try:
            if not self._batch_acks:
                await channel.basic_ack(tag, wait=False)
            elif self._dispatcher.pending > 1 and self._held < self._ack_every:
                if self._held_channel is not channel:
                    self._held_channel, self._held = channel, 0
                if not self._held:  # a slow next handler must not hold these acks long
                    self._flush_timer = asyncio.get_running_loop().call_later(
                        _ACK_DELAY, self._flush_later
                    )
                self._held += 1
                self._held_tag = tag
            else:
                if self._held:
                    self._held = 0
                    self._held_channel = None
                    if self._flush_timer is not None:
                        self._flush_timer.cancel()
                await channel.basic_ack(tag, multiple=True, wait=False)
        except _CHANNEL_GONE:
            log.debug(
                "rabbitmq: channel closed before the ack of %s; it will come again", message.id
            )

    async def _flush_acks(self) -> None:
        """Send the ack held back for a run of handled messages, if any."""
        # State is taken before the first await: basic_ack(wait=False) only queues the
        # frame, so no ack can overtake a later one with a higher tag.
        channel, self._held_channel = self._held_channel, None
        tag, self._held = self._held_tag, 0
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*_CHANNEL_GONE):
                await channel.basic_ack(tag, multiple=True, wait=False)

    def _flush_later(self) -> None:
        if self._held and not self._closed:
            task = asyncio.ensure_future(self._flush_acks())
            task.add_done_callback(_log_failure)

    async def _requeue(
        self, channel: AbstractChannel, message: Message, tag: int, exc: Exception
    ) -> None:
        count = message.redelivered
        log.warning(
            "rabbitmq: handler failed on %s (id=%s): %s: %s; requeued (delivery %d)",
            message.topic,
            message.id,
            type(exc).__name__,
            exc,
            count + 1,
        )
        if count:
            # Classic queues only say "redelivered", quorum queues count: back off either way.
            await asyncio.sleep(min(0.05 * 2 ** min(count, 6), 2.0))
        try:
            await channel.basic_nack(tag, requeue=True, wait=False)
        except _CHANNEL_GONE:
            log.debug("rabbitmq: channel closed before the nack of %s", message.id)

    async def close(self) -> None:
        """Stop consuming; in-flight handlers finish (up to the broker's ``grace``).

        Messages taken but not handled are rejected with requeue, so the other members
        of the group get them at once. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        if self._recovery is not None:
            self._recovery.cancel()
        underlay = self._underlay
        if underlay is not None and not underlay.is_closed:
            with contextlib.suppress(*_CHANNEL_GONE, TimeoutError):
                await underlay.basic_cancel(self._tag, timeout=self._broker.timeout)
        await self._dispatcher.stop(self._broker.grace)
        await self._flush_acks()
        if underlay is not None and not underlay.is_closed:
            # Tag 0 with multiple=True: every message still unacknowledged on the channel.
            with contextlib.suppress(*_CHANNEL_GONE):
                await underlay.basic_nack(0, multiple=True, requeue=True)
        with contextlib.suppress(Exception):
            await self._channel.close()
        self._broker.forget(self)


class RabbitMQInbox:
    """The broker's direct reply-to consumer: replies arrive without a reply queue.

    RabbitMQ requires the requests to be published on the channel that consumes
    ``amq.rabbitmq.reply-to``; the broker's publish channel does both.
    """

    group: str | None = None

    def __init__(
        self, broker: RabbitMQBroker, channel: AbstractRobustChannel, handler: Handler
    ) -> None:
        self.topic = DIRECT_REPLY_TO
        self._broker = broker
        self._channel = channel
        self._handler = handler
        self._tag = f"eventbus.inbox.{new_id()}"
        self._closed = False

    async def start(self) -> None:
        """Start consuming replies; returns once RabbitMQ confirmed the consumer."""
        self._channel.reopen_callbacks.add(self._on_reopen)
        await self._consume()

    async def _consume(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_consume(
            DIRECT_REPLY_TO, self._deliver, no_ack=True, consumer_tag=self._tag
        )

    async def _on_reopen(self, _channel: object) -> None:
        if not self._closed:
            await self._consume()

    async def _deliver(self, delivered: DeliveredMessage) -> None:
        frame: Basic.Deliver = delivered.delivery  # type: ignore[assignment]  # consumed, not got
        message = from_amqp(frame.routing_key or DIRECT_REPLY_TO, delivered)
        try:
            await self._handler(message)
        except Exception:
            log.exception("rabbitmq: reply handler raised on %s", message.id)

    async def close(self) -> None:
        """Stop taking replies (they are never retained). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        with contextlib.suppress(Exception):
            underlay = await asyncio.wait_for(self._channel.get_underlay_channel(), 1.0)
            if not underlay.is_closed:
                await underlay.basic_cancel(self._tag, timeout=self._broker.timeout)
        self._broker.forget_inbox(self)
