"""RPC through the registry: ``bus.client().call()`` next to plain request/reply.

    python benchmarks/bench_rpc.py [URL ...] [--calls 10000] [--concurrency 64]
        [-o kafka:fetch_wait=0.01 ...]

For each broker URL (default ``memory://``), 64 concurrent callers make small JSON
calls to an echo service; every call's latency is recorded (p50, p99 in ms) along
with the calls per second. Rows, in one run on the same server:

- ``plain client``: the broker's own client library doing request/reply the way its
  users do (NATS ``nc.request``; RabbitMQ direct reply-to with aio-pika; Redis: a
  Stream for requests read by a consumer group, replies on a pub/sub channel; Kafka:
  a request topic and a reply topic with confluent-kafka). memory:// has no plain
  client: its baseline is eventbus's own topic-addressed ``bus.request``.
- ``eventbus request``: ``bus.request(topic)``, topic-addressed, through the core.
- ``eventbus client.call``: registry lookup, node selection (round robin over one
  node), node-addressed request: what this benchmark is about.

Ratios are to the first row. The target: ``client.call`` p50 within 1.3x and calls/s
at least 0.7x of the plain client's; its ratio to ``eventbus request`` isolates what
the registry lookup, selection and node addressing add. Baselines run even where
eventbus has no adapter for the scheme yet (its rows are then skipped with the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from harness import Table, payload

from eventbus import EventBus, wait_for_nodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's clean-up helpers

Call = Callable[[int], Awaitable[object]]


@dataclass
class Rpc:
    """One contender: ``call(i)`` makes call number ``i``; ``close`` tears it down."""

    call: Call
    close: Callable[[], Awaitable[None]]


# -- plain-client baselines, by URL scheme ---------------------------------------------------


async def nats_rpc(url: str) -> Rpc:
    """nats-py: a responder subscription and ``nc.request`` (muxed inbox) on core NATS."""
    import nats

    subject = f"bench.rpc.{uuid.uuid4().hex}"
    server = await nats.connect(url)
    client = await nats.connect(url)

    async def respond(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    await server.subscribe(subject, cb=respond)
    await server.flush()

    async def call(i: int) -> object:
        reply = await client.request(subject, orjson.dumps(payload(i)), timeout=10)
        return orjson.loads(reply.data)

    async def close() -> None:
        await client.close()
        await server.close()

    return Rpc(call, close)


async def rabbitmq_rpc(url: str) -> Rpc:
    """aio-pika: a server queue, replies through RabbitMQ's direct reply-to."""
    import aio_pika

    queue_name = f"bench.rpc.{uuid.uuid4().hex}"
    server = await aio_pika.connect(url)
    server_channel = await server.channel()
    await server_channel.set_qos(prefetch_count=64)
    queue = await server_channel.declare_queue(queue_name, auto_delete=True)

    async def respond(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await server_channel.default_exchange.publish(
            aio_pika.Message(message.body, correlation_id=message.correlation_id),
            routing_key=message.reply_to or "",
        )
        await message.ack()

    await queue.consume(respond)
    client = await aio_pika.connect(url)
    channel = await client.channel()
    pending: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    reply_queue = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await reply_queue.consume(on_reply, no_ack=True)
    loop = asyncio.get_running_loop()

    async def call(i: int) -> object:
        cid = str(i)
        future = pending[cid] = loop.create_future()
        await channel.default_exchange.publish(
            aio_pika.Message(
                orjson.dumps(payload(i)), correlation_id=cid, reply_to="amq.rabbitmq.reply-to"
            ),
            routing_key=queue_name,
        )
        async with asyncio.timeout(10):
            return orjson.loads(await future)

    async def close() -> None:
        await client.close()
        await server.close()

    return Rpc(call, close)


async def redis_rpc(url: str) -> Rpc:
    """redis-py: requests on a Stream (consumer group, XACK), replies on a pub/sub channel."""
    import redis.asyncio as redis

    stream = f"bench.rpc.{uuid.uuid4().hex}"
    channel = f"{stream}.reply"
    server = redis.from_url(url)
    client = redis.from_url(url)
    await server.xgroup_create(stream, "server", id="$", mkstream=True)
    stop = asyncio.Event()

    async def serve() -> None:
        while not stop.is_set():
            batches = await server.xreadgroup("server", "s1", {stream: ">"}, count=64, block=100)
            for _, entries in batches or ():
                pipe = server.pipeline(transaction=False)
                for entry_id, fields in entries:
                    pipe.publish(fields[b"reply"], fields[b"cid"] + b" " + fields[b"body"])
                    pipe.xack(stream, "server", entry_id)
                await pipe.execute()

    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    pending: dict[bytes, asyncio.Future[bytes]] = {}

    async def listen() -> None:
        while not stop.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is None:
                continue
            cid, _, body = message["data"].partition(b" ")
            future = pending.pop(cid, None)
            if future is not None and not future.done():
                future.set_result(body)

    tasks = [asyncio.create_task(serve()), asyncio.create_task(listen())]
    loop = asyncio.get_running_loop()

    async def call(i: int) -> object:
        cid = str(i).encode()
        future = pending[cid] = loop.create_future()
        fields = {"body": orjson.dumps(payload(i)), "cid": cid, "reply": channel}
        await client.xadd(stream, fields)  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            return orjson.loads(await future)

    async def close() -> None:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pubsub.aclose()
        await client.delete(stream)
        await client.aclose()
        await server.aclose()

    return Rpc(call, close)


async def kafka_rpc(url: str) -> Rpc:
    """confluent-kafka: a request topic and a reply topic, consumers polled on threads."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = urlsplit(url).netloc
    name = f"bench.rpc.{uuid.uuid4().hex}"
    requests_topic, replies_topic = f"{name}.req", f"{name}.rep"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(t, 1, 1) for t in (requests_topic, replies_topic)])
    for future in created.values():
        await asyncio.to_thread(future.result, 30)
    fast = {"bootstrap.servers": bootstrap, "linger.ms": 0}
    producer = Producer(fast)
    consumer_settings = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "fetch.wait.max.ms": 10,
    }
    server = Consumer({**consumer_settings, "group.id": f"{name}.server"})
    replies = Consumer({**consumer_settings, "group.id": f"{name}.client"})
    server.subscribe([requests_topic])
    replies.subscribe([replies_topic])
    loop = asyncio.get_running_loop()
    pending: dict[bytes, asyncio.Future[bytes]] = {}
    stop = threading.Event()

    def resolve(cid: bytes, body: bytes) -> None:
        future = pending.pop(cid, None)
        if future is not None and not future.done():
            future.set_result(body)

    def serve() -> None:
        while not stop.is_set():
            for msg in server.consume(num_messages=64, timeout=0.05):
                if msg.error() is None:
                    producer.produce(replies_topic, msg.value(), headers=msg.headers())
            producer.poll(0)

    def listen() -> None:
        while not stop.is_set():
            for msg in replies.consume(num_messages=64, timeout=0.05):
                if msg.error() is None:
                    cid = dict(msg.headers() or [])["cid"]
                    loop.call_soon_threadsafe(resolve, cid, msg.value())

    threads = [threading.Thread(target=serve), threading.Thread(target=listen)]
    for thread in threads:
        thread.start()

    async def call(i: int) -> object:
        cid = str(i).encode()
        future = pending[cid] = loop.create_future()
        producer.produce(requests_topic, orjson.dumps(payload(i)), headers=[("cid", cid)])
        producer.poll(0)
        async with asyncio.timeout(30):
            return orjson.loads(await future)

    async def close() -> None:
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        server.close()
        replies.close()
        await asyncio.to_thread(producer.flush, 10)
        admin.delete_topics([requests_topic, replies_topic])

    return Rpc(call, close)


BASELINES: dict[str, Callable[[str], Awaitable[Rpc]]] = {
    "nats": nats_rpc,
    "amqp": rabbitmq_rpc,
    "amqps": rabbitmq_rpc,
    "redis": redis_rpc,
    "rediss": redis_rpc,
    "kafka": kafka_rpc,
}
"""The plain client's request/reply, by URL scheme."""


# -- eventbus ------------------------------------------------------------------------------


async def eventbus_rpcs(url: str, service: str, options: dict[str, object]) -> tuple[Rpc, Rpc]:
    """(``bus.request`` by topic, ``bus.client().call`` through the registry) on one server."""
    server = EventBus(url, name=service, **options)  # type: ignore[arg-type]

    @server.subscriber(f"{service}.echo", group=service, concurrency=64)
    async def echo(request: dict[str, object]) -> dict[str, object]:
        return request

    client = EventBus(url, **options)  # type: ignore[arg-type]
    await server.start()
    await client.start()
    await wait_for_nodes(client.registry, service, 1, timeout=30)
    topic = f"{service}.echo"
    calls = client.client(service, selector="round_robin", timeout=30)

    async def request(i: int) -> object:
        return await client.request(topic, payload(i), timeout=30)

    async def call(i: int) -> object:
        return await calls.call("echo", payload(i))

    async def close() -> None:
        await client.close()
        await server.close()

    async def nothing() -> None:
        pass

    return Rpc(request, nothing), Rpc(call, close)


# -- measurement -----------------------------------------------------------------------------


async def measure(call: Call, calls: int, concurrency: int) -> dict[str, float]:
    """p50/p99 latency (ms) of each call and calls/s, with ``concurrency`` callers."""
    samples: list[float] = []
    numbers = iter(range(calls))

    async def caller() -> None:
        clock = time.perf_counter
        for i in numbers:
            started = clock()
            await call(i)
            samples.append((clock() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p99": samples[max(int(len(samples) * 0.99) - 1, 0)],
        "calls/s": calls / seconds,
    }


async def run(rpc: Rpc, args: argparse.Namespace) -> dict[str, float]:
    """Warm up, then the median of ``--rounds`` measured rounds, figure by figure."""
    await measure(rpc.call, max(args.calls // 10, args.concurrency), args.concurrency)
    rounds = [await measure(rpc.call, args.calls, args.concurrency) for _ in range(args.rounds)]
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def bench(url: str, args: argparse.Namespace) -> None:
    scheme = urlsplit(url).scheme
    table = Table(
        f"{url}: {args.calls:,} echo calls (~256 B JSON), {args.concurrency} concurrent callers",
        {"p50": "latency", "p99": "latency", "calls/s": "rate"},
    )
    baseline = BASELINES.get(scheme)
    if baseline is not None:
        plain = await baseline(url)
        try:
            table.add("plain client", **await run(plain, args))
        finally:
            await plain.close()
    service = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        request, call = await eventbus_rpcs(url, service, options_for(scheme, args.option))
    except Exception as exc:  # no eventbus adapter for this scheme yet
        table.add(f"eventbus: n/a ({type(exc).__name__})")
        print(table.render())
        print(f"   eventbus rows skipped: {exc}")
        return
    try:
        table.add("eventbus request", **await run(request, args))
        table.add("eventbus client.call", **await run(call, args))
    finally:
        await call.close()
        await forget(url, service)
    print(table.render())
    got = table.rows[-1].figures
    for base_row in table.rows[:-1]:
        base = base_row.figures
        p50 = got["p50"] / base["p50"]
        rate = got["calls/s"] / base["calls/s"]
        verdict = "meets" if p50 <= 1.3 and rate >= 0.7 else "MISSES"
        print(
            f"   client.call vs {base_row.name}: p50 {p50:.2f}x (target <= 1.3x), "
            f"calls/s {rate:.2f}x (target >= 0.7x): {verdict} the target"
        )


async def forget(url: str, service: str) -> None:
    """Delete what the eventbus rows left on a shared server: the echo topic and its group."""
    scheme = urlsplit(url).scheme
    topic = f"{service}.echo"
    if scheme in ("redis", "rediss"):
        import redis.asyncio as redis_py

        client = redis_py.Redis.from_url(url)
        try:
            await client.delete(topic)
        finally:
            await client.aclose()
    elif scheme == "nats":
        from tests.nats.streams import drop_streams

        await drop_streams(url, topic)
    elif scheme in ("amqp", "amqps"):
        from tests.rabbitmq.cleanup import delete

        await delete(url, [f"{topic}.{service}"])


def options_for(scheme: str, pairs: list[str]) -> dict[str, object]:
    """Adapter options given as ``-o SCHEME:NAME=VALUE`` for this URL scheme."""
    options: dict[str, object] = {}
    for pair in pairs:
        target, _, setting = pair.partition(":")
        name, sep, text = setting.partition("=")
        if not sep:
            raise SystemExit(
                f"-o takes SCHEME:NAME=VALUE (e.g. kafka:fetch_wait=0.01), not {pair!r}"
            )
        if target == scheme:
            try:
                options[name] = orjson.loads(text)
            except orjson.JSONDecodeError:
                options[name] = text
    return options


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("urls", nargs="*", default=["memory://bench-rpc"], help="broker URLs")
    parser.add_argument("--calls", type=int, default=10_000, help="calls per measured round")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (median)")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="SCHEME:NAME=VALUE",
        help="eventbus adapter option for one URL scheme, e.g. -o kafka:fetch_wait=0.01",
    )
    args = parser.parse_args()
    for url in args.urls:
        await bench(url, args)


if __name__ == "__main__":
    asyncio.run(main())
