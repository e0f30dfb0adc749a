"""The producer bridge: librdkafka's delivery reports, brought to the event loop in batches.

``produce()`` only queues a message in librdkafka (it never blocks), so it is called
on the loop. Delivery reports are served by one thread blocked in ``poll()`` (the GIL
is released while it waits); each report resolves the publisher's future, and all the
reports one ``poll()`` served reach the loop in a single ``call_soon_threadsafe``.
librdkafka batches whatever is queued within ``linger.ms`` per partition, so many
publishes in flight share produce requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from eventbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ClosedError,
    ConfigurationError,
    TopicNotFound,
)

__all__ = ["Batch", "ProducerBridge", "ProducerFailed", "translate"]

log = logging.getLogger("eventbus.kafka")

_POLL = 0.1
_SPACE_WAIT = 0.01  # seconds between retries of a produce() refused by a full queue

_UNAVAILABLE = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


class ProducerFailed(Exception):
    """The librdkafka producer hit a fatal error; it must be replaced (internal)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


# The idempotent producer's state is gone on the broker (it restarted and lost it):
# librdkafka cannot continue without risking duplicates, the producer must be replaced.
_PRODUCER_STATE_LOST = {
    KafkaError._FATAL,
    KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaError.INVALID_PRODUCER_EPOCH,
}


def translate(error: KafkaError, where: str) -> Exception:
    """Turn a librdkafka error into the eventbus exception a caller can act on."""
    code = error.code()
    if error.fatal() or code in _PRODUCER_STATE_LOST:
        return ProducerFailed(error)
    if code in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
        return ClosedError(
            f"{where} was dropped: the broker was closed before Kafka acknowledged it"
        )
    if code in _UNAVAILABLE:
        return BrokerUnavailable(f"Kafka did not acknowledge {where}: {error.str()}")
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        return TopicNotFound(f"{where}: the topic does not exist on the Kafka cluster")
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return BrokerError(
            f"{where} is larger than the topic or producer allows ({error.str()}); raise "
            "max_message_bytes (and the topic's max.message.bytes)"
        )
    return BrokerError(f"Kafka refused {where}: {error.str()}")


class Batch:
    """Delivery reports of a batch of publishes, settled with one future (internal).

    The report thread counts reports itself and hands the batch to the loop once,
    when the last report arrived: one loop callback per batch, not per message.
    ``sent`` and ``sealed`` are written by the loop, ``delivered`` and ``error`` by the
    report thread only.
    """

    __slots__ = ("delivered", "error", "future", "reports", "sealed", "sent")

    def __init__(
        self,
        future: asyncio.Future[None],
        reports: deque[tuple[asyncio.Future[None] | Batch, KafkaError | None]],
    ) -> None:
        self.future = future
        self.reports = reports
        self.sent = 0
        self.delivered = 0
        self.sealed = False  # every message of the batch was handed to librdkafka
        self.error: KafkaError | None = None

    def report(self, error: KafkaError | None, _: object) -> None:
        """librdkafka's delivery callback, on the report thread."""
        self.delivered += 1
        if error is not None and self.error is None:
            self.error = error
        if self.sealed and self.delivered == self.sent:
            self.reports.append((self, None))

    def finish(self, failed: bool) -> None:
        """On the loop: resolve the future once every report is in (idempotent)."""
        future = self.future
        if not self.sealed or self.delivered != self.sent or future.done():
            return
        if self.error is None:
            future.set_result(None)
        elif failed:
            future.set_exception(ProducerFailed(self.error))
        else:
            future.set_exception(translate(self.error, "a publish of the batch"))


