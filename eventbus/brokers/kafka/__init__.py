"""The Kafka adapter (``kafka://h1:9092,h2:9092``), on confluent-kafka (librdkafka).

See `KafkaBroker` for the semantics and `KafkaOptions` for the settings; the user
guide is ``docs/kafka.md``.
"""

from eventbus.brokers.kafka.broker import INBOX_PREFIX, KafkaBroker
from eventbus.brokers.kafka.consumer import KafkaSubscription
from eventbus.brokers.kafka.options import KafkaOptions

__all__ = ["INBOX_PREFIX", "KafkaBroker", "KafkaOptions", "KafkaSubscription"]
