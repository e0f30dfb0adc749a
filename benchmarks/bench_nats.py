"""NATS: plain nats-py vs eventbus vs FastStream, JetStream and core NATS, one run, one server.

    python benchmarks/bench_nats.py [--n 50000] [--requests 5000] [--repeat 1]
                                    [--url nats://127.0.0.1:4222]

(Not named ``nats.py``: that would shadow the nats package.)

For each of JetStream (eventbus's default, ``durable=True``) and core NATS
(``durable=False``), ``--n`` messages of 256-byte JSON (`harness.payload`):

- publish: one publisher awaiting each publish in turn (on JetStream each waits for
  the stream's acknowledgement; on core each is buffered on the connection);
- end-to-end: the same publishing while one subscriber on its own connection decodes
  every message (the plain client's loop does its own ``json.loads`` and, on
  JetStream, its own ``ack``), timed from the first publish to the last handled message.

Request/reply runs over core NATS: sequential round trips (p50, p99) and requests/s with
64 concurrent requesters sharing ``--requests`` requests (best of five runs). Every
contender gets its own fresh subjects and streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Awaitable, Callable

import nats
from faststream.nats import JStream, PullSub
from faststream.nats import NatsBroker as FastStreamBroker
from harness import Table, concurrent_rate, latencies, payload, timed
from nats.js.api import StreamConfig

from eventbus import EventBus

Rates = dict[str, float]
DEFAULT_URL = "nats://127.0.0.1:4222"


def fresh(kind: str) -> str:
    return f"bench.{kind}.{uuid.uuid4().hex[:12]}"


class Counter:
    """Counts handled messages and fires when the expected number arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()

    async def wait(self, who: str) -> None:
        """Wait for every message; fail loudly (no hang) if some never arrive."""
        try:
            await asyncio.wait_for(self.done.wait(), LOST_AFTER)
        except TimeoutError:
            raise Lost(
                f"{who}: {self.expected - self.count} of {self.expected} messages did not "
                f"arrive within {LOST_AFTER:g}s"
            ) from None


class Lost(Exception):
    """A contender lost messages end-to-end (core NATS is at-most-once)."""


LOST_AFTER = 60.0


async def add_stream(url: str, name: str, subject: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[subject]))
    await nc.close()


