"""How the ``eventbus`` command shows things to people: messages, reports, progress."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import orjson

from eventbus.errors import EventBusError
from eventbus.message import Message, format_time
from eventbus.recording import Redelivery, is_json
from eventbus.subscriber import DEAD_LETTERED

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = [
    "Progress",
    "describe",
    "describe_redelivery",
    "parse_since",
    "redact",
    "redelivery_record",
]


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, to print it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> datetime:
    """Parse ``--since``: an ISO 8601 time (no zone means UTC) or a duration ago (``15m``).

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    found = _DURATION.fullmatch(text.strip())
    if found is not None:
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (2024-05-01T12:00:00Z) or a duration ago "
            f"(90s, 15m, 2h, 7d), not {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Progress:
    """Progress of a long replay on stderr: a line every ``interval`` seconds (0: none).

    On a terminal the line is rewritten in place; elsewhere (a log) one line is added
    each time.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.count = 0
        self.started = time.monotonic()
        self._next = self.started + interval
        self._tty = sys.stderr.isatty()

    def tick(self, message: Message) -> None:
        """Count one message; show the progress if ``interval`` has passed."""
        self.count += 1
        if self.interval <= 0:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        rate = self.count / max(now - self.started, 1e-9)
        line = (
            f"replayed {self.count:,} messages ({rate:,.0f}/s), now at {format_time(message.time)}"
        )
        if self._tty:
            sys.stderr.write(f"\r\x1b[K{line}")
        else:
            sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    def finish(self, summary: str) -> None:
        """Replace the progress line with ``summary`` and the time taken."""
        if self._tty and self.interval > 0:
            sys.stderr.write("\r\x1b[K")
        took = time.monotonic() - self.started
        sys.stderr.write(f"{summary} in {took:.1f}s\n")
        sys.stderr.flush()


def redelivery_record(bus: EventBus, index: int, item: Redelivery) -> dict[str, object]:
    """One redelivered message's report as a JSON-ready dict (``eventbus redeliver --json``)."""
    message = item.message
    return {
        "index": index,
        "topic": message.topic,
        "id": message.id,
        "status": item.status,
        "outcomes": [
            {
                "subscriber": o.subscriber.name,
                "group": o.subscriber.group,
                "status": o.status,
                "attempts": o.attempts,
                "result": _jsonable(bus, o.result),
                "error": None if o.error is None else f"{type(o.error).__name__}: {o.error}",
            }
            for o in item.outcomes
        ],
    }


def describe_redelivery(bus: EventBus, index: int, item: Redelivery) -> str:
    """One redelivered message's report as a line for people."""
    message = item.message
    head = f"{index} {message.topic} id={message.id}: {item.status}"
    if not item.outcomes:
        return f"{head} (no subscriber of {message.topic!r} on the bus)"
    parts = []
    for o in item.outcomes:
        part = f"by {o.subscriber.name}"
        if o.error is not None:
            part += f" after {o.attempts} attempt(s): {type(o.error).__name__}: {o.error}"
            if o.status == DEAD_LETTERED:
                part += f" (dead-lettered to {o.subscriber.dead_letter!r})"
        elif o.result is not None:
            part += f" -> {orjson.dumps(_jsonable(bus, o.result)).decode('utf-8')}"
        parts.append(part)
    return f"{head} {'; '.join(parts)}"


def _jsonable(bus: EventBus, value: object) -> object:
    """A handler's result as JSON for the report: encoded as a reply would be."""
    if value is None:
        return None
    try:
        content_type, body = bus.codecs.encode(value)
        return orjson.loads(body) if is_json(content_type) else body.decode("utf-8")
    except (EventBusError, ValueError):
        return repr(value)


def describe(message: Message) -> str:
    """Render ``message`` for people: a heading line, its headers, then its body."""
    facts = [f"[{format_time(message.time)}] {message.topic}", f"id={message.id}"]
    if message.key is not None:
        facts.append(f"key={message.key}")
    if message.content_type is not None:
        facts.append(f"content-type={message.content_type}")
    if message.delivery is not None and message.delivery.offset is not None:
        facts.append(f"offset={message.delivery.offset}")
    if message.reply_to is not None:
        facts.append(f"reply-to={message.reply_to}")
    lines = [" ".join(facts)]
    lines.extend(f"  {name}: {value}" for name, value in sorted(message.headers.items()))
    lines.extend(f"  {line}" for line in _render_body(message).splitlines() or [""])
    return "\n".join(lines)


def _render_body(message: Message) -> str:
    body = message.body
    if is_json(message.content_type):
        try:
            return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode("utf-8")
        except orjson.JSONDecodeError:
            pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        shown = body[:64].hex(" ")
        more = f" ... ({len(body) - 64} more)" if len(body) > 64 else ""
        return f"<{len(body)} bytes> {shown}{more}"
