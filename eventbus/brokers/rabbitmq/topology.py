"""The durable queues a broker declares besides its consumers' own: streams, parking.

Each is declared once per broker, before the first message that needs it: a topic's
stream queue (for replay) and the parking queue that keeps a topic's dead letters.
"""

from __future__ import annotations

import asyncio

import aiormq
from aio_pika.abc import AbstractRobustChannel

from eventbus.brokers.rabbitmq.options import BrokerOptions, topic_matcher
from eventbus.errors import BrokerUnavailable, ClosedError, ConfigurationError

__all__ = ["DEAD_LETTER_GROUP", "Topology"]

DEAD_LETTER_GROUP = "parked"
"""Dead-letter records wait in the group queue ``<topic>.dlq.parked`` until read."""

_PREPARED_MAX = 100_000


class Topology:
    """What a broker declared on the server, and declaring the rest exactly once."""

    def __init__(self, options: BrokerOptions, *, where: str) -> None:
        self.options = options
        self.has_stream = topic_matcher(options.streams)
        """Whether a topic has a stream queue (the ``streams`` option)."""
        self.queues: set[str] = set()
        """Every durable queue the broker declared (groups included)."""
        self.prepared: set[str] = set()
        """Topics whose stream (if any) is declared: publish checks this set first."""
        self.channel: AbstractRobustChannel | None = None
        self._where = where
        self._declared: dict[str, asyncio.Future[None]] = {}

    @staticmethod
    def stream_queue(topic: str) -> str:
        """The name of a topic's stream queue."""
        return f"{topic}:stream"

    async def prepare(self, topic: str) -> None:
        """Declare the topic's stream before its first message, if it has one."""
        if self.has_stream(topic):
            await self.declare_once(self.stream_queue(topic), topic, stream=True)
        if len(self.prepared) >= _PREPARED_MAX:
            self.prepared.clear()  # bounded: forgetting a topic only costs a lookup again
        self.prepared.add(topic)

    async def park(self, topic: str) -> None:
        """Make sure a dead-letter topic's records are kept (its parking queue exists)."""
        await self.declare_once(f"{topic}.{DEAD_LETTER_GROUP}", topic, stream=False)

    async def declare_once(self, queue: str, topic: str, *, stream: bool) -> None:
        """Declare ``queue`` bound to ``topic`` once; concurrent callers share the outcome.

        Raises:
            BrokerUnavailable: RabbitMQ did not answer within the broker's timeout.
            ConfigurationError: the queue exists with other settings.
            ClosedError: the broker was closed.
        """
        found = self._declared.get(queue)
        while found is not None:
            if not found.done():
                await asyncio.wait((found,))
            if found.cancelled():  # its declarer was cancelled: declare it here instead
                found = self._declared.get(queue)
                continue
            error = found.exception()
            if error is not None:
                raise error
            return
        future = self._declared[queue] = asyncio.get_running_loop().create_future()
        try:
            await self._declare(queue, topic, stream=stream)
        except BaseException as exc:
            self._declared.pop(queue, None)  # a later call tries again
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved, even when nobody waits
            else:
                future.cancel()
            raise
        future.set_result(None)

    async def _declare(self, queue: str, topic: str, *, stream: bool) -> None:
        channel = self.channel
        if channel is None:
            raise ClosedError(f"cannot use {topic!r}: the broker is closed")
        options = self.options
        arguments = options.stream_arguments() if stream else options.group_arguments()
        try:
            async with asyncio.timeout(options.timeout):
                declared = await channel.declare_queue(
                    queue, durable=True, arguments=arguments, robust=False
                )
                await declared.bind(options.exchange, routing_key=topic, robust=False)
                self.queues.add(queue)
        except TimeoutError:
            raise BrokerUnavailable(
                f"RabbitMQ at {self._where} is unavailable: cannot declare {queue!r} "
                f"(no answer in {options.timeout:g}s)"
            ) from None
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"queue {queue!r} exists on RabbitMQ with other settings ({exc}); delete it "
                "or use the settings it was created with"
            ) from exc
