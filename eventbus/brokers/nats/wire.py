"""The NATS wire: a nats-py client with a fast path for eventbus's own subscriptions,
the NATS header encoding of `Message`, and JetStream names.

Why this module touches nats-py internals: per message, nats-py's public path parses
the header block into a dict, builds a ``Msg``, queues it and wakes one task per
subscription, and its ``publish`` re-validates and re-encodes every header. At tens of
thousands of messages per second that is most of the CPU, and it made eventbus's NATS
throughput about half the plain client's. So eventbus's own subscriptions register a
synchronous *route* per subscription id: `Connection._process_msg` hands the raw
subject, reply, header block and body straight to it; publishes, acks and pull
requests are protocol commands appended to the client's outgoing buffer, which
nats-py's own flusher task writes. Everything else — connecting, TLS, auth, pings,
reconnecting and re-subscribing, the JetStream management API — stays nats-py's.

The internals used are ``Client._process_msg(sid, subject, reply, data, headers)``,
``Client._pending`` / ``_pending_data_size`` (the outgoing buffer) and
``Client._flush_queue`` (the flusher's wake-up queue), unchanged from nats-py 2.2 to
2.16; `check_client` fails loudly at import if they ever change.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections.abc import Callable
from datetime import UTC
from typing import Any
from urllib.parse import unquote

from nats.aio.client import Client

from eventbus.errors import ConfigurationError, EncodeError
from eventbus.message import Delivery, Message, format_time, parse_time

log = logging.getLogger("eventbus")

__all__ = [
    "OBJECT",
    "Connection",
    "Route",
    "consumer_name",
    "decode",
    "encode_headers",
    "hpub",
    "pub",
    "stream_name",
    "validate_topic",
]

OBJECT = "eventbus-object"
"""Header of a message whose body was too large for one NATS message: ``<bucket>/<name>``
of the JetStream object holding the body (the message itself then has an empty body)."""

Route = Callable[[bytes, bytes, bytes, bytes | None], None]
"""A fast-path subscription handler: ``(subject, reply, body, header block or None)``."""

LINGER = 0.002
"""Seconds an acknowledgement may wait to go out together with other commands."""
_FLUSH_LIMIT = 4 * 1024 * 1024
"""Outgoing bytes buffered before a publisher waits for the socket (backpressure)."""


def check_client() -> None:
    """Fail loudly if nats-py's internals this module relies on changed.

    Raises:
        ConfigurationError: the installed nats-py is incompatible.
    """
    params = list(inspect.signature(Client._process_msg).parameters)
    probe = Client()
    if params[:6] != ["self", "sid", "subject", "reply", "data", "headers"] or not all(
        hasattr(probe, name) for name in ("_pending", "_pending_data_size", "_flush_queue")
    ):
        from importlib.metadata import version

        raise ConfigurationError(
            f"eventbus's NATS adapter does not support nats-py {version('nats-py')}: its "
            "client internals changed; install a nats-py between 2.9 and 2.16"
        )


class Connection(Client):
    """A nats-py client that delivers eventbus's subscriptions through synchronous routes."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[int, Route] = {}
        """Subscription id -> route; a routed subscription never reaches nats-py's queue."""
        self._lingering: asyncio.TimerHandle | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        route = self.routes.get(sid)
        if route is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]  # nats-py's annotation omits None
            return
        self.stats["in_msgs"] += 1
        try:
            route(subject, reply, data, headers)
        except Exception:  # never into nats-py's read loop: it would stop reading
            log.exception("nats: dropped a message on %r that eventbus could not take", subject)

    def write(self, command: bytes) -> None:
        """Queue a protocol command for nats-py's flusher task. Never blocks.

        While disconnected the command stays buffered and goes out after the reconnect
        (acks are still valid then); callers that must not buffer check `is_connected`.
        """
        self._pending.append(command)
        self._pending_data_size += len(command)
        self._kick()

    def write_soon(self, command: bytes) -> None:
        """Queue a command that may wait up to `LINGER` seconds to share a write.

        For acknowledgements: a consumer handling a steady stream then sends one
        write (one system call) for many acks instead of one each.
        """
        self._pending.append(command)
        self._pending_data_size += len(command)
        if self._lingering is None:
            self._lingering = asyncio.get_running_loop().call_later(LINGER, self._linger_done)

    def _linger_done(self) -> None:
        self._lingering = None
        if self._pending:
            self._kick()

    def _kick(self) -> None:
        queue: asyncio.Queue[asyncio.Future[None]] | None = self._flush_queue
        if queue is not None and queue.empty() and self.is_connected:
            queue.put_nowait(asyncio.get_running_loop().create_future())

    @property
    def is_backed_up(self) -> bool:
        """More than a few MiB wait to be written: publishers should `drain`."""
        size: int = self._pending_data_size
        return size > _FLUSH_LIMIT

    async def wait_flushed(self) -> None:
        """Wait until nats-py's flusher has written what is buffered now."""
        queue: asyncio.Queue[asyncio.Future[None]] | None = self._flush_queue
        if queue is None or not self.is_connected:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await queue.put(done)
        await done


