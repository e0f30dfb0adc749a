"""The order service (examples/orders.py) on Kafka.

    docker compose up -d kafka
    python examples/kafka_orders.py            # Kafka on localhost:9092
    EVENTBUS_URL=kafka://other:9092 python examples/kafka_orders.py

Topics are created on demand with ``partitions`` partitions; the key picks the
partition, and the adapter runs one key's messages on one worker, so each customer's
orders are shipped in order even with ``concurrency=8``. Offsets are committed only
after the handler finished; requests come back on this node's own reply topic. Replay
reads from the earliest offset, or from a time.
"""

from __future__ import annotations

import asyncio
import os

import orders

URL = os.environ.get("EVENTBUS_URL", "kafka://localhost:9092")

if __name__ == "__main__":
    settings = orders.options(partitions=4)
    asyncio.run(orders.run(URL, orders.topics(), **settings))
