"""The NATS adapter (``nats://``, ``tls://``): JetStream-backed topics, core NATS on request.

See `NatsBroker` for the semantics and ``docs/nats.md`` for a guide. The package is
split in three: `broker` (the `NatsBroker`), `subscriptions` (JetStream consumer members
and core subscriptions) and `wire` (the fast path through nats-py, the header codec and
JetStream names).
"""

from eventbus.brokers.nats.broker import NatsBroker

__all__ = ["NatsBroker"]
