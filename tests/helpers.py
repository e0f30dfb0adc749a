"""Test helpers shared by the unit tests and the conformance suite."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from eventbus import Message


class Inbox:
    """Collects messages and lets a test wait for a count, with a timeout, never a sleep."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.by_member: dict[str, list[Message]] = {}
        self._changed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def put(self, message: Message) -> None:
        self.messages.append(message)
        self._event().set()

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    event = self._event()
                    event.clear()
                    if predicate():
                        return
                    await event.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; have {len(self.messages)}"
            ) from None

    def member(self, name: str) -> Callable[[Message], Awaitable[None]]:
        """A handler that records into this inbox and remembers which member got what."""
        mine = self.by_member.setdefault(name, [])

        async def put(message: Message) -> None:
            mine.append(message)
            await self.put(message)

        return put

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Message]:
        await self.wait_until(lambda: len(self.messages) >= count, timeout, f"{count} messages")
        return self.messages
