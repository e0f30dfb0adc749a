"""Reading a topic's stream queue from a time up to where it ended when the read began.

RabbitMQ tells an AMQP 0-9-1 client neither a stream's length nor its end, so the
reader first appends a marker to the stream (to the stream queue only, through the
default exchange: groups and subscribers never see it) and reads until it meets that
marker. Every message confirmed before the read began comes before the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from eventbus.brokers.rabbitmq.wire import from_amqp
from eventbus.message import Message, new_id

__all__ = ["StreamReader", "StreamStopped"]

MARKER = "x-eventbus-replay-end"
"""Header of the marker a replay appends to a stream (other readers skip it too)."""
_PREFETCH = 1000  # stream consumers must set one; acks give the credit back
_ACK_EVERY = 100
# Streams start at a chunk's server timestamp (whole seconds); begin a little early so
# that clock differences between hosts lose nothing, then filter by message time.
_CLOCK_SKEW = timedelta(seconds=10)


class StreamStopped(Exception):
    """The stream stopped delivering before the reader reached its marker."""


class StreamReader:
    """Yields the messages of one stream queue, in order, on a channel of its own."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        topic: str,
        since: datetime | None,
        *,
        timeout: float,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._topic = topic
        self._since = since
        self._timeout = timeout

    async def messages(self) -> AsyncIterator[Message]:
        """Yield the retained messages from ``since`` up to the marker.

        Raises:
            StreamStopped: the channel closed, or nothing came for ``timeout`` seconds.
        """
        underlay = await self._channel.get_underlay_channel()
        marker = new_id()
        await underlay.basic_publish(
            b"",
            exchange="",
            routing_key=self._queue,
            properties=Basic.Properties(headers={MARKER: marker}, delivery_mode=2),
            timeout=self._timeout,
        )
        await underlay.basic_qos(prefetch_count=_PREFETCH)
        since = self._since
        offset: Any = "first" if since is None else since - _CLOCK_SKEW
        deliveries: asyncio.Queue[DeliveredMessage | None] = asyncio.Queue()

        async def take(delivered: DeliveredMessage) -> None:
            deliveries.put_nowait(delivered)

        underlay.closing.add_done_callback(lambda _: deliveries.put_nowait(None))
        await underlay.basic_consume(self._queue, take, arguments={"x-stream-offset": offset})
        unacked = 0
        last_tag = 0
        while True:
            if deliveries.empty() and unacked:
                # Give the credit back before waiting, or the stream stops sending.
                await underlay.basic_ack(last_tag, multiple=True, wait=False)
                unacked = 0
            try:
                async with asyncio.timeout(self._timeout):
                    delivered = await deliveries.get()
            except TimeoutError:
                raise StreamStopped(f"nothing came for {self._timeout:g}s") from None
            if delivered is None:
                raise StreamStopped("its channel closed")
            frame: Basic.Deliver = delivered.delivery  # type: ignore[assignment]  # consumed
            last_tag = frame.delivery_tag or last_tag
            unacked += 1
            if unacked >= _ACK_EVERY:
                await underlay.basic_ack(last_tag, multiple=True, wait=False)
                unacked = 0
            headers = delivered.header.properties.headers
            if headers and MARKER in headers:
                if headers[MARKER] == marker:
                    return
                continue  # another reader's marker
            message = from_amqp(self._topic, delivered)
            if since is None or message.time >= since:
                yield message
