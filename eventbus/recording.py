"""Recordings: messages saved as JSON Lines, loaded back, and redelivered through a bus.

One line per message, one JSON object per line::

    {"topic":"orders.placed","id":"5f0c...","time":"2024-05-01T12:00:00.123456Z",
     "content_type":"application/json","key":"42","headers":{"x-tenant":"acme"},
     "source":"shop","encoding":"json","body":{"id":42,"total":9.5}}

The file keeps every field of the `Message` exactly: topic, id, time, content type,
key, headers, ``reply_to``, ``correlation_id``, CloudEvents source and type, and the
body byte for byte. ``encoding`` says how the body is written:

- ``json``: the body is compact JSON (what eventbus publishes) and is written as the
  JSON value itself, readable and editable; it is only chosen when re-encoding the
  value gives back the very same bytes, so nothing is lost;
- ``utf-8``: any other text, as a JSON string;
- ``base64``: anything else (protobuf, avro, bytes that are not UTF-8).

A hand-written line needs only ``topic`` and ``body``: ``encoding`` defaults to
``json`` and the content type to the encoding's natural one (``application/json``,
``text/plain``, ``application/octet-stream``); a new id and the current time are given.
``offset`` and ``partition`` (where the message came from, when replayed) are kept
for information.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from eventbus.codecs import normalize
from eventbus.errors import ConfigurationError, RecordingError
from eventbus.message import Delivery, Message, format_time, parse_time
from eventbus.subscriber import DEAD_LETTERED, FAILED, PROCESSED, Outcome

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.subscriber import Subscriber

__all__ = [
    "NO_SUBSCRIBER",
    "OnError",
    "Redelivery",
    "RedeliveryStatus",
    "format_line",
    "is_json",
    "load",
    "parse_line",
    "read",
    "redeliver",
    "save",
]

log = logging.getLogger("eventbus")

OnError = Literal["raise", "skip"] | Callable[[RecordingError], None]
"""What `load` does with a broken line: raise, skip it (logged), or call a function."""

NO_SUBSCRIBER: Final = "no_subscriber"
"""`Redelivery.status` of a message whose topic has no subscriber on the bus."""

RedeliveryStatus = Literal["processed", "failed", "dead_lettered", "no_subscriber"]

_JSON, _TEXT, _BASE64 = "json", "utf-8", "base64"
_NATURAL_TYPE = {
    _JSON: "application/json",
    _TEXT: "text/plain",
    _BASE64: "application/octet-stream",
}
_STRING_FIELDS = ("id", "content_type", "key", "reply_to", "correlation_id", "source", "type")
_FIELDS = frozenset(
    ("topic", "time", "headers", "encoding", "body", "offset", "partition", *_STRING_FIELDS)
)


# -- one line ------------------------------------------------------------------------


def is_json(content_type: str | None) -> bool:
    """Whether a body of ``content_type`` is JSON (``None``, a plain client's, is read as JSON)."""
    if content_type is None:
        return True
    name = normalize(content_type)
    return name == "application/json" or name.endswith("+json")


def _encode_body(message: Message) -> tuple[str, object]:
    body = message.body
    if is_json(message.content_type):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            if orjson.dumps(value) == body:  # exact: the file gives back these bytes
                return _JSON, value
    try:
        return _TEXT, body.decode("utf-8")
    except UnicodeDecodeError:
        return _BASE64, base64.b64encode(body).decode("ascii")


def format_line(message: Message) -> str:
    """Return ``message`` as one JSON Lines record (no trailing newline).

    `parse_line` gives back an equal message with the very same body bytes.
    """
    record: dict[str, object] = {
        "topic": message.topic,
        "id": message.id,
        "time": format_time(message.time),
        "content_type": message.content_type,
    }
    for name in ("key", "reply_to", "correlation_id"):
        value = getattr(message, name)
        if value is not None:
            record[name] = value
    if message.source:
        record["source"] = message.source
    if message.type:
        record["type"] = message.type
    record["headers"] = dict(message.headers)
    delivery = message.delivery
    if delivery is not None:
        if delivery.offset is not None:
            record["offset"] = delivery.offset
        if delivery.partition is not None:
            record["partition"] = delivery.partition
    record["encoding"], record["body"] = _encode_body(message)
    return orjson.dumps(record).decode("utf-8")


def parse_line(line: str | bytes) -> Message:
    """Parse one JSON Lines record (as written by `format_line`, or by hand) into a `Message`.

    Raises:
        RecordingError: the line is not a valid record; ``reason`` says why.
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise RecordingError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise RecordingError(
            f"unknown field(s) {', '.join(unknown)}; a record has: {', '.join(sorted(_FIELDS))}"
        )
    topic = record.get("topic")
    if not isinstance(topic, str) or not topic:
        raise RecordingError('"topic" must be a non-empty string')
    if "body" not in record:
        raise RecordingError('"body" is missing')
    encoding = record.get("encoding", _JSON)
    body = _decode_body(encoding, record["body"])
    strings = {name: _string(record, name) for name in _STRING_FIELDS}
    content_type = strings["content_type"] if "content_type" in record else _NATURAL_TYPE[encoding]
    time = None
    if "time" in record and (
        not isinstance(record["time"], str) or (time := parse_time(record["time"])) is None
    ):
        raise RecordingError(f'"time" must be an RFC 3339 time, not {record["time"]!r}')
    return Message(
        topic,
        body,
        _headers(record.get("headers", {})),
        content_type,
        strings["id"],
        time,
        strings["key"],
        strings["reply_to"],
        strings["correlation_id"],
        strings["source"] or "",
        strings["type"] or "",
        _delivery(record),
    )


def _decode_body(encoding: object, body: object) -> bytes:
    if encoding == _JSON:
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError as exc:  # e.g. an integer past 64 bits
            raise RecordingError(f'"body" cannot be written back as JSON: {exc}') from None
    if encoding not in (_TEXT, _BASE64):
        raise RecordingError(
            f'"encoding" must be "{_JSON}", "{_TEXT}" or "{_BASE64}", not {encoding!r}'
        )
    if not isinstance(body, str):
        raise RecordingError(f'with encoding "{encoding}", "body" must be a string')
    if encoding == _TEXT:
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordingError(f'"body" is not valid base64: {exc}') from None


def _string(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise RecordingError(f'"{name}" must be a string or null, not {value!r}')
    return value


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RecordingError('"headers" must be an object of strings')
    return value


def _delivery(record: dict[str, Any]) -> Delivery | None:
    offset, partition = record.get("offset"), record.get("partition")
    for name, value in (("offset", offset), ("partition", partition)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RecordingError(f'"{name}" must be a whole number or null, not {value!r}')
    if offset is None and partition is None:
        return None
    return Delivery(offset=offset, partition=partition)


# -- files ---------------------------------------------------------------------------


def save(path: str | os.PathLike[str], messages: Iterable[Message], *, append: bool = False) -> int:
    """Write ``messages`` to ``path`` as JSON Lines, one message per line, in order.

    Bodies and headers are kept byte for byte (see the module docs for the format).
    To save a replay, collect it first (``save(p, [m async for m in bus.replay(t)])``)
    or stream it with `format_line`.

    Args:
        path: The file; created or overwritten (appended to with ``append=True``).
        messages: The messages to write.
        append: Add to the end of an existing file instead of replacing it.

    Returns:
        How many messages were written.

    Raises:
        OSError: the file cannot be written.

    Example:
        >>> # save("orders.jsonl", [m async for m in bus.replay("orders.placed")])
    """
    count = 0
    with open(path, "a" if append else "w", encoding="utf-8", newline="\n") as file:
        for message in messages:
            file.write(format_line(message))
            file.write("\n")
            count += 1
    return count


def read(path: str | os.PathLike[str], *, on_error: OnError = "raise") -> Iterator[Message]:
    """Yield the messages of a JSON Lines file one by one (`load` without the list).

    Blank lines are ignored. See `load` for ``on_error``.

    Raises:
        RecordingError: a line is broken and ``on_error="raise"``; its ``line`` and
            ``path`` say where.
        OSError: the file cannot be read.
    """
    if on_error not in ("raise", "skip") and not callable(on_error):
        raise ConfigurationError(
            f'on_error must be "raise", "skip" or a function, not {on_error!r}'
        )
    name = os.fspath(path)
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield parse_line(line)
            except RecordingError as exc:
                error = RecordingError(exc.reason, path=name, line=number)
                if on_error == "raise":
                    raise error from None
                if on_error == "skip":
                    log.warning("skipped a broken line: %s", error)
                else:
                    on_error(error)


def load(path: str | os.PathLike[str], *, on_error: OnError = "raise") -> list[Message]:
    """Read the messages saved in a JSON Lines file, in file order.

    Args:
        path: The file.
        on_error: What to do with a line that is not a valid record: ``"raise"``
            (stop with `RecordingError` naming the line), ``"skip"`` (log a warning
            naming the line and carry on), or a function called with each
            `RecordingError` before carrying on (to collect or print them).

    Raises:
        RecordingError: a line is broken and ``on_error="raise"``.
        OSError: the file cannot be read.

    Example:
        >>> # messages = load("orders.jsonl", on_error="skip")
        >>> # report = await bus.redeliver(messages)
    """
    return list(read(path, on_error=on_error))


# -- redelivery ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redelivery:
    """What happened to one redelivered message (`EventBus.redeliver`).

    Attributes:
        message: The message as it was redelivered.
        outcomes: One `Outcome` per subscriber that handled it (one per group, plus
            each fan-out subscriber); empty when none subscribes to its topic.
    """

    message: Message
    outcomes: tuple[Outcome, ...]

    @property
    def status(self) -> RedeliveryStatus:
        """The worst outcome (``dead_lettered``, ``failed``, ``processed``) or ``no_subscriber``."""
        statuses = {outcome.status for outcome in self.outcomes}
        for status in (DEAD_LETTERED, FAILED, PROCESSED):
            if status in statuses:
                return status
        return NO_SUBSCRIBER

    @property
    def result(self) -> object:
        """The first subscriber's return value (the reply, for a request); ``None`` if none."""
        return self.outcomes[0].result if self.outcomes else None

    @property
    def error(self) -> BaseException | None:
        """The first error any subscriber failed with, or ``None``."""
        return next((o.error for o in self.outcomes if o.error is not None), None)


def _targets(bus: EventBus, topic: str) -> list[Subscriber]:
    """The subscribers a broker would deliver a message on ``topic`` to: one per group."""
    chosen: list[Subscriber] = []
    groups: set[str] = set()
    for sub in bus.subscribers:
        if sub.topic != topic:
            continue
        if sub.group is not None:
            if sub.group in groups:
                continue
            groups.add(sub.group)
        chosen.append(sub)
    return chosen


async def redeliver(
    bus: EventBus, messages: Iterable[Message] | AsyncIterable[Message]
) -> list[Redelivery]:
    """Run ``messages`` through ``bus``'s subscriber pipelines; see `EventBus.redeliver`."""
    if not bus.is_running:
        await bus.start()
    report: list[Redelivery] = []
    targets: dict[str, list[Subscriber]] = {}

    async def one(message: Message) -> None:
        subs = targets.get(message.topic)
        if subs is None:
            subs = targets[message.topic] = _targets(bus, message.topic)
        outcomes = [await sub.process(message) for sub in subs]
        if not subs:
            log.warning("redeliver: no subscriber on %r for message %s", message.topic, message.id)
        report.append(Redelivery(message, tuple(outcomes)))

    if isinstance(messages, AsyncIterable):
        async for message in messages:
            await one(message)
    else:
        for message in messages:
            await one(message)
    return report
