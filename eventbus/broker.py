"""The `Broker` protocol every adapter implements, and what it hands back.

The protocol is small on purpose: codecs, retries, dead-lettering, request/reply,
the registry and recording are written once above it. Adapters match it
structurally (no base class); the conformance suite in ``tests/conformance``
checks the contract written in these docstrings against every adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from eventbus.message import Message

__all__ = ["Broker", "Capabilities", "Handler", "PublishesMany", "Subscription"]

Handler = Callable[[Message], Awaitable[None]]
"""What a broker calls per delivered message. Returning acks; raising asks for redelivery."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker can do, so callers (and the conformance suite) need not guess.

    Attributes:
        retains: Messages are kept and can be replayed (`Broker.replay`).
        ordered_by_key: Messages with the same key reach a group in publish order,
            even across several group members.
        durable_groups: A group keeps its position while all its members are away.
        native_key: The key travels as the broker's own message key.
    """

    retains: bool
    ordered_by_key: bool
    durable_groups: bool = True
    native_key: bool = False


@runtime_checkable
class Subscription(Protocol):
    """A live subscription of a handler to a topic."""

    topic: str
    """The topic (for an inbox: the address to put in ``reply_to``)."""
    group: str | None
    """The competing-consumer group, or ``None`` for fan-out."""

    async def close(self) -> None:
        """Stop taking messages, let in-flight handlers finish, and leave.

        Messages taken from the broker but not handled are left unacknowledged so
        the broker redelivers them to the group. Safe to call twice.
        """
        ...


@runtime_checkable
class Broker(Protocol):
    """A connection to one message broker.

    Delivery is at-least-once wherever the broker keeps messages: an adapter
    acknowledges a message only after its handler returned, and redelivers it
    (now or after a timeout) when the handler raised or the consumer died.

    An adapter is built as ``Adapter(url, *, grace=10.0, **options)``: ``grace`` is
    how long `close` (and `Subscription.close`) wait for in-flight handlers; unknown
    options raise `ConfigurationError`.
    """

    @property
    def capabilities(self) -> Capabilities:
        """What this broker can do.

        A class attribute on most adapters; an instance attribute where it depends on
        options (RabbitMQ retains only the topics that have a stream).
        """
        ...

    async def connect(self) -> None:
        """Connect. Raises `BrokerUnavailable` when the broker cannot be reached."""
        ...

    async def close(self) -> None:
        """Stop consuming (in-flight handlers finish), flush, disconnect. Safe to call twice."""
        ...

    async def publish(self, message: Message, **options: object) -> None:
        """Return once the broker has accepted the message.

        Options (adapter-specific; unknown ones raise `ConfigurationError`):
            durable: ``False`` trades the broker's acknowledgement for speed where
                the broker has both paths (NATS core instead of JetStream).

        Raises:
            BrokerUnavailable: the broker cannot be reached (within the adapter's timeout).
            UndeliverableError: the message is a reply to an inbox that no longer exists.
            ClosedError: the broker was closed.
        """
        ...

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None, **options: object
    ) -> Subscription:
        """Deliver the topic's messages to ``handler``; return once the subscription is live.

        With ``group``, each message goes to one member of the group, and the group
        keeps its position while all members are away; without, every subscription
        gets every message published after it went live.

        Acknowledges a message after ``handler`` returns; redelivers it if it raises.

        Options every adapter takes: ``concurrency`` (int, handlers running at once,
        default 1) and ``durable`` (bool). Unknown options raise `ConfigurationError`.
        """
        ...

    async def open_inbox(self, handler: Handler) -> Subscription:
        """Open this connection's private reply address; its ``topic`` goes in ``reply_to``.

        Replies are never retained; publishing to a closed inbox raises
        `UndeliverableError` where the broker can tell.
        """
        ...

    def replay(self, topic: str, *, since: datetime | None = None) -> AsyncIterator[Message]:
        """Yield the topic's retained messages in publish order, from ``since`` on.

        Raises:
            ReplayNotSupported: the broker (or this topic) keeps nothing.
            TopicNotFound: nothing was ever published to the topic.
        """
        ...


@runtime_checkable
class PublishesMany(Protocol):
    """Optional: an adapter that publishes a batch cheaper than one message at a time.

    `Publisher.publish_many` uses it when the broker has it (Kafka: one wait for all
    delivery reports instead of one task wake-up per message), and publishes the
    messages concurrently one by one otherwise.
    """

    async def publish_many(self, messages: Sequence[Message], **options: object) -> None:
        """Return once the broker has accepted every message.

        Raises:
            BrokerError: at least one message was refused; others may have been
                accepted (publish the batch again: delivery is at-least-once).
        """
        ...
