"""Fault injection on Kafka (marked ``slow``): a broker crash and restart, and a group
member SIGKILLed mid-stream. Each test runs its own private Tansu broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from eventbus import BrokerUnavailable, Message
from eventbus.brokers.kafka import KafkaBroker
from tests.helpers import Inbox
from tests.kafka.worker import FAST_GROUPS
from tests.tansu import TansuServer

pytestmark = pytest.mark.slow

# Tansu keeps everything in memory: after a restart the topic must be created again and
# the consumer must notice it, so metadata is refreshed more often than by default.
RESTART = {
    **FAST_GROUPS,
    "publish_timeout": 2.0,
    "timeout": 5.0,
    "linger": 0.0,
    "config": {"reconnect.backoff.max.ms": 500, "topic.metadata.refresh.interval.ms": 1000},
}


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition a subprocess or the broker changes (nothing to await there)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_broker_restart_publishes_fail_clearly_then_consumer_comes_back() -> None:
    server = TansuServer()
    server.start()
    topic = f"restart.{uuid.uuid4().hex[:8]}"
    consumer = KafkaBroker(server.url, **RESTART)  # type: ignore[arg-type]
    producer = KafkaBroker(server.url, **RESTART)  # type: ignore[arg-type]
    inbox = Inbox()
    try:
        await consumer.connect()
        await producer.connect()
        await consumer.subscribe(topic, inbox.put, group="survivors")
        for i in range(5):
            await producer.publish(Message(topic, b"before %d" % i))
        await inbox.wait_for(5)

        server.kill()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await producer.publish(Message(topic, b"during"))
        assert time.monotonic() - started < 2.0 + 3.0, "publish_timeout not kept"

        server.start()  # same port, empty: memory storage
        probes = 0

        def got_probe() -> bool:
            return any(m.body.startswith(b"probe") for m in inbox.messages)

        deadline = time.monotonic() + 90
        while not got_probe():
            assert time.monotonic() < deadline, "the consumer did not come back"
            try:
                await producer.publish(Message(topic, b"probe %d" % probes))
                probes += 1
            except BrokerUnavailable:
                continue  # still reconnecting: a clear error, not a hang
            with contextlib.suppress(AssertionError):  # not yet: publish another probe
                await inbox.wait_until(got_probe, 3.0, "a probe")
        after = [Message(topic, b"after %d" % i) for i in range(20)]
        for m in after:
            await producer.publish(m)
        await inbox.wait_until(
            lambda: {m.id for m in after} <= {m.id for m in inbox.messages}, 30, "20 after"
        )
    finally:
        async with asyncio.timeout(30):  # closing must not hang either
            await consumer.close()
            await producer.close()
        server.stop()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def unfinished(path: Path) -> set[str]:
    started, done = set(), set()
    for line in lines(path):
        kind, _, body = line.partition(" ")
        (started if kind == "start" else done).add(body)
    return started - done - {""}


def finished(path: Path) -> set[str]:
    return {line.split(" ", 1)[1] for line in lines(path) if line.startswith("done ")}


async def test_sigkilled_member_share_is_taken_over(tmp_path: Path) -> None:
    server = TansuServer()
    server.start()
    topic = f"kill.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = KafkaBroker(server.url, **RESTART)  # type: ignore[arg-type]
    victim_log, survivor_log = tmp_path / "victim.log", tmp_path / "survivor.log"
    workers: list[subprocess.Popen[bytes]] = []

    def spawn(path: Path, delay: float) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "tests.kafka.worker", server.url, topic, group, str(path)]
        process = subprocess.Popen([*args, str(delay)], cwd=Path(__file__).parents[2])
        workers.append(process)
        return process

    try:
        await producer.connect()
        await producer.ensure_topic(topic, partitions=4)
        victim = spawn(victim_log, 0.3)
        await until(lambda: "ready" in lines(victim_log), 60, "the first member")
        spawn(survivor_log, 0.005)
        await until(lambda: "ready" in lines(survivor_log), 60, "the second member")
        sent = [str(i) for i in range(200)]
        await asyncio.gather(*(producer.publish(Message(topic, b.encode(), key=b)) for b in sent))

        await until(
            lambda: len(finished(victim_log)) >= 3 and bool(unfinished(victim_log)),
            60,
            "the victim to be mid-handler",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        cut_off = unfinished(victim_log)  # final: the process is dead
        assert cut_off, "the victim should have died inside a handler"

        await until(
            lambda: finished(victim_log) | finished(survivor_log) >= set(sent),
            90,
            "the survivor to finish the victim's share",
        )
        assert cut_off <= finished(survivor_log), "an unfinished message was never redone"
    finally:
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        await producer.close()
        server.stop()
