"""eventbus on memory://: publish and end-to-end messages/s for small JSON messages.

    python benchmarks/memory.py [--n 100000]

"publish" is publishing alone (no subscriber). "end-to-end" is publish -> decode ->
typed (pydantic) handler, timed from the first publish to the last handled message.
The baseline row is the least any framework must do for the same work: an
``asyncio.Queue`` carrying the JSON bytes to a consumer that validates them into the
same pydantic model — eventbus's ratio to it is the whole framework's cost.
"""

from __future__ import annotations

import asyncio

import orjson
from harness import Table, arguments, timed
from pydantic import BaseModel

from eventbus import EventBus


class Tick(BaseModel):
    id: int
    name: str
    value: float


async def plain(n: int) -> tuple[float, float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def publish_only() -> None:
        for i in range(n):
            queue.put_nowait(orjson.dumps({"id": i, "name": "tick", "value": 1.5}))

    publish = n / await timed(publish_only)
    queue = asyncio.Queue()
    handled = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal handled
        while True:
            Tick.model_validate_json(await queue.get())
            handled += 1
            if handled == n:
                done.set()

    consumer = asyncio.create_task(consume())

    async def end_to_end() -> None:
        for i in range(n):
            queue.put_nowait(orjson.dumps({"id": i, "name": "tick", "value": 1.5}))
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await done.wait()

    e2e = n / await timed(end_to_end)
    consumer.cancel()
    return publish, e2e


async def eventbus(n: int) -> tuple[float, float]:
    bus = EventBus("memory://bench-publish")
    publisher = bus.publisher("bench.publish")
    async with bus:

        async def publish_only() -> None:
            for i in range(n):
                await publisher.publish({"id": i, "name": "tick", "value": 1.5})

        publish = n / await timed(publish_only)

    bus = EventBus("memory://bench-e2e")
    handled = 0
    done = asyncio.Event()

    @bus.subscriber("bench.e2e")
    async def on_tick(tick: Tick) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    publisher = bus.publisher("bench.e2e")
    async with bus:

        async def end_to_end() -> None:
            for i in range(n):
                await publisher.publish({"id": i, "name": "tick", "value": 1.5})
            await done.wait()

        e2e = n / await timed(end_to_end)
    return publish, e2e


async def main() -> None:
    args = arguments(__doc__ or "", default_n=100_000)
    table = Table(
        f"memory://, {args.n:,} small JSON messages",
        {"publish": "rate", "end-to-end": "rate"},
    )
    publish, e2e = await plain(args.n)
    table.add("asyncio.Queue+pydantic", publish=publish, **{"end-to-end": e2e})
    publish, e2e = await eventbus(args.n)
    table.add("eventbus", publish=publish, **{"end-to-end": e2e})
    print(table.render())


if __name__ == "__main__":
    asyncio.run(main())
