"""The NATS adapter's wire format and settings, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

pytest.importorskip("nats")


from eventbus import ConfigurationError, EncodeError, Message
from eventbus.brokers.nats import NatsBroker
from eventbus.brokers.nats.wire import (
    ack_metadata,
    consumer_name,
    decode,
    encode_headers,
    header_int,
    hpub,
    status,
    stream_name,
    validate_topic,
)
from eventbus.message import from_headers, to_headers


def parse_block(block: bytes) -> dict[str, str]:
    """A NATS header block as a plain client's dict (as nats-py parses it)."""
    lines = block.decode().split("\r\n")
    assert lines[0] == "NATS/1.0"
    assert lines[-2:] == ["", ""]
    pairs = [line.partition(":") for line in lines[1:-2]]
    return {name.strip(): value.strip() for name, _, value in pairs}


MESSAGES = [
    Message("orders.placed", b'{"id":1}', content_type="application/json"),
    Message(
        "orders.placed",
        b"x",
        {"x-tenant": "acme", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        "text/plain",
        id="fixed-1",
        key="customer-42",
        reply_to="_INBOX.abc",
        correlation_id="c1",
        source="billing",
        type="com.example.placed",
    ),
    Message("t", b"", time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))),
    Message("t", b"", time=datetime(2024, 1, 2, 3, 4, 5, 120, tzinfo=UTC), key="ünïcode ✓"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_header_block_is_to_headers_with_ce_dash(message: Message) -> None:
    block = encode_headers(message)
    assert block.startswith(b"NATS/1.0\r\n")
    assert block.endswith(b"\r\n\r\n")
    parsed = parse_block(block)
    assert parsed == to_headers(message, prefix="ce-")


@pytest.mark.parametrize("message", MESSAGES)
def test_decode_is_from_headers(message: Message) -> None:
    block = encode_headers(message)
    got = decode(message.topic, message.body, block, None)
    expected = from_headers(
        message.topic, message.body, to_headers(message, prefix="ce-"), prefix="ce-"
    )
    assert got == expected
    assert (got.id, got.time, got.key, got.body) == (
        message.id,
        message.time,
        message.key,
        message.body,
    )


def test_line_breaks_in_values_become_spaces() -> None:
    message = Message("t", b"", {"eventbus-error": "line one\nline two\r\nthree"}, id="a\nb")
    got = decode("t", b"", encode_headers(message), None)
    assert got.headers["eventbus-error"] == "line one line two three"
    assert got.id == "a b"


def test_header_names_that_are_not_tokens_are_escaped() -> None:
    names = {"x-ü": "ü", "bad name": "1", "colon:name": "2", "100%": "3", "x-%41": "4"}
    message = Message("t", b"", names)
    block = encode_headers(message)
    assert b"x-%C3%BC: \xc3\xbc\r\n" in block
    assert b"bad%20name: 1\r\n" in block
    assert b"100%25: 3\r\n" in block
    assert decode("t", b"", block, None).headers == names
    with pytest.raises(EncodeError, match="empty"):
        encode_headers(Message("t", b"", {"": "x"}))


def test_plain_client_headers() -> None:
    block = (
        b"NATS/1.0\r\nContent-Type: text/plain\r\nX-Trace: 1\r\nce-time: yesterday\r\n"
        b"ce-dataschema: s1\r\n\r\n"
    )
    got = decode("t", b"hi", block, None)
    assert got.content_type == "text/plain"
    assert got.headers == {"X-Trace": "1", "ce-time": "yesterday", "ce-dataschema": "s1"}
    assert got.time.tzinfo is not None
    bare = decode("t", b"{}", None, None)
    assert bare.content_type is None
    assert bare.headers == {}
    assert bare.id


def test_hpub_command() -> None:
    assert hpub(b"a.b", b"", b"NATS/1.0\r\n\r\n", b"xy") == (
        b"HPUB a.b  12 14\r\nNATS/1.0\r\n\r\nxy\r\n"
    )


def test_control_messages() -> None:
    block = (
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 7\r\nNats-Pending-Bytes: 0\r\n\r\n"
    )
    assert status(block) == b"408"
    assert header_int(block, b"Nats-Pending-Messages") == 7
    assert header_int(block, b"Nats-Missing") is None
    assert status(b"NATS/1.0\r\nx: y\r\n\r\n") == b""
    assert status(None) == b""


def test_ack_subjects() -> None:
    assert ack_metadata(b"$JS.ACK.s.c.3.41.7.1795240516719960597.0") == (3, 41)
    assert ack_metadata(b"$JS.ACK.dom.hash.s.c.2.9.5.1795240516719960597.0.tok") == (2, 9)


def test_names() -> None:
    assert stream_name("orders.placed") == "orders_placed"
    assert stream_name("my_topic") == "my%5Ftopic"
    assert stream_name("a-b.c") == "a-b_c"
    assert stream_name("a._b") != stream_name("a_.b")
    assert consumer_name("billing.eu") == "billing_eu"
    long = "x." * 300
    assert len(stream_name(long)) <= 200
    assert stream_name(long) != stream_name(long + "y")


def test_topic_validation() -> None:
    validate_topic("orders.placed")
    validate_topic("orders.*", pattern=True)
    validate_topic("orders.>", pattern=True)
    for bad in ("", "a..b", ".a", "a.", "a b", "a.*", "a.>"):
        with pytest.raises(ConfigurationError):
            validate_topic(bad)
    for bad in ("a.>.b", "a*", "a b"):
        with pytest.raises(ConfigurationError):
            validate_topic(bad, pattern=True)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("kafka://h:1", {}),
        ("nats://", {}),
        ("nats://h:notaport", {}),
        ("nats://h:4222", {"ack_wait": 0}),
        ("nats://h:4222", {"prefetch": 0}),
        ("nats://h:4222", {"timeout": "5"}),
        ("nats://h:4222", {"storage": "disk"}),
        ("nats://h:4222", {"object_bucket": "a.b"}),
        ("nats://h:4222", {"tls": "yes"}),
        ("nats://h:4222", {"colour": "blue"}),
    ],
)
def test_bad_settings_are_refused(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        NatsBroker(url, **options)  # type: ignore[arg-type]


def test_several_servers() -> None:
    broker = NatsBroker("nats://a:4222, b:4223,tls://c:4224")
    assert broker.settings.servers == ("nats://a:4222", "nats://b:4223", "tls://c:4224")


def test_user_headers_named_like_attributes() -> None:
    message = Message("t", b"", {"ce-id": "spoof", "Content-Type": "text/x"}, "application/json")
    block = encode_headers(message)
    assert parse_block(block) == to_headers(message, prefix="ce-")
    got = decode("t", b"", block, None)
    assert got == from_headers("t", b"", to_headers(message, prefix="ce-"), prefix="ce-")
    assert got.id == message.id
    assert got.content_type == "application/json"


def test_matches_the_broker_protocol() -> None:
    from eventbus.broker import Broker
    from eventbus.brokers import open_broker

    broker = open_broker("nats://127.0.0.1:4222", ack_wait=5.0)
    assert isinstance(broker, NatsBroker)
    assert isinstance(broker, Broker)
    assert broker.capabilities.retains
    assert not broker.capabilities.ordered_by_key
