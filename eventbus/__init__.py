"""an asyncio framework for event-driven services.

Publish with `Publisher`, consume with ``@subscriber`` handlers, call services with
request/reply or through the registry (``bus.client("calc").call("add", ...)``), on
Kafka, NATS, RabbitMQ, Redis or in memory, by changing one URL.

Example:
    >>> from eventbus import Publisher, subscriber
    >>> @subscriber("math.add")
    ... async def add(req: dict) -> dict:
    ...     return {"sum": req["a"] + req["b"]}
    >>> # reply = await Publisher("math.add").request({"a": 1, "b": 2})  # {"sum": 3}
"""

from eventbus import tracing
from eventbus.blocking import BlockingBus
from eventbus.broker import Broker, Capabilities, Handler, Subscription
from eventbus.bus import EventBus, default_bus, set_default_bus, subscriber
from eventbus.client import Client
from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    CodecError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    EndpointNotFound,
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
from eventbus.presence import PresenceRegistry
from eventbus.publisher import Publisher
from eventbus.registry import Node, Registry, RegistryEvent, wait_for_nodes
from eventbus.selector import Selector
from eventbus.server import endpoint
from eventbus.subscriber import Subscriber

__version__ = "0.1.0"

__all__ = [
    "BlockingBus",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Capabilities",
    "Client",
    "ClosedError",
    "CodecError",
    "ConfigurationError",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "EndpointNotFound",
    "EventBus",
    "EventBusError",
    "Handler",
    "HandlerTimeout",
    "Message",
    "Middleware",
    "Next",
    "Node",
    "PresenceRegistry",
    "Publisher",
    "RecordingError",
    "Registry",
    "RegistryEvent",
    "RemoteError",
    "ReplayNotSupported",
    "RequestTimeout",
    "RetryPolicy",
    "Selector",
    "ServiceNotFound",
    "Subscriber",
    "Subscription",
    "TopicNotFound",
    "UndeliverableError",
    "default_bus",
    "endpoint",
    "set_default_bus",
    "subscriber",
    "tracing",
    "wait_for_nodes",
]
