"""`BlockingBus`: publish, request and call services from synchronous code (scripts, views).

The bus runs on its own event loop in a background thread; each call hands a coroutine
to that loop and blocks until it finishes. Callers never touch asyncio.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus.errors import ClosedError, ConfigurationError

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.message import Message

__all__ = ["BlockingBus"]

T = TypeVar("T")


class BlockingBus:
    """A synchronous facade over an `EventBus`; thread-safe.

    Args:
        bus: The bus, or a URL to build one, or ``None`` for the default bus. Its
            subscribers run on the facade's background loop.

    Example:
        >>> with BlockingBus("memory://") as bus:
        ...     sent = bus.publish("audit", {"user": "ann"})
        >>> sent.topic
        'audit'
    """

    def __init__(self, bus: EventBus | str | None = None) -> None:
        from eventbus.bus import EventBus, default_bus

        if bus is None:
            bus = default_bus()
        elif isinstance(bus, str):
            bus = EventBus(bus)
        self.bus: EventBus = bus
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise ConfigurationError(
                "BlockingBus is for code without an event loop; "
                "in async code use the EventBus itself"
            )
        try:
            loop = self._ensure_loop()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise ClosedError("this BlockingBus was closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name="eventbus-blocking", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def start(self) -> None:
        """Connect and start the bus's subscribers (publish and request do it on first use)."""
        self._run(self.bus.start())

    def publish(self, topic: str, value: object = None, **kwargs: Any) -> Message:
        """Publish and block until the broker accepted it (see `Publisher.publish`)."""
        message: Message = self._run(self.bus.publish(topic, value, **kwargs))
        return message

    def request(self, topic: str, value: object = None, **kwargs: Any) -> Any:
        """Send a request and block for the decoded reply (see `Publisher.request`)."""
        return self._run(self.bus.request(topic, value, **kwargs))

    def call(
        self,
        service: str,
        endpoint: str,
        payload: object = None,
        *,
        selector: str = "random",
        **kwargs: Any,
    ) -> Any:
        """Call a service's endpoint through the registry and block for the reply.

        Takes `Client.call`'s keyword arguments (``timeout``, ``retries``,
        ``response_type``, ``headers``...); raises what it raises.
        """

        async def call() -> Any:
            client = self.bus.client(service, selector=selector)
            return await client.call(endpoint, payload, **kwargs)

        return self._run(call())

    def close(self) -> None:
        """Close the bus and stop the background loop. Safe to call twice."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if self._closed:
                return
            self._closed = True
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.bus.close(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> BlockingBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
