"""``application/avro``: Avro records via fastavro (extra ``avro``).

The schema comes from the record type: a dataclass or pydantic model is mapped to an
Avro record (or a class gives its own ``__avro_schema__`` dict). Bodies use Avro's
*single-object encoding* (marker ``C3 01``, the 8-byte CRC-64-AVRO fingerprint of the
writer schema, then the binary record), so the reading side never guesses the writer
schema: it looks the fingerprint up among the schemas it knows (every type this
process encoded or decodes into, plus `register_schema`) and resolves the writer schema
against its own, as Avro schema resolution specifies. An unknown fingerprint is a
`DecodeError` that says which schema to register.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Reading:
    ...     sensor: str
    ...     value: float
    >>> avro_schema(Reading)["fields"]
    [{'name': 'sensor', 'type': 'string'}, {'name': 'value', 'type': 'double'}]
"""

from __future__ import annotations

import dataclasses
import enum
import io
import types
import typing
import uuid
from datetime import date, datetime
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel, TypeAdapter, ValidationError

from eventbus.codecs import Decoder
from eventbus.errors import ConfigurationError, DecodeError, EncodeError

__all__ = ["AvroCodec", "avro_schema", "register_schema"]

_MARKER = b"\xc3\x01"
_HEADER = len(_MARKER) + 8

_PRIMITIVES: dict[Any, Any] = {
    bool: "boolean",
    int: "long",
    float: "double",
    str: "string",
    bytes: "bytes",
    datetime: {"type": "long", "logicalType": "timestamp-micros"},
    date: {"type": "int", "logicalType": "date"},
    uuid.UUID: {"type": "string", "logicalType": "uuid"},
}


def _is_record_type(cls: Any) -> bool:
    return isinstance(cls, type) and (
        dataclasses.is_dataclass(cls)
        or issubclass(cls, BaseModel)
        or hasattr(cls, "__avro_schema__")
    )


def avro_schema(cls: type) -> dict[str, Any]:
    """Return the Avro record schema of a dataclass or pydantic model.

    A class may define ``__avro_schema__`` (a dict) to give its schema explicitly.
    The record is named after the class, without namespace, so writer and reader
    agree whatever module each declares the class in.

    Raises:
        ConfigurationError: a field's type has no Avro equivalent.
    """
    schema: dict[str, Any] = _record(cls, set())
    return schema


def _record(cls: type, seen: set[str]) -> Any:
    explicit: object = getattr(cls, "__avro_schema__", None)
    if isinstance(explicit, dict):
        return explicit
    name = cls.__name__
    if name in seen:
        return name  # a named type is defined once, then referenced by name
    seen.add(name)
    hints = typing.get_type_hints(cls)
    fields: list[dict[str, Any]] = []
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        for field_name, info in cls.model_fields.items():
            entry = {"name": field_name, "type": _avro_type(hints[field_name], seen, cls)}
            if not info.is_required():
                _set_default(entry, info.default)
            fields.append(entry)
    elif dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            entry = {"name": f.name, "type": _avro_type(hints[f.name], seen, cls)}
            _set_default(entry, f.default)
            fields.append(entry)
    else:
        raise ConfigurationError(
            f"{cls!r} has no Avro schema: use a dataclass, a pydantic model, "
            "or give the class an __avro_schema__ dict"
        )
    return {"type": "record", "name": name, "fields": fields}


def _set_default(entry: dict[str, Any], default: Any) -> None:
    """Record a field default where Avro can express it (a union's default is its first branch)."""
    kind = entry["type"]
    if isinstance(kind, list):
        if default is None and kind[0] == "null":
            entry["default"] = None
    elif isinstance(default, bool | int | float | str) and kind in (
        "boolean",
        "long",
        "double",
        "string",
    ):
        entry["default"] = default


