"""CloudEvents structured mode in and out, and unwrapping on receipt."""

from __future__ import annotations

import base64
import json

import pytest

from eventbus import DecodeError, Message
from eventbus.cloudevents import from_structured, is_structured, to_structured
from eventbus.message import from_headers

KNATIVE_STYLE = {
    "specversion": "1.0",
    "id": "A234-1234-1234",
    "source": "/mycontext",
    "type": "com.example.someevent",
    "time": "2018-04-05T17:31:00Z",
    "datacontenttype": "application/json",
    "comexampleextension1": "value",
    "partitionkey": "user-1",
    "data": {"appinfoA": "abc", "appinfoB": 123},
}


def test_structured_event_is_unwrapped_on_receipt() -> None:
    body = json.dumps(KNATIVE_STYLE).encode()
    m = from_headers(
        "events", body, {"content-type": "application/cloudevents+json; charset=utf-8"}
    )
    assert m.id == "A234-1234-1234"
    assert m.source == "/mycontext"
    assert m.type == "com.example.someevent"
    assert m.time.isoformat() == "2018-04-05T17:31:00+00:00"
    assert m.content_type == "application/json"
    assert m.key == "user-1"
    assert json.loads(m.body) == {"appinfoA": "abc", "appinfoB": 123}
    assert m.headers == {"comexampleextension1": "value"}


def test_binary_data_and_round_trip() -> None:
    m = Message("t", b"\x00\xff", {"x-tenant": "acme"}, "application/octet-stream", key="k")
    event = json.loads(to_structured(m))
    assert event["data_base64"] == base64.b64encode(b"\x00\xff").decode()
    assert event["xtenant"] == "acme"
    back = from_structured("t", to_structured(m))
    assert (back.body, back.content_type, back.key, back.id) == (m.body, m.content_type, "k", m.id)
    assert back.time == m.time


def test_text_data_and_missing_data() -> None:
    event = {"specversion": "1.0", "id": "1", "datacontenttype": "text/plain", "data": "hi"}
    assert from_structured("t", json.dumps(event).encode()).body == b"hi"
    assert from_structured("t", b'{"specversion": "1.0", "id": "2"}').body == b""


def test_not_a_cloudevent() -> None:
    assert is_structured("application/cloudevents+json")
    assert not is_structured("application/json")
    with pytest.raises(DecodeError, match="malformed CloudEvent"):
        from_structured("t", b"{")
    with pytest.raises(DecodeError, match="specversion and id"):
        from_structured("t", b"[1]")
    with pytest.raises(DecodeError, match="not base64"):
        from_structured("t", b'{"specversion": "1.0", "id": "1", "data_base64": "***"}')
    kept = from_headers("t", b"[1]", {"content-type": "application/cloudevents+json"})
    assert kept.body == b"[1]", "not a CloudEvent after all: delivered as it came"
    assert kept.content_type == "application/cloudevents+json"
