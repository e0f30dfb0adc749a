"""Subscribers: a user's handler bound to a topic, and the broker-agnostic pipeline around it.

Per message: middleware -> decode by the handler's first annotation -> handler.
Then the outcome is settled, the same on every broker:

- the handler returned: the message is acknowledged, and if it asked for a reply
  (``reply_to``), the return value is sent as the reply;
- the handler raised: it is retried by the subscriber's policy, then the message
  is dead-lettered to ``<topic>.dlq`` with the error in its headers (a request is
  answered with an error reply instead; if nobody takes the reply, it is
  dead-lettered too);
- the body did not decode: straight to the dead-letter topic.

The consumer loop never dies on a bad message and nothing is dropped silently: if
even the dead-letter publish fails, the message is left unacknowledged for the
broker to redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from eventbus.broker import Subscription
from eventbus.codecs import CodecRegistry, Decoder
from eventbus.deadlines import run_within
from eventbus.errors import ConfigurationError, UndeliverableError
from eventbus.message import (
    DEADLINE,
    DLQ_ATTEMPTS,
    DLQ_GROUP,
    DLQ_TOPIC,
    ERROR,
    ERROR_TYPE,
    Message,
)
from eventbus.middleware import (
    ATTEMPTS_ATTR,
    Middleware,
    Next,
    RetryPolicy,
    chain,
    retry,
    timeout,
)

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = ["DEAD_LETTERED", "FAILED", "PROCESSED", "Outcome", "Subscriber"]

log = logging.getLogger("eventbus")

HandlerFn = Callable[..., Any]
_ENVELOPE_NAMES = ("msg", "message")


class _Signature:
    """What a handler wants: the payload's type, and whether (and how) it wants the envelope."""

    __slots__ = ("envelope", "into", "is_async", "raw", "returns_none", "takes_payload")

    def __init__(self, fn: HandlerFn) -> None:
        target = inspect.unwrap(fn)
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot read the signature of handler {fn!r}: {exc}"
            ) from None
        try:
            hints = typing.get_type_hints(target)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot resolve the annotations of handler {_name(fn)}: {exc}; "
                "import the types it names at module level"
            ) from None
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.takes_payload = bool(params) and params[0].kind in positional
        first = params[0] if self.takes_payload else None
        annotation = hints.get(first.name) if first is not None else None
        self.raw = annotation is Message
        self.into: Any = None if self.raw else annotation
        self.returns_none = hints.get("return", ...) is type(None)
        self.envelope: str | None = None
        for param in params[1:] if self.takes_payload else params:
            if hints.get(param.name) is Message or param.name in _ENVELOPE_NAMES:
                if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                    raise ConfigurationError(
                        f"handler {_name(fn)}: the envelope parameter {param.name!r} "
                        "cannot be positional-only"
                    )
                self.envelope = param.name
            elif param.default is inspect.Parameter.empty and param.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                raise ConfigurationError(
                    f"handler {_name(fn)}: parameter {param.name!r} has no default; a handler "
                    "takes the payload first, then optionally `msg: Message`"
                )


