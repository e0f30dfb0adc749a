"""An application for the CLI tests: ``eventbus redeliver FILE --app tests.cli_app:make_bus``.

Its bus is configured for Kafka, as a production app would be; the tests run it on
another broker with ``--url``. The topic comes from ``CLI_APP_TOPIC`` so each test
can use a fresh one.
"""

from __future__ import annotations

import os

from eventbus import EventBus, RetryPolicy


def make_bus() -> EventBus:
    topic = os.environ.get("CLI_APP_TOPIC", "cli.orders")
    bus = EventBus("kafka://kafka.invalid:9092", retry=RetryPolicy(attempts=2, backoff=0.001))

    @bus.subscriber(topic, group="billing")
    async def bill(order: dict[str, int]) -> dict[str, int]:
        if order.get("fail"):
            raise ValueError(f"order {order['n']} refused")
        return {"billed": order["n"]}

    return bus
