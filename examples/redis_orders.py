"""The order service (examples/orders.py) on Redis Streams.

    docker compose up -d redis  # or any running server
    python examples/redis_orders.py  # Redis on 127.0.0.1:6379
    EVENTBUS_URL=redis://other:6379/2 python examples/redis_orders.py

On Redis every topic is a stream: ``maxlen`` bounds it (approximately, as XADD's
``MAXLEN ~``), groups are stream consumer groups acknowledged after the handler, and
the pending entries of a member that died go to a live one after ``reclaim_idle``
seconds. Replay reads the stream with XRANGE.
"""

from __future__ import annotations

import asyncio
import os

import orders

URL = os.environ.get("EVENTBUS_URL", "redis://127.0.0.1:6379/0")

if __name__ == "__main__":
    settings = orders.options(maxlen=100_000, reclaim_idle=30.0)
    asyncio.run(orders.run(URL, orders.topics(), **settings))
