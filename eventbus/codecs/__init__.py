"""Codecs, chosen by content type, and the registry users extend.

Built in: ``application/json`` (the default; pydantic models, dataclasses and plain
values), ``text/plain``, ``application/octet-stream``, ``application/x-protobuf``
(extra ``protobuf``) and ``application/avro`` (extra ``avro``).

Example:
    >>> import eventbus.codecs as codecs
    >>> codecs.default_registry().encode({"a": 1})
    ('application/json', b'{"a":1}')

A codec for another content type is any object with a ``content_type`` attribute and
``encode`` / ``decode`` methods (see `Codec`); register it with `register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from eventbus.errors import ConfigurationError, DecodeError, EncodeError

__all__ = [
    "BYTES",
    "JSON",
    "TEXT",
    "Codec",
    "CodecRegistry",
    "Decoder",
    "Encoder",
    "default_registry",
    "register",
]

T = TypeVar("T")

Decoder = Callable[[bytes], Any]
"""Turns body bytes into a value; resolved once per (content type, target type)."""

Encoder = Callable[[Any], bytes]
"""Turns a value into body bytes; resolved once per (content type, value type)."""

JSON = "application/json"
TEXT = "text/plain"
BYTES = "application/octet-stream"
PROTOBUF = "application/x-protobuf"
AVRO = "application/avro"


@runtime_checkable
class Codec(Protocol):
    """Encodes values to bytes and decodes bytes into a requested type.

    A codec may also offer ``decoder(into) -> Decoder`` and ``encoder(cls) -> Encoder``:
    the registry then resolves the type once per subscriber (publisher) instead of once
    per message.
    """

    content_type: str

    def encode(self, value: object) -> bytes:
        """Return ``value`` as bytes. Raises `EncodeError` when it cannot."""
        ...

    def decode(self, data: bytes, into: Any) -> Any:
        """Return ``data`` as an instance of ``into`` (``None``: the natural Python value).

        Raises:
            DecodeError: malformed bytes, or bytes that do not validate as ``into``.
        """
        ...


# Built-in codecs are imported when their content type is first used, so that the
# protobuf and avro extras stay optional.
_BUILTIN: dict[str, tuple[str, str]] = {
    JSON: ("eventbus.codecs.json", "JsonCodec"),
    TEXT: ("eventbus.codecs.text", "TextCodec"),
    BYTES: ("eventbus.codecs.text", "BytesCodec"),
    PROTOBUF: ("eventbus.codecs.protobuf", "ProtobufCodec"),
    "application/protobuf": ("eventbus.codecs.protobuf", "ProtobufCodec"),
    AVRO: ("eventbus.codecs.avro", "AvroCodec"),
    "avro/binary": ("eventbus.codecs.avro", "AvroCodec"),
}


def normalize(content_type: str) -> str:
    """Strip parameters and case: ``'Text/Plain; charset=utf-8'`` -> ``'text/plain'``."""
    return content_type.split(";", 1)[0].strip().lower()


class CodecRegistry:
    """Maps content types to codecs, and values to the content type they default to.

    Lookups are cached: after the first message of a content type, choosing its codec
    and decoder is one dictionary lookup.
    """

    def __init__(self) -> None:
        self._codecs: dict[str, Codec] = {}
        self._by_type: dict[type, str] = {}

    def register(self, codec: Codec, *, aliases: tuple[str, ...] = ()) -> None:
        """Use ``codec`` for its content type (and ``aliases``), replacing any other."""
        if not isinstance(codec, Codec):
            raise ConfigurationError(
                f"{codec!r} is not a codec: it needs content_type, encode() and decode()"
            )
        for name in (codec.content_type, *aliases):
            self._codecs[normalize(name)] = codec

    def register_type(self, cls: type, content_type: str) -> None:
        """Publish instances of ``cls`` with ``content_type`` unless the publisher says otherwise.

        Example:
            >>> default_registry().register_type(bytearray, "application/octet-stream")
        """
        self.get(content_type)  # fail now, not at the first publish
        self._by_type[cls] = content_type

    def get(self, content_type: str) -> Codec:
        """Return the codec for ``content_type``.

        Raises:
            DecodeError: no codec is registered for it (a message with this content type
                goes to the dead-letter topic), or its extra is not installed.
        """
        codec = self._codecs.get(content_type)
        if codec is not None:
            return codec
        name = normalize(content_type)
        codec = self._codecs.get(name)
        if codec is None:
            codec = self._load_builtin(name)
        self._codecs[content_type] = codec
        return codec

    def _load_builtin(self, name: str) -> Codec:
        if name not in _BUILTIN and name.endswith("+json"):
            name = JSON  # application/vnd.acme+json and the like
        if name not in _BUILTIN:
            known = ", ".join(sorted({*self._codecs, *_BUILTIN}))
            raise DecodeError(
                f"no codec for content type {name!r}; known: {known}. "
                "Register one with eventbus.codecs.register(codec)."
            )
        module_name, class_name = _BUILTIN[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = module_name.rsplit(".", 1)[1]
            raise DecodeError(
                f"content type {name!r} needs the {extra} extra: pip install 'eventbus[{extra}]'"
            ) from exc
        codec: Codec = getattr(module, class_name)()
        for alias, target in _BUILTIN.items():
            if target == (module_name, class_name):
                self._codecs.setdefault(alias, codec)
        return codec

    def content_type_for(self, value: object) -> str:
        """The content type a value is published with when the publisher names none.

        ``bytes`` -> octet-stream, ``str`` -> text/plain, protobuf messages -> protobuf,
        types given to `register_type` -> theirs, anything else -> JSON.
        """
        cls = type(value)
        if cls in self._by_type:
            return self._by_type[cls]
        if cls is bytes or cls is bytearray or cls is memoryview:
            return BYTES
        if cls is str:
            return TEXT
        if hasattr(cls, "DESCRIPTOR") and hasattr(value, "SerializeToString"):
            return PROTOBUF
        return JSON

    def encode(self, value: object, content_type: str | None = None) -> tuple[str, bytes]:
        """Encode ``value``; return ``(content_type, body)``.

        Raises:
            EncodeError: the value cannot be encoded with that content type.
        """
        content_type, encode = self.encoder(value, content_type)
        return content_type, encode(value)

    def encoder(self, value: object, content_type: str | None = None) -> tuple[str, Encoder]:
        """Return ``(content_type, encode)`` for values of ``type(value)``; cache the result.

        ``bytes`` with a content type no codec knows are sent as they are: the caller
        encoded them (XML, CSV...).

        Raises:
            EncodeError: no codec for the content type.
        """
        if content_type is None:
            content_type = self.content_type_for(value)
        try:
            codec = self.get(content_type)
        except DecodeError as exc:
            if isinstance(value, bytes | bytearray | memoryview):
                return content_type, bytes
            raise EncodeError(str(exc)) from None
        make = getattr(codec, "encoder", None)
        encode: Encoder = make(type(value)) if make is not None else codec.encode
        return content_type, encode

    def decoder(self, content_type: str | None, into: Any) -> Decoder:
        """Return a function decoding bodies of ``content_type`` into ``into``.

        ``content_type=None`` (a plain client's message) reads JSON if it parses, else
        bytes. ``into=None`` means the natural Python value for the content type.

        Raises:
            DecodeError: no codec for the content type.
        """
        if content_type is None:
            return _sniffing_decoder(self.get(JSON), into)
        codec = self.get(content_type)
        make = getattr(codec, "decoder", None)
        if make is not None:
            decoder: Decoder = make(into)
            return decoder
        return lambda data: codec.decode(data, into)

    def decode(self, data: bytes, content_type: str | None, into: Any = None) -> Any:
        """Decode one body (uncached convenience; handlers use `decoder`)."""
        return self.decoder(content_type, into)(data)


def _sniffing_decoder(json_codec: Codec, into: Any) -> Decoder:
    """Decoder for a message without content type: JSON if it parses, else bytes."""
    make = getattr(json_codec, "decoder", None)
    as_json: Decoder = make(into) if make else (lambda data: json_codec.decode(data, into))
    raw_ok = into is None or into is bytes or into is object or into is Any

    def decode(data: bytes) -> Any:
        try:
            return as_json(data)
        except DecodeError:
            if raw_ok:
                return data
            if into is str:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DecodeError(
                        f"body without content type is neither JSON nor UTF-8: {exc}"
                    ) from None
            raise

    return decode


_default = CodecRegistry()


def default_registry() -> CodecRegistry:
    """The process-wide registry every bus uses unless given its own ``codecs=``."""
    return _default


def register(codec: Codec, *, aliases: tuple[str, ...] = ()) -> None:
    """Register ``codec`` in the default registry (see `CodecRegistry.register`)."""
    _default.register(codec, aliases=aliases)
