"""The order service (examples/orders.py) on NATS with JetStream.

    docker compose up -d nats  # or any running server
    python examples/nats_orders.py  # NATS on 127.0.0.1:4222
    EVENTBUS_URL=nats://other:4222 python examples/nats_orders.py

Every topic is backed by a JetStream stream created on demand (``max_age`` bounds it);
groups are durable consumers with explicit ack, redelivered after ``ack_wait`` seconds
when a member dies. Requests go over core NATS inboxes. Replay reads the stream.
"""

from __future__ import annotations

import asyncio
import os

import orders

URL = os.environ.get("EVENTBUS_URL", "nats://127.0.0.1:4222")

if __name__ == "__main__":
    settings = orders.options(max_age=24 * 3600.0, ack_wait=30.0)
    asyncio.run(orders.run(URL, orders.topics(), **settings))