def _avro_type(tp: Any, seen: set[str], owner: type) -> Any:
    if tp in _PRIMITIVES:
        return _PRIMITIVES[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        branches = [_avro_type(a, seen, owner) for a in rest]
        return ["null", *branches] if len(rest) < len(args) else branches
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        items = args[0] if args else str
        return {"type": "array", "items": _avro_type(items, seen, owner)}
    if origin is dict:
        if args and args[0] is not str:
            raise ConfigurationError(f"{owner.__name__}: Avro map keys are strings, not {args[0]}")
        return {"type": "map", "values": _avro_type(args[1] if args else str, seen, owner)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if tp.__name__ in seen:
            return tp.__name__
        seen.add(tp.__name__)
        return {"type": "enum", "name": tp.__name__, "symbols": [str(m.value) for m in tp]}
    if _is_record_type(tp):
        return _record(tp, seen)
    raise ConfigurationError(f"{owner.__name__}: no Avro type for {tp!r}")


class _Schema:
    __slots__ = ("header", "parsed")

    def __init__(self, schema: Any) -> None:
        self.parsed = fastavro.parse_schema(schema)
        canonical = to_parsing_canonical_form(self.parsed)
        self.header = _MARKER + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


_by_fingerprint: dict[bytes, _Schema] = {}
_by_type: dict[type, _Schema] = {}


def register_schema(schema: dict[str, Any] | type) -> None:
    """Make a writer schema known to this process's readers.

    Needed only to read records written with a schema this process has no type for
    (an older or newer version of a record): types the process encodes or decodes
    into are known already.
    """
    entry = _schema_of(schema) if isinstance(schema, type) else _Schema(schema)
    _by_fingerprint[entry.header] = entry


def _schema_of(cls: type) -> _Schema:
    entry = _by_type.get(cls)
    if entry is None:
        entry = _by_type[cls] = _Schema(avro_schema(cls))
        _by_fingerprint.setdefault(entry.header, entry)
    return entry


def _to_record(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _to_record(v) for k, v in value.__dict__.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_record(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_to_record(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_record(v) for k, v in value.items()}
    return value


class AvroCodec:
    """``application/avro``: records in Avro single-object encoding (see module docs)."""

    content_type = "application/avro"

    def encode(self, value: object) -> bytes:
        """Encode a dataclass or pydantic model instance with its type's schema.

        Raises:
            EncodeError: the value is not a record type, or does not fit its schema.
        """
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if not _is_record_type(type(value)):
            raise EncodeError(
                f"application/avro takes a dataclass or pydantic model, not {type(value).__name__}"
            )
        try:
            entry = _schema_of(type(value))
        except ConfigurationError as exc:
            raise EncodeError(str(exc)) from None
        out = io.BytesIO()
        out.write(entry.header)
        try:
            fastavro.schemaless_writer(out, entry.parsed, _to_record(value))
        except (ValueError, TypeError, AttributeError) as exc:
            raise EncodeError(
                f"{type(value).__name__} does not fit its Avro schema: {exc}"
            ) from None
        return out.getvalue()

    def decode(self, data: bytes, into: Any = None) -> Any:
        """Decode a single-object-encoded record into ``into`` (``None``: a dict)."""
        return self.decoder(into)(data)

    def decoder(self, into: Any) -> Decoder:
        """Return a decoder into ``into``: a record type, ``dict``/``None``, or ``bytes``."""
        if into is bytes:
            return bytes
        reader: _Schema | None = None
        build: Any = None
        if _is_record_type(into):
            reader = _schema_of(into)
            adapter = TypeAdapter(into)
            build = adapter.validate_python
        elif not (into is None or into is dict or into is object or into is Any):
            name = getattr(into, "__name__", repr(into))
            message = f"an Avro body cannot be decoded into {name}; use a record type or dict"

            def refuse(data: bytes) -> Any:
                raise DecodeError(message)

            return refuse

        def decode(data: bytes) -> Any:
            header = data[:_HEADER]
            if len(header) < _HEADER or not header.startswith(_MARKER):
                raise DecodeError("body is not Avro single-object encoded (no C3 01 marker)")
            writer = _by_fingerprint.get(header)
            if writer is None:
                raise DecodeError(
                    f"unknown Avro writer schema (fingerprint {header[2:].hex()}); make it known "
                    "with eventbus.codecs.avro.register_schema(schema_or_type)"
                )
            try:
                record = fastavro.schemaless_reader(
                    io.BytesIO(data[_HEADER:]),
                    writer.parsed,
                    reader.parsed if reader is not None else None,
                )
            except Exception as exc:  # fastavro raises many types on bad bytes / schema mismatch
                raise DecodeError(f"malformed Avro record: {type(exc).__name__}: {exc}") from None
            if build is None:
                return record
            try:
                return build(record)
            except ValidationError as exc:
                raise DecodeError(f"Avro record is not a valid {into.__name__}: {exc}") from None

        return decode
