"""Options of the Kafka adapter: the URL, the adapter's own settings, and librdkafka configs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError

__all__ = ["ASSIGNMENT_STRATEGIES", "KafkaOptions", "bootstrap_servers"]

log = logging.getLogger("eventbus.kafka")

DEFAULT_PORT = 9092
ASSIGNMENT_STRATEGIES = ("cooperative-sticky", "roundrobin", "range")


def bootstrap_servers(url: str) -> str:
    """Turn ``kafka://h1:9092,h2:9092`` into librdkafka's ``bootstrap.servers`` list.

    ``kafka://`` alone means ``localhost:9092``; a host without a port gets 9092.

    Raises:
        ConfigurationError: not a ``kafka://`` URL, or credentials, path or query in it.
    """
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigurationError(f"KafkaBroker takes kafka:// URLs, not {url!r}")
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"put Kafka credentials in config={{'sasl.username': ...}}, not in the URL {url!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"a kafka:// URL names only hosts (kafka://h1:9092,h2:9092), not {url!r}"
        )
    hosts = []
    for host in parts.netloc.split(","):
        host = host.strip()
        if not host:
            continue
        name, colon, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if not colon:
            name, port = host, str(DEFAULT_PORT)
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"bad Kafka host {host!r} in {url!r}: expected host:port")
        hosts.append(f"{name}:{port}")
    return ",".join(hosts) or f"localhost:{DEFAULT_PORT}"


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if value == 0 and not zero:
        raise ConfigurationError(f"{name} must be more than 0 seconds")
    return float(value)


def _count(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return value


def _config(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(f"{name} must be a mapping of librdkafka settings, not {value!r}")
    return dict(value)


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """The adapter's settings, checked when built (see `KafkaOptions.of`).

    Attributes:
        partitions: Partitions of the topics the adapter creates on demand.
        replication: Replication factor of created topics (``None``: the broker's default).
        publish_timeout: Seconds a publish may wait for the broker's acknowledgement
            (librdkafka ``message.timeout.ms``) before it raises `BrokerUnavailable`.
        timeout: Seconds for connecting, creating topics and joining a group.
        linger: Seconds the producer waits to fill a batch (``linger.ms``; 0 sends at once).
        fetch_wait: Longest a fetch waits on the broker for data (``fetch.wait.max.ms``).
        session_timeout: Group session timeout (``session.timeout.ms``).
        heartbeat_interval: Group heartbeat interval (``heartbeat.interval.ms``).
        max_poll_interval: Rebalance timeout (``max.poll.interval.ms``).
        commit_interval: Seconds between commits of handled offsets.
        max_buffered: Messages one subscription holds in memory before it waits for its
            handlers (at twice that, fetching pauses).
        assignment: Partition assignment strategy (``cooperative-sticky`` by default).
        inbox_retention: Seconds a reply topic keeps its messages.
        max_message_bytes: Largest message (producer ``message.max.bytes`` and the
            ``max.message.bytes`` of created topics).
        client_id: Kafka ``client.id``.
        config: librdkafka settings for every client (security, SASL...).
        producer_config: librdkafka settings for the producer only.
        consumer_config: librdkafka settings for consumers only.
    """

    partitions: int = 6
    replication: int | None = None
    publish_timeout: float = 30.0
    timeout: float = 30.0
    linger: float = 0.005
    fetch_wait: float = 0.5
    session_timeout: float = 45.0
    heartbeat_interval: float = 3.0
    max_poll_interval: float = 300.0
    commit_interval: float = 1.0
    max_buffered: int = 1000
    assignment: str = "cooperative-sticky"
    inbox_retention: float = 60.0
    max_message_bytes: int = 4 * 1024 * 1024
    client_id: str = "eventbus"
    config: Mapping[str, Any] = field(default_factory=dict)
    producer_config: Mapping[str, Any] = field(default_factory=dict)
    consumer_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: Mapping[str, object]) -> KafkaOptions:
        """Check ``options`` (the adapter's keyword arguments) and build the settings.

        Raises:
            ConfigurationError: an unknown option or a bad value, saying which.
        """
        known = cls.__dataclass_fields__
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for kafka://; it takes: "
                + ", ".join(known)
            )
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name in ("partitions", "max_buffered"):
                values[name] = _count(name, value)
            elif name == "max_message_bytes":
                values[name] = _count(name, value, minimum=1024)
            elif name == "replication":
                values[name] = None if value is None else _count(name, value)
            elif name in ("config", "producer_config", "consumer_config"):
                values[name] = _config(name, value)
            elif name == "assignment":
                if value not in ASSIGNMENT_STRATEGIES:
                    raise ConfigurationError(
                        f"assignment must be one of {', '.join(ASSIGNMENT_STRATEGIES)}, "
                        f"not {value!r}"
                    )
                values[name] = value
            elif name == "client_id":
                if not isinstance(value, str) or not value:
                    raise ConfigurationError(f"client_id must be a non-empty str, not {value!r}")
                values[name] = value
            else:
                values[name] = _seconds(name, value, zero=name == "linger")
        built = cls(**values)
        if built.heartbeat_interval >= built.session_timeout:
            raise ConfigurationError(
                f"heartbeat_interval ({built.heartbeat_interval:g}s) must be shorter than "
                f"session_timeout ({built.session_timeout:g}s)"
            )
        if built.max_poll_interval < built.session_timeout:
            raise ConfigurationError(
                f"max_poll_interval ({built.max_poll_interval:g}s) must be at least "
                f"session_timeout ({built.session_timeout:g}s)"
            )
        return built

    @property
    def revoke_timeout(self) -> float:
        """How long a revoked partition's in-flight handlers may run before they are cancelled.

        Past the rebalance timeout the group would drop this member, so stay under it.
        """
        return self.max_poll_interval * 0.8

    def common(self, bootstrap: str) -> dict[str, Any]:
        """Settings every client gets."""
        return {
            "bootstrap.servers": bootstrap,
            "client.id": self.client_id,
            "allow.auto.create.topics": False,  # the adapter creates topics, with its settings
            "log.connection.close": False,
            **self.config,
        }

    def producer(self, bootstrap: str) -> dict[str, Any]:
        """The producer's librdkafka config: acks=all, idempotence, Java-compatible partitioner."""
        return {
            **self.common(bootstrap),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": self.linger * 1000,
            "message.timeout.ms": int(self.publish_timeout * 1000),
            "message.max.bytes": self.max_message_bytes,
            # murmur2 is what the Java client uses: a key lands on the same partition
            # whichever client published it.
            "partitioner": "murmur2_random",
            **self.producer_config,
        }

    def consumer(self, bootstrap: str, group: str) -> dict[str, Any]:
        """A consumer's librdkafka config: manual commits only, earliest on out-of-range."""
        return {
            **self.common(bootstrap),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Only used when a committed offset is out of range (retention, a broker that
            # lost data): take what is left rather than skip it. A new group's start at
            # the end is set explicitly when it gets its partitions.
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": self.assignment,
            "session.timeout.ms": int(self.session_timeout * 1000),
            "heartbeat.interval.ms": int(self.heartbeat_interval * 1000),
            "max.poll.interval.ms": int(self.max_poll_interval * 1000),
            "fetch.wait.max.ms": int(self.fetch_wait * 1000),
            "fetch.max.bytes": max(self.max_message_bytes * 2, 52428800),
            **self.consumer_config,
        }

    def admin(self, bootstrap: str) -> dict[str, Any]:
        """The admin client's librdkafka config."""
        return self.common(bootstrap)
