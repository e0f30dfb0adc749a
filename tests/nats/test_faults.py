"""Fault injection: a NATS server killed and restarted, a consumer process killed.

The server faults run on a PRIVATE ``nats-server -js`` started here on a spare loopback
port with its own store directory; the shared server is never touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventbus import BrokerUnavailable, EventBus
from tests.helpers import Inbox
from tests.nats.servers import NatsServer

pytestmark = pytest.mark.slow


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private ``nats-server -js`` with its own store directory, killed afterwards."""
    server = NatsServer(tmp_path, "-js", "-sd", str(tmp_path / "jetstream"))
    server.start()
    yield server
    server.stop()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition that a running task makes true (polled: it has no event)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_server_restart_loses_no_acknowledged_message(
    private_server: NatsServer, topic: str
) -> None:
    """Kill -9 and restart the server under a running publisher and three subscribers.

    The group (a durable consumer) and the fan-out subscriber (an ephemeral consumer,
    which the restart may lose: then re-created from where it was) both get every
    message whose publish returned; the core subscriber (durable=False) resumes too.
    """
    url = private_server.url
    received: Counter[int] = Counter()
    fanned: Counter[int] = Counter()
    core: Counter[int] = Counter()
    consumer = EventBus(url, ack_wait=5.0, timeout=2.0)

    @consumer.subscriber(topic, group="restart", concurrency=4)
    async def consume(payload: dict[str, int]) -> None:
        received[payload["n"]] += 1

    @consumer.subscriber(topic)
    async def watch(payload: dict[str, int]) -> None:
        fanned[payload["n"]] += 1

    @consumer.subscriber(topic, durable=False)
    async def glance(payload: dict[str, int]) -> None:
        core[payload["n"]] += 1

    producer = EventBus(url, timeout=2.0)
    acked: list[int] = []
    failures: list[tuple[int, float, BaseException]] = []
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await producer.publish(topic, {"n": n})
            except BrokerUnavailable as exc:
                failures.append((n, time.monotonic() - started, exc))
            else:
                acked.append(n)
            n += 1
            await asyncio.sleep(0.002)

    async with consumer, producer:
        task = asyncio.create_task(produce())
        try:
            await until(lambda: len(received) >= 100, 30, "100 messages before the kill")
            private_server.kill()
            await until(lambda: len(failures) >= 2, 30, "publishes to fail during the outage")
            before = len(acked)
            private_server.start()
            await until(lambda: len(acked) >= before + 100, 60, "publishing to resume")
        finally:
            stop.set()
            await task
        await until(lambda: set(acked) <= set(received), 60, "every acknowledged message")
        await until(lambda: set(acked) <= set(fanned), 60, "every message at the fan-out")
        after = acked[-50:]
        await until(lambda: set(after) <= set(core), 30, "core messages after the restart")
    for n, seconds, exc in failures:
        assert seconds < 2.0 + 1.5, f"publish #{n} took {seconds:.1f}s to fail"
        assert "127.0.0.1" in str(exc), f"unclear error: {exc}"
    lost = sorted(set(acked) - set(received))
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:10]}"


async def test_publish_during_outage_fails_within_timeout(
    private_server: NatsServer, topic: str
) -> None:
    bus = EventBus(private_server.url, timeout=1.0)
    async with bus:
        await bus.publish(topic, {"n": 0})
        private_server.kill()
        for durable in (True, False):
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match=r"unreachable|lost the connection"):
                await bus.publisher(topic, durable=durable).publish({"n": 1})
            assert time.monotonic() - started < 1.0 + 1.0
        private_server.start()
        await until(lambda: bus.broker.connection.is_connected, 20, "the reconnect")
        await bus.publish(topic, {"n": 2})


VICTIM = textwrap.dedent(
    """
    import asyncio, sys
    from eventbus import EventBus, Message

    async def main(url: str, topic: str) -> None:
        bus = EventBus(url, ack_wait=2.0)

        @bus.subscriber(topic, group="victims", concurrency=2)
        async def hold(msg: Message) -> None:
            print(msg.id, flush=True)
            await asyncio.Event().wait()  # never finishes: killed mid-message

        async with bus:
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_killed_consumer_messages_go_to_another_member(url: str, topic: str) -> None:
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VICTIM,
        url,
        topic,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert victim.stdout is not None
    try:
        line = await asyncio.wait_for(victim.stdout.readline(), 30)
        assert line.strip() == b"ready"
        producer = EventBus(url)
        async with producer:
            sent = [await producer.publish(topic, {"n": i}) for i in range(20)]
        held = [
            (await asyncio.wait_for(victim.stdout.readline(), 20)).strip().decode()
            for _ in range(2)
        ]
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        survivor = Inbox()
        bus = EventBus(url, ack_wait=2.0)
        bus.subscriber(topic, group="victims", concurrency=4)(survivor.put)
        async with bus:
            await survivor.wait_until(
                lambda: {m.id for m in survivor.messages} >= {m.id for m in sent},
                60,
                "all 20 messages at the surviving member",
            )
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    redelivered = {m.id: m.redelivered for m in survivor.messages}
    assert set(held) <= set(redelivered)
    assert all(redelivered[i] >= 1 for i in held), "the killed member's messages are redeliveries"


async def test_publish_to_a_hung_server_fails_within_timeout(
    private_server: NatsServer, topic: str
) -> None:
    """The connection stays up but the server does not answer (SIGSTOP): no hang."""
    bus = EventBus(private_server.url, timeout=1.0)
    async with bus:
        await bus.publish(topic, {"n": 0})
        assert private_server.process is not None
        private_server.process.send_signal(signal.SIGSTOP)
        try:
            _wait_stopped(private_server.process.pid)  # the signal lands asynchronously
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match=r"did not acknowledge within 1s"):
                await bus.publish(topic, {"n": 1})
            assert time.monotonic() - started < 1.0 + 1.0
        finally:
            private_server.process.send_signal(signal.SIGCONT)
        await bus.publish(topic, {"n": 2})


async def test_close_while_the_server_is_down_does_not_hang(
    private_server: NatsServer, topic: str
) -> None:
    bus = EventBus(private_server.url, timeout=1.0)
    bus.subscriber(topic, group="g")(Inbox().put)
    bus.subscriber(topic)(Inbox().put)
    bus.subscriber(topic, durable=False)(Inbox().put)
    await bus.start()
    await bus.publish(topic, {"n": 0})
    private_server.kill()
    started = time.monotonic()
    await asyncio.wait_for(bus.close(), 10)
    assert time.monotonic() - started < 5


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until process ``pid`` is stopped (state ``T`` in /proc), e.g. after SIGSTOP."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    # The state follows the parenthesised command name, which may itself hold spaces.
    while stat.read_text().rpartition(")")[2].split()[0] != "T":
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop within {timeout:g}s")
        time.sleep(0.005)
