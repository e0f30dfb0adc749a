"""The NATS adapter (``nats://``, ``tls://``): JetStream-backed topics, core NATS on request.

See `NatsBroker` for the semantics and ``docs/nats.md`` for a guide. Modules:

- `broker`: `NatsBroker` (connection, publish, subscribe, replay);
- `subscriptions`: JetStream consumer members and core subscriptions;
- `jetstream`: streams on demand, consumers, replay, large bodies in the object store;
- `acks`: waiting for JetStream's acknowledgements of publishes;
- `settings`: options, and nats-py errors translated into eventbus's;
- `wire`: the fast path through nats-py, the NATS header codec, JetStream names.

Tested with nats-py 2.9 to 2.16 and nats-server 2.9.
"""

from eventbus.brokers.nats.broker import NatsBroker

__all__ = ["NatsBroker"]
