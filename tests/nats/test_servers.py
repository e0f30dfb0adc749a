"""NatsBroker against private servers with special settings: TLS, no JetStream."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from eventbus import BrokerError, EventBus, Message
from eventbus.brokers.nats import NatsBroker
from tests.conftest import unavailable
from tests.helpers import Inbox
from tests.nats.servers import NatsServer


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed: cannot make a certificate for the TLS test")
    assert openssl is not None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_url(tmp_path: Path, topic: str) -> None:
    cert, key = self_signed(tmp_path)
    server = NatsServer(
        tmp_path,
        "-js", "-sd", str(tmp_path / "js"), "--tls", "--tlscert", str(cert), "--tlskey", str(key),
        scheme="tls",
    )  # fmt: skip
    server.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        inbox = Inbox()
        bus = EventBus(server.url, tls=trust)
        bus.subscriber(topic, group="g")(inbox.put)
        async with bus:
            sent = await bus.publish(topic, {"secure": True})
            (got,) = await inbox.wait_for(1)
        assert got.id == sent.id
        untrusting = NatsBroker(server.url, timeout=1.0)  # the system CAs do not know it
        with pytest.raises(BrokerError, match=r"cannot connect"):
            await untrusting.connect()
        await untrusting.close()
    finally:
        server.stop()


async def test_without_jetstream(tmp_path: Path, topic: str) -> None:
    """Durable topics need JetStream and say so; durable=False works on plain NATS."""
    server = NatsServer(tmp_path)
    server.start()
    try:
        broker = NatsBroker(server.url, timeout=1.0)
        await broker.connect()
        inbox = Inbox()
        await broker.subscribe(topic, inbox.put, durable=False)
        await broker.publish(Message(topic, b"core"), durable=False)
        await inbox.wait_for(1)
        with pytest.raises(BrokerError, match=r"nats-server -js"):
            await broker.publish(Message(topic, b"durable"))
        with pytest.raises(BrokerError, match=r"nats-server -js"):
            await broker.subscribe(topic, inbox.put, group="g")
        await broker.close()
    finally:
        server.stop()
