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
- no confirms: transient messages published without waiting for confirms (eventbus
  ``durable=False``) against aio-pika on a channel without confirms.

Each measurement runs for all contenders before the next one starts, so a change in
the machine's load during the run shifts all of them alike.
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
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from harness import Table, arguments, payload, timed

from eventbus import EventBus

WINDOW = 100
"""Publishes in flight at once (each awaiting its confirm)."""
REQUESTERS = 64
PREFETCH = 100
"""Unacknowledged messages per consumer, the same for all three."""
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

Figures = dict[str, float]


async def pump(n: int, publish: Callable[[int], Awaitable[object]], window: int = WINDOW) -> None:
    """Publish ``n`` messages from ``window`` concurrent publishers."""
    indexes = iter(range(n))

    async def worker() -> None:
        for i in indexes:
            await publish(i)

    await asyncio.gather(*(worker() for _ in range(window)))


async def rate(n: int, publish: Callable[[int], Awaitable[object]]) -> float:
    return n / await timed(lambda: pump(n, publish))


async def end_to_end(
    n: int, publish: Callable[[int], Awaitable[object]], done: asyncio.Event
) -> float:
    async def run() -> None:
        await pump(n, publish)
        await done.wait()

    return n / await timed(run)


async def requests(total: int, call: Callable[[int], Awaitable[object]]) -> Figures:
    """Run ``total`` calls from `REQUESTERS` concurrent callers: rps, p50 and p99 in ms."""
    samples: list[float] = []

    async def timed_call(i: int) -> None:
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1000)

    await pump(20, timed_call, REQUESTERS)  # warm up
    samples.clear()
    seconds = await timed(lambda: pump(total, timed_call, REQUESTERS))
    samples.sort()
    return {
        "request/reply": total / seconds,
        "p50": statistics.median(samples),
        "p99": samples[int(len(samples) * 0.99) - 1],
    }


class Counter:
    """Counts handled messages and sets ``done`` at ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.handled = 0
        self.done = asyncio.Event()

    def __call__(self) -> None:
        self.handled += 1
        if self.handled == self.n:
            self.done.set()


class Admin:
    """Declares the benchmark's queues and deletes every one at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []

    async def __aenter__(self) -> Admin:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel()
        return self

    async def queue(self, exchange: str, topic: str) -> str:
        await self.channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        name = f"{topic}.q"
        queue = await self.channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key=topic)
        self.queues.append(name)
        return name

    async def __aexit__(self, *exc: object) -> None:
        for name in self.queues:
            await self.channel.queue_delete(name)
        await self.connection.close()


def new_topic(what: str) -> str:
    return f"bench.{uuid.uuid4().hex[:8]}.{what}"


# -- plain aio-pika ---------------------------------------------------------------------


class Plain:
    """aio-pika used directly, as its documentation shows."""

    exchange = "bench-plain"

    def __init__(self, url: str, admin: Admin, payloads: list[dict[str, object]]) -> None:
        self.url = url
        self.admin = admin
        self.payloads = payloads

    async def _connect(
        self, confirms: bool = True
    ) -> tuple[aio_pika.abc.AbstractRobustConnection, aio_pika.abc.AbstractExchange]:
        connection = await aio_pika.connect_robust(self.url)
        channel = await connection.channel(publisher_confirms=confirms)
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return connection, exchange

    def _publisher(
        self, exchange: aio_pika.abc.AbstractExchange, topic: str, *, persistent: bool = True
    ) -> Callable[[int], Awaitable[object]]:
        mode = (
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        )

        async def publish(i: int) -> None:
            body = json.dumps(self.payloads[i]).encode()
            message = aio_pika.Message(body, content_type="application/json", delivery_mode=mode)
            await exchange.publish(message, routing_key=topic)

        return publish

    async def publish(self, n: int) -> Figures:
        topic = new_topic("publish")
        await self.admin.queue(self.exchange, topic)
        connection, exchange = await self._connect()
        figures = {"publish": await rate(n, self._publisher(exchange, topic))}
        await connection.close()
        return figures

    async def end_to_end(self, n: int) -> Figures:
        topic = new_topic("e2e")
        name = await self.admin.queue(self.exchange, topic)
        connection, exchange = await self._connect()
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=PREFETCH)
        queue = await consumer.get_queue(name)
        count = Counter(n)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            json.loads(message.body)
            await message.ack()
            count()

        await queue.consume(on_message)
        figures = {"end-to-end": await end_to_end(n, self._publisher(exchange, topic), count.done)}
        await connection.close()
        return figures

    async def request_reply(self, total: int) -> Figures:
        topic = new_topic("rpc")
        connection, _ = await self._connect()
        server = await connection.channel()
        await server.set_qos(prefetch_count=PREFETCH)
        queue = await server.declare_queue(f"{topic}.server", auto_delete=True)
        await queue.bind(self.exchange, routing_key=topic)

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
        requests_exchange = await client.get_exchange(self.exchange)

        async def call(i: int) -> object:
            correlation_id = uuid.uuid4().hex
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            pending[correlation_id] = future
            await requests_exchange.publish(
                aio_pika.Message(
                    json.dumps(payload(i)).encode(),
                    content_type="application/json",
                    correlation_id=correlation_id,
                    reply_to="amq.rabbitmq.reply-to",
                ),
                routing_key=topic,
            )
            return json.loads(await asyncio.wait_for(future, 10))

        figures = await requests(total, call)
        await connection.close()
        return figures

    async def no_confirms(self, n: int) -> Figures:
        topic = new_topic("fast")
        await self.admin.queue(self.exchange, topic)
        connection, exchange = await self._connect(confirms=False)
        publish = self._publisher(exchange, topic, persistent=False)
        figures = {"no confirms": await rate(n, publish)}
        await connection.close()
        return figures


