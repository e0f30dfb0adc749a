"""Redis Streams: plain redis-py vs eventbus vs FastStream, in one run on one server.

    python benchmarks/bench_redis.py [--n 50000] [--requests 5000] [--rounds 3] [--url redis://...]

With ``--rounds N`` it prints each round's table, then the median of the rounds'
ratios (on a busy machine, pairing contenders within a round beats a best-of).

(Not named ``redis.py``: that would shadow the redis package.)

- publish: ``--n`` sequential publishes of a ~256-byte JSON object (``harness.payload``)
  to a stream, each awaited (``XADD MAXLEN ~ 100000``, eventbus's default trim).
- end-to-end: the same, with a consumer-group subscriber in the same process; timed
  from the first publish to the last message handled (decoded to a ``dict``) and
  acknowledged by the subscriber. The plain client reads with ``XREADGROUP COUNT 100``,
  ``json.loads`` each body and ``XACK`` per batch.
- request/reply: a request is an entry on a stream read by a group (the server); the
  reply goes back on a pub/sub channel of the requester. The plain client does the
  same by hand: one reply channel, a reader task matching replies to futures by
  correlation id. p50/p99 of ``--requests`` sequential requests, then requests/s with
  64 concurrent requesters. FastStream subscribes a fresh reply channel per request.

Every contender uses its own fresh stream keys; they are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis_py
from faststream.redis import RedisBroker as FastRedisBroker
from faststream.redis import StreamSub
from harness import Table, concurrent_rate, latencies, payload, timed

from eventbus import EventBus

MAXLEN = 100_000
CONCURRENT = 64
DEFAULT_URL = "redis://127.0.0.1:6379/0"

keys: list[str] = []


def fresh(kind: str) -> str:
    name = f"bench.{kind}.{uuid.uuid4().hex[:12]}"
    keys.append(name)
    return name


class Figures(dict[str, float]):
    pass


def plain_client(url: str) -> Any:
    # Tuned as eventbus tunes its client: without a socket timeout, redis-py 8 sends
    # without asyncio.wait_for (no task per command) and cancellation is reliable;
    # the pool default (100 connections) is too small for 64 requesters plus readers.
    return redis_py.Redis.from_url(url, socket_timeout=None, max_connections=1000)


# -- plain redis-py ----------------------------------------------------------------------


async def plain(url: str, items: list[dict[str, object]], requests: int) -> Figures:
    figures = Figures()
    r = plain_client(url)
    n = len(items)

    stream = fresh("plain.publish")

    async def publish_only() -> None:
        for item in items:
            await r.xadd(stream, {"body": json.dumps(item)}, maxlen=MAXLEN, approximate=True)

    figures["publish"] = n / await timed(publish_only)

    stream = fresh("plain.e2e")
    await r.xgroup_create(stream, "g", id="$", mkstream=True)
    done = asyncio.Event()

    async def consume() -> None:
        reader = plain_client(url)
        handled = 0
        while handled < n:
            reply = await reader.xreadgroup("g", "c", {stream: ">"}, count=100, block=1000)
            if not reply:
                continue
            entries = reply[0][1]
            for _, fields in entries:
                json.loads(fields[b"body"])
                handled += 1
            await reader.xack(stream, "g", *[entry_id for entry_id, _ in entries])
        done.set()
        await reader.aclose()

    consumer = asyncio.create_task(consume())

    async def end_to_end() -> None:
        for item in items:
            await r.xadd(stream, {"body": json.dumps(item)}, maxlen=MAXLEN, approximate=True)
        await done.wait()

    figures["end-to-end"] = n / await timed(end_to_end)
    await consumer

    # request/reply
    stream = fresh("plain.rpc")
    await r.xgroup_create(stream, "srv", id="$", mkstream=True)
    server_client = plain_client(url)

    async def serve() -> None:
        while True:
            reply = await server_client.xreadgroup("srv", "s", {stream: ">"}, count=100, block=1000)
            if not reply:
                continue
            entries = reply[0][1]
            for _, fields in entries:
                request = json.loads(fields[b"body"])
                answer = json.dumps({"id": request["id"], "ok": True}).encode()
                await server_client.publish(fields[b"reply_to"], fields[b"corr"] + b" " + answer)
            await server_client.xack(stream, "srv", *[entry_id for entry_id, _ in entries])

    channel = f"bench.replies.{uuid.uuid4().hex[:12]}"
    pubsub = r.pubsub()
    await pubsub.subscribe(channel)
    while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
        pass
    waiting: dict[bytes, asyncio.Future[Any]] = {}

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            corr, _, body = message["data"].partition(b" ")
            future = waiting.pop(corr, None)
            if future is not None and not future.done():
                future.set_result(json.loads(body))

    counter = itertools.count()
    loop = asyncio.get_running_loop()

    async def call(i: int) -> object:
        corr = b"%d" % next(counter)
        future = waiting[corr] = loop.create_future()
        body = json.dumps(items[i % n])
        await r.xadd(
            stream,
            {"body": body, "reply_to": channel, "corr": corr},
            maxlen=MAXLEN,
            approximate=True,
        )
        return await asyncio.wait_for(future, 5.0)

    tasks = [asyncio.create_task(serve()), asyncio.create_task(listen())]
    await rpc_figures(figures, call, requests)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await pubsub.aclose()
    await server_client.aclose()
    await r.aclose()
    return figures


# -- eventbus ------------------------------------------------------------------------------


async def eventbus(url: str, items: list[dict[str, object]], requests: int) -> Figures:
    figures = Figures()
    n = len(items)
    bus = EventBus(url)
    publisher = bus.publisher(fresh("eventbus.publish"))
    async with bus:

        async def publish_only() -> None:
            for item in items:
                await publisher.publish(item)

        figures["publish"] = n / await timed(publish_only)

    topic = fresh("eventbus.e2e")
    bus = EventBus(url)
    handled = 0
    done = asyncio.Event()

    @bus.subscriber(topic, group="g")
    async def on_item(item: dict[str, object]) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    publisher = bus.publisher(topic)
    async with bus:

        async def end_to_end() -> None:
            for item in items:
                await publisher.publish(item)
            await done.wait()

        figures["end-to-end"] = n / await timed(end_to_end)

    topic = fresh("eventbus.rpc")
    server = EventBus(url)

    @server.subscriber(topic, group="srv")
    async def answer(request: dict[str, Any]) -> dict[str, object]:
        return {"id": request["id"], "ok": True}

    client = EventBus(url)
    rpc = client.publisher(topic)
    async with server, client:

        async def call(i: int) -> object:
            return await rpc.request(items[i % n], timeout=5.0)

        await rpc_figures(figures, call, requests)
    return figures


# -- FastStream ----------------------------------------------------------------------------


async def faststream(url: str, items: list[dict[str, object]], requests: int) -> Figures:
    figures = Figures()
    n = len(items)
    broker = FastRedisBroker(url, logger=None, max_connections=1000)
    stream = fresh("faststream.publish")
    async with broker:
        await broker.start()

        async def publish_only() -> None:
            for item in items:
                await broker.publish(item, stream=stream, maxlen=MAXLEN)

        figures["publish"] = n / await timed(publish_only)

    stream = fresh("faststream.e2e")
    broker = FastRedisBroker(url, logger=None, max_connections=1000)
    handled = 0
    done = asyncio.Event()

    @broker.subscriber(stream=StreamSub(stream, group="g", consumer="c", max_records=100))
    async def on_item(item: dict[str, object]) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    async with broker:
        await broker.start()

        async def end_to_end() -> None:
            for item in items:
                await broker.publish(item, stream=stream, maxlen=MAXLEN)
            await done.wait()

        figures["end-to-end"] = n / await timed(end_to_end)

    stream = fresh("faststream.rpc")
    broker = FastRedisBroker(url, logger=None, max_connections=1000)

    @broker.subscriber(stream=StreamSub(stream, group="srv", consumer="s", max_records=100))
    async def answer(request: dict[str, Any]) -> dict[str, object]:
        return {"id": request["id"], "ok": True}

    async with broker:
        await broker.start()

        async def call(i: int) -> object:
            reply = await broker.request(items[i % n], stream=stream, timeout=5.0)
            return json.loads(reply.body)

        await rpc_figures(figures, call, requests)
    return figures


# -- driver ------------------------------------------------------------------------------


async def rpc_figures(
    figures: Figures, call: Callable[[int], Awaitable[object]], requests: int
) -> None:
    for i in range(50):  # warm up: connections, pools, caches
        await call(i)
    p50, p99 = await latencies(call, requests)
    figures["request p50"] = p50
    figures["request p99"] = p99
    figures[f"requests/s x{CONCURRENT}"] = await concurrent_rate(call, requests, CONCURRENT)


COLUMNS = {
    "publish": "rate",
    "end-to-end": "rate",
    "request p50": "latency",
    "request p99": "latency",
    f"requests/s x{CONCURRENT}": "rate",
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000, help="messages per throughput run")
    parser.add_argument("--requests", type=int, default=5_000, help="requests per latency run")
    parser.add_argument("--url", default=DEFAULT_URL, help="Redis URL")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run all contenders N times; print each round"
    )
    args = parser.parse_args()
    items = [payload(i) for i in range(args.n)]
    title = f"Redis Streams at {args.url}: {args.n:,} x 256-byte JSON; {args.requests:,} requests"
    contenders = [("redis-py (plain)", plain), ("eventbus", eventbus), ("FastStream", faststream)]
    # Each round runs the contenders back to back, so its ratios compare like with like
    # even when the machine's load drifts between rounds.
    ratios: dict[str, dict[str, list[float]]] = {name: {} for name, _ in contenders[1:]}
    try:
        for round_ in range(args.rounds):
            table = Table(f"{title} (round {round_ + 1} of {args.rounds})", COLUMNS)
            for name, run in contenders:
                table.add(name, **await run(args.url, items, args.requests))
            print(table.render(), flush=True)
            base = table.rows[0].figures
            for row in table.rows[1:]:
                for column, value in row.figures.items():
                    if base.get(column):
                        ratios[row.name].setdefault(column, []).append(value / base[column])
    finally:
        cleaner = redis_py.Redis.from_url(args.url)
        if keys:
            await cleaner.delete(*keys)
        await cleaner.aclose()
    if args.rounds > 1:
        print(f"== median ratio to the plain client over {args.rounds} rounds")
        print(f"{'':<22}" + "".join(f"{c:>26}" for c in COLUMNS))
        for name, columns in ratios.items():
            cells = "".join(f"{statistics.median(columns[c]):>25.2f}x" for c in COLUMNS)
            print(f"{name:<22}{cells}")


if __name__ == "__main__":
    asyncio.run(main())
