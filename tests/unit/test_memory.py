"""The in-memory broker's own semantics: hubs, retention, keys, redelivery, loops, replay."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from eventbus import ConfigurationError, EventBus, Message, TopicNotFound, UndeliverableError
from eventbus.brokers.memory import MemoryBroker
from eventbus.dispatch import Dispatcher
from eventbus.message import new_id
from tests.helpers import Inbox


def fresh() -> str:
    return f"memory://mem-{new_id()}"


async def test_buses_on_one_url_share_a_hub_and_names_separate_them() -> None:
    url = fresh()
    a, b, other = EventBus(url), EventBus(url), EventBus(fresh())
    inbox, elsewhere = Inbox(), Inbox()
    b.subscriber("t")(inbox.put)
    other.subscriber("t")(elsewhere.put)
    async with a, b, other:
        await a.publish("t", 1)
        await inbox.wait_for(1)
    assert elsewhere.messages == []


async def test_retention_bounds_the_log_and_replay_reports_offsets() -> None:
    broker = MemoryBroker(f"{fresh()}?retention=5")
    await broker.connect()
    for i in range(8):
        await broker.publish(Message("t", b"%d" % i))
    got = [m async for m in broker.replay("t")]
    assert [m.body for m in got] == [b"3", b"4", b"5", b"6", b"7"]
    assert [m.delivery.offset for m in got if m.delivery] == [3, 4, 5, 6, 7]
    since = got[2].time
    assert [m.body async for m in broker.replay("t", since=since)] == [b"5", b"6", b"7"]
    future = datetime(2999, 1, 1, tzinfo=UTC)
    assert [m async for m in broker.replay("t", since=future)] == []
    with pytest.raises(TopicNotFound, match="'nope' does not exist"):
        [m async for m in broker.replay("nope")]
    with pytest.raises(ConfigurationError, match="retention"):
        MemoryBroker("memory://x?retention=many")
    with pytest.raises(ConfigurationError, match="memory://"):
        MemoryBroker("redis://x")
    await broker.close()


async def test_keyed_messages_stick_to_one_member() -> None:
    broker = MemoryBroker(fresh())
    inbox = Inbox()
    await broker.subscribe("t", inbox.member("a"), group="g")
    await broker.subscribe("t", inbox.member("b"), group="g")
    for i in range(40):
        await broker.publish(Message("t", b"%d" % i, key=f"k{i % 8}"))
    await inbox.wait_for(40)
    for key in {f"k{i}" for i in range(8)}:
        holders = {name for name, got in inbox.by_member.items() if any(m.key == key for m in got)}
        assert len(holders) == 1, f"key {key} went to {holders}"
    for member in inbox.by_member.values():
        assert [int(m.body) for m in member] == sorted(int(m.body) for m in member)
    await broker.close()


async def test_raising_handler_gets_the_message_again_with_a_count() -> None:
    broker = MemoryBroker(fresh())
    counts: list[int] = []
    done = asyncio.Event()

    async def flaky(message: Message) -> None:
        counts.append(message.redelivered)
        if len(counts) < 3:
            raise RuntimeError("again")
        done.set()

    await broker.subscribe("t", flaky, group="g")
    await broker.publish(Message("t", b"x"))
    async with asyncio.timeout(5):
        await done.wait()
    assert counts == [0, 1, 2]
    await broker.close()


async def test_group_backlog_waits_for_a_member() -> None:
    url = fresh()
    first = MemoryBroker(url)
    sub = await first.subscribe("t", Inbox().put, group="g")
    await sub.close()
    await sub.close()
    producer = MemoryBroker(url)
    for i in range(3):
        await producer.publish(Message("t", b"%d" % i))
    inbox = Inbox()
    await producer.subscribe("t", inbox.put, group="g")
    await inbox.wait_for(3)
    assert inbox.bodies == [b"0", b"1", b"2"]
    await first.close()
    await producer.close()


async def test_inbox_replies_are_not_retained_and_closed_inboxes_refuse() -> None:
    broker = MemoryBroker(fresh())
    inbox = Inbox()
    sub = await broker.open_inbox(inbox.put)
    assert sub.topic.startswith("_INBOX.")
    await broker.publish(Message(sub.topic, b"reply"))
    await inbox.wait_for(1)
    await sub.close()
    with pytest.raises(UndeliverableError, match="nobody listens"):
        await broker.publish(Message(sub.topic, b"late"))
    await broker.close()


async def test_delivery_crosses_event_loops_in_threads() -> None:
    url = fresh()
    inbox = Inbox()
    async with EventBus(url) as consumer:
        await consumer.subscribe("cross", inbox.put)

        def other_thread() -> None:
            async def produce() -> None:
                async with EventBus(url) as producer:
                    await producer.publish("cross", {"from": "thread"})

            asyncio.run(produce())

        thread = threading.Thread(target=other_thread)
        thread.start()
        await inbox.wait_for(1)
        thread.join()
    assert inbox.messages[0].body == b'{"from":"thread"}'


async def test_dispatcher_stop_returns_unhandled_items_in_order() -> None:
    handled: list[int] = []
    gate = asyncio.Event()
    both_busy = asyncio.Event()
    started: list[int] = []

    async def handle(item: int) -> None:
        started.append(item)
        if len(started) == 2:
            both_busy.set()
        await gate.wait()
        handled.append(item)

    dispatcher: Dispatcher[int] = Dispatcher(handle, concurrency=2, name="test")
    dispatcher.start()
    for i in range(6):
        dispatcher.put(i)
    async with asyncio.timeout(5):
        await both_busy.wait()
    assert dispatcher.pending == 6
    left = await dispatcher.stop(grace=0.05)
    assert sorted(left) == [0, 1, 2, 3, 4, 5], "cancelled in-flight items come back too"
    assert handled == []


async def test_dispatcher_reports_errors_and_goes_on() -> None:
    errors: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def handle(item: int) -> None:
        if item % 2:
            raise ValueError(f"odd {item}")
        if item == 4:
            done.set()

    dispatcher: Dispatcher[int] = Dispatcher(
        handle, on_error=lambda item, exc: errors.append((item, str(exc)))
    )
    dispatcher.start()
    for i in range(5):
        dispatcher.put(i)
    async with asyncio.timeout(5):
        await done.wait()
    assert errors == [(1, "odd 1"), (3, "odd 3")]
    assert await dispatcher.stop(grace=1) == []


async def test_dispatcher_keeps_one_keys_items_in_order_across_workers() -> None:
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    running: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    overlaps: list[str] = []
    unkeyed: list[int] = []
    all_done = asyncio.Event()

    async def handle(item: tuple[str | None, int]) -> None:
        key, n = item
        if key is None:
            unkeyed.append(n)
            await asyncio.sleep(0)
        else:
            await keyed(key, n)
        if len(unkeyed) + sum(len(v) for v in seen.values()) == 120:
            all_done.set()

    async def keyed(key: str, n: int) -> None:
        running[key] += 1
        if running[key] > 1:
            overlaps.append(key)
        await asyncio.sleep(0.001 * (n % 3))  # uneven work: a naive pool reorders
        seen[key].append(n)
        running[key] -= 1

    dispatcher: Dispatcher[tuple[str | None, int]] = Dispatcher(
        handle, concurrency=4, name="test", key=lambda item: item[0]
    )
    dispatcher.start()
    for n in range(60):
        dispatcher.put(("abc"[n % 3], n))
        dispatcher.put((None, n))
    async with asyncio.timeout(10):
        await all_done.wait()
    assert await dispatcher.stop(grace=1) == []
    assert overlaps == [], "two items of one key ran at the same time"
    for i, key in enumerate("abc"):
        assert seen[key] == list(range(i, 60, 3))
    assert sorted(unkeyed) == list(range(60))


async def test_memory_keeps_order_per_key_with_many_workers() -> None:
    bus = EventBus(fresh())
    seen: dict[str, list[int]] = {}
    inbox = Inbox()

    @bus.subscriber("orders", group="g", concurrency=8)
    async def handle(body: dict[str, int], msg: Message) -> None:
        await asyncio.sleep(0.001 * (body["n"] % 4))
        assert msg.key is not None
        seen.setdefault(msg.key, []).append(body["n"])
        await inbox.put(msg)

    async with bus:
        for n in range(400):
            await bus.publish("orders", {"n": n}, key=f"k{n % 5}")
        await inbox.wait_for(400)
    for i in range(5):
        assert seen[f"k{i}"] == list(range(i, 400, 5))


async def test_dispatcher_runs_waiting_handlers_side_by_side() -> None:
    running = 0
    most = 0
    release, four_running, all_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    done: list[int] = []

    async def handle(item: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 4:
            four_running.set()
        await release.wait()
        running -= 1
        done.append(item)
        if len(done) == 10:
            all_done.set()

    dispatcher: Dispatcher[int] = Dispatcher(handle, concurrency=4, name="test")
    dispatcher.start()
    await asyncio.sleep(0)  # the workers are idle
    for i in range(10):
        dispatcher.put(i)
    async with asyncio.timeout(5):
        await four_running.wait()
    assert dispatcher.waiting == 6, "four run, the rest wait for a worker"
    release.set()
    async with asyncio.timeout(5):
        await all_done.wait()
    assert most == 4
    assert sorted(done) == list(range(10))
    assert await dispatcher.stop(grace=1) == []