# -- eventbus ---------------------------------------------------------------------------


class Eventbus:
    """eventbus with its defaults (persistent messages, confirms), typed handlers."""

    def __init__(self, url: str, admin: Admin, payloads: list[dict[str, object]]) -> None:
        self.url = url
        self.admin = admin
        self.payloads = payloads

    async def publish(self, n: int) -> Figures:
        topic = new_topic("publish")
        await self.admin.queue("eventbus", topic)
        bus = EventBus(self.url)
        publisher = bus.publisher(topic)
        async with bus:
            return {"publish": await rate(n, lambda i: publisher.publish(self.payloads[i]))}

    async def end_to_end(self, n: int) -> Figures:
        topic = new_topic("e2e")
        bus = EventBus(self.url)
        count = Counter(n)

        @bus.subscriber(topic, group="bench", prefetch=PREFETCH)
        async def on_reading(reading: dict[str, object]) -> None:
            count()

        self.admin.queues.append(f"{topic}.bench")
        publisher = bus.publisher(topic)
        async with bus:
            publish = lambda i: publisher.publish(self.payloads[i])  # noqa: E731
            return {"end-to-end": await end_to_end(n, publish, count.done)}

    async def request_reply(self, total: int) -> Figures:
        topic = new_topic("rpc")
        server, client = EventBus(self.url), EventBus(self.url)

        @server.subscriber(topic, group="rpc", concurrency=REQUESTERS, prefetch=PREFETCH)
        async def answer(request: dict[str, object]) -> dict[str, object]:
            return {"id": request["id"], "ok": True}

        self.admin.queues.append(f"{topic}.rpc")
        async with server, client:
            return await requests(total, lambda i: client.request(topic, payload(i), timeout=10))

    async def no_confirms(self, n: int) -> Figures:
        topic = new_topic("fast")
        await self.admin.queue("eventbus", topic)
        bus = EventBus(self.url)
        fast = bus.publisher(topic, durable=False)
        async with bus:
            return {"no confirms": await rate(n, lambda i: fast.publish(self.payloads[i]))}


# -- FastStream -------------------------------------------------------------------------


class Faststream:
    """FastStream's RabbitBroker with persistent messages and the same prefetch."""

    def __init__(self, url: str, admin: Admin, payloads: list[dict[str, object]]) -> None:
        self.url = url
        self.admin = admin
        self.payloads = payloads
        self.exchange = RabbitExchange("bench-faststream", type=ExchangeType.TOPIC, durable=True)

    def _broker(self) -> RabbitBroker:
        return RabbitBroker(self.url, log_level=logging.DEBUG)

    async def publish(self, n: int) -> Figures:
        topic = new_topic("publish")
        await self.admin.queue(self.exchange.name, topic)
        broker = self._broker()
        publisher = broker.publisher(topic, self.exchange, persist=True)
        async with broker:
            await broker.start()
            return {"publish": await rate(n, lambda i: publisher.publish(self.payloads[i]))}

    async def end_to_end(self, n: int) -> Figures:
        topic = new_topic("e2e")
        broker = self._broker()
        count = Counter(n)
        queue = RabbitQueue(f"{topic}.q", durable=True, routing_key=topic)

        @broker.subscriber(queue, self.exchange, channel=Channel(prefetch_count=PREFETCH))
        async def on_reading(reading: dict[str, object]) -> None:
            count()

        self.admin.queues.append(queue.name)
        publisher = broker.publisher(topic, self.exchange, persist=True)
        async with broker:
            await broker.start()
            publish = lambda i: publisher.publish(self.payloads[i])  # noqa: E731
            return {"end-to-end": await end_to_end(n, publish, count.done)}

    async def request_reply(self, total: int) -> Figures:
        topic = new_topic("rpc")
        broker = self._broker()
        queue = RabbitQueue(f"{topic}.q", auto_delete=True, routing_key=topic)

        @broker.subscriber(queue, self.exchange, channel=Channel(prefetch_count=PREFETCH))
        async def answer(request: dict[str, object]) -> dict[str, object]:
            return {"id": request["id"], "ok": True}

        async def call(i: int) -> object:
            # To the queue through the default exchange: FastStream's request through a
            # custom exchange publishes on a channel without the reply consumer.
            reply = await broker.request(payload(i), queue.name, timeout=10)
            return json.loads(reply.body)

        async with broker:
            await broker.start()
            return await requests(total, call)


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
    payloads = [payload(i) for i in range(args.n)]
    async with Admin(url) as admin:
        contenders = {
            "aio-pika (plain)": Plain(url, admin, payloads),
            "eventbus": Eventbus(url, admin, payloads),
            "FastStream": Faststream(url, admin, payloads),
        }
        figures: dict[str, Figures] = {name: {} for name in contenders}
        for section in ("publish", "end_to_end", "request_reply", "no_confirms"):
            for name, contender in contenders.items():
                measure = getattr(contender, section, None)
                if measure is not None:
                    size = args.requests if section == "request_reply" else args.n
                    figures[name].update(await measure(size))
    for name, values in figures.items():
        table.add(name, **{k: v for k, v in values.items() if k != "no confirms"})
        if "no confirms" in values:
            fast.add(name, **{"no confirms": values["no confirms"]})
    print(table.render())
    print()
    print(fast.render())


if __name__ == "__main__":
    asyncio.run(main())
