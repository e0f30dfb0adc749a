"""The order service (examples/orders.py) on RabbitMQ.

    docker compose up -d rabbitmq  # or any running server
    python examples/rabbitmq_orders.py  # RabbitMQ on 127.0.0.1:5672
    EVENTBUS_URL=amqp://user:pw@other:5672/ python examples/rabbitmq_orders.py

Topics are routing keys on one durable topic exchange; a group is a durable queue,
fan-out subscribers get exclusive queues, publishes wait for publisher confirms, and
requests use direct reply-to. RabbitMQ keeps nothing after delivery unless a topic has a
stream queue: ``streams=`` opts this run's topics in (an AMQP pattern), so replay works.
"""

from __future__ import annotations

import asyncio
import os

import orders

URL = os.environ.get("EVENTBUS_URL", "amqp://guest:guest@127.0.0.1:5672/")

if __name__ == "__main__":
    prefix = orders.topics()
    settings = orders.options(streams=[f"{prefix}.#"], stream_max_age="1D")
    asyncio.run(orders.run(URL, prefix, **settings))
