"""`Message`, the envelope of one event, and how its metadata maps to native headers.

The body on the wire is always the encoded payload itself. Metadata travels in the
broker's native headers, named after CloudEvents 1.0 attributes in binary content
mode (``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``, ``ce_specversion`` and
``content-type``), so CloudEvents tooling and plain clients can read eventbus topics.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventbus.errors import DecodeError

__all__ = [
    "CORRELATION_ID",
    "DEADLINE",
    "DLQ_ATTEMPTS",
    "DLQ_GROUP",
    "DLQ_TOPIC",
    "ERROR",
    "ERROR_TYPE",
    "SPECVERSION",
    "TRACEPARENT",
    "Delivery",
    "Message",
    "format_time",
    "from_headers",
    "new_id",
    "parse_time",
    "to_headers",
]

SPECVERSION = "1.0"
"""The CloudEvents spec version written on every message."""

# eventbus's own headers. Plain lowercase names travel unchanged on every broker.
ERROR_TYPE = "eventbus-error-type"
"""On an error reply or a dead-letter record: the exception's class name."""
ERROR = "eventbus-error"
"""On an error reply or a dead-letter record: the exception's message."""
DLQ_TOPIC = "eventbus-dlq-topic"
"""On a dead-letter record: the topic the message failed on."""
DLQ_GROUP = "eventbus-dlq-group"
"""On a dead-letter record: the subscriber's group (empty for fan-out)."""
DLQ_ATTEMPTS = "eventbus-dlq-attempts"
"""On a dead-letter record: how many times the handler was tried."""
DEADLINE = "eventbus-deadline-ms"
"""On a request: milliseconds the caller was still willing to wait when it sent it."""
TRACEPARENT = "traceparent"
"""W3C trace context, propagated from caller to callee."""
CORRELATION_ID = "correlationid"
"""CloudEvents extension attribute carrying ``Message.correlation_id``."""

_REPLY_TO = "replyto"
_KEY = "partitionkey"

# A process-unique prefix plus a counter is unique like a UUID4 at a tenth of the cost;
# the prefix is renewed in forked children so `eventbus run --workers N` stays unique.
_id_prefix = os.urandom(9).hex()
_id_counter = itertools.count()


def _renew_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(9).hex()
    _id_counter = itertools.count()


os.register_at_fork(after_in_child=_renew_id_prefix)


def new_id() -> str:
    """Return a new message id, unique across processes (18 random hex digits + a counter)."""
    return f"{_id_prefix}{next(_id_counter):x}"


def _now() -> datetime:
    return datetime.now(UTC)


_last_time: list[object] = [None, ""]  # the last time formatted: a batch shares one time


def format_time(value: datetime) -> str:
    """Format a time as RFC 3339 in UTC, the CloudEvents ``time`` format."""
    last = _last_time
    if value is last[0]:
        return last[1]  # type: ignore[return-value]  # always the text of last[0]
    if value.tzinfo is UTC:  # every time eventbus makes itself: the fast path
        text = value.isoformat()[:-6] + "Z"
        last[0], last[1] = value, text
        return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime | None:
    """Parse an RFC 3339 time; ``None`` when the text is not one (a plain client's header)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Broker-specific facts about one delivery of a message. Read-only.

    Attributes:
        redelivered: How many times the broker delivered this message before (0 = first).
        offset: Position in the topic's log where the broker has one (Kafka offset,
            stream sequence, memory log index).
        partition: Kafka partition, where there is one.
        raw: The client library's own message object, for advanced use.
    """

    redelivered: int = 0
    offset: int | None = None
    partition: int | None = None
    raw: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Message:
    """One event on a topic. Immutable; use ``dataclasses.replace()`` to derive one.

    Attributes:
        topic: Where the message is published.
        body: The encoded payload, exactly as it travels on the wire.
        headers: User headers (and W3C ``traceparent``); string to string.
        content_type: MIME type of ``body`` (``application/json``...); ``None`` when a
            plain client sent none, in which case the body is read as JSON if it parses,
            else as bytes.
        id: CloudEvents ``id``; unique per message.
        time: CloudEvents ``time``; when the message was created (UTC).
        key: Partition / ordering key: messages with one key are delivered in order.
        reply_to: Where the answer to a request goes.
        correlation_id: Ties a reply to its request.
        source: CloudEvents ``source`` (the sending service's name by default).
        type: CloudEvents ``type``; the topic when empty.
        delivery: Broker delivery facts on received messages; ``None`` on new ones.

    Example:
        >>> m = Message("orders.placed", b'{"id": 1}', content_type="application/json")
        >>> m.topic, m.body
        ('orders.placed', b'{"id": 1}')
    """

    topic: str
    body: bytes
    headers: Mapping[str, str]
    content_type: str | None
    id: str
    time: datetime
    key: str | None
    reply_to: str | None
    correlation_id: str | None
    source: str
    type: str
    delivery: Delivery | None = field(compare=False)

    # A hand-written __init__: the generated frozen one goes through object.__setattr__
    # per field and costs 3.5x as much, which shows on the in-memory hot path.
    def __init__(
        self,
        topic: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        id: str | None = None,
        time: datetime | None = None,
        key: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        source: str = "",
        type: str = "",
        delivery: Delivery | None = None,
    ) -> None:
        _set_topic(self, topic)
        _set_body(self, body)
        _set_headers(self, {} if headers is None else headers)
        _set_content_type(self, content_type)
        _set_id(self, new_id() if id is None else id)
        _set_time(self, _now() if time is None else time)
        _set_key(self, key)
        _set_reply_to(self, reply_to)
        _set_correlation_id(self, correlation_id)
        _set_source(self, source)
        _set_type(self, type)
        _set_delivery(self, delivery)

    def __hash__(self) -> int:
        return hash((self.topic, self.id))

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 64 else self.body[:64] + b"..."
        return (
            f"Message(topic={self.topic!r}, id={self.id!r}, body={body!r}, "
            f"content_type={self.content_type!r}, key={self.key!r}, headers={dict(self.headers)!r})"
        )

    @property
    def redelivered(self) -> int:
        """How many times the broker delivered this message before (0 when unknown)."""
        return 0 if self.delivery is None else self.delivery.redelivered


