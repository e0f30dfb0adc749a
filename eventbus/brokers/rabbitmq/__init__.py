"""The RabbitMQ adapter (``amqp://``, ``amqps://``), built on aio-pika.

See `RabbitMQBroker` for the topology and options, and ``docs/rabbitmq.md``.
"""

from eventbus.brokers.rabbitmq.broker import DEAD_LETTER_GROUP, RabbitMQBroker
from eventbus.brokers.rabbitmq.consumer import RabbitMQInbox, RabbitMQSubscription

__all__ = ["DEAD_LETTER_GROUP", "RabbitMQBroker", "RabbitMQInbox", "RabbitMQSubscription"]
