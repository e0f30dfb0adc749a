"""The Redis Streams adapter (``redis://``, ``rediss://``), on redis-py's asyncio client.

- A topic is a Stream key. `RedisBroker.publish` is one ``XADD`` trimmed to about
  ``maxlen`` entries (``MAXLEN ~``): the payload goes in the field ``body``, the
  metadata in other fields (``ce_id``, ``ce_time``, ``content-type``, user
  headers...; see `eventbus.brokers.redis.wire`). An entry a plain client wrote
  without ``body`` is read as the JSON object of its fields (``application/json``).
- ``group=`` is a consumer group (created at ``$`` with ``MKSTREAM``) read with
  ``XREADGROUP`` in batches. An entry is acknowledged (``XACK``, batched) only after
  its handler returned; when the handler raises it is claimed again (``XCLAIM``,
  which counts the delivery) after a short backoff and handed to the handler again.
  Entries a member has taken stay claimed by it while it lives (their idle time is
  refreshed); entries of members that died are reclaimed by the live ones with
  ``XAUTOCLAIM`` once idle for ``reclaim_idle`` seconds. A member that closes hands
  the entries it had not handled back to the group at once.
  ``Delivery.redelivered`` is the entry's delivery count minus one.
- Without a group, a subscription reads with ``XREAD`` from the stream's end as it
  was when `RedisBroker.subscribe` returned: it gets every entry added after that.
- Replies to requests travel on pub/sub channels ``_INBOX.<id>`` (one per bus), never
  retained; ``PUBLISH`` reports the number of receivers, so a reply to a requester
  that is gone raises `UndeliverableError`.
- `RedisBroker.replay` reads the stream with ``XRANGE``.
- Every command is bounded by ``timeout``; a Redis that cannot be reached raises
  `BrokerUnavailable`. Consumers ride out a Redis restart by themselves: they retry
  with backoff and resume where their group was (with AOF persistence on, nothing
  acknowledged to a publisher is lost).
"""

from eventbus.brokers.redis.broker import INBOX_PREFIX, RedisBroker, RedisInbox, RedisOptions
from eventbus.brokers.redis.streams import RedisSubscription
from eventbus.brokers.redis.wire import BODY

__all__ = [
    "BODY",
    "INBOX_PREFIX",
    "RedisBroker",
    "RedisInbox",
    "RedisOptions",
    "RedisSubscription",
]
