"""The RabbitMQ adapter's options, checked when the broker (or a subscription) is built."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventbus.errors import ConfigurationError
from eventbus.presence import NODE_TOPIC_PREFIX, PRESENCE_TOPIC

__all__ = ["BrokerOptions", "publish_durable", "subscribe_options", "topic_matcher"]

_QUEUE_TYPES = ("classic", "quorum")
_SUBSCRIBE_OPTIONS = ("concurrency", "durable", "prefetch")
_MAX_AGE = re.compile(r"^\d+(Y|M|D|h|m|s)$")


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Adapter options of `RabbitMQBroker` (documented there)."""

    exchange: str = "eventbus"
    confirm: bool = True
    timeout: float = 10.0
    reconnect_interval: float = 1.0
    streams: bool | tuple[str, ...] = False
    stream_max_age: str | None = None
    stream_max_bytes: int | None = None
    queue_type: str = "classic"

    @classmethod
    def parse(cls, options: dict[str, object]) -> BrokerOptions:
        """Check ``options`` and build the options value.

        Raises:
            ConfigurationError: an unknown option or a bad value.
        """
        known = cls.__dataclass_fields__
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for amqp://; it takes: "
                f"{', '.join(known)} (and grace)"
            )
        values: dict[str, Any] = dict(options)
        exchange = values.get("exchange", "eventbus")
        if not isinstance(exchange, str) or not exchange or exchange.startswith("amq."):
            raise ConfigurationError(
                f"exchange must be a non-empty name not starting with 'amq.', not {exchange!r}"
            )
        for flag in ("confirm",):
            if flag in values and not isinstance(values[flag], bool):
                raise ConfigurationError(f"{flag} must be True or False, not {values[flag]!r}")
        for seconds in ("timeout", "reconnect_interval"):
            if seconds in values:
                value = values[seconds]
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ConfigurationError(f"{seconds} must be seconds > 0, not {value!r}")
                values[seconds] = float(value)
        if "streams" in values:
            values["streams"] = _streams(values["streams"])
        age = values.get("stream_max_age")
        if age is not None and (not isinstance(age, str) or not _MAX_AGE.match(age)):
            raise ConfigurationError(
                f"stream_max_age must look like '7D', '12h' or '30m' (x-max-age), not {age!r}"
            )
        size = values.get("stream_max_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigurationError(f"stream_max_bytes must be a whole number > 0, not {size!r}")
        queue_type = values.get("queue_type", "classic")
        if queue_type not in _QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type must be one of {', '.join(_QUEUE_TYPES)}, not {queue_type!r}"
            )
        return cls(**values)

    def group_arguments(self) -> dict[str, Any] | None:
        """Queue arguments of a durable group queue."""
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else None

    def stream_arguments(self) -> dict[str, Any]:
        """Queue arguments of a topic's stream queue."""
        arguments: dict[str, Any] = {"x-queue-type": "stream"}
        if self.stream_max_age is not None:
            arguments["x-max-age"] = self.stream_max_age
        if self.stream_max_bytes is not None:
            arguments["x-max-length-bytes"] = self.stream_max_bytes
        return arguments


def _streams(value: object) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence) or not all(isinstance(p, str) and p for p in value):
        raise ConfigurationError(
            f"streams must be True, False or a list of topic patterns (orders.#), not {value!r}"
        )
    return tuple(value)


def subscribe_options(options: dict[str, object]) -> tuple[int, bool, int]:
    """Check a subscription's options; return (concurrency, durable, prefetch).

    Raises:
        ConfigurationError: an unknown option or a bad value.
    """
    unknown = sorted(set(options) - set(_SUBSCRIBE_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown subscribe option(s) {', '.join(unknown)} for amqp://; it takes: "
            f"{', '.join(_SUBSCRIBE_OPTIONS)}"
        )
    concurrency = options.get("concurrency", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    durable = options.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable must be True or False, not {durable!r}")
    prefetch = options.get("prefetch", max(20, 4 * concurrency))
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < concurrency:
        raise ConfigurationError(
            f"prefetch must be a whole number >= concurrency ({concurrency}), not {prefetch!r}"
        )
    if prefetch > 65535:
        raise ConfigurationError(f"prefetch must be at most 65535 (AMQP), not {prefetch}")
    return concurrency, durable, prefetch


def publish_durable(options: dict[str, object]) -> bool:
    """Check a publish's options; return its ``durable`` flag.

    Raises:
        ConfigurationError: an unknown option or a bad value.
    """
    durable = options.get("durable")
    if durable.__class__ is bool and len(options) == 1:
        return bool(durable)  # the per-message path: no allocation
    unknown = sorted(set(options) - {"durable"})
    if unknown:
        raise ConfigurationError(
            f"unknown publish option(s) {', '.join(unknown)} for amqp://; it takes: durable"
        )
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable must be True or False, not {durable!r}")
    return durable


def topic_matcher(streams: bool | tuple[str, ...]) -> Callable[[str], bool]:
    """Return a predicate telling whether a topic has a stream, from the ``streams`` option.

    Patterns are AMQP topic patterns: ``*`` is one dot-separated word, ``#`` zero or
    more words. Answers are cached per topic. The registry's own topics (presence and
    node addresses, live-only and one per node) never get one: a stream queue per node
    would outlive every node.
    """
    if not streams:
        return lambda topic: False
    every = streams is True
    patterns = [] if isinstance(streams, bool) else [pattern.split(".") for pattern in streams]

    @functools.lru_cache(maxsize=4096)
    def matches(topic: str) -> bool:
        if topic == PRESENCE_TOPIC or topic.startswith(NODE_TOPIC_PREFIX):
            return False
        if every:
            return True
        words = topic.split(".")
        return any(_match(pattern, words) for pattern in patterns)

    return matches


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[start:]) for start in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])
