"""`AutoPipeline`: many callers on one connection, replies in order, failures contained."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_py
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from eventbus.brokers.redis.pipeline import AutoPipeline, pack
from tests.conftest import broker_url


@pytest.fixture
async def pipeline() -> AsyncIterator[AutoPipeline]:
    client = redis_py.Redis.from_url(broker_url("redis"), socket_timeout=None)
    pipe = AutoPipeline(client.connection_pool)
    yield pipe
    await pipe.close()
    await client.aclose()


def test_pack_encodes_resp() -> None:
    assert pack(("SET", "k", b"v\r\n", 12, 1.5)) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(TypeError, match="cannot send"):
        pack(("SET", "k", None))


async def test_concurrent_callers_get_their_own_replies(pipeline: AutoPipeline) -> None:
    replies = await asyncio.gather(
        *(pipeline.call(pack(("ECHO", f"call-{i}"))) for i in range(500))
    )
    assert replies == [f"call-{i}".encode() for i in range(500)]


async def test_an_error_reply_fails_only_its_caller(pipeline: AutoPipeline) -> None:
    calls = [
        pipeline.call(pack(("ECHO", "before"))),
        pipeline.call(pack(("NO-SUCH-COMMAND",))),
        pipeline.call(pack(("ECHO", "after"))),
    ]
    before, failed, after = await asyncio.gather(*calls, return_exceptions=True)
    assert (before, after) == (b"before", b"after")
    assert isinstance(failed, ResponseError)


async def test_a_killed_connection_fails_in_flight_calls_then_reconnects(
    pipeline: AutoPipeline,
) -> None:
    own_id = await pipeline.call(pack(("CLIENT", "ID")))
    # Kill this pipeline's own connection (no one else's) from inside it.
    blocked = pipeline.call(pack(("BLPOP", "t.pipeline.never", 5)))
    killer = redis_py.Redis.from_url(broker_url("redis"))
    try:
        assert await killer.execute_command("CLIENT", "KILL", "ID", own_id) == 1
    finally:
        await killer.aclose()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(blocked, 10)
    assert await pipeline.call(pack(("ECHO", "again"))) == b"again"
    assert await pipeline.call(pack(("CLIENT", "ID"))) != own_id


async def test_a_caller_that_gives_up_does_not_shift_replies(pipeline: AutoPipeline) -> None:
    slow = pipeline.call(pack(("BLPOP", "t.pipeline.never", 0.3)))
    nxt = pipeline.call(pack(("ECHO", "next")))
    slow.cancel()  # its reply (nil, after 0.3 s) is read and dropped in turn
    assert await asyncio.wait_for(nxt, 10) == b"next"
