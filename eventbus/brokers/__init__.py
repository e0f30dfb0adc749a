"""Broker adapters, chosen by URL scheme and imported when the scheme is first used.

| scheme | adapter | extra |
|---|---|---|
| ``memory://`` | `eventbus.brokers.memory.MemoryBroker` | (built in) |
| ``redis://``, ``rediss://`` | ``eventbus.brokers.redis.RedisBroker`` | ``redis`` |
| ``nats://``, ``tls://`` | ``eventbus.brokers.nats.NatsBroker`` | ``nats`` |
| ``amqp://``, ``amqps://`` | ``eventbus.brokers.rabbitmq.RabbitMQBroker`` | ``rabbitmq`` |
| ``kafka://`` | ``eventbus.brokers.kafka.KafkaBroker`` | ``kafka`` |
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from eventbus.broker import Broker
from eventbus.errors import ConfigurationError

__all__ = ["SCHEMES", "open_broker"]

SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("eventbus.brokers.memory", "MemoryBroker", None),
    "redis": ("eventbus.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("eventbus.brokers.redis", "RedisBroker", "redis"),
    "nats": ("eventbus.brokers.nats", "NatsBroker", "nats"),
    "tls": ("eventbus.brokers.nats", "NatsBroker", "nats"),
    "amqp": ("eventbus.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "amqps": ("eventbus.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "kafka": ("eventbus.brokers.kafka", "KafkaBroker", "kafka"),
}
"""URL scheme -> (module, class, extra that installs its client library)."""


def open_broker(url: str, **options: object) -> Broker:
    """Create (not connect) the adapter for ``url``.

    Raises:
        ConfigurationError: unknown scheme, or the adapter's extra is not installed.

    Example:
        >>> open_broker("memory://").capabilities.retains
        True
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigurationError(f"unknown broker URL {url!r}: the scheme must be one of {known}")
    module_name, class_name, extra = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None or (exc.name or "").startswith("eventbus"):
            raise
        raise ConfigurationError(
            f"{scheme}:// needs the {extra} extra ({exc.name} is missing): "
            f"pip install 'eventbus[{extra}]'"
        ) from exc
    broker: Broker = getattr(module, class_name)(url, **options)
    return broker