def pub(subject: bytes, reply: bytes, body: bytes) -> bytes:
    """A ``PUB`` command (no headers: acks, pull requests)."""
    return b"PUB %b %b %d\r\n%b\r\n" % (subject, reply, len(body), body)


def hpub(subject: bytes, reply: bytes, header: bytes, body: bytes) -> bytes:
    """An ``HPUB`` command: header block and body."""
    size = len(header)
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (subject, reply, size, size + len(body), header, body)


# -- headers ------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$&'*+\-.^_`|~0-9A-Za-z]+")
_good_names: set[str] = set()
"""User header names that travel as they are (HTTP tokens without ``%``)."""
_ID, _SOURCE, _TYPE, _TIME, _CONTENT_TYPE, _KEY, _REPLY_TO, _CORRELATION, _SPEC = range(9)
_SLOTS = {
    "ce-id": _ID,
    "ce-source": _SOURCE,
    "ce-type": _TYPE,
    "ce-time": _TIME,
    "content-type": _CONTENT_TYPE,
    "ce-partitionkey": _KEY,
    "ce-replyto": _REPLY_TO,
    "ce-correlationid": _CORRELATION,
    "ce-specversion": _SPEC,
}


_clock: tuple[tuple[int, ...], str] = ((), "")


def _time(message: Message) -> str:
    """``format_time(message.time)``, with the part up to the second cached (3x faster)."""
    global _clock
    value = message.time
    if value.tzinfo is not UTC:
        return format_time(value)
    second = (value.second, value.minute, value.hour, value.day, value.month, value.year)
    if second != _clock[0]:
        _clock = (second, value.isoformat()[:19])
    micro = value.microsecond
    return f"{_clock[1]}.{micro:06d}Z" if micro else _clock[1] + "Z"


def _wire_name(name: str) -> str:
    """A user header name as it travels: itself if it is an HTTP token without ``%``,
    else %-escaped UTF-8 (``x-ü`` -> ``x-%C3%BC``), which `decode` reverses."""
    if _TOKEN.fullmatch(name):
        if len(_good_names) < 4096:
            _good_names.add(name)
        return name
    if not isinstance(name, str) or not name:
        raise EncodeError(f"header name {name!r} cannot travel in NATS headers: it is empty")
    return "".join(
        char if _TOKEN.fullmatch(char) else "".join(f"%{b:02X}" for b in char.encode())
        for char in name
    )


