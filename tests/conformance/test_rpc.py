"""Request/reply on every broker: replies, remote errors, timeouts, concurrency."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from eventbus import RemoteError, RequestTimeout
from tests.conformance.conftest import MakeBus


class Sum(BaseModel):
    sum: int


async def test_request_gets_the_reply(make_bus: MakeBus, topic: str) -> None:
    server, client = make_bus(), make_bus()

    @server.subscriber(topic, group="calc")
    async def add(req: dict[str, int]) -> dict[str, int]:
        return {"sum": req["a"] + req["b"]}

    async with server, client:
        assert await client.request(topic, {"a": 1, "b": 2}, timeout=10) == {"sum": 3}
        typed = await client.request(topic, {"a": 2, "b": 2}, timeout=10, response_type=Sum)
        assert typed == Sum(sum=4)
        replies = await asyncio.gather(
            *(client.request(topic, {"a": i, "b": i}, timeout=20) for i in range(50))
        )
        assert replies == [{"sum": 2 * i} for i in range(50)]


async def test_remote_error_keeps_type_and_message(make_bus: MakeBus, topic: str) -> None:
    server, client = make_bus(), make_bus()

    @server.subscriber(topic)
    async def divide(req: dict[str, int]) -> float:
        return req["a"] / req["b"]

    async with server, client:
        with pytest.raises(RemoteError) as caught:
            await client.request(topic, {"a": 1, "b": 0}, timeout=10)
    assert caught.value.remote_type == "ZeroDivisionError"
    assert caught.value.remote_message == "division by zero"
    assert caught.value.topic == topic
    (sub,) = server.subscribers
    assert sub.dead_lettered == 0, "the caller was told: nothing to dead-letter"


async def test_request_without_responder_times_out(make_bus: MakeBus, topic: str) -> None:
    client = make_bus()
    async with client:
        with pytest.raises(RequestTimeout) as caught:
            await client.request(topic, {"x": 1}, timeout=0.5)
    assert isinstance(caught.value, TimeoutError)
    assert topic in str(caught.value)
