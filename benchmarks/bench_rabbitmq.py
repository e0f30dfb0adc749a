"""RabbitMQ: plain aio-pika vs eventbus vs FastStream, in one run on the same server.

    python benchmarks/bench_rabbitmq.py [--n 50000] [--requests 5000] [--url amqp://...]

All three do the same work on the same topology (a durable topic exchange, a durable
queue bound to the topic, persistent messages of ~256 bytes of JSON, publisher
confirms, manual acks, the same prefetch):

- publish: ``--n`` messages, each publish awaited until RabbitMQ confirmed it, from
  ``WINDOW`` concurrent publishers (one would measure only the round trip).
- end-to-end: the same publishing while a consumer decodes each message as JSON and
  acknowledges it; timed from the first publish to the last handled message.
- request/reply: ``--requests`` requests from 64 concurrent requesters over direct
  reply-to; requests per second and the p50/p99 latency of one request. The plain
  client's own reply loop is a consumer answering on the default exchange and a
  requester matching replies by correlation id. (FastStream serialises requests.)
- without confirms: publishing transient messages without waiting for confirms
  (eventbus ``durable=False``) against aio-pika on a channel without confirms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
from harness import Table, arguments, payload, timed

from eventbus import EventBus

WINDOW = 100
"""Publishes in flight at once (each awaiting its confirm)."""
REQUESTERS = 64
PREFETCH = 100
"""Unacknowledged messages per consumer, the same for all three."""
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def pump(n: int, publish: Callable[[int], Awaitable[object]], window: int = WINDOW) -> None:
    """Publish ``n`` messages from ``window`` concurrent publishers."""
    indexes = iter(range(n))

    async def worker() -> None:
        for i in indexes:
            await publish(i)

    await asyncio.gather(*(worker() for _ in range(window)))


async def requests(
    total: int, call: Callable[[int], Awaitable[object]]
) -> tuple[float, float, float]:
    """Run ``total`` calls from `REQUESTERS` concurrent callers: (rps, p50 ms, p99 ms)."""
    samples: list[float] = []

    async def timed_call(i: int) -> None:
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1000)

    await pump(20, timed_call, REQUESTERS)  # warm up
    samples.clear()
    seconds = await timed(lambda: pump(total, timed_call, REQUESTERS))
    samples.sort()
    return total / seconds, statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


class Admin:
    """Declares and deletes the benchmark's queues with a plain connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []

    async def __aenter__(self) -> Admin:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel()
        return self

    async def queue(self, name: str, exchange: str, topic: str) -> None:
        await self.channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await self.channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key=topic)
        self.queues.append(name)

    async def __aexit__(self, *exc: object) -> None:
        for name in self.queues:
            await self.channel.queue_delete(name)
        await self.connection.close()


# -- plain aio-pika ---------------------------------------------------------------------