def encode_headers(message: Message, extra: str = "") -> bytes:
    """The NATS header block of ``message``: `eventbus.message.to_headers` with ``ce-``.

    The same names and values as ``to_headers(message, prefix="ce-")``: the CloudEvents
    attributes and ``content-type`` first (in a fixed order that `decode` reads without
    searching), then user headers (one that has an attribute's name is left out: the
    attribute wins, as in ``to_headers``), then ``extra`` (ready ``name: value\r\n``
    lines). A user header name that is not an HTTP token (``x-ü``, ``a b``) or holds a
    ``%`` travels %-escaped (``x-%C3%BC``); `decode` restores it. Line breaks inside
    values become spaces, and values lose surrounding blanks: NATS headers cannot carry
    them.

    Raises:
        EncodeError: an empty header name.
    """
    text = (
        f"NATS/1.0\r\nce-specversion: 1.0\r\nce-id: {message.id}\r\n"
        f"ce-source: {message.source or 'eventbus'}\r\nce-type: {message.type or message.topic}"
        f"\r\nce-time: {_time(message)}\r\n"
    )
    lines = 6
    if message.content_type is not None:
        text += f"content-type: {message.content_type}\r\n"
        lines += 1
    if message.key is not None:
        text += f"ce-partitionkey: {message.key}\r\n"
        lines += 1
    if message.reply_to is not None:
        text += f"ce-replyto: {message.reply_to}\r\n"
        lines += 1
    if message.correlation_id is not None:
        text += f"ce-correlationid: {message.correlation_id}\r\n"
        lines += 1
    headers = message.headers
    if headers:
        if not _SLOTS.keys().isdisjoint(headers):
            headers = {k: v for k, v in headers.items() if k not in _SLOTS}
        for name in headers:
            if name not in _good_names:
                headers = {_wire_name(k): v for k, v in headers.items()}
                break
        text += "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        lines += len(headers)
    if extra:
        text += extra
        lines += extra.count("\n")
    text += "\r\n"
    if text.count("\n") != lines + 1 or text.count("\r") != lines + 1:
        return _encode_carefully(message, extra)  # a value with a line break in it
    return text.encode()


def _encode_carefully(message: Message, extra: str) -> bytes:
    def clean(value: object) -> str:
        return " ".join(str(value).splitlines())

    safe = Message(
        message.topic,
        b"",
        {name: clean(value) for name, value in message.headers.items()},
        None if message.content_type is None else clean(message.content_type),
        clean(message.id),
        message.time,
        None if message.key is None else clean(message.key),
        None if message.reply_to is None else clean(message.reply_to),
        None if message.correlation_id is None else clean(message.correlation_id),
        clean(message.source),
        clean(message.type),
    )
    return encode_headers(safe, extra)


def decode(topic: str, body: bytes, header: bytes | None, delivery: Delivery | None) -> Message:
    """Build a received `Message` from a NATS header block and body.

    The inverse of `encode_headers`, and of `eventbus.message.to_headers` with prefix
    ``ce-``: the same result as `eventbus.message.from_headers`. Headers of plain
    clients are kept as user headers (``Content-Type`` is recognized in any case);
    missing attributes get fresh values (a new id, now).
    """
    if not header:
        return Message(topic, body, {}, None, None, None, None, None, None, "", "", delivery)
    lines = header.decode("utf-8", "replace").split("\r\n")
    # lines[0] is "NATS/1.0" (and a status); the block ends with two empty lines.
    if (
        len(lines) > 7
        and lines[1] == "ce-specversion: 1.0"
        and lines[2][:7] == "ce-id: "
        and lines[3][:11] == "ce-source: "
        and lines[4][:9] == "ce-type: "
        and lines[5][:9] == "ce-time: "
    ):
        return _decode_own(topic, body, lines, delivery)
    return _decode_any(topic, body, lines, delivery)


def _decode_own(topic: str, body: bytes, lines: list[str], delivery: Delivery | None) -> Message:
    """An eventbus header block: attributes in `encode_headers`'s order, read by position."""
    user: dict[str, str] = {}
    stamp = lines[5][9:].strip()
    when = parse_time(stamp)
    if when is None:
        user["ce-time"] = stamp
    content_type = key = reply_to = correlation = None
    index = 6
    line = lines[6]
    if line[:14] == "content-type: ":
        content_type = line[14:].strip()
        index += 1
        line = lines[index]
    if line[:17] == "ce-partitionkey: ":
        key = line[17:].strip()
        index += 1
        line = lines[index]
    if line[:12] == "ce-replyto: ":
        reply_to = line[12:].strip()
        index += 1
        line = lines[index]
    if line[:18] == "ce-correlationid: ":
        correlation = line[18:].strip()
        index += 1
        line = lines[index]
    while line:  # user headers, up to the empty line that ends the block
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip()
            user[unquote(name) if "%" in name else name] = value.strip()
        index += 1
        line = lines[index]
    return Message(
        topic,
        body,
        user,
        content_type,
        lines[2][7:].strip(),
        when,
        key,
        reply_to,
        correlation,
        lines[3][11:].strip(),
        lines[4][9:].strip(),
        delivery,
    )


