"""Class-based services: methods become endpoints, on memory://."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from eventbus import ConfigurationError, EventBus, Message, endpoint


def url() -> str:
    return f"memory://unit-{uuid.uuid4().hex}"


class AddRequest(BaseModel):
    a: int
    b: int


class Calculator:
    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    async def add(self, request: AddRequest) -> int:
        return request.a + request.b + self.offset

    def sub(self, request: AddRequest) -> int:  # plain functions serve too
        return request.a - request.b

    @endpoint("say-topic", concurrency=4)
    async def topic(self, request: dict[str, object], msg: Message) -> str:
        return msg.topic

    async def _private(self, request: dict[str, object]) -> None:
        raise AssertionError("not an endpoint")


async def test_public_methods_become_endpoints_of_the_service() -> None:
    server = EventBus(url(), name="calc")
    calc = server.service(Calculator(offset=100))
    assert calc.offset == 100
    assert {s.topic: s.group for s in server.subscribers} == {
        "calc.add": "calc",
        "calc.sub": "calc",
        "calc.say-topic": "calc",
    }
    (named,) = (s for s in server.subscribers if s.topic == "calc.say-topic")
    assert named.concurrency == 4
    client = EventBus(server.url)
    async with server, client:
        calls = client.client("calc")
        assert await calls.call("add", {"a": 1, "b": 2}, timeout=5) == 103
        assert await calls.call("sub", {"a": 5, "b": 2}, timeout=5) == 3
        assert await calls.call("say-topic", {}, timeout=5) == "calc.say-topic"
        assert await calls.call("calc.add", {"a": 0, "b": 0}, timeout=5) == 100, "full topic"
        (node,) = await client.registry.nodes("calc")
        assert node.endpoints == {"calc.add", "calc.sub", "calc.say-topic"}


async def test_a_class_is_instantiated_and_settings_apply_to_every_method() -> None:
    server = EventBus(url(), name="calc")
    assert server.service(Calculator, name="math", group=None, concurrency=2) is Calculator
    assert {(s.topic, s.group, s.concurrency) for s in server.subscribers} == {
        ("math.add", None, 2),
        ("math.sub", None, 2),
        ("math.say-topic", None, 4),
    }


def test_a_service_needs_a_name_and_a_method() -> None:
    with pytest.raises(ConfigurationError, match="needs a name"):
        EventBus(url()).service(Calculator())

    class Empty:
        def _hidden(self) -> None: ...

    with pytest.raises(ConfigurationError, match="no public method"):
        EventBus(url(), name="x").service(Empty())


async def test_a_running_bus_refuses_a_service() -> None:
    bus = EventBus(url(), name="calc")
    async with bus:
        with pytest.raises(ConfigurationError, match="running"):
            bus.service(Calculator())
