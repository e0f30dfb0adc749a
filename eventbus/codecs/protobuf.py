"""``application/x-protobuf``: protocol buffer messages (extra ``protobuf``).

A handler annotated with a generated message class gets that class; the bytes on the
wire are the plain protobuf encoding, readable by any protobuf client.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message as ProtobufMessage

from eventbus.codecs import Decoder
from eventbus.errors import DecodeError, EncodeError

__all__ = ["ProtobufCodec"]


class ProtobufCodec:
    """``application/x-protobuf``: encodes protobuf messages, decodes into their class."""

    content_type = "application/x-protobuf"

    def encode(self, value: object) -> bytes:
        """Serialize a protobuf message; ``bytes`` pass through as already encoded.

        Raises:
            EncodeError: ``value`` is not a protobuf message.
        """
        if isinstance(value, ProtobufMessage):
            data: bytes = value.SerializeToString()
            return data
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise EncodeError(
            f"application/x-protobuf takes a protobuf message, not {type(value).__name__}"
        )

    def decode(self, data: bytes, into: Any = None) -> Any:
        """Parse ``data`` as the protobuf message class ``into``."""
        return self.decoder(into)(data)

    def decoder(self, into: Any) -> Decoder:
        """Return a parser for the message class ``into`` (``bytes`` -> raw)."""
        if into is bytes:
            return bytes
        if not (isinstance(into, type) and issubclass(into, ProtobufMessage)):
            name = getattr(into, "__name__", repr(into))
            message = (
                f"a protobuf body cannot be decoded into {name}: protobuf bytes do not say "
                "their type, so annotate the handler with the generated message class"
            )

            def refuse(data: bytes) -> Any:
                raise DecodeError(message)

            return refuse
        generated: Any = into  # FromString and DESCRIPTOR exist on generated classes only
        parse = generated.FromString
        full_name: str = generated.DESCRIPTOR.full_name

        def decode(data: bytes) -> Any:
            try:
                return parse(data)
            except ProtobufDecodeError as exc:
                raise DecodeError(f"body is not a valid protobuf {full_name}: {exc}") from None

        return decode
