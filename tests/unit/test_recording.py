"""Recordings: the JSON Lines format keeps every message exactly; broken lines say where."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from eventbus import ConfigurationError, Message, RecordingError
from eventbus.message import Delivery
from eventbus.testing import format_line, load, parse_line, read, save

FIELDS = (
    "topic",
    "body",
    "headers",
    "content_type",
    "id",
    "time",
    "key",
    "reply_to",
    "correlation_id",
    "source",
    "type",
)


def assert_same(a: Message, b: Message) -> None:
    for name in FIELDS:
        assert getattr(a, name) == getattr(b, name), name


SAMPLES = [
    Message("orders", b'{"id":1,"total":9.5,"tags":["a"]}', content_type="application/json"),
    Message("orders", b'{"id": 1}', content_type="application/json"),  # not compact: kept as text
    Message("orders", b'{"big":123456789012345678901234567890}', content_type="application/json"),
    Message("orders", b"1.0e3", content_type="application/json"),
    Message("orders", b'{"a":1}', content_type="application/vnd.acme+json; charset=utf-8"),
    Message("orders", b'"just a string"'),  # no content type: a plain client's JSON
    Message("orders", b"not json at all"),  # no content type, not JSON
    Message("text", "héllo\nwörld \u2028".encode(), content_type="text/plain"),
    Message("text", b"123", content_type="text/plain"),
    Message("bin", b"\xff\x00\xfe\x80 not utf-8", content_type="application/octet-stream"),
    Message("bin", b"\x0a\x03ann\x10\x03", content_type="application/x-protobuf"),
    Message("empty", b"", content_type="application/json"),
    Message(
        "meta",
        b"{}",
        {"x-tenant": "acme", "x-empty": "", "x-ü": "ü\n", "traceparent": "00-ab-cd-01"},
        "application/json",
        id="fixed-id",
        time=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        key="customer-42",
        reply_to="_INBOX.abc",
        correlation_id="corr-1",
        source="shop",
        type="com.example.order",
    ),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: repr(m.body[:20]))
def test_a_line_gives_back_the_same_message(message: Message) -> None:
    line = format_line(message)
    assert "\n" not in line
    assert_same(parse_line(line), message)
    assert_same(parse_line(line.encode()), message)


def test_compact_json_bodies_stay_readable_and_others_say_how_they_are_kept() -> None:
    readable = orjson.loads(format_line(SAMPLES[0]))
    assert readable["encoding"] == "json"
    assert readable["body"] == {"id": 1, "total": 9.5, "tags": ["a"]}
    spaced = orjson.loads(format_line(SAMPLES[1]))
    assert (spaced["encoding"], spaced["body"]) == ("utf-8", '{"id": 1}')
    binary = orjson.loads(format_line(SAMPLES[9]))
    assert binary["encoding"] == "base64"


def test_file_round_trip_keeps_order_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "all.jsonl"
    assert save(path, SAMPLES) == len(SAMPLES)
    loaded = load(path)
    assert len(loaded) == len(SAMPLES)
    for a, b in zip(loaded, SAMPLES, strict=True):
        assert_same(a, b)
    assert save(path, SAMPLES[:2], append=True) == 2
    assert len(load(path)) == len(SAMPLES) + 2


def test_replay_positions_are_kept_for_information() -> None:
    message = Message("t", b"{}", delivery=Delivery(offset=17, partition=2))
    back = parse_line(format_line(message))
    assert back.delivery is not None
    assert (back.delivery.offset, back.delivery.partition) == (17, 2)


def test_a_hand_written_line_needs_only_topic_and_body() -> None:
    message = parse_line('{"topic": "orders", "body": {"id": 1}}')
    assert message.body == b'{"id":1}'
    assert message.content_type == "application/json"
    assert message.id
    assert message.time.tzinfo is not None
    text = parse_line('{"topic": "t", "encoding": "utf-8", "body": "hi"}')
    assert (text.body, text.content_type) == (b"hi", "text/plain")
    raw = parse_line('{"topic": "t", "encoding": "base64", "body": "/wA="}')
    assert (raw.body, raw.content_type) == (b"\xff\x00", "application/octet-stream")
    explicit = parse_line('{"topic": "t", "content_type": null, "body": [1]}')
    assert explicit.content_type is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"body": 1}', '"topic" must be a non-empty string'),
        ('{"topic": "t"}', '"body" is missing'),
        ('{"topic": "t", "body": 1, "bdy": 2}', "unknown field(s) bdy"),
        ('{"topic": "t", "encoding": "hex", "body": "00"}', '"encoding" must be'),
        ('{"topic": "t", "encoding": "base64", "body": "%%%"}', "not valid base64"),
        ('{"topic": "t", "encoding": "utf-8", "body": 5}', '"body" must be a string'),
        ('{"topic": "t", "body": 1, "headers": {"a": 1}}', '"headers" must be an object of str'),
        ('{"topic": "t", "body": 1, "time": "yesterday"}', '"time" must be an RFC 3339 time'),
        ('{"topic": "t", "body": 1, "key": 42}', '"key" must be a string or null'),
        ('{"topic": "t", "body": 1, "offset": "3"}', '"offset" must be a whole number'),
    ],
)
def test_broken_lines_say_what_is_wrong(line: str, reason: str) -> None:
    with pytest.raises(RecordingError) as caught:
        parse_line(line)
    assert reason in str(caught.value)


def write_with_broken_lines(path: Path) -> None:
    good = [
        format_line(Message("t", b'{"n":%d}' % i, content_type="application/json"))
        for i in range(3)
    ]
    path.write_text(f"{good[0]}\n\n{{oops\n{good[1]}\n\xff\n{good[2]}\n", encoding="latin-1")


def test_load_stops_at_a_broken_line_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    write_with_broken_lines(path)
    with pytest.raises(RecordingError) as caught:
        load(path)
    assert caught.value.line == 3
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}:3: not valid JSON")


def test_load_can_skip_broken_lines_and_say_which(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "broken.jsonl"
    write_with_broken_lines(path)
    with caplog.at_level(logging.WARNING, logger="eventbus"):
        messages = load(path, on_error="skip")
    assert [m.body for m in messages] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert [f"{path}:3:" in r.getMessage() for r in caplog.records].count(True) == 1
    assert [f"{path}:5:" in r.getMessage() for r in caplog.records].count(True) == 1

    errors: list[RecordingError] = []
    assert len(load(path, on_error=errors.append)) == 3
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (3, "not valid JSON"),
        (5, "not valid JSON"),
    ]


def test_read_streams_and_rejects_an_unknown_mode(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    save(path, SAMPLES[:3])
    assert [m.id for m in read(path)] == [m.id for m in SAMPLES[:3]]
    with pytest.raises(ConfigurationError, match="on_error must be"):
        load(path, on_error="ignore")  # type: ignore[arg-type]  # the wrong value under test


def test_recording_error_is_a_decode_error() -> None:
    from eventbus import DecodeError, EventBusError

    assert issubclass(RecordingError, DecodeError)
    assert issubclass(RecordingError, EventBusError)
