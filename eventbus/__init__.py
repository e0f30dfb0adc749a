"""an asyncio framework for event-driven services.

Publish with `Publisher`, consume with ``@subscriber`` handlers, call services with
request/reply, on Kafka, NATS, RabbitMQ, Redis or in memory, by changing one URL.

Example:
    >>> from eventbus import Publisher, subscriber
    >>> @subscriber("math.add")
    ... async def add(req: dict) -> dict:
    ...     return {"sum": req["a"] + req["b"]}
    >>> # reply = await Publisher("math.add").request({"a": 1, "b": 2})  # {"sum": 3}
"""

from eventbus.blocking import BlockingBus
from eventbus.broker import Broker, Capabilities, Handler, Subscription
from eventbus.bus import EventBus, default_bus, set_default_bus, subscriber
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    CodecError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    EventBusError,
    HandlerTimeout,
    RecordingError,
    RemoteError,
    ReplayNotSupported,
    RequestTimeout,
    ServiceNotFound,
    TopicNotFound,
    UndeliverableError,
)
from eventbus.message import Delivery, Message
from eventbus.middleware import Middleware, Next, RetryPolicy
from eventbus.publisher import Publisher
from eventbus.subscriber import Subscriber

__version__ = "0.1.0"

__all__ = [
    "BlockingBus",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Capabilities",
    "ClosedError",
    "CodecError",
    "ConfigurationError",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "EventBus",
    "EventBusError",
    "Handler",
    "HandlerTimeout",
    "Message",
    "Middleware",
    "Next",
    "Publisher",
    "RecordingError",
    "RemoteError",
    "ReplayNotSupported",
    "RequestTimeout",
    "RetryPolicy",
    "ServiceNotFound",
    "Subscriber",
    "Subscription",
    "TopicNotFound",
    "UndeliverableError",
    "default_bus",
    "set_default_bus",
    "subscriber",
]