def _setter(name: str) -> Any:
    return Message.__dict__[name].__set__


_set_topic = _setter("topic")
_set_body = _setter("body")
_set_headers = _setter("headers")
_set_content_type = _setter("content_type")
_set_id = _setter("id")
_set_time = _setter("time")
_set_key = _setter("key")
_set_reply_to = _setter("reply_to")
_set_correlation_id = _setter("correlation_id")
_set_source = _setter("source")
_set_type = _setter("type")
_set_delivery = _setter("delivery")


def to_headers(message: Message, *, prefix: str = "ce_", key: bool = True) -> dict[str, str]:
    """Return the message's metadata and user headers as one flat native header map.

    CloudEvents attributes get ``prefix`` (``ce_`` for Kafka and Redis, ``ce-`` for
    NATS as for HTTP); the content type goes in ``content-type``. Pass ``key=False``
    where the broker carries the key natively (Kafka).
    """
    names = _NAMES.get(prefix)
    if names is None:
        names = _NAMES[prefix] = _names(prefix)
    spec, id_, source, type_, time, key_, reply_to, correlation_id = names
    # One dict display: the attributes after the user's headers, so they win a clash.
    headers = {
        **message.headers,
        spec: SPECVERSION,
        id_: message.id,
        source: message.source or "eventbus",
        type_: message.type or message.topic,
        time: format_time(message.time),
    }
    if message.content_type is not None:
        headers["content-type"] = message.content_type
    if key and message.key is not None:
        headers[key_] = message.key
    if message.reply_to is not None:
        headers[reply_to] = message.reply_to
    if message.correlation_id is not None:
        headers[correlation_id] = message.correlation_id
    return headers


def _names(prefix: str) -> tuple[str, str, str, str, str, str, str, str]:
    return (
        prefix + "specversion", prefix + "id", prefix + "source", prefix + "type",
        prefix + "time", prefix + _KEY, prefix + _REPLY_TO, prefix + CORRELATION_ID,
    )  # fmt: skip


_NAMES: dict[str, tuple[str, str, str, str, str, str, str, str]] = {}


def from_headers(
    topic: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    prefix: str = "ce_",
    key: str | None = None,
    delivery: Delivery | None = None,
) -> Message:
    """Build a received `Message` from a body and a flat native header map.

    The inverse of `to_headers`. Headers a plain client sent (no ``ce_id``...) are
    kept as user headers; missing attributes get fresh values (a new id, now). A
    CloudEvent in structured mode (``application/cloudevents+json``) is unwrapped:
    its ``data`` becomes the body and its attributes the message's.
    """
    user: dict[str, str] = {}
    attrs: dict[str, str] = {}
    content_type: str | None = None
    cut = len(prefix)
    for name, value in headers.items():
        if name.startswith(prefix):
            attrs[name[cut:]] = value
        elif name == "content-type":
            content_type = value
        else:
            user[name] = value
    if content_type is not None and content_type.startswith("application/cloudevents"):
        from eventbus.cloudevents import from_structured, is_structured

        if is_structured(content_type):
            try:
                return from_structured(topic, body, user, delivery=delivery)
            except DecodeError:  # not a CloudEvent after all: deliver it as it came
                pass
    when: datetime | None = None
    if "time" in attrs and (when := parse_time(attrs["time"])) is None:
        user[prefix + "time"] = attrs["time"]  # not RFC 3339: keep it for the user to see
    attrs.pop("specversion", None)
    message = Message(
        topic,
        body,
        user,
        content_type,
        attrs.pop("id", None),
        when,
        attrs.pop(_KEY, key),
        attrs.pop(_REPLY_TO, None),
        attrs.pop(CORRELATION_ID, None),
        attrs.pop("source", ""),
        attrs.pop("type", ""),
        delivery,
    )
    attrs.pop("time", None)
    for name, value in attrs.items():  # extension attributes eventbus does not model
        user[prefix + name] = value
    return message
