"""Replay of a Kafka topic: every partition read to its end, merged by message time.

A reader thread assigns all partitions (from the earliest offset, or from
``offsets_for_times(since)``) and reads each until librdkafka reports its end; the
loop merges the partitions by message time, only ever taking a partition's next
message, so each partition stays in offset order. Messages are then filtered exactly
by ``Message.time >= since``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from eventbus.brokers.kafka.lanes import decode
from eventbus.errors import BrokerUnavailable
from eventbus.message import Message

__all__ = ["read_topic"]

log = logging.getLogger("eventbus.kafka")

_IN_FLIGHT = 8  # batches the reader may run ahead of the caller
_Post = tuple[str, Any, Any]


class _Reader:
    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        partitions: list[int],
        since_ms: int | None,
        timeout: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[_Post] = asyncio.Queue()
        self.slots = threading.Semaphore(_IN_FLIGHT)
        self.stop = False
        self._topic = topic
        self._partitions = partitions
        self._since_ms = since_ms
        self._timeout = timeout
        settings = dict(config)
        settings["enable.partition.eof"] = True
        settings.setdefault("logger", log)
        self._consumer = confluent_kafka.Consumer(settings)
        self.thread = threading.Thread(target=self._run, name=f"eventbus-kafka-replay:{topic}")
        self.thread.daemon = True

    def _post(self, item: _Post) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            self.stop = True

    def _run(self) -> None:
        consumer = self._consumer
        topic = self._topic
        try:
            if self._since_ms is None:
                starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._partitions]
            else:
                asked = [TopicPartition(topic, p, self._since_ms) for p in self._partitions]
                found = consumer.offsets_for_times(asked, timeout=self._timeout)
                starts = [tp for tp in found if tp.offset >= 0]  # -1: nothing that recent
            remaining = {tp.partition for tp in starts}
            self._post(("start", sorted(remaining), None))
            consumer.assign(starts)
            while remaining and not self.stop:
                if not self.slots.acquire(timeout=0.1):
                    continue
                first = consumer.poll(0.1)
                if first is None:
                    self.slots.release()
                    continue
                batch = consumer.consume(499, 0)
                batch.insert(0, first)
                items: list[Message] = []
                ended: list[int] = []
                for raw in batch:
                    error = raw.error()
                    if error is None:
                        if raw.partition() in remaining:
                            items.append(decode(topic, raw))
                    elif error.code() == KafkaError._PARTITION_EOF:
                        number = raw.partition() or 0
                        remaining.discard(number)
                        ended.append(number)
                    else:
                        log.warning("kafka replay of %r: %s", topic, error.str())
                self._post(("batch", items, ended))
            self._post(("end", None, None))
        except KafkaException as exc:
            self._post(
                ("error", BrokerUnavailable(f"kafka: replay of {topic!r} failed: {exc}"), None)
            )
        except Exception as exc:  # never leave the caller waiting
            self._post(("error", exc, None))
        finally:
            try:
                consumer.close()
            except Exception as exc:
                log.debug("kafka replay consumer close: %s", exc)


async def read_topic(
    config: Mapping[str, Any],
    topic: str,
    partitions: list[int],
    since: datetime | None,
    timeout: float,
) -> AsyncIterator[Message]:
    """Yield the retained messages of ``partitions``, merged by time, from ``since`` on.

    Raises:
        BrokerUnavailable: the cluster stopped answering (nothing arrived in ``timeout``).
    """
    since_ms = None if since is None else int(since.timestamp() * 1000)
    reader = _Reader(config, topic, partitions, since_ms, timeout)
    reader.thread.start()
    buffers: dict[int, deque[Message]] = {}
    open_partitions: set[int] = set()
    try:
        while True:
            try:
                async with asyncio.timeout(timeout):
                    kind, items, ended = await reader.queue.get()
            except TimeoutError:
                raise BrokerUnavailable(
                    f"kafka: replay of {topic!r} got nothing from the cluster in {timeout:g}s"
                ) from None
            if kind == "error":
                raise items
            if kind == "start":
                open_partitions = set(items)
                buffers = {p: deque() for p in items}
            elif kind == "batch":
                reader.slots.release()
                for message in items:
                    assert message.delivery is not None
                    buffers[message.delivery.partition or 0].append(message)
                open_partitions.difference_update(ended)
            done = kind == "end"
            # Take the earliest head while every partition still being read has one (or
            # everything was read): partitions stay in offset order, the merge in time order.
            while True:
                if not done and any(not buffers[p] for p in open_partitions):
                    break
                heads = [p for p, buffered in buffers.items() if buffered]
                if not heads:
                    break
                first = min(heads, key=lambda p: (buffers[p][0].time, p))
                message = buffers[first].popleft()
                if since is None or message.time >= since:
                    yield message
            if done:
                return
    finally:
        reader.stop = True
        await asyncio.to_thread(reader.thread.join)
