"""The JSON codec (``application/json``), the default.

Encodes pydantic models with their own serializer and everything else with orjson
(dataclasses, datetimes, UUIDs, enums, dicts, lists...). Decodes with pydantic into
models, dataclasses and any annotated type, and with orjson into plain values.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Any, get_origin

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from eventbus.codecs import Decoder, Encoder
from eventbus.errors import DecodeError, EncodeError

__all__ = ["JsonCodec"]

_ORJSON_NATIVE = frozenset({dict, list, int, float, bool, type(None)})

_PLAIN: dict[type, str] = {dict: "a JSON object", list: "a JSON array"}


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _describe(into: Any) -> str:
    if get_origin(into) is not None:
        return repr(into).replace("typing.", "")
    return getattr(into, "__name__", None) or repr(into)


def _invalid(exc: ValidationError, name: str) -> DecodeError:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        detail = str(errors[0].get("ctx", {}).get("error", errors[0]["msg"]))
        return DecodeError(f"malformed JSON: {detail}")
    return DecodeError(f"body is not a valid {name}: {_validation_text(exc)}")


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


@lru_cache(maxsize=1024)
def _adapter(into: Any) -> TypeAdapter[Any]:
    return TypeAdapter(into)


class JsonCodec:
    """``application/json``: pydantic models, dataclasses, and plain JSON values.

    ``bytes`` given to `encode` are taken as already-encoded JSON and sent as they are.
    """

    content_type = "application/json"

    def encode(self, value: object) -> bytes:
        """Encode ``value`` as compact UTF-8 JSON.

        Raises:
            EncodeError: the value has a type JSON cannot represent.
        """
        if isinstance(value, BaseModel):
            try:
                return type(value).__pydantic_serializer__.to_json(value)
            except PydanticSerializationError as exc:
                raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        try:
            return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None

    def encoder(self, cls: type) -> Encoder:
        """Return an encoder specialised for values of ``cls`` (resolved once per type)."""
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            to_json = cls.__pydantic_serializer__.to_json

            def encode_model(value: Any) -> bytes:
                try:
                    return to_json(value)
                except PydanticSerializationError as exc:
                    raise EncodeError(f"cannot encode {cls.__name__} as JSON: {exc}") from None

            return encode_model
        if cls in _ORJSON_NATIVE:
            dumps = orjson.dumps

            def encode_plain(value: Any) -> bytes:
                try:
                    return dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
                except TypeError as exc:
                    raise EncodeError(f"cannot encode {cls.__name__} as JSON: {exc}") from None

            return encode_plain
        return self.encode

    def decode(self, data: bytes, into: Any = None) -> Any:
        """Decode JSON bytes into ``into`` (a model, dataclass, annotated type, or None)."""
        return self.decoder(into)(data)

    def decoder(self, into: Any) -> Decoder:
        """Return a decoder for ``into``, resolved once (pydantic validator or orjson)."""
        if into is bytes:
            return bytes
        if into is None or into is object or into is Any:
            return _loads
        if into in _PLAIN:
            return _plain_decoder(into)
        if isinstance(into, type) and issubclass(into, BaseModel):
            return _model_decoder(into)
        adapter = _adapter(into)
        return _adapter_decoder(adapter, _describe(into))


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None


def _plain_decoder(into: type) -> Decoder:
    what = _PLAIN[into]

    def decode(data: bytes) -> Any:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"malformed JSON: {exc}") from None
        if type(value) is not into:
            raise DecodeError(f"expected {what}, got {type(value).__name__}")
        return value

    return decode


def _model_decoder(model: type[BaseModel]) -> Decoder:
    validate = model.model_validate_json
    name = model.__name__

    def decode(data: bytes) -> Any:
        try:
            return validate(data)
        except ValidationError as exc:
            raise _invalid(exc, name) from None

    return decode


def _adapter_decoder(adapter: TypeAdapter[Any], name: str) -> Decoder:
    validate = adapter.validate_json

    def decode(data: bytes) -> Any:
        try:
            return validate(data)
        except ValidationError as exc:
            raise _invalid(exc, name) from None

    return decode
