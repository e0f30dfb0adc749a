"""Call context: the W3C trace of the call being served, and its deadline.

A `Client` call carries a W3C ``traceparent`` header (``00-<trace id>-<span id>-01``)
and the caller's remaining patience (``eventbus-deadline-ms``). On the serving node
the handler runs inside that context (a `contextvars.ContextVar`, so it costs one
``set``/``reset`` per call): its logs carry the caller's trace id, and the calls it
makes in turn continue the trace and never wait past the caller's deadline.

For log lines, install `TraceFilter` on a handler and put ``%(trace_id)s`` in its
format (`install_log_filter` does both for the root handlers)::

    logging.basicConfig(level="INFO", format=eventbus.tracing.LOG_FORMAT)
    eventbus.tracing.install_log_filter()

    with eventbus.tracing.trace():          # one trace id for what follows
        reply = await greeter.call("hello", {"name": "World"})
        log.info("got %s", reply)           # ... {4bf92f3577b34da6a3ce929d0e0e4736} got ...

Plain subscribers and publishers can join in with `middleware` (handler side) and
`publish_middleware` (adds the current ``traceparent`` to outgoing messages).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, NamedTuple

from eventbus.message import DEADLINE, TRACEPARENT, Message
from eventbus.middleware import Next, Wrapper

__all__ = [
    "LOG_FORMAT",
    "CallContext",
    "TraceFilter",
    "call_context",
    "current",
    "install_log_filter",
    "is_valid",
    "middleware",
    "new_traceparent",
    "publish_middleware",
    "serve",
    "trace",
    "trace_id",
]

LOG_FORMAT = "%(asctime)s %(levelname)s {%(trace_id)s} %(name)s: %(message)s"
"""A log format showing the trace id, GoFrame style (needs `TraceFilter`)."""

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_valid = _TRACEPARENT.fullmatch
_monotonic = time.monotonic
_randbytes = random.randbytes  # trace ids need to be unique, not secret
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class CallContext(NamedTuple):
    """The context of the call being served (or the trace started with `trace`).

    Attributes:
        traceparent: The W3C ``traceparent`` of the caller's span.
        deadline: The `time.monotonic` time after which the caller has given up, or
            ``None`` when it waits indefinitely.
    """

    traceparent: str
    deadline: float | None = None

    @property
    def trace_id(self) -> str:
        """The 32-hex-digit trace id shared by every span of the trace."""
        return self.traceparent[3:35]


_context: ContextVar[CallContext | None] = ContextVar("eventbus_call", default=None)


def current() -> CallContext | None:
    """The context of the call being served in this task, if any."""
    return _context.get()


def trace_id() -> str | None:
    """The current trace id (32 hex digits), or ``None`` outside a traced call."""
    context = _context.get()
    return None if context is None else context.traceparent[3:35]


def is_valid(traceparent: str) -> bool:
    """Whether ``traceparent`` is a well-formed W3C traceparent (ids not all zeros)."""
    return len(traceparent) == 55 and _TRACEPARENT.fullmatch(traceparent) is not None


def new_traceparent(parent: str | None = None) -> str:
    """A traceparent for a new span: a child of ``parent`` (same trace id), else a new trace."""
    if parent is not None:
        return f"00-{parent[3:35]}-{_randbytes(8).hex()}-01"
    ids = _randbytes(24).hex()
    if ids.startswith(_ZERO_TRACE) or ids.endswith(_ZERO_SPAN):  # all-zero ids are invalid
        return new_traceparent()
    return f"00-{ids[:32]}-{ids[32:]}-01"


@contextlib.contextmanager
def trace(traceparent: str | None = None, *, timeout: float | None = None) -> Iterator[CallContext]:
    """Run the block inside a trace: a new one, or the one ``traceparent`` names.

    Calls made inside continue the trace, and log records carry its id (see
    `TraceFilter`). An invalid ``traceparent`` starts a new trace, as W3C says. With
    ``timeout``, calls made inside never wait past that many seconds from now (a
    deadline, like the one a served call inherits from its caller).

    Example:
        >>> with trace() as context:
        ...     len(context.trace_id)
        32
    """
    if traceparent is None or not is_valid(traceparent):
        traceparent = new_traceparent()
    deadline = None if timeout is None else _monotonic() + timeout
    outer = _context.get()
    if outer is not None and outer.deadline is not None:
        deadline = outer.deadline if deadline is None else min(deadline, outer.deadline)
    context = CallContext(traceparent, deadline)
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def call_context(message: Message) -> CallContext:
    """The call context a message carries: its trace (a new one if none) and deadline."""
    headers = message.headers
    traceparent = headers.get(TRACEPARENT)
    if traceparent is None or len(traceparent) != 55 or _valid(traceparent) is None:
        traceparent = new_traceparent()
    patience = headers.get(DEADLINE)
    if patience is None:
        return CallContext(traceparent)
    try:
        return CallContext(traceparent, _monotonic() + int(patience) / 1000.0)
    except ValueError:
        return CallContext(traceparent)


def serve(call: Next) -> Next:
    """Wrap a handler step so it runs inside the message's call context.

    The context comes from the message's ``traceparent`` (a new trace when it has
    none or a malformed one) and ``eventbus-deadline-ms`` headers.
    """

    async def traced(message: Message) -> Any:
        token = _context.set(call_context(message))
        try:
            return await call(message)
        finally:
            _context.reset(token)

    return traced


middleware = Wrapper(serve, "trace")
"""Handler middleware: run any subscriber's handler inside its message's call context."""


async def publish_middleware(message: Message, call_next: Next) -> Any:
    """Publish middleware: give outgoing messages the current trace (a child span).

    Messages that already carry a ``traceparent`` are left alone; outside a trace it
    costs one context-variable read.
    """
    context = _context.get()
    if context is None or TRACEPARENT in message.headers:
        return await call_next(message)
    headers = {**message.headers, TRACEPARENT: new_traceparent(context.traceparent)}
    return await call_next(replace(message, headers=headers))


class TraceFilter(logging.Filter):
    """Adds ``trace_id`` to every log record: the current trace id, or ``-`` outside one.

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(TraceFilter())
        >>> handler.setFormatter(logging.Formatter(LOG_FORMAT))
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        record.trace_id = "-" if context is None else context.traceparent[3:35]
        return True


def install_log_filter(target: logging.Handler | logging.Logger | None = None) -> None:
    """Add a `TraceFilter` to ``target``'s handlers (default: the root logger's).

    A handler given directly gets the filter itself. Installing twice is harmless.
    """
    handlers: list[logging.Handler]
    if isinstance(target, logging.Handler):
        handlers = [target]
    else:
        handlers = list((target or logging.getLogger()).handlers)
    for handler in handlers:
        if not any(isinstance(f, TraceFilter) for f in handler.filters):
            handler.addFilter(TraceFilter())
