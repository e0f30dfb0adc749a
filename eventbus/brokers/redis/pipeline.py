"""`AutoPipeline`: one Redis connection that carries the commands of many callers at once.

redis-py gives each concurrent command its own pooled connection and a write and a
read of its own. Here every command a broker sends (except blocking reads) goes
through one connection: commands issued while the previous write was on its way are
written together in one syscall, and the replies, which Redis sends in order, are
matched to their callers first-in first-out. Sequential callers lose nothing;
concurrent ones (64 requesters, many handlers acknowledging) share round trips.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["UNAVAILABLE", "AutoPipeline", "new_connection", "pack"]


UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
"""What redis-py (and an expired asyncio.timeout) raise when Redis cannot be reached."""


def pack(args: tuple[object, ...]) -> bytes:
    """Encode one command in the Redis protocol (RESP). Arguments: str, bytes or numbers.

    Raises:
        TypeError: an argument of another type.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        elif isinstance(arg, bytearray | memoryview):
            data = bytes(arg)
        else:
            raise TypeError(f"cannot send {arg!r} to Redis: use str, bytes or a number")
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def new_connection(pool: ConnectionPool) -> AbstractConnection:
    """A new connection with the pool's settings, not counted in (nor returned to) the pool."""
    conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]  # redis-py: unannotated
    return conn


class AutoPipeline:
    """Sends commands on one connection and hands each caller its own reply.

    `call` never blocks on other callers: it queues the packed command and returns a
    future. A writer task writes everything queued in one go; a reader task reads the
    replies in order. A broken connection fails every command in flight with
    ``ConnectionError`` (Redis may or may not have run them) and the next command
    reconnects.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: AbstractConnection | None = None
        self._queued: list[bytes] = []
        self._queued_futures: list[asyncio.Future[Any]] = []
        self._inflight: deque[asyncio.Future[Any]] = deque()
        self._has_queued: asyncio.Event | None = None
        self._has_inflight: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command (see `pack`); the future gets its reply.

        The future raises ``ResponseError`` when Redis answered with an error, and
        ``ConnectionError`` when the connection failed before the reply came.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(RedisConnectionError("the connection is closed"))
            return future
        if self._has_queued is None:
            self._start()
        assert self._has_queued is not None
        self._queued.append(command)
        self._queued_futures.append(future)
        if not self._has_queued.is_set():
            self._has_queued.set()
        return future

    def _start(self) -> None:
        self._has_queued = asyncio.Event()
        self._has_inflight = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._write(), name="eventbus:redis:pipeline:write"),
            asyncio.create_task(self._read(), name="eventbus:redis:pipeline:read"),
        ]

    async def _write(self) -> None:
        assert self._has_queued is not None
        assert self._has_inflight is not None
        has_queued, has_inflight = self._has_queued, self._has_inflight
        while True:
            await has_queued.wait()
            has_queued.clear()
            if not self._queued:
                continue
            conn = self._conn
            if conn is None or not conn.is_connected:
                try:
                    conn = await self._connect()
                except Exception as exc:
                    self._fail_queued(exc)
                    continue
            commands, futures = self._queued, self._queued_futures
            self._queued, self._queued_futures = [], []
            self._inflight.extend(futures)  # before writing: replies may come at once
            has_inflight.set()
            try:
                await conn.send_packed_command(commands, check_health=False)
            except Exception as exc:
                await self._broken(conn, exc)

    async def _connect(self) -> AbstractConnection:
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)
        conn = new_connection(self._pool)
        await conn.connect()  # type: ignore[no-untyped-call]  # redis-py: unannotated
        self._conn = conn
        return conn

    async def _read(self) -> None:
        assert self._has_inflight is not None
        has_inflight = self._has_inflight
        inflight = self._inflight
        while True:
            if not inflight:
                has_inflight.clear()
                await has_inflight.wait()
                continue
            conn = self._conn
            assert conn is not None
            try:
                reply = await conn.read_response(disconnect_on_error=False)
            except ResponseError as exc:
                reply = exc
            except Exception as exc:
                await self._broken(conn, exc)
                continue
            if not inflight:
                continue  # failed and dropped by _broken meanwhile
            future = inflight.popleft()
            if future.done():
                continue  # its caller gave up (timeout); the reply is dropped in order
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _broken(self, conn: AbstractConnection, exc: BaseException) -> None:
        if conn is not self._conn:
            return  # an older connection, already dealt with
        error = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc))
        self._conn = None
        while self._inflight:
            future = self._inflight.popleft()
            if not future.done():
                future.set_exception(error)
        await conn.disconnect(nowait=True)

    def _fail_queued(self, exc: Exception) -> None:
        futures, self._queued_futures = self._queued_futures, []
        self._queued.clear()
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    async def reset(self) -> None:
        """Drop the connection (a command timed out: it may be dead); fail what is in flight."""
        if self._conn is not None:
            await self._broken(self._conn, RedisConnectionError("reset after a timeout"))

    async def close(self) -> None:
        """Fail everything queued or in flight, stop the tasks, close the connection."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued(RedisConnectionError("the connection is closed"))
        if self._conn is not None:
            await self._broken(self._conn, RedisConnectionError("the connection is closed"))
