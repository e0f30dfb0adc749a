"""`Dispatcher`: a fixed set of worker tasks fed from a FIFO buffer.

Adapters use it to run a subscription's handler with bounded concurrency without
creating a task per message: ``concurrency`` long-lived workers take items in order.
Stopping it lets in-flight items finish (up to a grace period) and hands back what was
not handled, so the adapter can leave it unacknowledged for redelivery.

Given a ``key`` function, items with the same key always go to the same worker (its
*lane*), so they are handled one after another in order even with many workers; items
without a key go to whichever worker is free.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Dispatcher"]

log = logging.getLogger("eventbus")

T = TypeVar("T")


class Dispatcher(Generic[T]):
    """Runs ``handle(item)`` for each `put` item on up to ``concurrency`` workers.

    With one worker, items are handled strictly in order; with several and a ``key``
    function, items of one key are. If ``handle`` raises, the item and the error go to
    ``on_error`` (or the log) and the worker goes on.

    Example:
        >>> async def main() -> None:
        ...     seen: list[int] = []
        ...     async def handle(item: int) -> None:
        ...         seen.append(item)
        ...     d = Dispatcher(handle, concurrency=2)
        ...     d.start()
        ...     for i in range(3):
        ...         d.put(i)
        ...     await d.stop(grace=1.0)
    """

    def __init__(
        self,
        handle: Callable[[T], Awaitable[None]],
        *,
        concurrency: int = 1,
        name: str = "",
        on_error: Callable[[T, Exception], None] | None = None,
        key: Callable[[T], Hashable | None] | None = None,
    ) -> None:
        self._handle = handle
        self._on_error = on_error
        self._concurrency = concurrency
        self._name = name
        self._buffer: deque[T] = deque()
        # Per worker: its lane of keyed items, and the future it sleeps on when idle.
        self._key = key if concurrency > 1 else None
        self._lanes: list[deque[T]] = [deque() for _ in range(concurrency)]
        self._sleeping: list[asyncio.Future[None] | None] = [None] * concurrency
        self._idle: deque[int] = deque()  # sleeping workers, oldest first (may be stale)
        self._listed = [False] * concurrency  # the worker is in _idle
        self._in_lanes = 0  # items waiting in lanes
        self._waking = 0  # workers woken that have not taken an item yet
        self._balancing = False  # a `_balance` pass is scheduled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._inflight: dict[asyncio.Task[None], T] = {}
        self._unfinished: list[T] = []
        self._stopping = False

    @property
    def waiting(self) -> int:
        """Items queued and not yet started."""
        return len(self._buffer) + self._in_lanes

    @property
    def pending(self) -> int:
        """Items waiting plus items being handled."""
        return self.waiting + len(self._inflight)

    def start(self) -> None:
        """Start the workers on the running loop."""
        self._loop = asyncio.get_running_loop()
        for i in range(self._concurrency):
            task = asyncio.create_task(self._work(i), name=f"eventbus:{self._name}:{i}")
            self._workers.append(task)

    def put(self, item: T) -> None:
        """Queue an item (never blocks). Items put after `stop` began are handed back by it."""
        key = self._key
        if key is not None:
            found = key(item)
            if found is not None:
                lane = hash(found) % self._concurrency
                self._lanes[lane].append(item)
                self._in_lanes += 1
                self._wake(lane)
                return
        self._buffer.append(item)
        if self._concurrency == 1:
            self._wake(0)
        elif not self._balancing and self._idle and self._loop is not None:
            # Wake workers once the callbacks ready now have run, not per item: a
            # worker that handles items without ever waiting takes them all in turn
            # (as one worker would, without a wake-up each), and a handler that waits
            # leaves the rest in the buffer for the workers `_balance` wakes then.
            self._balancing = True
            self._loop.call_soon(self._balance)

    def _balance(self) -> None:
        self._balancing = False
        if self._stopping:
            return
        wanted = len(self._buffer) - self._waking
        idle = self._idle
        while wanted > 0 and idle:
            worker = idle.popleft()
            self._listed[worker] = False
            if self._wake(worker):
                wanted -= 1

    def _wake(self, worker: int) -> bool:
        waiter = self._sleeping[worker]
        if waiter is None or waiter.done():
            return False
        waiter.set_result(None)
        self._waking += 1
        return True

    async def _work(self, worker: int) -> None:
        buffer = self._buffer
        lane = self._lanes[worker]
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if lane:
                item = lane.popleft()
                self._in_lanes -= 1
            elif buffer:
                item = buffer.popleft()
            else:
                waiter: asyncio.Future[None] = loop.create_future()
                self._sleeping[worker] = waiter
                if not self._listed[worker]:
                    self._listed[worker] = True
                    self._idle.append(worker)
                try:
                    await waiter
                finally:
                    self._sleeping[worker] = None
                self._waking -= 1
                continue
            self._inflight[task] = item
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                self._unfinished.append(item)
                raise
            except Exception as exc:
                if self._on_error is None:
                    log.exception("dispatcher %s: handler raised", self._name)
                else:
                    self._on_error(item, exc)
            finally:
                self._inflight.pop(task, None)

    async def stop(self, grace: float) -> list[T]:
        """Stop taking items; wait up to ``grace`` seconds for in-flight ones; cancel the rest.

        Returns:
            The items that were not handled: never started, or cancelled mid-way.
        """
        self._stopping = True
        for waiter in self._sleeping:
            if waiter is not None:
                waiter.cancel()
        self._idle.clear()
        busy = [t for t in self._workers if t in self._inflight]
        idle = [t for t in self._workers if t not in self._inflight]
        for task in idle:
            task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        left = [*self._unfinished, *self._buffer]
        for lane in self._lanes:
            left.extend(lane)
            lane.clear()
        self._in_lanes = 0
        self._unfinished.clear()
        self._buffer.clear()
        return left
