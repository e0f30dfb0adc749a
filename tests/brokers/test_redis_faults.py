"""Fault injection on Redis: a server killed and restarted, a consumer process killed.

Each test starts a PRIVATE redis-server on a spare loopback port, with its own data
directory and AOF fsynced on every write; only that process is ever killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis_py

from eventbus import BrokerUnavailable, EventBus, Message, RequestTimeout
from tests.brokers.private_redis import PrivateRedis, running

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    yield from running(tmp_path)


class Progress:
    """Lets a test wait for a compound condition, woken by whoever changes its inputs."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def touch(self) -> None:
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def test_restart_loses_no_acknowledged_publish_and_consumers_resume(
    private_redis: PrivateRedis,
) -> None:
    topic = "t.fault.restart"
    progress = Progress()
    received: Counter[int] = Counter()
    returned: list[int] = []
    failures: list[BrokerUnavailable] = []
    stop = asyncio.Event()
    consumer = EventBus(private_redis.url, timeout=1.0, reclaim_idle=1.0)
    producer = EventBus(private_redis.url, timeout=1.0)

    @consumer.subscriber(topic, group="g", concurrency=4)
    async def handle(payload: dict[str, int]) -> None:
        received[payload["n"]] += 1
        progress.touch()

    @consumer.subscriber(f"{topic}.echo", group="echo")
    async def echo(payload: dict[str, int]) -> dict[str, int]:
        return payload

    async def publish_until_stopped() -> None:
        n = 0
        while not stop.is_set():
            try:
                # Far above the 1 s timeout option: reaching it means publish() hung.
                async with asyncio.timeout(10):
                    await producer.publish(topic, {"n": n})
                returned.append(n)
            except BrokerUnavailable as exc:
                failures.append(exc)
                await asyncio.sleep(0.05)  # an outage: do not spin
            n += 1
            progress.touch()
            if n % 50 == 0:
                await asyncio.sleep(0)  # let the consumer run on this loop too

    async with consumer, producer:
        assert await producer.request(f"{topic}.echo", {"n": -1}, timeout=5) == {"n": -1}
        publisher = asyncio.create_task(publish_until_stopped())
        await progress.until(lambda: len(received) >= 300, 30, "300 messages before the kill")
        private_redis.kill()
        await progress.until(lambda: bool(failures), 30, "a publish to fail during the outage")
        before_restart = len(returned)
        private_redis.start()
        await progress.until(
            lambda: len(returned) >= before_restart + 300, 60, "300 publishes after the restart"
        )
        stop.set()
        await publisher
        # Request/reply works again too: the reply inbox subscribed again by itself.
        answered = None
        async with asyncio.timeout(30):
            while answered is None:
                with contextlib.suppress(RequestTimeout):
                    answered = await producer.request(f"{topic}.echo", {"n": -2}, timeout=1)
        assert answered == {"n": -2}
        await progress.until(
            lambda: all(n in received for n in returned), 60, "every returned publish delivered"
        )
    assert "cannot be reached" in str(failures[0]), failures[0]
    assert "127.0.0.1" in str(failures[0])
    after = returned[before_restart:]
    assert after
    assert all(n in received for n in after), "the consumer resumed by itself"
    missing = [n for n in returned if n not in received]
    assert missing == []


MEMBER = """
import asyncio, sys
from eventbus import EventBus

async def main() -> None:
    bus = EventBus(sys.argv[1], reclaim_idle=1.0, batch=20)

    @bus.subscriber(sys.argv[2], group="workers")
    async def work(payload: dict) -> None:
        print("took", payload["n"], flush=True)
        await asyncio.sleep(0.05)
        print("done", payload["n"], flush=True)

    async with bus:
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_killed_member_entries_go_to_another_member(private_redis: PrivateRedis) -> None:
    topic = "t.fault.member"
    total = 100
    member = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEMBER, private_redis.url, topic,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert member.stdout is not None
    took: set[int] = set()
    done: set[int] = set()

    async def read_line() -> bool:
        assert member.stdout is not None
        line = (await member.stdout.readline()).decode().split()
        if not line:
            return False
        if line[0] in ("took", "done"):
            (took if line[0] == "took" else done).add(int(line[1]))
        return True

    plain = redis_py.Redis.from_url(private_redis.url)
    try:
        async with asyncio.timeout(30):
            assert await read_line(), "the member process exited before it was ready"
        async with EventBus(private_redis.url) as producer:
            for n in range(total):
                await producer.publish(topic, {"n": n})
        async with asyncio.timeout(30):
            while len(done) < 3:
                assert await read_line(), "the member process exited early"
        member.kill()  # SIGKILL, mid-stream
        await member.wait()
        while await read_line():  # what it printed before it died
            pass
        summary = await plain.xpending(topic, "workers")
        assert summary["pending"] > 0, "the dead member should hold unacknowledged entries"

        got: list[Message] = []
        progress = Progress()
        survivor = EventBus(private_redis.url, reclaim_idle=1.0)

        @survivor.subscriber(topic, group="workers")
        async def work(msg: Message) -> None:
            got.append(msg)
            progress.touch()

        async with survivor:
            await progress.until(
                lambda: (
                    done | {int(m.body.split(b":")[1].rstrip(b"}")) for m in got}
                    >= set(range(total))
                ),
                60,
                "the dead member's entries",
            )
        numbers = {int(m.body.split(b":")[1].rstrip(b"}")): m for m in got}
        unfinished = took - done
        assert unfinished <= set(numbers), "an entry the dead member was handling got lost"
        reclaimed = [m for m in got if m.redelivered >= 1]
        assert reclaimed, "the dead member's pending entries should come back as redeliveries"
        assert len(reclaimed) == summary["pending"]
        assert (await plain.xpending(topic, "workers"))["pending"] == 0
    finally:
        if member.returncode is None:
            member.kill()
            await member.wait()
        await plain.aclose()


async def test_first_publish_after_a_quiet_restart_succeeds(private_redis: PrivateRedis) -> None:
    """The shared connection died while idle; the publish reconnects instead of failing."""
    async with EventBus(private_redis.url, timeout=2.0) as bus:
        await bus.publish("t.fault.quiet", {"n": 1})
        private_redis.kill()
        private_redis.start()
        await bus.publish("t.fault.quiet", {"n": 2})
        got = [m.body async for m in bus.broker.replay("t.fault.quiet")]
    assert got == [b'{"n":1}', b'{"n":2}']