def _name(fn: HandlerFn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _invoker(fn: HandlerFn, sig: _Signature, decoder_for: Callable[[str | None], Decoder]) -> Next:
    """Build the innermost step: decode the body as the handler wants, then call it."""
    cache: dict[str | None, Decoder] = {}
    envelope = sig.envelope

    def decode(message: Message) -> Any:
        ct = message.content_type
        decoder = cache.get(ct)
        if decoder is None:
            decoder = cache[ct] = decoder_for(ct)
        return decoder(message.body)

    # One closure per handler shape, chosen once, so the per-message path has no branches.
    if sig.is_async:
        if sig.raw and envelope is None:

            async def invoke(message: Message) -> Any:
                return await fn(message)
        elif not sig.takes_payload:

            async def invoke(message: Message) -> Any:
                return await (fn(**{envelope: message}) if envelope else fn())
        elif envelope is None:

            async def invoke(message: Message) -> Any:
                return await fn(decode(message))
        else:

            async def invoke(message: Message) -> Any:
                payload = message if sig.raw else decode(message)
                return await fn(payload, **{envelope: message})
    else:

        async def invoke(message: Message) -> Any:
            if not sig.takes_payload:
                return fn(**{envelope: message}) if envelope else fn()
            payload = message if sig.raw else decode(message)
            return fn(payload, **{envelope: message}) if envelope else fn(payload)

    return invoke


PROCESSED: Final = "processed"
"""`Outcome.status`: the handler returned (for a request, ``result`` is the reply)."""
FAILED: Final = "failed"
"""`Outcome.status`: a request's handler raised; the caller would get an error reply."""
DEAD_LETTERED: Final = "dead_lettered"
"""`Outcome.status`: the message went to the dead-letter topic (failed, undecodable, or
its reply could not be encoded)."""

Status = Literal["processed", "failed", "dead_lettered"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one subscriber's pipeline did with one message (see `Subscriber.process`).

    Attributes:
        subscriber: The subscriber that handled it.
        status: `PROCESSED`, `FAILED` or `DEAD_LETTERED`.
        result: The handler's return value (the reply, for a request).
        error: The exception the handling failed with, if it did.
        attempts: How many times the handler was tried.
    """

    subscriber: Subscriber
    status: Status
    result: object = None
    error: BaseException | None = None
    attempts: int = 1


class Subscriber:
    """A handler registered on a bus for one topic, with its delivery options.

    Created by ``@bus.subscriber(...)`` / ``@subscriber(...)``; the bus starts it
    when the bus starts. Counters (`processed`, `failed`, `dead_lettered`) let tests
    and metrics see what happened.
    """

    def __init__(
        self,
        bus: EventBus,
        topic: str,
        fn: HandlerFn,
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: RetryPolicy | int | None = None,
        timeout: float | None = None,
        dead_letter: str | None = None,
        middleware: Sequence[Middleware] = (),
        options: dict[str, object] | None = None,
    ) -> None:
        if not topic or not isinstance(topic, str):
            raise ConfigurationError(f"a subscriber needs a topic name, not {topic!r}")
        if not callable(fn):
            raise ConfigurationError(f"a handler must be callable, not {fn!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {concurrency!r}"
            )
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.bus = bus
        self.topic = topic
        self.fn = fn
        self.name = _name(fn)
        self.group = group
        self.concurrency = concurrency
        self.retry = RetryPolicy.of(retry) if retry is not None else bus.retry
        self.timeout = timeout
        self.dead_letter = dead_letter or f"{topic}.dlq"
        self.middleware = tuple(middleware)
        self.options = dict(options or {})
        self.signature = _Signature(fn)
        # A group-less subscriber declared `-> None` is an observer (audit, logging): it
        # never answers requests, so it cannot race the real responder with `null`.
        self.answers = not (group is None and self.signature.returns_none)
        """Whether this subscriber replies to requests (messages with ``reply_to``)."""
        self.subscription: Subscription | None = None
        self.processed = 0
        """Messages the handler finished without raising."""
        self.failed = 0
        """Messages whose handling failed for good (after retries)."""
        self.dead_lettered = 0
        """Messages sent to the dead-letter topic."""
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._direct: Next | None = None  # the pipeline `process` runs, built on first use

    def __repr__(self) -> str:
        group = f", group={self.group!r}" if self.group else ""
        return f"Subscriber({self.topic!r}, {self.name}{group})"

    def _pipeline(self) -> Next:
        """Middleware, retry and timeout around decode + handler: what `build` and `process` run."""
        bus = self.bus
        registry: CodecRegistry = bus.codecs
        into = self.signature.into
        steps: list[Middleware] = [*bus.middleware, *self.middleware]
        if self.retry.attempts > 1:
            steps.append(retry(self.retry))
        if self.timeout is not None:
            steps.append(timeout(self.timeout))
        return chain(
            steps, _invoker(self.fn, self.signature, lambda ct: registry.decoder(ct, into))
        )

    def build(self) -> Callable[[Message], Awaitable[None]]:
        """Return the broker-level handler: the whole pipeline for one delivered message."""
        call = self._pipeline()
        answers = self.answers

        async def handle(message: Message) -> None:
            try:
                if message.reply_to is not None and answers and DEADLINE in message.headers:
                    result = await run_within(_deadline(message), call, message)
                else:
                    result = await call(message)
            except Exception as exc:
                await self._settle_failure(message, exc)
                return
            if message.reply_to is not None and answers:
                await self._settle_reply(message, result)
            self.processed += 1
            if self._waiters:
                self._wake()

        return handle

    async def process(self, message: Message) -> Outcome:
        """Run ``message`` through this subscriber's pipeline once and say what happened.

        The same pipeline a delivery runs (middleware, decode, handler, retry, timeout,
        dead-letter), the same counters and `wait_for` wake-ups, with two differences
        that make it safe for recorded messages (`EventBus.redeliver`): a request's reply
        or error reply is not sent (its requester is gone; the value is in the outcome),
        and nothing is acknowledged (there is no broker delivery). Messages are handled
        one at a time, whatever ``concurrency`` says.

        Raises:
            BrokerError: the dead-letter publish failed (the message was not handled).
        """
        call = self._direct
        if call is None:
            call = self._direct = self._pipeline()
        try:
            if message.reply_to is not None and DEADLINE in message.headers:
                result = await run_within(_deadline(message), call, message)
            else:
                result = await call(message)
        except Exception as exc:
            attempts = getattr(exc, ATTEMPTS_ATTR, 1)
            self.failed += 1
            try:
                if message.reply_to is not None:  # the caller would get an error reply
                    return Outcome(self, FAILED, error=exc, attempts=attempts)
                await self.send_to_dead_letter(message, exc, attempts)
                return Outcome(self, DEAD_LETTERED, error=exc, attempts=attempts)
            finally:
                self._wake()
        outcome = Outcome(self, PROCESSED, result=result)
        if message.reply_to is not None:
            try:
                self.bus.codecs.encode(result)  # a delivery would fail to reply here
            except Exception as exc:
                await self.send_to_dead_letter(message, exc, 1)
                outcome = Outcome(self, DEAD_LETTERED, result=result, error=exc)
        self.processed += 1
        self._wake()
        return outcome

    async def start(self) -> None:
        """Subscribe on the bus's broker; returns once the subscription is live."""
        handle = self.build()
        options = dict(self.options)
        options["concurrency"] = self.concurrency
        self.subscription = await self.bus.broker.subscribe(
            self.topic, handle, group=self.group, **options
        )

    async def stop(self) -> None:
        """Stop taking messages; in-flight handlers finish. Safe to call twice."""
        sub, self.subscription = self.subscription, None
        if sub is not None:
            await sub.close()

    async def _settle_failure(self, message: Message, exc: Exception) -> None:
        attempts = getattr(exc, ATTEMPTS_ATTR, 1)
        self.failed += 1
        if message.reply_to is not None and self.answers:
            log.warning(
                "%s failed on request %r (id=%s): %s: %s; answering with an error",
                self.name,
                message.topic,
                message.id,
                type(exc).__name__,
                exc,
            )
            try:
                await self.bus.replies.send_error(message, exc)
            except UndeliverableError as gone:
                log.error("error reply to %r undeliverable: %s", message.reply_to, gone)
            else:
                self._wake()
                return
        await self.send_to_dead_letter(message, exc, attempts)
        self._wake()

    async def _settle_reply(self, message: Message, result: object) -> None:
        try:
            await self.bus.replies.send(message, result)
        except UndeliverableError as exc:
            log.error(
                "%s answered %r (id=%s) but nobody takes the reply at %r: %s",
                self.name,
                message.topic,
                message.id,
                message.reply_to,
                exc,
            )
            await self.send_to_dead_letter(message, exc, 1)
        except Exception as exc:  # an unencodable result: tell the caller, keep the request
            log.error("%s could not reply to %r: %s", self.name, message.id, exc)
            with contextlib.suppress(UndeliverableError):
                await self.bus.replies.send_error(message, exc)
            await self.send_to_dead_letter(message, exc, 1)

    async def send_to_dead_letter(
        self, message: Message, exc: BaseException, attempts: int
    ) -> None:
        """Publish ``message`` to the dead-letter topic with the error in its headers.

        Raises whatever the broker raises: the caller then leaves the original message
        unacknowledged, so a broker outage cannot lose it.
        """
        headers = dict(message.headers)
        headers[ERROR_TYPE] = type(exc).__name__
        headers[ERROR] = str(exc)[:2000]
        headers[DLQ_TOPIC] = message.topic
        headers[DLQ_GROUP] = self.group or ""
        headers[DLQ_ATTEMPTS] = str(attempts)
        record = replace(
            message, topic=self.dead_letter, headers=headers, reply_to=None, delivery=None
        )
        await self.bus.broker.publish(record)
        self.dead_lettered += 1
        log.error(
            "%s gave up on %r (id=%s) after %d attempt(s): %s: %s; dead-lettered to %r",
            self.name,
            message.topic,
            message.id,
            attempts,
            type(exc).__name__,
            exc,
            self.dead_letter,
        )

    async def wait_for(
        self, *, processed: int | None = None, settled: int | None = None, timeout: float = 10.0
    ) -> None:
        """Wait until the handler has processed (or settled: processed + failed) N messages.

        Raises:
            TimeoutError: the count was not reached in time.
        """

        def reached() -> bool:
            done = self.processed if processed is not None else self.processed + self.failed
            return done >= (processed if processed is not None else settled or 0)

        if reached():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (reached, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake(self) -> None:
        for reached, future in list(self._waiters):
            if not future.done() and reached():
                future.set_result(None)


def _deadline(message: Message) -> float:
    try:
        return max(float(message.headers[DEADLINE]) / 1000.0, 0.001)
    except ValueError:
        return 3600.0  # a malformed deadline must not fail the request