async def drop_streams(url: str, names: list[str]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in names:
        with contextlib.suppress(Exception):  # already gone
            await js.delete_stream(name)
    await nc.close()


# -- plain nats-py ------------------------------------------------------------------------


async def plain_core(url: str, items: list[dict[str, object]]) -> Rates:
    n = len(items)
    pub, sub = await nats.connect(url), await nats.connect(url)
    subject = fresh("core")

    async def publish_only() -> None:
        for item in items:
            await pub.publish(subject, json.dumps(item).encode())
        await pub.flush()

    publish = n / await timed(publish_only)
    counter = Counter(n)

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        json.loads(msg.data)
        counter.hit()

    subject = fresh("core")
    await sub.subscribe(subject, cb=on_msg, pending_msgs_limit=n + 1, pending_bytes_limit=1 << 30)
    await sub.flush()

    async def end_to_end() -> None:
        for item in items:
            await pub.publish(subject, json.dumps(item).encode())
        await counter.wait("nats-py core")

    e2e = n / await timed(end_to_end)
    await pub.close()
    await sub.close()
    return {"publish": publish, "end-to-end": e2e}


async def plain_jetstream(url: str, items: list[dict[str, object]], streams: list[str]) -> Rates:
    n = len(items)
    pub, sub = await nats.connect(url), await nats.connect(url)
    js = pub.jetstream()
    subject = fresh("js")
    streams.append(subject.replace(".", "_"))
    await js.add_stream(StreamConfig(name=streams[-1], subjects=[subject]))

    async def publish_only() -> None:
        for item in items:
            await js.publish(subject, json.dumps(item).encode())

    publish = n / await timed(publish_only)
    subject = fresh("js")
    streams.append(subject.replace(".", "_"))
    await js.add_stream(StreamConfig(name=streams[-1], subjects=[subject]))
    psub = await sub.jetstream().pull_subscribe(subject, durable="plain")
    counter = Counter(n)

    async def consume() -> None:
        while True:
            try:
                msgs = await psub.fetch(256, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                json.loads(msg.data)
                await msg.ack()
                counter.hit()

    consumer = asyncio.create_task(consume())

    async def end_to_end() -> None:
        for item in items:
            await js.publish(subject, json.dumps(item).encode())
        await counter.wait("nats-py JetStream")

    e2e = n / await timed(end_to_end)
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    await pub.close()
    await sub.close()
    return {"publish": publish, "end-to-end": e2e}


async def plain_rpc(url: str, requests: int) -> Rates:
    server, client = await nats.connect(url), await nats.connect(url)
    subject = fresh("rpc")

    async def respond(msg: nats.aio.msg.Msg) -> None:
        request = json.loads(msg.data)
        await msg.respond(json.dumps({"id": request["id"]}).encode())

    await server.subscribe(subject, cb=respond)
    await server.flush()
    items = [json.dumps(payload(i)).encode() for i in range(requests)]

    async def call(i: int) -> object:
        reply = await client.request(subject, items[i], timeout=5)
        return json.loads(reply.data)

    result = await rpc_figures(call, requests)
    await server.close()
    await client.close()
    return result


# -- eventbus -------------------------------------------------------------------------------


async def eventbus_throughput(
    url: str, items: list[dict[str, object]], durable: bool, streams: list[str]
) -> Rates:
    n = len(items)
    kind = "js" if durable else "core"
    producer = EventBus(url)
    async with producer:
        subject = fresh(kind)
        streams.append(subject.replace(".", "_"))
        publisher = producer.publisher(subject, durable=durable)
        if durable:  # create the stream outside the timing, as the plain client does
            await publisher.publish({"warm": True})

        async def publish_only() -> None:
            for item in items:
                await publisher.publish(item)

        publish = n / await timed(publish_only)
        subject = fresh(kind)
        streams.append(subject.replace(".", "_"))
        counter = Counter(n)
        consumer = EventBus(url)

        @consumer.subscriber(subject, group="bench", durable=durable)
        async def handle(reading: dict[str, object]) -> None:
            counter.hit()

        publisher = producer.publisher(subject, durable=durable)
        async with consumer:

            async def end_to_end() -> None:
                for item in items:
                    await publisher.publish(item)
                await counter.wait(f"eventbus {kind}")

            e2e = n / await timed(end_to_end)
    return {"publish": publish, "end-to-end": e2e}


async def eventbus_rpc(url: str, requests: int) -> Rates:
    server, client = EventBus(url), EventBus(url)
    subject = fresh("rpc")

    @server.subscriber(subject, durable=False)
    async def respond(request: dict[str, object]) -> dict[str, object]:
        return {"id": request["id"]}

    publisher = client.publisher(subject, durable=False)
    items = [payload(i) for i in range(requests)]

    async def call(i: int) -> object:
        return await publisher.request(items[i], timeout=5)

    async with server, client:
        return await rpc_figures(call, requests)


# -- FastStream -----------------------------------------------------------------------------


async def faststream_throughput(
    url: str, items: list[dict[str, object]], durable: bool, streams: list[str]
) -> Rates:
    n = len(items)
    kind = "js" if durable else "core"
    producer = FastStreamBroker(url, logger=None)
    await producer.connect()
    subject = fresh(kind)
    stream_name: str | None = None
    if durable:
        stream_name = subject.replace(".", "_")
        streams.append(stream_name)
        await add_stream(url, stream_name, subject)

    async def publish_only() -> None:
        for item in items:
            await producer.publish(item, subject, stream=stream_name)

    publish = n / await timed(publish_only)
    subject = fresh(kind)
    counter = Counter(n)
    consumer = FastStreamBroker(url, logger=None)
    if durable:
        stream_name = subject.replace(".", "_")
        streams.append(stream_name)

        @consumer.subscriber(
            subject, stream=JStream(stream_name), durable="bench", pull_sub=PullSub(256)
        )
        async def handle_js(reading: dict[str, object]) -> None:
            counter.hit()
    else:

        @consumer.subscriber(subject, pending_msgs_limit=n + 1)
        async def handle_core(reading: dict[str, object]) -> None:
            counter.hit()

    await consumer.start()

    async def end_to_end() -> None:
        for item in items:
            await producer.publish(item, subject, stream=stream_name)
        await counter.wait(f"FastStream {kind}")

    e2e = n / await timed(end_to_end)
    await consumer.stop()
    await producer.stop()
    return {"publish": publish, "end-to-end": e2e}


async def faststream_rpc(url: str, requests: int) -> Rates:
    server, client = FastStreamBroker(url, logger=None), FastStreamBroker(url, logger=None)
    subject = fresh("rpc")

    @server.subscriber(subject)
    async def respond(request: dict[str, object]) -> dict[str, object]:
        return {"id": request["id"]}

    await server.start()
    await client.connect()
    items = [payload(i) for i in range(requests)]

    async def call(i: int) -> object:
        reply = await client.request(items[i], subject, timeout=5)
        return await reply.decode()

    result = await rpc_figures(call, requests)
    await server.stop()
    await client.stop()
    return result


# -- shared ---------------------------------------------------------------------------------


async def rpc_figures(call: Callable[[int], Awaitable[object]], requests: int) -> Rates:
    for i in range(min(200, requests)):  # warm up connections and caches
        await call(i)
    p50, p99 = await latencies(call, requests)
    # A run of 64 concurrent requesters is short: take the best of five, for every
    # contender alike, so a neighbour's CPU burst does not decide the ratio.
    rate = max([await concurrent_rate(call, requests, 64) for _ in range(5)])
    return {"p50": p50, "p99": p99, "64 concurrent": rate}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000, help="messages per throughput run")
    parser.add_argument("--requests", type=int, default=5_000, help="requests per latency run")
    parser.add_argument("--url", default=DEFAULT_URL, help="NATS server")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every measurement this many times, contenders in turns; report the best",
    )
    parser.add_argument(
        "--only",
        choices=["jetstream", "core", "rpc"],
        action="append",
        help="run only these parts (repeatable)",
    )
    parser.add_argument(
        "--without",
        choices=["plain", "eventbus", "faststream"],
        action="append",
        default=[],
        help="skip a contender (repeatable; the ratios need 'plain')",
    )
    return parser.parse_args()


