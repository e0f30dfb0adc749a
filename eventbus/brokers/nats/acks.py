"""Waiting for JetStream's acknowledgements of publishes, all on one reply subscription."""

from __future__ import annotations

import asyncio
import itertools
import logging

from eventbus.brokers.nats.settings import api_error
from eventbus.brokers.nats.wire import Connection, hpub, status
from eventbus.errors import BrokerUnavailable

__all__ = ["NoStream", "PublishAcks"]

log = logging.getLogger("eventbus")


class NoStream(Exception):
    """JetStream answered 'no responders': the topic's stream is gone."""


class PublishAcks:
    """JetStream publishes waiting for their acknowledgement.

    Each publish gets a reply subject ``<prefix>.<token>`` under one wildcard
    subscription, and a future; `expire` (called periodically) fails the ones past their
    deadline, instead of a timer per publish.
    """

    __slots__ = ("_pending", "_prefix", "_timeout", "_tokens", "_url")

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._prefix = b""
        self._tokens = itertools.count()
        self._pending: dict[bytes, tuple[asyncio.Future[None], float]] = {}

    async def open(self, nc: Connection) -> None:
        """Subscribe to the acknowledgements' subjects on ``nc``."""
        inbox = nc.new_inbox()
        self._prefix = f"{inbox}.".encode()
        sub = await nc.subscribe(f"{inbox}.*")
        nc.routes[sub._id] = self._on_answer

    async def publish(self, nc: Connection, subject: bytes, header: bytes, body: bytes) -> None:
        """Publish with a reply subject; return once JetStream acknowledged.

        Raises:
            BrokerUnavailable: no acknowledgement within the timeout, or the connection
                was lost first.
            BrokerError: JetStream refused the message.
            NoStream: no stream takes the subject.
        """
        token = b"%x" % next(self._tokens)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending[token] = (future, loop.time() + self._timeout)
        nc.write(hpub(subject, self._prefix + token, header, body))
        await future

    def _on_answer(self, subject: bytes, reply: bytes, data: bytes, header: bytes | None) -> None:
        if header is not None and status(header) == b"503":
            outcome: BaseException | None = NoStream()
        elif b'"error"' in data:
            outcome = api_error(data)
        elif b'"seq"' in data:
            outcome = None
        else:
            # Not JetStream's answer: a core subscriber of the topic that answers every
            # message with a reply subject. Keep waiting for the real acknowledgement.
            log.debug("nats: ignored a stray answer to a publish: %r", data[:80])
            return
        entry = self._pending.pop(subject[len(self._prefix) :], None)
        if entry is None or entry[0].done():
            return
        if outcome is None:
            entry[0].set_result(None)
        else:
            entry[0].set_exception(outcome)

    def expire(self, now: float) -> None:
        """Fail the publishes whose acknowledgement is overdue at loop time ``now``."""
        pending = self._pending
        expired = []
        for token, (_, deadline) in pending.items():  # oldest first
            if deadline > now:
                break
            expired.append(token)
        for token in expired:
            future = pending.pop(token)[0]
            if not future.done():
                future.set_exception(
                    BrokerUnavailable(
                        f"JetStream at {self._url} did not acknowledge within "
                        f"{self._timeout:g}s: the message may or may not be stored"
                    )
                )

    def fail(self, exc: Exception) -> None:
        """Fail every waiting publish with ``exc`` (the connection was lost, or closed)."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(exc)
