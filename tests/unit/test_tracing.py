"""Call context: W3C traceparent and deadline propagation, log filter, middleware."""

from __future__ import annotations

import logging
import uuid

import pytest

from eventbus import EventBus, Message, tracing
from eventbus.message import DEADLINE, TRACEPARENT
from tests.helpers import Inbox


def url() -> str:
    return f"memory://unit-{uuid.uuid4().hex}"


def test_traceparents_are_valid_and_children_keep_the_trace_id() -> None:
    root = tracing.new_traceparent()
    assert tracing.is_valid(root)
    child = tracing.new_traceparent(root)
    assert tracing.is_valid(child)
    assert child[3:35] == root[3:35]
    assert child[36:52] != root[36:52]
    for bad in (
        "",
        "garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # all-zero trace id
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",  # all-zero span id
        "00-" + "A" * 32 + "-" + "1" * 16 + "-01",  # upper case
        root + "-extra",
    ):
        assert not tracing.is_valid(bad), bad


def test_trace_block_sets_and_restores_the_context() -> None:
    assert tracing.current() is None
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with tracing.trace(given) as context:
        assert tracing.trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736" == context.trace_id
        with tracing.trace() as inner:
            assert tracing.trace_id() == inner.trace_id != context.trace_id
        assert tracing.current() == context
    assert tracing.current() is None
    with tracing.trace("not-a-traceparent") as fresh:
        assert tracing.is_valid(fresh.traceparent)


def test_log_filter_adds_the_trace_id() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    tracing.install_log_filter(handler)
    tracing.install_log_filter(handler)
    assert len(handler.filters) == 1, "installing twice is harmless"
    logger = logging.getLogger("test.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        with tracing.trace() as context:
            logger.info("inside")
    finally:
        logger.removeHandler(handler)
    assert [r.trace_id for r in records] == ["-", context.trace_id]  # type: ignore[attr-defined]
    formatted = logging.Formatter(tracing.LOG_FORMAT).format(records[1])
    assert "{" + context.trace_id + "}" in formatted


async def test_middleware_propagates_traces_over_plain_topics(topic: str) -> None:
    bus = EventBus(
        url(),
        middleware=[tracing.middleware],
        publish_middleware=[tracing.publish_middleware],
    )
    seen: list[str | None] = []
    inbox = Inbox()

    @bus.subscriber(topic)
    async def first(value: dict[str, int]) -> None:
        seen.append(tracing.trace_id())
        await bus.publish(f"{topic}.next", value)  # continues the trace

    @bus.subscriber(f"{topic}.next")
    async def second(value: dict[str, int], msg: Message) -> None:
        seen.append(tracing.trace_id())
        await inbox.put(msg)

    async with bus:
        with tracing.trace() as context:
            await bus.publish(topic, {"n": 1})
        await inbox.wait_for(1, timeout=5)
    assert seen == [context.trace_id, context.trace_id]
    assert inbox.messages[0].headers[TRACEPARENT][3:35] == context.trace_id


async def test_the_callee_runs_inside_the_callers_trace_and_deadline() -> None:
    where = url()
    inner = EventBus(where, name="inner")
    outer = EventBus(where, name="outer")
    got: dict[str, object] = {}

    @inner.subscriber("inner.work", group="inner")
    async def work(request: dict[str, int], msg: Message) -> str:
        got["inner_trace"] = tracing.trace_id()
        got["inner_patience_ms"] = int(msg.headers[DEADLINE])
        return "done"

    @outer.subscriber("outer.work", group="outer")
    async def outer_work(request: dict[str, int]) -> str:
        context = tracing.current()
        assert context is not None
        got["outer_trace"] = context.trace_id
        got["outer_has_deadline"] = context.deadline is not None
        # Asks for 60 s, but the caller gave this call 2 s: the inner call gets less.
        result: str = await outer.client("inner").call("work", {}, timeout=60)
        return result

    caller = EventBus(where)
    async with inner, outer, caller:
        with tracing.trace() as context:
            assert await caller.client("outer").call("work", {}, timeout=2.0) == "done"
    assert got["outer_trace"] == got["inner_trace"] == context.trace_id
    assert got["outer_has_deadline"] is True
    assert 0 < int(got["inner_patience_ms"]) <= 2000  # type: ignore[call-overload]


async def test_a_call_without_a_trace_starts_one_on_the_server() -> None:
    where = url()
    server = EventBus(where, name="svc")
    traces: list[str | None] = []

    @server.subscriber("svc.echo", group="svc")
    async def echo(value: int) -> int:
        traces.append(tracing.trace_id())
        return value

    client = EventBus(where)
    async with server, client:
        assert await client.client("svc").call("echo", 1, timeout=5) == 1
        assert await client.client("svc").call("echo", 2, timeout=5) == 2
    assert all(t is not None and len(t) == 32 for t in traces)
    assert traces[0] != traces[1], "each call outside a trace is its own trace"


async def test_a_passed_deadline_fails_before_sending() -> None:
    client = EventBus(url())
    async with client:
        with tracing.trace(timeout=0), pytest.raises(TimeoutError, match="deadline"):
            await client.client("anything").call("x", {}, timeout=5)
        with tracing.trace(timeout=60) as outer, tracing.trace(timeout=3600) as inner:
            assert inner.deadline == outer.deadline, "an inner block cannot extend the deadline"