def _decode_any(topic: str, body: bytes, lines: list[str], delivery: Delivery | None) -> Message:
    """Any header block (a plain client's): ``Content-Type`` and ``CE-Id`` in any case."""
    user: dict[str, str] = {}
    id_ = content_type = key = reply_to = correlation = None
    when = None
    source = type_ = ""
    slots = _SLOTS
    for index in range(1, len(lines)):
        name, sep, value = lines[index].partition(":")
        if not sep:
            continue
        value = value.strip()
        name = name.strip()
        slot = slots.get(name)
        if slot is None:
            slot = slots.get(name.lower())
            if slot is None:
                user[name] = value
                continue
        if slot == _CONTENT_TYPE:
            content_type = value
        elif slot == _ID:
            id_ = value
        elif slot == _TIME:
            when = parse_time(value)
            if when is None:  # not RFC 3339: keep it for the user to see
                user[name] = value
        elif slot == _SOURCE:
            source = value
        elif slot == _TYPE:
            type_ = value
        elif slot == _KEY:
            key = value
        elif slot == _REPLY_TO:
            reply_to = value
        elif slot == _CORRELATION:
            correlation = value
    return Message(
        topic,
        body,
        user,
        content_type,
        id_,
        when,
        key,
        reply_to,
        correlation,
        source,
        type_,
        delivery,
    )


def status(header: bytes | None) -> bytes:
    """The status code of a NATS control message (``b"408"``), or ``b""``."""
    if header is None or len(header) < 12 or header[8:9] != b" ":
        return b""
    return header[9:12]


def header_int(header: bytes, name: bytes) -> int | None:
    """An integer header of a control message (``Nats-Pending-Messages``), if present."""
    start = header.find(name + b":")
    if start < 0:
        return None
    end = header.find(b"\r\n", start)
    try:
        return int(header[start + len(name) + 1 : end])
    except ValueError:
        return None


def ack_metadata(reply: bytes) -> tuple[int, int]:
    """``(times delivered, stream sequence)`` from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>``, or the
    12-token form with domain and account hash that newer servers send.
    """
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5])
    return int(tokens[6]), int(tokens[7])


# -- names ----------------------------------------------------------------------------------

_SUBJECT = re.compile(r"[^.\s*>]+(\.[^.\s*>]+)*")
_PATTERN = re.compile(r"([^.\s*>]+|\*)(\.([^.\s*>]+|\*))*(\.>)?|>")
_MAX_NAME = 200


def validate_topic(topic: str, *, pattern: bool = False) -> None:
    """Check that ``topic`` is a NATS subject (``pattern``: wildcards ``*`` / ``>`` allowed).

    Raises:
        ConfigurationError: it is not.
    """
    if not isinstance(topic, str) or not (_PATTERN if pattern else _SUBJECT).fullmatch(topic):
        allowed = "; `*` and `>` wildcards only with durable=False" if not pattern else ""
        raise ConfigurationError(
            f"{topic!r} is not a valid NATS topic: use dot-separated tokens without spaces{allowed}"
        )


def _name(text: str) -> str:
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char == "-"):
            out.append(char)
        elif char == ".":
            out.append("_")
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode())
    name = "".join(out)
    if len(name) > _MAX_NAME:  # JetStream names are file names: keep them short, still unique
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        name = f"{name[: _MAX_NAME - 17]}_{digest}"
    return name


def stream_name(topic: str) -> str:
    """The JetStream stream eventbus creates for ``topic``: dots become ``_``, other
    characters that stream names cannot hold are %-escaped (``orders.placed`` ->
    ``orders_placed``, ``my_topic`` -> ``my%5Ftopic``)."""
    return _name(topic)


def consumer_name(group: str) -> str:
    """The durable consumer name of ``group`` (escaped like `stream_name`)."""
    return _name(group)


def plain(value: Any) -> str:
    """A short description of a nats-py error for eventbus's messages."""
    text = str(value) or type(value).__name__
    return text.removeprefix("nats: ")
