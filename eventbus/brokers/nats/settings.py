"""The NATS adapter's settings (checked when built) and its translation of nats-py errors."""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.js.api import StorageType

from eventbus.brokers.nats.wire import plain
from eventbus.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["Settings", "api_error", "durable_option", "quietly", "translated"]

log = logging.getLogger("eventbus")

_OPTIONS = (
    "grace, timeout, ack_wait, prefetch, max_age, max_msgs, max_bytes, storage, replicas, "
    "object_bucket, tls"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """A `NatsBroker`'s settings; see its docs for what each one means."""

    url: str
    servers: tuple[str, ...]
    grace: float
    timeout: float
    ack_wait: float
    prefetch: int
    max_age: float | None
    max_msgs: int | None
    max_bytes: int | None
    storage: StorageType
    replicas: int
    object_bucket: str
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, url: str, options: dict[str, Any], unknown: dict[str, object]) -> Settings:
        """Check and build the settings.

        Raises:
            ConfigurationError: a bad URL, a bad value, or an unknown option.
        """
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))} for nats://; it takes: {_OPTIONS}"
            )
        storage = options["storage"]
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', not {storage!r}")
        bucket = options["object_bucket"]
        if (
            not isinstance(bucket, str)
            or not bucket
            or not all(c.isalnum() or c in "-_" for c in bucket)
        ):
            raise ConfigurationError(
                f"object_bucket must be letters, digits, '-' and '_', not {bucket!r}"
            )
        tls = options["tls"]
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise ConfigurationError(f"tls must be an ssl.SSLContext, not {tls!r}")

        def optional(name: str, check: Any) -> Any:
            value = options[name]
            return None if value is None else check(name, value)

        return cls(
            url=url,
            servers=_servers(url),
            grace=_seconds("grace", options["grace"], zero=True),
            timeout=_seconds("timeout", options["timeout"]),
            ack_wait=_seconds("ack_wait", options["ack_wait"]),
            prefetch=_count("prefetch", options["prefetch"]),
            max_age=optional("max_age", _seconds),
            max_msgs=optional("max_msgs", _count),
            max_bytes=optional("max_bytes", _count),
            storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
            replicas=_count("replicas", options["replicas"]),
            object_bucket=bucket,
            tls=tls,
        )


def _servers(url: str) -> tuple[str, ...]:
    servers = []
    scheme = ""
    for part in url.split(",") if isinstance(url, str) else [""]:
        part = part.strip()
        if "://" not in part and scheme:
            part = f"{scheme}://{part}"
        parts = urlsplit(part)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigurationError(
                f"bad NATS URL {url!r}: use nats://host:4222 or tls://host:4222 (several "
                "servers separated by commas)"
            )
        try:
            parts.port  # noqa: B018  # raises on a bad port
        except ValueError as exc:
            raise ConfigurationError(f"bad NATS URL {url!r}: {exc}") from None
        scheme = parts.scheme
        servers.append(part)
    return tuple(servers)


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")
    return value


def durable_option(options: dict[str, object], where: str) -> bool:
    """The ``durable`` option of a publish (``where="publish"``) or subscribe.

    Raises:
        ConfigurationError: another option (for a publish), or not a bool.
    """
    unknown = sorted(set(options) - {"durable"}) if where == "publish" else []
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} for publishing on nats://; it takes: durable"
        )
    durable = options.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable must be True or False, not {durable!r}")
    return durable


def api_error(data: bytes) -> BrokerError:
    """The `BrokerError` for a JetStream API error answer (``{"error": {...}}``)."""
    try:
        error = json.loads(data)["error"]
        text = f"{error.get('description', error)} (code {error.get('err_code', '?')})"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = data.decode("utf-8", "replace")
    return BrokerError(f"JetStream refused the message: {text}")


async def quietly(awaitable: Any) -> None:
    """Await a clean-up step; log (debug) and swallow its error: closing goes on."""
    try:
        await awaitable
    except Exception as exc:
        log.debug("nats: while closing: %s", plain(exc))


class translated:
    """Turn nats-py errors of a management call into eventbus errors (``async with``)."""

    def __init__(self, doing: str, url: str) -> None:
        self._doing = doing
        self._url = url

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, nats.errors.Error | OSError | TimeoutError):
            return
        if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
            raise BrokerError(
                f"{self._doing}: JetStream does not answer at {self._url}: is the server "
                "started with JetStream (nats-server -js)? Use durable=False for core NATS only"
            ) from exc
        if isinstance(exc, nats.js.errors.APIError):
            raise BrokerError(f"{self._doing}: JetStream refused: {plain(exc)}") from exc
        raise BrokerUnavailable(f"{self._doing}: NATS at {self._url}: {plain(exc)}") from exc
