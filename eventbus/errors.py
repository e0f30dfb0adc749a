"""The whole exception tree of eventbus.

Every error the framework raises derives from :class:`EventBusError`, so one
``except EventBusError`` catches them all. Client-library errors are translated
at the adapter edge (``raise BrokerUnavailable(...) from exc``).
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ClosedError",
    "CodecError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "EndpointNotFound",
    "EventBusError",
    "HandlerTimeout",
    "RecordingError",
    "RemoteError",
    "ReplayNotSupported",
    "RequestTimeout",
    "ServiceNotFound",
    "TopicNotFound",
    "UndeliverableError",
]


class EventBusError(Exception):
    """Base class of every error raised by eventbus."""


class ConfigurationError(EventBusError, ValueError):
    """A bad URL, an unknown option, a missing extra or a handler eventbus cannot call."""


class BrokerError(EventBusError):
    """The broker refused or failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (down, restarting, or the network is gone)."""


class UndeliverableError(BrokerError):
    """The broker knows for sure that nobody can receive this message.

    Raised for replies sent to an inbox that no longer exists (the requester gave
    up or went away). Plain topics never raise it: a topic keeps what it is sent.
    """


class ClosedError(EventBusError):
    """The bus or broker was closed; open a new one or use ``async with``."""


class CodecError(EventBusError):
    """A value could not be encoded, or bytes could not be decoded."""


class EncodeError(CodecError):
    """A value could not be encoded with the chosen content type."""


class DecodeError(CodecError):
    """Bytes could not be decoded into the handler's type.

    A message that fails to decode goes straight to the dead-letter topic:
    retrying cannot fix bad bytes.
    """


class RecordingError(DecodeError):
    """A line of a recording (JSON Lines, `eventbus.testing.load`) is not a valid message.

    Attributes:
        reason: What is wrong with the line.
        path: The file, when known.
        line: The 1-based line number, when known.
    """

    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ":".join(str(part) for part in (path, line) if part is not None)
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.path = path
        self.line = line


class HandlerTimeout(EventBusError, TimeoutError):
    """A handler did not finish within its subscriber's ``timeout`` or the request deadline."""


class ReplayNotSupported(EventBusError, NotImplementedError):
    """The broker (or this topic's configuration) keeps no messages to replay."""


class TopicNotFound(EventBusError, LookupError):
    """The topic does not exist on the broker (nothing was ever published to it)."""


class ServiceNotFound(EventBusError, LookupError):
    """No live node of the requested service is known to the registry."""


class EndpointNotFound(EventBusError, LookupError):
    """A node was called on an endpoint it does not serve.

    Raised on the serving node and sent back as an error reply: the caller gets a
    `RemoteError` whose ``remote_type`` is ``"EndpointNotFound"`` and whose message
    lists the endpoints the node does serve.
    """


class RemoteError(EventBusError):
    """The remote handler raised; its exception type and message are kept.

    Attributes:
        remote_type: The class name of the exception raised by the remote handler.
        remote_message: Its message (``str(exc)``), without a traceback.
        topic: The topic (endpoint) that was called.
    """

    def __init__(self, remote_type: str, remote_message: str, *, topic: str = "") -> None:
        where = f" from {topic!r}" if topic else ""
        super().__init__(f"remote handler{where} raised {remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.topic = topic


class RequestTimeout(EventBusError, TimeoutError):
    """No reply arrived within the request's timeout."""
