"""The order service that every broker example runs: the same code on each URL.

``examples/<broker>_orders.py`` calls `run` with its broker's URL and options; this
module is the service itself and holds nothing broker-specific:

- orders are published with the customer as key; a "shipping" group handles them with
  ``concurrency=8``, so its members share the work. Where the broker promises one key's
  order (``capabilities.ordered_by_key``: memory, Kafka) the output shows it held;
- an "audit" subscriber without a group sees every order (fan-out);
- a "pricing" group answers requests (request/reply on the broker's own reply path);
- at the end the topic is replayed from the time the run started, as a test or a new
  consumer would (a clear message where the broker keeps nothing).

    python examples/orders.py                          # in memory
    EVENTBUS_URL=redis://127.0.0.1:6379/0 python examples/orders.py
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime

from eventbus import EventBus, Message, ReplayNotSupported

COUNT = 40


def topics() -> str:
    """The prefix of this run's topics: fresh per run, so reruns on a real broker start clean.

    ``EXAMPLE_TOPICS`` overrides it (the test suite uses its own test topic names).
    """
    return os.environ.get("EXAMPLE_TOPICS") or f"example.{uuid.uuid4().hex[:8]}"


def options(**defaults: object) -> dict[str, object]:
    """The broker options of an example: its defaults, then ``EXAMPLE_OPTIONS`` (JSON).

    The test suite passes short timeouts there (e.g. Kafka's session timeout).
    """
    extra: dict[str, object] = json.loads(os.environ.get("EXAMPLE_OPTIONS") or "{}")
    return {**defaults, **extra}


async def run(url: str, prefix: str, **broker_options: object) -> None:
    """Run the order service on ``url`` once: publish, ship, audit, price, replay."""
    orders, price = f"{prefix}.orders", f"{prefix}.price"
    shipped: dict[str, list[int]] = {}
    audited: list[int] = []
    all_shipped, all_audited = asyncio.Event(), asyncio.Event()
    node = EventBus(url, name="orders", **broker_options)  # type: ignore[arg-type]

    @node.subscriber(orders, group="shipping", concurrency=8)
    async def ship(order: dict[str, int], msg: Message) -> None:
        await asyncio.sleep(0.001 * (order["n"] % 3))  # uneven work
        shipped.setdefault(msg.key or "", []).append(order["n"])
        if sum(len(v) for v in shipped.values()) == COUNT:
            all_shipped.set()

    @node.subscriber(orders)
    async def audit(order: dict[str, int]) -> None:
        audited.append(order["n"])
        if len(audited) == COUNT:
            all_audited.set()

    @node.subscriber(price, group="pricing")
    async def quote(req: dict[str, int]) -> dict[str, float]:
        return {"total": req["items"] * 9.5}

    async with node:  # returns once every subscription is live
        print(f"on {url}")
        answer = await node.request(price, {"items": 3}, timeout=10)
        print(f"pricing answered: {answer}")
        started = datetime.now(UTC)
        for n in range(COUNT):
            await node.publish(orders, {"n": n}, key=f"customer-{n % 4}")
        await asyncio.wait_for(asyncio.gather(all_shipped.wait(), all_audited.wait()), 60)
        ordered = node.broker.capabilities.ordered_by_key
        for customer, numbers in sorted(shipped.items()):
            if ordered:
                verdict = "in order" if numbers == sorted(numbers) else "REORDERED"
            else:
                verdict = "this broker does not promise one key's order across workers"
            print(f"{customer}: shipped {len(numbers)} ({verdict})")
        print(f"audit saw {len(audited)} orders")
        try:
            replayed = [m async for m in node.replay(orders, since=started)]
        except ReplayNotSupported as exc:
            print(f"replay: {exc}")
        else:
            print(f"replay since start gives {len(replayed)} orders")


if __name__ == "__main__":
    asyncio.run(run(os.environ.get("EVENTBUS_URL", "memory://"), topics(), **options()))
