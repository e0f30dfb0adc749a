"""Middleware: plain async functions around the handler call and the publish call.

A middleware takes the message and the next step, and returns what the next step
returns (Go Micro's wrappers, done as functions)::

    async def log_calls(message: Message, call_next: Next) -> object:
        started = time.perf_counter()
        try:
            return await call_next(message)
        finally:
            log.info("%s took %.1f ms", message.topic, (time.perf_counter() - started) * 1e3)

The same shape serves both sides: around a handler, ``call_next`` decodes and runs
the handler and returns its result; around a publish, ``call_next`` hands the message
to the broker and returns ``None``. Give middleware to ``EventBus(middleware=...,
publish_middleware=...)`` (every subscriber / publisher of the bus) or to one
``subscriber(..., middleware=...)`` / ``Publisher(..., middleware=...)``. The bus's
run outermost. Retries and timeouts are middleware too (`retry`, `timeout`); a
subscriber's ``retry=`` and ``timeout=`` options add them innermost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventbus.deadlines import run_within
from eventbus.errors import ConfigurationError, DecodeError
from eventbus.message import Message

__all__ = [
    "Middleware",
    "Next",
    "RetryPolicy",
    "Wrapper",
    "chain",
    "retry",
    "timeout",
]

log = logging.getLogger("eventbus")

Next = Callable[[Message], Awaitable[Any]]
"""The rest of the chain: call it with the (possibly replaced) message."""

Middleware = Callable[[Message, Next], Awaitable[Any]]
"""``async def middleware(message, call_next) -> result``."""

ATTEMPTS_ATTR = "eventbus_attempts"
"""Attribute `retry` sets on the exception it gives up on: how many attempts were made."""


def chain(middleware: Sequence[Middleware], last: Next) -> Next:
    """Compose middleware around ``last``; the first in the list runs outermost."""
    call = last
    for mw in reversed(middleware):
        call = mw.wrap(call) if isinstance(mw, Wrapper) else _bind(mw, call)
    return call


class Wrapper:
    """A middleware built from a function that wraps the next step once, at chain time.

    Saves a coroutine frame per message against a plain ``(message, call_next)``
    function; the built-in `retry` and `timeout` use it. Still callable as a plain
    middleware.
    """

    __slots__ = ("name", "wrap")

    def __init__(self, wrap: Callable[[Next], Next], name: str) -> None:
        self.wrap = wrap
        self.name = name

    async def __call__(self, message: Message, call_next: Next) -> Any:
        return await self.wrap(call_next)(message)

    def __repr__(self) -> str:
        return f"<middleware {self.name}>"


def _bind(mw: Middleware, call_next: Next) -> Next:
    async def step(message: Message) -> Any:
        return await mw(message, call_next)

    step.__qualname__ = getattr(mw, "__qualname__", "middleware")
    return step


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failing handler is tried again.

    Attributes:
        attempts: Total tries, the first included (1 = no retry).
        backoff: Seconds before the second try.
        multiplier: Each later wait is this many times the one before.
        max_backoff: Longest wait between tries.
        jitter: Fraction of each wait added at random, so failing consumers do not
            retry in lock-step.

    Raises:
        ConfigurationError: a value is out of range.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 10.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError(
                f"retry attempts must be a whole number >= 1, not {self.attempts!r}"
            )
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1 or self.jitter < 0:
            raise ConfigurationError(
                "retry backoff and max_backoff must be >= 0, multiplier >= 1 and jitter >= 0"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        base = min(self.backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        return base * (1 + self.jitter * random.random())

    @classmethod
    def of(cls, value: RetryPolicy | int | None) -> RetryPolicy:
        """Accept a policy, a number of attempts, or ``None`` (no retry)."""
        if isinstance(value, RetryPolicy):
            return value
        if value is None:
            return cls(attempts=1)
        return cls(attempts=value)


def retry(policy: RetryPolicy | int = 3) -> Middleware:
    """Middleware that calls the handler again when it raises, waiting between tries.

    Not retried: decode errors (retrying cannot fix bad bytes) and requests (messages
    with ``reply_to``: the caller gets the error at once and decides; see
    ``client.call(retries=)``). When the last try fails, the exception propagates with
    the number of tries in its ``eventbus_attempts`` attribute, and the subscriber
    dead-letters the message.
    """
    rules = RetryPolicy.of(policy)
    attempts = rules.attempts

    def wrap(call_next: Next) -> Next:
        async def retrying(message: Message) -> Any:
            attempt = 1
            while True:
                try:
                    return await call_next(message)
                except DecodeError:
                    raise
                except Exception as exc:
                    if attempt >= attempts or message.reply_to is not None:
                        _note_attempts(exc, attempt)
                        raise
                    wait = rules.delay(attempt)
                    log.warning(
                        "handler failed on %r (id=%s), try %d of %d: %s: %s; retrying in %.2fs",
                        message.topic,
                        message.id,
                        attempt,
                        attempts,
                        type(exc).__name__,
                        exc,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    attempt += 1

        return retrying

    return Wrapper(wrap, f"retry({attempts})")


def _note_attempts(exc: BaseException, attempts: int) -> None:
    with contextlib.suppress(AttributeError):  # exceptions with __slots__ take no attribute
        setattr(exc, ATTEMPTS_ATTR, attempts)


def timeout(seconds: float) -> Middleware:
    """Middleware that cancels a handler still running after ``seconds``.

    Raises `HandlerTimeout` (a `TimeoutError`) in its place, so the message is
    retried or dead-lettered like any failure.
    """
    if seconds <= 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, not {seconds!r}")

    def wrap(call_next: Next) -> Next:
        async def limited(message: Message) -> Any:
            return await run_within(seconds, call_next, message)

        return limited

    return Wrapper(wrap, f"timeout({seconds:g})")
