"""An order pipeline that leans on what Kafka gives: keys, consumer groups, replay.

    python examples/kafka_orders.py                                   # in memory
    docker compose up -d kafka
    EVENTBUS_URL=kafka://localhost:9092 python examples/kafka_orders.py

- Orders are published with the customer as key: on Kafka one customer's orders are
  handled in order even with ``concurrency=8`` (the key picks the partition, and the
  adapter runs one key's messages on one lane). The output says whether order held.
- The "shipping" group shares the work between its members; "audit" (no group) sees
  everything.
- A "pricing" service answers requests (on Kafka: through this node's reply topic).
- At the end the topic is replayed from a point in time, as a test or a new consumer
  would.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

from eventbus import EventBus, Message

URL = os.environ.get("EVENTBUS_URL", "memory://")
RUN = uuid.uuid4().hex[:8]  # fresh topics per run
ORDERS = f"example.{RUN}.orders"
PRICE = f"example.{RUN}.price"
COUNT = 40


async def main() -> None:
    shipped: dict[str, list[int]] = {}
    audited: list[int] = []
    done = asyncio.Event()
    node = EventBus(URL, name="orders")

    @node.subscriber(ORDERS, group="shipping", concurrency=8)
    async def ship(order: dict[str, int], msg: Message) -> None:
        await asyncio.sleep(0.001 * (order["n"] % 3))  # uneven work: order must still hold
        shipped.setdefault(msg.key or "", []).append(order["n"])
        if sum(len(v) for v in shipped.values()) == COUNT:
            done.set()

    @node.subscriber(ORDERS)
    async def audit(order: dict[str, int]) -> None:
        audited.append(order["n"])

    @node.subscriber(PRICE, group="pricing")
    async def price(req: dict[str, int]) -> dict[str, float]:
        return {"total": req["items"] * 9.5}

    async with node:  # returns once every subscription has its partitions
        quote = await node.request(PRICE, {"items": 3}, timeout=10)
        print(f"pricing answered: {quote}")
        started = datetime.now(UTC)
        for n in range(COUNT):
            await node.publish(ORDERS, {"n": n}, key=f"customer-{n % 4}")
        await asyncio.wait_for(done.wait(), 60)
        for customer, numbers in sorted(shipped.items()):
            kept = "in order" if numbers == sorted(numbers) else "REORDERED"
            print(f"{customer}: shipped {numbers} ({kept})")
        replayed = [m async for m in node.broker.replay(ORDERS, since=started)]
        print(f"audit saw {len(audited)} orders; replay since start gives {len(replayed)}")


if __name__ == "__main__":
    asyncio.run(main())
