"""Coarse deadlines: many deadlines share few event-loop timers (internal).

Every request arms a deadline on both sides (the caller's timeout, the server's copy
of it), and nearly all of them are met. A loop timer per deadline costs about 2 µs
(``call_later`` + ``cancel``) and ``asyncio.timeout`` about 4 µs, a tenth of a whole
request/reply on NATS. Here a deadline falls into a slot of ``resolution`` seconds
(10 ms); a slot has one loop timer, armed when its first deadline arrives, and a met
deadline is just removed from its slot's dict. A deadline fires up to one slot late
(10 ms, or 1% of its delay for long ones), never early.

Example:
    >>> import asyncio
    >>> async def main() -> list[str]:
    ...     fired: list[str] = []
    ...     deadlines = Deadlines(asyncio.get_running_loop(), lambda k, v: fired.append(k))
    ...     deadlines.add(0.01, "late", None)
    ...     slot = deadlines.add(0.01, "met", None)
    ...     del slot["met"]  # met in time: forgotten
    ...     await asyncio.sleep(0.05)
    ...     return fired
    >>> asyncio.run(main())
    ['late']
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from eventbus.errors import HandlerTimeout
from eventbus.message import Message

__all__ = ["Deadlines", "run_within"]

log = logging.getLogger("eventbus")

K = TypeVar("K")
V = TypeVar("V")

RESOLUTION = 0.01
"""Seconds per slot: how late a deadline may fire."""


class Deadlines:
    """Deadlines on one loop, grouped in slots of ``resolution`` seconds.

    ``add`` returns the slot (a dict): remove the key from it once the deadline is met.
    Keys still in a slot when its timer fires go to ``on_expire(key, value)``.
    """

    __slots__ = ("_loop", "_on_expire", "_resolution", "_slots")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_expire: Callable[[Any, Any], None],
        resolution: float = RESOLUTION,
    ) -> None:
        self._loop = loop
        self._on_expire = on_expire
        self._resolution = resolution
        self._slots: dict[tuple[float, int], dict[Any, Any]] = {}

    def add(self, delay: float, key: object, value: object) -> dict[Any, Any]:
        """Register ``key`` to expire ``delay`` seconds from now; returns its slot.

        Deadlines further away get coarser slots (at most 1% late, at least one
        ``resolution``), so hour-long ones do not keep a timer per 10 ms.
        """
        resolution = self._resolution
        if delay >= 1000 * resolution:
            resolution *= 10 ** min(math.floor(math.log10(delay / resolution)) - 2, 4)
        index = (resolution, math.ceil((self._loop.time() + delay) / resolution))
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = {}
            self._loop.call_at(index[0] * index[1], self._fire, index)
        slot[key] = value
        return slot

    def _fire(self, index: tuple[float, int]) -> None:
        slot = self._slots.pop(index, None)
        if not slot:
            return
        on_expire = self._on_expire
        for key, value in list(slot.items()):
            try:
                on_expire(key, value)
            except Exception:  # one bad expiry must not keep the others from firing
                log.exception("expiring a deadline failed")
        slot.clear()


# -- handler deadlines --------------------------------------------------------------------

_handler_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)
_last: tuple[object, Any] = (None, None)  # (loop, its Deadlines): one read, thread-safe
_tokens = iter(range(1, 1 << 62))
_EXPIRED: dict[int, bool] = {}  # tokens whose deadline fired while the call still ran


def _cancel(token: int, task: asyncio.Task[Any]) -> None:
    _EXPIRED[token] = True
    task.cancel()


def _deadlines(loop: asyncio.AbstractEventLoop) -> Deadlines:
    global _last
    last = _last
    if last[0] is loop:
        cached: Deadlines = last[1]
        return cached
    found = _handler_deadlines.get(loop)
    if found is None:
        found = _handler_deadlines[loop] = Deadlines(loop, _cancel)
    _last = (loop, found)
    return found


async def run_within(
    seconds: float, call: Callable[[Message], Awaitable[Any]], message: Message
) -> Any:
    """Run ``call(message)``; raise `HandlerTimeout` if it takes longer than ``seconds``.

    Like ``asyncio.timeout`` (the task is cancelled at the deadline, and the
    cancellation becomes `HandlerTimeout`), at a fraction of its cost; the deadline
    fires up to 10 ms late.
    """
    task = asyncio.current_task()
    if task is None:  # not in a task (cannot happen under asyncio): no deadline to cancel
        return await call(message)
    loop = task.get_loop()
    token = next(_tokens)
    cancelling = task.cancelling()
    slot = _deadlines(loop).add(seconds, token, task)
    try:
        return await call(message)
    except asyncio.CancelledError:
        if _EXPIRED.pop(token, False) and task.uncancel() <= cancelling:
            raise HandlerTimeout(
                f"handler on {message.topic!r} (id={message.id}) did not finish within {seconds:g}s"
            ) from None
        raise
    finally:
        slot.pop(token, None)
        if _EXPIRED and _EXPIRED.pop(token, False):
            task.uncancel()  # expired, but the call ended some other way: balance the cancel
