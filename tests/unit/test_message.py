"""Message: construction, immutability, and the native header mapping."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventbus import Delivery, Message
from eventbus.message import format_time, from_headers, new_id, parse_time, to_headers


def test_defaults_fill_id_and_time() -> None:
    before = datetime.now(UTC)
    m = Message("orders", b"{}")
    assert m.id
    assert m.id != Message("orders").id
    assert before <= m.time <= datetime.now(UTC)
    assert m.headers == {}
    assert (m.content_type, m.key, m.reply_to, m.correlation_id, m.delivery) == (None,) * 5
    assert m.redelivered == 0


def test_message_is_immutable_and_replaceable() -> None:
    m = Message("orders", b"1", {"a": "b"}, key="k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.topic = "other"  # type: ignore[misc]
    n = dataclasses.replace(m, topic="other")
    assert (n.topic, n.body, n.key, n.id) == ("other", b"1", "k", m.id)
    assert m.topic == "orders"


def test_equality_hash_and_short_repr() -> None:
    m = Message("t", b"x" * 1000, id="same", time=datetime(2024, 1, 1, tzinfo=UTC))
    same = dataclasses.replace(m, delivery=Delivery(redelivered=2))
    assert m == same, "delivery facts do not change which message it is"
    assert hash(m) == hash(same)
    assert len(repr(m)) < 300


def test_ids_are_unique() -> None:
    assert len({new_id() for _ in range(10_000)}) == 10_000


def test_time_format_round_trips_in_utc() -> None:
    t = datetime(2026, 11, 21, 10, 30, 0, 123456, tzinfo=UTC)
    assert format_time(t) == "2026-11-21T10:30:00.123456Z"
    assert parse_time(format_time(t)) == t
    local = t.astimezone(timezone(timedelta(hours=2)))
    assert format_time(local) == "2026-11-21T10:30:00.123456Z"
    assert parse_time("not a time") is None
    assert parse_time("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)


def test_headers_carry_cloudevents_attributes() -> None:
    m = Message(
        "orders.placed",
        b"{}",
        {"x-tenant": "acme"},
        "application/json",
        id="abc",
        key="k1",
        reply_to="_INBOX.1",
        correlation_id="c1",
        source="billing",
        type="com.example.placed",
    )
    h = to_headers(m)
    assert h["ce_specversion"] == "1.0"
    assert h["ce_id"] == "abc"
    assert h["ce_source"] == "billing"
    assert h["ce_type"] == "com.example.placed"
    assert h["ce_time"] == format_time(m.time)
    assert h["content-type"] == "application/json"
    assert h["ce_partitionkey"] == "k1"
    assert h["ce_replyto"] == "_INBOX.1"
    assert h["ce_correlationid"] == "c1"
    assert h["x-tenant"] == "acme"
    back = from_headers("orders.placed", b"{}", h)
    assert back == m
    assert back.headers == {"x-tenant": "acme"}


def test_headers_with_http_prefix_and_native_key() -> None:
    m = Message("t", b"", key="k")
    h = to_headers(m, prefix="ce-", key=False)
    assert "ce-id" in h
    assert "ce-partitionkey" not in h
    back = from_headers("t", b"", h, prefix="ce-", key="k")
    assert back.key == "k"
    assert back.type == "t"
    assert back.source == "eventbus"


def test_plain_client_headers_are_user_headers() -> None:
    back = from_headers("t", b"raw", {"trace": "1", "ce_time": "yesterday", "ce_custom": "v"})
    assert back.content_type is None
    assert back.headers == {"trace": "1", "ce_time": "yesterday", "ce_custom": "v"}
    assert back.id  # a fresh id
    assert back.source == ""
