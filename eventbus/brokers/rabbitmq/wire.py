"""How a `Message` travels as an AMQP 0-9-1 message, and back.

The body is the encoded payload itself. Metadata goes where AMQP has a native place
for it, so that plain AMQP clients and the management UI see it; the rest follows the
CloudEvents AMQP binding (``cloudEvents_`` application properties, which RabbitMQ
carries as headers):

| `Message` | AMQP |
|---|---|
| ``content_type`` | property ``content_type`` (CloudEvents ``datacontenttype``) |
| ``id`` | property ``message_id`` |
| ``time`` | property ``timestamp`` (seconds) and header ``cloudEvents_time`` (RFC 3339, exact) |
| ``type`` | property ``type`` (the topic when empty) |
| ``source`` | property ``app_id`` |
| ``reply_to`` / ``correlation_id`` | properties ``reply_to`` / ``correlation_id`` |
| ``key`` | header ``cloudEvents_partitionkey`` |
| (spec version) | header ``cloudEvents_specversion`` = ``1.0`` |
| ``headers`` | headers, unchanged |

A message from a plain client gets what it lacks: a new id, the AMQP timestamp or now
as its time, no content type (then the body is read as JSON if it parses, else as
bytes). Header values that are not strings (numbers, tables a plain client sent) are
turned into text; ``cloudEvents_*`` headers of other attributes stay visible as headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from eventbus.message import SPECVERSION, Delivery, Message, format_time, parse_time

__all__ = ["CE_PREFIX", "DIRECT_REPLY_TO", "from_amqp", "properties"]

CE_PREFIX = "cloudEvents_"
"""Prefix of CloudEvents attributes in AMQP headers (the CloudEvents AMQP binding)."""
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to pseudo-queue: replies without a reply queue."""

_SPECVERSION = CE_PREFIX + "specversion"
_TIME = CE_PREFIX + "time"
_KEY = CE_PREFIX + "partitionkey"
_ID = CE_PREFIX + "id"
_SOURCE = CE_PREFIX + "source"
_TYPE = CE_PREFIX + "type"
_DELIVERY_COUNT = "x-delivery-count"  # quorum queues count deliveries
_STREAM_OFFSET = "x-stream-offset"  # stream queues say where a message sits
_TRANSIENT = 1
_PERSISTENT = 2


def properties(message: Message, *, persistent: bool) -> Basic.Properties:
    """Return the AMQP properties (and headers) that carry ``message``'s metadata."""
    headers: dict[str, Any] = dict(message.headers) if message.headers else {}
    headers[_SPECVERSION] = SPECVERSION
    headers[_TIME] = format_time(message.time)
    if message.key is not None:
        headers[_KEY] = message.key
    return Basic.Properties(
        content_type=message.content_type,
        headers=headers,
        delivery_mode=_PERSISTENT if persistent else _TRANSIENT,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.id,
        timestamp=message.time,
        message_type=message.type or message.topic,
        app_id=message.source or "eventbus",
    )


def from_amqp(topic: str, delivered: DeliveredMessage) -> Message:
    """Build the received `Message` from a delivered AMQP message.

    ``topic`` is used when the message did not come through the eventbus exchange
    (the caller decides); the delivery facts go in `Message.delivery`.
    """
    props = delivered.header.properties
    raw = props.headers
    user: dict[str, str] = {}
    when: datetime | None = None
    key: str | None = None
    redelivered = 1 if getattr(delivered.delivery, "redelivered", False) else 0
    offset: int | None = None
    message_id = props.message_id
    source = props.app_id
    kind = props.message_type
    if raw:
        for name, value in raw.items():
            if name.startswith(CE_PREFIX):
                if name == _TIME:
                    when = parse_time(_text(value))
                    if when is not None:
                        continue
                elif name == _KEY:
                    key = _text(value)
                    continue
                elif name == _SPECVERSION:
                    continue
                elif name == _ID and not message_id:
                    message_id = _text(value)
                    continue
                elif name == _SOURCE and not source:
                    source = _text(value)
                    continue
                elif name == _TYPE and not kind:
                    kind = _text(value)
                    continue
            elif name == _DELIVERY_COUNT and isinstance(value, int):
                redelivered = value
                continue
            elif name == _STREAM_OFFSET and isinstance(value, int):
                offset = value
                continue
            user[name] = value if value.__class__ is str else _text(value)
    if when is None:
        stamp = props.timestamp
        if stamp is not None:
            when = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    return Message(
        topic,
        delivered.body,
        user,
        props.content_type or None,
        message_id or None,
        when,
        key,
        props.reply_to or None,
        props.correlation_id or None,
        source or "",
        kind or "",
        Delivery(redelivered=redelivered, offset=offset, raw=delivered),
    )


def _text(value: object) -> str:
    """A header value as text: plain clients may send numbers, bytes or tables."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Mapping):
        return str({k: _text(v) for k, v in value.items()})
    return str(value)
