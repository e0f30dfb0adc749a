"""CloudEvents 1.0 interop: structured content mode in and out.

eventbus writes CloudEvents in *binary* content mode (attributes in native headers,
the payload as the body). Producers that send *structured* mode
(``content-type: application/cloudevents+json``: one JSON object with the attributes
and ``data``/``data_base64``) are understood too: adapters unwrap such messages on
receipt, so handlers get the event's data decoded by its ``datacontenttype``, and the
envelope's attributes fill the `Message` fields.

Example:
    >>> from eventbus import Message
    >>> m = Message("orders", b'{"id": 1}', content_type="application/json", id="e1")
    >>> back = from_structured("orders", to_structured(m))
    >>> back.id, back.body, back.content_type
    ('e1', b'{"id":1}', 'application/json')
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson

from eventbus.errors import DecodeError
from eventbus.message import (
    CORRELATION_ID,
    SPECVERSION,
    Delivery,
    Message,
    format_time,
    parse_time,
)

__all__ = ["STRUCTURED", "from_structured", "is_structured", "to_structured"]

STRUCTURED = "application/cloudevents+json"
"""Content type of a CloudEvent in structured JSON mode."""

_CORE = {"specversion", "id", "source", "type", "time", "datacontenttype", "data", "data_base64"}


def is_structured(content_type: str | None) -> bool:
    """True for ``application/cloudevents+json`` (with or without parameters)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == STRUCTURED


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "text/json"


def to_structured(message: Message) -> bytes:
    """Return the message as one structured-mode CloudEvent (JSON bytes).

    JSON bodies become ``data``; other bodies ``data_base64``.
    """
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": message.id,
        "source": message.source or "eventbus",
        "type": message.type or message.topic,
        "time": format_time(message.time),
    }
    if message.content_type is not None:
        event["datacontenttype"] = message.content_type
    if message.key is not None:
        event["partitionkey"] = message.key
    if message.reply_to is not None:
        event["replyto"] = message.reply_to
    if message.correlation_id is not None:
        event[CORRELATION_ID] = message.correlation_id
    for name, value in message.headers.items():
        attr = name.lower().replace("-", "").replace("_", "")
        if attr.isalnum() and attr not in _CORE and attr not in event:
            event[attr] = value
    if _is_json(message.content_type) and message.body:
        try:
            event["data"] = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            event["data_base64"] = base64.b64encode(message.body).decode()
    elif message.body:
        event["data_base64"] = base64.b64encode(message.body).decode()
    return orjson.dumps(event)


def from_structured(
    topic: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    delivery: Delivery | None = None,
) -> Message:
    """Unwrap a structured-mode CloudEvent into a `Message`.

    Extension attributes eventbus does not model become headers (besides the native
    ``headers`` given). Raises `DecodeError` when the body is not a CloudEvent.
    """
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"malformed CloudEvent (structured JSON): {exc}") from None
    if not isinstance(event, dict) or "specversion" not in event or "id" not in event:
        raise DecodeError("a structured CloudEvent needs a JSON object with specversion and id")
    content_type = event.get("datacontenttype")
    if "data_base64" in event:
        try:
            data = base64.b64decode(str(event["data_base64"]), validate=True)
        except ValueError as exc:
            raise DecodeError(f"CloudEvent data_base64 is not base64: {exc}") from None
    elif "data" not in event:
        data = b""
    elif _is_json(content_type):
        data = orjson.dumps(event["data"])
        content_type = content_type or "application/json"
    elif isinstance(event["data"], str):
        data = event["data"].encode()
    else:
        data = orjson.dumps(event["data"])
    user = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
    known = _CORE | {"partitionkey", "replyto", CORRELATION_ID}
    for name, value in event.items():
        if name not in known:
            user[name] = value if isinstance(value, str) else orjson.dumps(value).decode()
    time = parse_time(str(event["time"])) if "time" in event else None
    return Message(
        topic,
        data,
        user,
        None if content_type is None else str(content_type),
        str(event["id"]),
        time,
        _opt(event.get("partitionkey")),
        _opt(event.get("replyto")),
        _opt(event.get(CORRELATION_ID)),
        str(event.get("source", "")),
        str(event.get("type", "")),
        delivery,
    )


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
