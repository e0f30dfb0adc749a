"""A protobuf message class for tests, built at run time (no protoc needed)."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def _build() -> Any:
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName("eventbus.test.Greeting")
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto(
            name="eventbus_test_greeting.proto", package="eventbus.test", syntax="proto3"
        )
        message = proto.message_type.add(name="Greeting")
        field = descriptor_pb2.FieldDescriptorProto
        message.field.add(name="name", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        message.field.add(name="count", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
        pool.Add(proto)
        descriptor = pool.FindMessageTypeByName("eventbus.test.Greeting")
    return message_factory.GetMessageClass(descriptor)


Greeting: Any = _build()
