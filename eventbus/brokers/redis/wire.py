"""How a `Message` is written to a Redis Stream entry or reply frame, and read back.

- A stream entry holds the payload in the field ``body`` and the metadata in other
  fields, named as `eventbus.message.to_headers` names them with the ``ce_`` prefix
  (``ce_id``, ``ce_time``, ``content-type``, user headers...).
- An entry without ``body`` (a plain client's) is the JSON object of its fields.
- A reply travels on a pub/sub channel as one frame: the JSON object of the same
  fields, a newline, then the body.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import ResponseError

from eventbus.errors import BrokerError, ConfigurationError
from eventbus.message import Delivery, Message, from_headers, to_headers

__all__ = [
    "BODY",
    "PREFIX",
    "decode_entry",
    "decode_reply",
    "encode_fields",
    "encode_reply",
    "entries_of",
    "refused",
]

BODY = "body"
"""The stream field that holds the payload."""
PREFIX = "ce_"
"""Prefix of the CloudEvents attribute fields."""

_BODY = BODY.encode()
_JSON = "application/json"


def encode_fields(message: Message) -> list[object]:
    """The XADD field list of a message: ``body``, then its metadata.

    Raises:
        ConfigurationError: a header is named ``body``.
    """
    headers = to_headers(message, prefix=PREFIX)
    if BODY in headers:
        raise ConfigurationError(
            f"a message to {message.topic!r} has a header named {BODY!r}: on redis:// that "
            "field holds the payload; rename the header"
        )
    fields: list[object] = [BODY, message.body]
    for item in headers.items():
        fields.extend(item)
    return fields


def decode_entry(topic: str, entry_id: bytes, fields: list[bytes], redelivered: int) -> Message:
    """Build the `Message` of one stream entry (``fields`` flat: name, value, ...).

    An entry without a ``body`` field (a plain client's) is read as the JSON object of
    its fields. Without ``ce_id`` / ``ce_time`` the entry's id and time stand in, so a
    redelivered plain entry keeps its id. ``Delivery.raw`` is ``(entry_id, fields)``.
    """
    delivery = Delivery(redelivered=redelivered, raw=(entry_id, fields))
    body: bytes | None = None
    headers: dict[str, str] = {}
    for i in range(0, len(fields) - 1, 2):
        name = fields[i]
        if name == _BODY:
            body = fields[i + 1]
        else:
            headers[str(name, "utf-8", "replace")] = str(fields[i + 1], "utf-8", "replace")
    if body is None:
        return Message(
            topic,
            orjson.dumps(headers),
            None,
            _JSON,
            entry_id.decode(),
            _entry_time(entry_id),
            delivery=delivery,
        )
    message = from_headers(topic, body, headers, prefix=PREFIX, delivery=delivery)
    if "ce_id" not in headers:
        message = replace(
            message,
            id=entry_id.decode(),
            time=message.time if "ce_time" in headers else _entry_time(entry_id),
        )
    return message


def entries_of(reply: Any) -> list[Any]:
    """The entries of an XREAD / XREADGROUP reply on one stream (RESP2 or RESP3 shape)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: entries}
        for entries in reply.values():
            return list(entries)
        return []
    return list(reply[0][1])  # RESP2: [[stream, entries]]


def encode_reply(message: Message) -> bytes:
    """The pub/sub frame of a reply: a JSON object of its fields, ``\\n``, the body."""
    return orjson.dumps(to_headers(message, prefix=PREFIX)) + b"\n" + message.body


def decode_reply(topic: str, frame: bytes) -> Message:
    """Build a reply `Message` from a pub/sub frame (see `encode_reply`).

    A frame that does not start with a JSON object line is all body (a plain client's).
    """
    head, newline, body = frame.partition(b"\n")
    if newline and head.startswith(b"{"):
        try:
            headers = orjson.loads(head)
        except orjson.JSONDecodeError:
            headers = None
        if isinstance(headers, dict):
            fields = {str(k): v if isinstance(v, str) else str(v) for k, v in headers.items()}
            return from_headers(topic, body, fields, prefix=PREFIX)
    return Message(topic, frame)


def _entry_time(entry_id: bytes) -> datetime:
    millis = int(entry_id.partition(b"-")[0])
    return datetime.fromtimestamp(millis / 1000, UTC)


def refused(exc: ResponseError, what: str) -> BrokerError:
    """Translate a Redis error reply into a `BrokerError` that says what to do."""
    text = str(exc)
    if text.startswith("WRONGTYPE"):
        return BrokerError(
            f"{what}: the Redis key holds another type than a stream; eventbus topics on "
            "Redis are Stream keys, so pick a topic name no other data uses"
        )
    return BrokerError(f"{what}: Redis refused: {text}")
