"""``text/plain`` (UTF-8 strings) and ``application/octet-stream`` (raw bytes)."""

from __future__ import annotations

from typing import Any

from eventbus.codecs import Decoder
from eventbus.errors import DecodeError, EncodeError

__all__ = ["BytesCodec", "TextCodec"]


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"text/plain body is not UTF-8: {exc}") from None


class TextCodec:
    """``text/plain``: ``str`` values as UTF-8. Handlers may ask for ``str`` or ``bytes``."""

    content_type = "text/plain"

    def encode(self, value: object) -> bytes:
        """Encode a ``str`` as UTF-8; ``bytes`` pass through. Raises `EncodeError` otherwise."""
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise EncodeError(f"text/plain takes str, not {type(value).__name__}")

    def decode(self, data: bytes, into: Any = None) -> Any:
        """Decode UTF-8 text into ``str`` (or ``bytes``)."""
        return self.decoder(into)(data)

    def decoder(self, into: Any) -> Decoder:
        """Return the decoder for ``into``: ``str``/``None`` -> text, ``bytes`` -> raw."""
        if into is bytes:
            return bytes
        if into is None or into is str or into is object or into is Any:
            return _utf8
        name = getattr(into, "__name__", repr(into))
        message = f"a text/plain body cannot be decoded into {name}; annotate the handler with str"

        def refuse(data: bytes) -> Any:
            raise DecodeError(message)

        return refuse


class BytesCodec:
    """``application/octet-stream``: raw bytes, untouched."""

    content_type = "application/octet-stream"

    def encode(self, value: object) -> bytes:
        """Return bytes-like values as ``bytes``. Raises `EncodeError` for anything else."""
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise EncodeError(f"application/octet-stream takes bytes, not {type(value).__name__}")

    def decode(self, data: bytes, into: Any = None) -> Any:
        """Return the body as ``bytes`` (or ``str`` if UTF-8 and asked for)."""
        return self.decoder(into)(data)

    def decoder(self, into: Any) -> Decoder:
        """Return the decoder for ``into``: ``bytes``/``None`` -> raw, ``str`` -> UTF-8."""
        if into is None or into is bytes or into is object or into is Any:
            return bytes
        if into is str:
            return _utf8
        name = getattr(into, "__name__", repr(into))
        message = (
            f"an application/octet-stream body cannot be decoded into {name}; "
            "annotate the handler with bytes"
        )

        def refuse(data: bytes) -> Any:
            raise DecodeError(message)

        return refuse