Runner = Callable[[], Awaitable[Rates]]


async def measure(
    title: str, columns: dict[str, str], runners: list[tuple[str, Runner]], repeat: int
) -> None:
    """Run every contender ``repeat`` times, in turns; keep each one's best figures."""
    best: dict[str, Rates] = {name: {} for name, _ in runners}
    for _ in range(repeat):
        for name, run in runners:
            try:
                figures = await run()
            except Lost as exc:
                print(f"!! {exc}: run not counted", file=sys.stderr, flush=True)
                continue
            for column, value in figures.items():
                old = best[name].get(column)
                better = max if columns[column] == "rate" else min
                best[name][column] = value if old is None else better(old, value)
    table = Table(title, columns)
    for name, _ in runners:
        table.add(name, **best[name])
    print(table.render(), flush=True)


async def main() -> None:
    args = arguments()
    parts = args.only or ["jetstream", "core", "rpc"]
    skip = set(args.without)
    items = [payload(i) for i in range(args.n)]
    streams: list[str] = []
    url = args.url
    try:
        for part in ("jetstream", "core"):
            if part not in parts:
                continue
            durable = part == "jetstream"
            runners: list[tuple[str, Runner]] = [
                (
                    "nats-py",
                    (lambda: plain_jetstream(url, items, streams))
                    if durable
                    else (lambda: plain_core(url, items)),
                ),
                ("eventbus", lambda d=durable: eventbus_throughput(url, items, d, streams)),
                ("FastStream", lambda d=durable: faststream_throughput(url, items, d, streams)),
            ]
            title = "JetStream (durable)" if durable else "NATS core (durable=False)"
            await measure(
                f"{title}, {args.n:,} x 256-byte JSON",
                {"publish": "rate", "end-to-end": "rate"},
                [(name, run) for name, run in runners if _key(name) not in skip],
                args.repeat,
            )
        if "rpc" in parts:
            rpc: list[tuple[str, Runner]] = [
                ("nats-py", lambda: plain_rpc(url, args.requests)),
                ("eventbus", lambda: eventbus_rpc(url, args.requests)),
                ("FastStream", lambda: faststream_rpc(url, args.requests)),
            ]
            await measure(
                f"request/reply over core NATS, {args.requests:,} requests",
                {"p50": "latency", "p99": "latency", "64 concurrent": "rate"},
                [(name, run) for name, run in rpc if _key(name) not in skip],
                args.repeat,
            )
    finally:
        await drop_streams(url, streams)


def _key(name: str) -> str:
    return {"nats-py": "plain", "eventbus": "eventbus", "FastStream": "faststream"}[name]


if __name__ == "__main__":
    asyncio.run(main())