class ProducerBridge:
    """One librdkafka producer and the thread that serves its delivery reports.

    Args:
        config: librdkafka producer settings.
        on_fatal: Called on the loop when the producer hit a fatal error (the broker lost
            the idempotent producer's state, say); the owner then replaces the bridge.

    Raises:
        ConfigurationError: librdkafka rejected a setting.
    """

    def __init__(
        self, config: Mapping[str, Any], on_fatal: Callable[[ProducerBridge], object]
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._reports: deque[tuple[asyncio.Future[None] | Batch, KafkaError | None]] = deque()
        self._scheduled = False
        self._stopping = False
        self._space: asyncio.Future[None] | None = None
        # Futures without a report yet: failed together if the producer dies, so no
        # publisher waits forever on a report librdkafka will never send.
        self._pending: set[asyncio.Future[None]] = set()
        self._on_fatal = on_fatal
        self.failed = False
        self.timeouts = 0
        """Publishes in a row that got no acknowledgement (the owner's watchdog)."""
        self.checking = False
        settings = dict(config)
        settings["error_cb"] = self._on_error
        settings.setdefault("logger", log)
        try:
            self.producer = confluent_kafka.Producer(settings)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Kafka producer setting: {exc}") from None
        self._thread = threading.Thread(
            target=self._serve, name="eventbus-kafka-producer", daemon=True
        )
        self._thread.start()

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> asyncio.Future[None]:
        """Queue one message; the future resolves with its delivery report.

        Raises:
            BufferError: librdkafka's queue is full; await `wait_for_space` and retry.
            KafkaException: the producer is unusable (a fatal error).
        """
        future: asyncio.Future[None] = self.loop.create_future()
        reports = self._reports
        self._pending.add(future)
        self.producer.produce(
            topic,
            value,
            key,
            headers=headers,  # type: ignore[arg-type]  # dict[str, str] is fine at run time
            on_delivery=lambda error, _: reports.append((future, error)),
        )
        return future

    def batch(self) -> Batch:
        """Start a batch: `send_to` it, then `seal` it and await its future."""
        batch = Batch(self.loop.create_future(), self._reports)
        self._pending.add(batch.future)
        return batch

    def send_to(
        self, batch: Batch, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        """Queue one message of ``batch``; raises like `send` (the batch is unchanged then)."""
        self.producer.produce(
            topic,
            value,
            key,
            headers=headers,  # type: ignore[arg-type]  # dict[str, str] is fine at run time
            on_delivery=batch.report,
        )
        batch.sent += 1

    def seal(self, batch: Batch) -> asyncio.Future[None]:
        """Every message of the batch is queued: its future resolves with the last report."""
        batch.sealed = True
        batch.finish(self.failed)
        return batch.future

    def send_and_forget(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        """Queue one message without waiting for its report; failures are logged."""
        self.producer.produce(
            topic,
            value,
            key,
            headers=headers,  # type: ignore[arg-type]  # dict[str, str] is fine at run time
            on_delivery=_log_failure,
        )

    async def wait_for_space(self) -> None:
        """Wait until some queued message was delivered (or failed).

        Reports of a batch reach the loop once, with its last one, so a full queue made
        of one unsealed batch would never signal: wait at most a few milliseconds.
        """
        if self._space is None or self._space.done():
            self._space = self.loop.create_future()
        await asyncio.wait((self._space,), timeout=_SPACE_WAIT)

    def _serve(self) -> None:
        producer = self.producer
        reports = self._reports
        while not self._stopping:
            try:
                producer.poll(_POLL)
            except Exception as exc:  # a fatal error surfaces here as well as in error_cb
                log.debug("kafka producer poll: %r", exc)
            if reports and not self._scheduled:
                self._scheduled = True
                try:
                    self.loop.call_soon_threadsafe(self._settle)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _settle(self) -> None:
        # Runs on the loop. Clear the flag first: a report appended from now on either is
        # drained below or makes the thread schedule another pass.
        self._scheduled = False
        reports = self._reports
        pending = self._pending
        failed = self.failed
        while reports:
            target, error = reports.popleft()
            if isinstance(target, Batch):
                target.finish(failed)
                if target.future.done():
                    pending.discard(target.future)
                continue
            future = target
            pending.discard(future)
            if future.done():  # the publisher was cancelled
                continue
            if error is None:
                future.set_result(None)
            elif self.failed:  # purged by a fatal error: the message was not written
                future.set_exception(ProducerFailed(error))
            else:
                future.set_exception(translate(error, "the publish"))
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)

    def _on_error(self, error: KafkaError) -> None:
        # librdkafka's error callback, on the poll thread. Most errors are transient
        # (a broker down: librdkafka reconnects by itself); fatal ones kill the producer.
        if error.fatal():
            log.error("kafka producer fatal error: %s; it will be replaced", error.str())
            if not self.failed:
                self.failed = True
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody publishes
                    self.loop.call_soon_threadsafe(self._on_fatal, self)
        else:
            log.warning("kafka producer: %s", error.str())

    async def close(self, timeout: float) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop the poll thread."""
        await asyncio.to_thread(self.producer.flush, timeout)
        self._stopping = True
        await asyncio.to_thread(self._thread.join)
        if len(self.producer):
            self.producer.purge()
            with contextlib.suppress(Exception):  # a fatal error is raised again here
                self.producer.poll(0)  # serve the purged messages' reports (non-blocking)
        self._settle()
        self.fail_pending()

    def fail_pending(self) -> None:
        """Fail every publish still waiting for a report (the producer is gone)."""
        pending, self._pending = self._pending, set()
        for future in pending:
            if not future.done():
                future.set_exception(ProducerFailed(KafkaError(KafkaError._FATAL)))


def _log_failure(error: KafkaError | None, message: object) -> None:
    if error is not None:
        log.warning("kafka: a publish that was not awaited failed: %s", error.str())
