"""BlockingBus: synchronous publish and request without an event loop."""

from __future__ import annotations

import threading

import pytest

from eventbus import BlockingBus, ClosedError, ConfigurationError, EventBus, RemoteError
from eventbus.message import new_id


def test_publish_and_request_from_plain_threads() -> None:
    bus = EventBus(f"memory://blocking-{new_id()}")
    seen: list[dict[str, int]] = []

    @bus.subscriber("audit")
    async def audit(entry: dict[str, int]) -> None:
        seen.append(entry)

    @bus.subscriber("math.add")
    async def add(req: dict[str, int]) -> int:
        return req["a"] + req["b"]

    @bus.subscriber("math.fail")
    async def fail(req: dict[str, int]) -> int:
        raise ValueError("nope")

    results: list[int] = []
    with BlockingBus(bus) as sync:
        sent = sync.publish("audit", {"n": 1})
        assert sent.topic == "audit"

        def worker(i: int) -> None:
            results.append(sync.request("math.add", {"a": i, "b": 1}, timeout=5))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pytest.raises(RemoteError, match="ValueError: nope"):
            sync.request("math.fail", {"a": 1, "b": 1})
    assert sorted(results) == list(range(1, 9))
    assert not bus.is_running
    with pytest.raises(ClosedError):
        sync.publish("audit", {"n": 2})
    sync.close()


def test_blocking_bus_from_url_and_default() -> None:
    with BlockingBus(f"memory://blocking-{new_id()}") as sync:
        assert sync.publish("t", "x").body == b"x"
    assert BlockingBus().bus is not None


async def test_blocking_bus_refuses_inside_a_running_loop() -> None:
    sync = BlockingBus(f"memory://blocking-{new_id()}")
    with pytest.raises(ConfigurationError, match="in async code use the EventBus"):
        sync.publish("t", 1)
    sync.close()
