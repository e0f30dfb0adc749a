"""Codecs and the codec registry."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from eventbus import DecodeError, EncodeError
from eventbus.codecs import CodecRegistry, default_registry
from eventbus.codecs.avro import avro_schema, register_schema
from tests.protos import Greeting


class Order(BaseModel):
    id: int
    total: float


@dataclass
class Point:
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Shape:
    name: str
    color: Color
    points: list[Point]
    created: datetime
    ref: uuid.UUID
    note: str | None = None
    attrs: dict[str, int] | None = None


@pytest.fixture
def codecs() -> CodecRegistry:
    return CodecRegistry()


def test_content_type_inferred_from_value(codecs: CodecRegistry) -> None:
    assert codecs.content_type_for(b"x") == "application/octet-stream"
    assert codecs.content_type_for("x") == "text/plain"
    assert codecs.content_type_for(Greeting()) == "application/x-protobuf"
    assert codecs.content_type_for({"a": 1}) == "application/json"
    assert codecs.content_type_for(Order(id=1, total=2)) == "application/json"
    codecs.register_type(Point, "application/avro")
    assert codecs.content_type_for(Point(1, 2)) == "application/avro"


@pytest.mark.parametrize(
    ("value", "into", "expected"),
    [
        (Order(id=1, total=2.5), Order, Order(id=1, total=2.5)),
        (Point(1, 2), Point, Point(1, 2)),
        ({"a": [1, 2]}, dict, {"a": [1, 2]}),
        ([1, "x"], list, [1, "x"]),
        ({"a": 1}, None, {"a": 1}),
        ({"a": 1}, dict[str, int], {"a": 1}),
        ("hi", str, "hi"),
        (3, int, 3),
        (None, None, None),
    ],
)
def test_json_round_trip(codecs: CodecRegistry, value: object, into: Any, expected: object) -> None:
    content_type, body = codecs.encode(value, "application/json")
    assert content_type == "application/json"
    assert codecs.decode(body, content_type, into) == expected


def test_json_specialised_encoders_match_generic(codecs: CodecRegistry) -> None:
    for value in (Order(id=1, total=2), {"a": {1, 2} and [1]}, [Point(1, 2)], 5):
        ct, encode = codecs.encoder(value)
        assert encode(value) == codecs.encode(value)[1]
        assert ct == "application/json"


def test_json_nested_models_and_odd_values(codecs: CodecRegistry) -> None:
    _, body = codecs.encode(
        {"order": Order(id=1, total=1), "when": datetime(2024, 1, 1, tzinfo=UTC)}
    )
    assert body == b'{"order":{"id":1,"total":1.0},"when":"2024-01-01T00:00:00+00:00"}'
    with pytest.raises(EncodeError, match="cannot encode object as JSON"):
        codecs.encode(object())


def test_json_bad_input_is_a_clear_decode_error(codecs: CodecRegistry) -> None:
    with pytest.raises(DecodeError, match="malformed JSON"):
        codecs.decode(b"{nope", "application/json", dict)
    with pytest.raises(DecodeError, match="malformed JSON"):
        codecs.decode(b"{nope", "application/json", Order)
    with pytest.raises(
        DecodeError, match=r"not a valid Order: total: Input should be a valid number"
    ):
        codecs.decode(b'{"id": 1, "total": "lots"}', "application/json", Order)
    with pytest.raises(DecodeError, match="expected a JSON object, got list"):
        codecs.decode(b"[1]", "application/json", dict)
    with pytest.raises(DecodeError, match="malformed JSON"):
        codecs.decode(b"\xff", "application/json", None)


def test_json_subtypes_and_parameters_use_json(codecs: CodecRegistry) -> None:
    assert codecs.decode(b'{"a":1}', "application/vnd.acme+json", dict) == {"a": 1}
    assert codecs.decode(b'{"a":1}', "Application/JSON; charset=utf-8", dict) == {"a": 1}


def test_text_and_bytes(codecs: CodecRegistry) -> None:
    assert codecs.encode("héllo") == ("text/plain", "héllo".encode())
    assert codecs.decode("héllo".encode(), "text/plain", str) == "héllo"
    assert codecs.decode(b"raw", "text/plain", bytes) == b"raw"
    assert codecs.encode(b"\x00") == ("application/octet-stream", b"\x00")
    assert codecs.decode(b"\x00", "application/octet-stream", None) == b"\x00"
    with pytest.raises(DecodeError, match="not UTF-8"):
        codecs.decode(b"\xff", "text/plain", str)
    with pytest.raises(DecodeError, match="annotate the handler with str"):
        codecs.decode(b"x", "text/plain", Order)
    with pytest.raises(DecodeError, match="annotate the handler with bytes"):
        codecs.decode(b"x", "application/octet-stream", dict)
    with pytest.raises(EncodeError, match="text/plain takes str"):
        codecs.encode(1, "text/plain")


def test_no_content_type_reads_json_else_bytes(codecs: CodecRegistry) -> None:
    assert codecs.decode(b'{"a": 1}', None, None) == {"a": 1}
    assert codecs.decode(b"not json", None, None) == b"not json"
    assert codecs.decode(b"plain words", None, str) == "plain words"
    assert codecs.decode(b'{"id": 1, "total": 2}', None, Order) == Order(id=1, total=2)
    with pytest.raises(DecodeError):
        codecs.decode(b"not json", None, Order)


def test_unknown_content_type_is_a_clear_error(codecs: CodecRegistry) -> None:
    with pytest.raises(
        DecodeError, match=r"no codec for content type 'application/x-nope'.*register"
    ):
        codecs.decode(b"x", "application/x-nope", None)
    with pytest.raises(EncodeError, match="no codec for content type"):
        codecs.encode({"a": 1}, "application/x-nope")


def test_custom_codec_can_be_registered(codecs: CodecRegistry) -> None:
    class Upper:
        content_type = "text/x-upper"

        def encode(self, value: object) -> bytes:
            return str(value).upper().encode()

        def decode(self, data: bytes, into: Any) -> Any:
            return data.decode().lower()

    codecs.register(Upper())
    assert codecs.encode("abc", "text/x-upper") == ("text/x-upper", b"ABC")
    assert codecs.decode(b"ABC", "text/x-upper", str) == "abc"
    with pytest.raises(ValueError, match="is not a codec"):
        codecs.register(object())  # type: ignore[arg-type]
    assert default_registry() is default_registry()


def test_protobuf(codecs: CodecRegistry) -> None:
    ct, body = codecs.encode(Greeting(name="ann", count=2))
    assert ct == "application/x-protobuf"
    assert codecs.decode(body, ct, Greeting) == Greeting(name="ann", count=2)
    with pytest.raises(DecodeError, match="annotate the handler with the generated message class"):
        codecs.decode(body, ct, dict)
    with pytest.raises(DecodeError, match=r"not a valid protobuf eventbus\.test\.Greeting"):
        codecs.decode(b"\xff\xff\xff", ct, Greeting)
    with pytest.raises(EncodeError):
        codecs.encode({"a": 1}, ct)


def test_avro_schema_from_types() -> None:
    schema = avro_schema(Shape)
    fields = {f["name"]: f["type"] for f in schema["fields"]}
    assert schema["name"] == "Shape"
    assert fields["name"] == "string"
    assert fields["color"] == {"type": "enum", "name": "Color", "symbols": ["red", "blue"]}
    assert fields["points"]["items"]["name"] == "Point"
    assert fields["created"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["note"] == ["null", "string"]
    assert fields["attrs"] == ["null", {"type": "map", "values": "long"}]


def test_avro_round_trip_single_object_encoding(codecs: CodecRegistry) -> None:
    shape = Shape(
        "tri",
        Color.BLUE,
        [Point(0, 0), Point(1, 1)],
        datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        uuid.UUID(int=5),
        attrs={"a": 1},
    )
    ct, body = codecs.encode(shape, "application/avro")
    assert body[:2] == b"\xc3\x01"
    assert codecs.decode(body, ct, Shape) == shape
    as_dict = codecs.decode(body, ct, None)
    assert as_dict["name"] == "tri"
    _, model_body = codecs.encode(Order(id=1, total=2.5), "application/avro")
    assert codecs.decode(model_body, ct, Order) == Order(id=1, total=2.5)


def test_avro_reader_resolves_an_older_writer_schema(codecs: CodecRegistry) -> None:
    old = {"type": "record", "name": "Versioned", "fields": [{"name": "a", "type": "long"}]}
    import io

    import fastavro
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    parsed = fastavro.parse_schema(old)
    buf = io.BytesIO()
    buf.write(
        b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    )
    fastavro.schemaless_writer(buf, parsed, {"a": 7})

    @dataclass
    class Versioned:
        a: int
        b: str | None = None

    with pytest.raises(DecodeError, match="unknown Avro writer schema"):
        codecs.decode(buf.getvalue(), "application/avro", Versioned)
    register_schema(old)
    assert codecs.decode(buf.getvalue(), "application/avro", Versioned) == Versioned(7, None)


def test_avro_bad_input(codecs: CodecRegistry) -> None:
    with pytest.raises(DecodeError, match="not Avro single-object encoded"):
        codecs.decode(b"{}", "application/avro", Point)
    _, body = codecs.encode(Point(1, 2), "application/avro")
    with pytest.raises(DecodeError, match="malformed Avro record"):
        codecs.decode(body[:-1], "application/avro", Point)
    with pytest.raises(EncodeError, match="takes a dataclass or pydantic model"):
        codecs.encode({"a": 1}, "application/avro")