async def plain(url: str, n: int, total_requests: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    exchange_name = "bench-plain"
    figures: dict[str, float] = {}
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    payloads = [payload(i) for i in range(n)]

    async def publish(topic: str, i: int) -> None:
        body = json.dumps(payloads[i]).encode()
        message = aio_pika.Message(
            body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await exchange.publish(message, routing_key=topic)

    async with Admin(url) as admin:
        topic = f"bench.{run}.publish"
        await admin.queue(f"{topic}.q", exchange_name, topic)
        seconds = await timed(lambda: pump(n, lambda i: publish(topic, i)))
        figures["publish"] = n / seconds

        topic = f"bench.{run}.e2e"
        consumer_channel = await connection.channel()
        await consumer_channel.set_qos(prefetch_count=PREFETCH)
        queue = await consumer_channel.declare_queue(f"{topic}.q", durable=True)
        await queue.bind(exchange_name, routing_key=topic)
        admin.queues.append(queue.name)
        handled = 0
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            json.loads(message.body)
            await message.ack()
            handled += 1
            if handled == n:
                done.set()

        await queue.consume(on_message)

        async def end_to_end() -> None:
            await pump(n, lambda i: publish(topic, i))
            await done.wait()

        figures["end-to-end"] = n / await timed(end_to_end)
        await consumer_channel.close()

        rps, p50, p99 = await plain_rpc(connection, exchange, run, total_requests)
        figures.update({"request/reply": rps, "p50": p50, "p99": p99})

        topic = f"bench.{run}.fast"
        await admin.queue(f"{topic}.q", exchange_name, topic)
        fast_channel = await connection.channel(publisher_confirms=False)
        fast = await fast_channel.get_exchange(exchange_name)

        async def publish_fast(i: int) -> None:
            body = json.dumps(payloads[i]).encode()
            await fast.publish(aio_pika.Message(body, content_type="application/json"), topic)

        figures["no confirms"] = n / await timed(lambda: pump(n, publish_fast))
    await connection.close()
    return figures


async def plain_rpc(
    connection: aio_pika.abc.AbstractRobustConnection,
    exchange: aio_pika.abc.AbstractExchange,
    run: str,
    total: int,
) -> tuple[float, float, float]:
    topic = f"bench.{run}.rpc"
    server = await connection.channel()
    await server.set_qos(prefetch_count=PREFETCH)
    queue = await server.declare_queue(f"{topic}.server", auto_delete=True)
    await queue.bind(exchange.name, routing_key=topic)

    async def answer(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        request = json.loads(message.body)
        reply = json.dumps({"id": request["id"], "ok": True}).encode()
        await server.default_exchange.publish(
            aio_pika.Message(
                reply, content_type="application/json", correlation_id=message.correlation_id
            ),
            routing_key=message.reply_to or "",
        )
        await message.ack()

    await queue.consume(answer)
    client = await connection.channel()  # requests and their replies share this channel
    pending: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    reply_queue = await client.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await reply_queue.consume(on_reply, no_ack=True)
    client_exchange = await client.get_exchange(exchange.name)

    async def call(i: int) -> object:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pending[correlation_id] = future
        body = json.dumps(payload(i)).encode()
        await client_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                correlation_id=correlation_id,
                reply_to="amq.rabbitmq.reply-to",
            ),
            routing_key=topic,
        )
        return json.loads(await asyncio.wait_for(future, 10))

    result = await requests(total, call)
    await client.close()
    await server.close()
    return result


# -- eventbus ---------------------------------------------------------------------------


async def eventbus(url: str, n: int, total_requests: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    figures: dict[str, float] = {}
    payloads = [payload(i) for i in range(n)]
    async with Admin(url) as admin:
        topic = f"bench.{run}.publish"
        await admin.queue(f"{topic}.q", "eventbus", topic)
        bus = EventBus(url)
        publisher = bus.publisher(topic)
        async with bus:
            seconds = await timed(lambda: pump(n, lambda i: publisher.publish(payloads[i])))
            figures["publish"] = n / seconds

        topic = f"bench.{run}.e2e"
        bus = EventBus(url)
        handled = 0
        done = asyncio.Event()

        @bus.subscriber(topic, group="bench", prefetch=PREFETCH)
        async def on_reading(reading: dict[str, object]) -> None:
            nonlocal handled
            handled += 1
            if handled == n:
                done.set()

        admin.queues.append(f"{topic}.bench")
        publisher = bus.publisher(topic)
        async with bus:

            async def end_to_end() -> None:
                await pump(n, lambda i: publisher.publish(payloads[i]))
                await done.wait()

            figures["end-to-end"] = n / await timed(end_to_end)

        topic = f"bench.{run}.rpc"
        server, client = EventBus(url), EventBus(url)

        @server.subscriber(topic, group="rpc", concurrency=REQUESTERS, prefetch=PREFETCH)
        async def answer(request: dict[str, object]) -> dict[str, object]:
            return {"id": request["id"], "ok": True}

        admin.queues.append(f"{topic}.rpc")
        async with server, client:
            rps, p50, p99 = await requests(
                total_requests, lambda i: client.request(topic, payload(i), timeout=10)
            )
        figures.update({"request/reply": rps, "p50": p50, "p99": p99})

        topic = f"bench.{run}.fast"
        await admin.queue(f"{topic}.q", "eventbus", topic)
        bus = EventBus(url)
        fast = bus.publisher(topic, durable=False)
        async with bus:
            figures["no confirms"] = n / await timed(
                lambda: pump(n, lambda i: fast.publish(payloads[i]))
            )
    return figures


# -- FastStream -------------------------------------------------------------------------


async def faststream(url: str, n: int, total_requests: int) -> dict[str, float]:
    from faststream.rabbit import (
        Channel,
        ExchangeType,
        RabbitBroker,
        RabbitExchange,
        RabbitQueue,
    )

    run = uuid.uuid4().hex[:8]
    figures: dict[str, float] = {}
    exchange = RabbitExchange("bench-faststream", type=ExchangeType.TOPIC, durable=True)
    payloads = [payload(i) for i in range(n)]
    async with Admin(url) as admin:
        topic = f"bench.{run}.publish"
        await admin.queue(f"{topic}.q", exchange.name, topic)
        broker = RabbitBroker(url, log_level=logging.DEBUG)
        publisher = broker.publisher(topic, exchange, persist=True)
        async with broker:
            await broker.start()
            seconds = await timed(lambda: pump(n, lambda i: publisher.publish(payloads[i])))
            figures["publish"] = n / seconds

        topic = f"bench.{run}.e2e"
        broker = RabbitBroker(url, log_level=logging.DEBUG)
        handled = 0
        done = asyncio.Event()
        queue = RabbitQueue(f"{topic}.q", durable=True, routing_key=topic)

        @broker.subscriber(queue, exchange, channel=Channel(prefetch_count=PREFETCH))
        async def on_reading(reading: dict[str, object]) -> None:
            nonlocal handled
            handled += 1
            if handled == n:
                done.set()

        admin.queues.append(queue.name)
        publisher = broker.publisher(topic, exchange, persist=True)
        async with broker:
            await broker.start()

            async def end_to_end() -> None:
                await pump(n, lambda i: publisher.publish(payloads[i]))
                await done.wait()

            figures["end-to-end"] = n / await timed(end_to_end)

        topic = f"bench.{run}.rpc"
        broker = RabbitBroker(url, log_level=logging.DEBUG)
        queue = RabbitQueue(f"{topic}.q", auto_delete=True, routing_key=topic)

        @broker.subscriber(queue, exchange, channel=Channel(prefetch_count=PREFETCH))
        async def answer(request: dict[str, object]) -> dict[str, object]:
            return {"id": request["id"], "ok": True}

        async with broker:
            await broker.start()

            async def call(i: int) -> object:
                # To the queue through the default exchange: FastStream's request through a
                # custom exchange publishes on a channel without the reply consumer.
                reply = await broker.request(payload(i), queue.name, timeout=10)
                return json.loads(reply.body)

            rps, p50, p99 = await requests(total_requests, call)
        figures.update({"request/reply": rps, "p50": p50, "p99": p99})
    return figures


async def main() -> None:
    args = arguments(__doc__ or "")
    url = args.url or DEFAULT_URL
    table = Table(
        f"RabbitMQ, {args.n:,} x 256-byte JSON, confirms on; request/reply: "
        f"{args.requests:,} requests, {REQUESTERS} concurrent",
        {
            "publish": "rate",
            "end-to-end": "rate",
            "request/reply": "rate",
            "p50": "latency",
            "p99": "latency",
        },
    )
    fast = Table(
        f"RabbitMQ, {args.n:,} x 256-byte JSON, transient, without confirms",
        {"no confirms": "rate"},
    )
    for name, contender in (
        ("aio-pika (plain)", plain),
        ("eventbus", eventbus),
        ("FastStream", faststream),
    ):
        figures = await contender(url, args.n, args.requests)
        table.add(name, **figures)
        if "no confirms" in figures:
            fast.add(name, **{"no confirms": figures["no confirms"]})
    print(table.render())
    print()
    print(fast.render())


if __name__ == "__main__":
    asyncio.run(main())
