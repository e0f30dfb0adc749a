"""eventbus quickstart: a producer, a group of consumers, and a request/reply.

    python examples/quickstart.py                                  # in memory, no set-up
    EVENTBUS_URL=redis://127.0.0.1:6379/0 python examples/quickstart.py
    EVENTBUS_URL=nats://127.0.0.1:4222 python examples/quickstart.py

Two "billing" workers form one consumer group: each order is billed once, by one of
them. An "audit" subscriber without a group sees every order. A "calc" service answers
requests. The same code runs on any broker: only the URL changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

from pydantic import BaseModel

from eventbus import EventBus, Message, RemoteError

URL = os.environ.get("EVENTBUS_URL", "memory://")
RUN = uuid.uuid4().hex[:8]  # fresh topics per run, so reruns on a real broker start clean
ORDERS = f"quickstart.{RUN}.orders"


class OrderPlaced(BaseModel):
    id: int
    total: float


def make_worker(name: str, billed: dict[str, list[int]], done: asyncio.Event) -> EventBus:
    bus = EventBus(URL, name="billing")

    @bus.subscriber(ORDERS, group="billing")
    async def bill(order: OrderPlaced, msg: Message) -> None:
        billed[name].append(order.id)
        if sum(len(ids) for ids in billed.values()) == 10:
            done.set()

    return bus


async def main() -> None:
    billed: dict[str, list[int]] = {"worker-1": [], "worker-2": []}
    audited: list[int] = []
    all_billed = asyncio.Event()
    all_audited = asyncio.Event()
    workers = [make_worker(name, billed, all_billed) for name in billed]

    audit = EventBus(URL, name="audit")

    @audit.subscriber(ORDERS)
    async def record(order: OrderPlaced) -> None:
        audited.append(order.id)
        if len(audited) == 10:
            all_audited.set()

    calc = EventBus(URL, name="calc")

    @calc.subscriber(f"quickstart.{RUN}.add", group="calc")
    async def add(req: dict[str, float]) -> dict[str, float]:
        return {"sum": req["a"] + req["b"]}

    @calc.subscriber(f"quickstart.{RUN}.divide", group="calc")
    async def divide(req: dict[str, float]) -> float:
        return req["a"] / req["b"]

    shop = EventBus(URL, name="shop")
    async with workers[0], workers[1], audit, calc, shop:
        orders = shop.publisher(ORDERS)
        for i in range(1, 11):
            await orders.publish(OrderPlaced(id=i, total=9.5 * i), key=str(i))
        await asyncio.wait_for(all_billed.wait(), timeout=30)
        await asyncio.wait_for(all_audited.wait(), timeout=30)

        reply = await shop.request(f"quickstart.{RUN}.add", {"a": 1, "b": 2}, timeout=5)
        try:
            await shop.request(f"quickstart.{RUN}.divide", {"a": 1, "b": 0}, timeout=5)
        except RemoteError as exc:
            error = f"{exc.remote_type}: {exc.remote_message}"

    print(f"broker: {URL}")
    for name, ids in billed.items():
        print(f"{name} billed orders {sorted(ids)}")
    print(f"audit saw {len(audited)} orders")
    print(f"calc.add(1, 2) -> {reply}")
    print(f"calc.divide(1, 0) -> RemoteError({error})")
    assert sorted(billed["worker-1"] + billed["worker-2"]) == list(range(1, 11))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
