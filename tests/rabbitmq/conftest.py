"""Fixtures for the RabbitMQ adapter's own tests: the shared server, and a private node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import broker_url, reachable, unavailable
from tests.rabbitmq.cleanup import removing_queues, sweep

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


@pytest.fixture
def url() -> str:
    """The shared RabbitMQ server (skip, or fail with EVENTBUS_REQUIRE_BROKERS=1)."""
    return broker_url("rabbitmq")


@pytest.fixture
async def admin(url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel on the shared server, for looking at queues."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    yield channel
    await connection.close()


async def consumers(url: str, queue: str) -> int:
    """How many consumers ``queue`` has, from a passive declare on a fresh connection."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0
    finally:
        await connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateNode:
    """A RabbitMQ node of its own (own ports, data and cookie) that tests may restart.

    The shared server stays untouched: fault tests stop and start only this node.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"eventbus-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        dist = _free_port()
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (root / "rabbitmq-env.conf").write_text("")
        (root / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(root),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(root / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        log = (self.root / "server.out").open("wb")
        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not reachable(self.url, timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.root / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private RabbitMQ node did not start:\n{output}")
            time.sleep(0.2)
        self.ctl_sync("await_startup", "--timeout", str(int(timeout)))

    def ctl_sync(self, *args: str) -> str:
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            timeout=120,
            check=True,
        )
        return done.stdout.decode()

    async def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl -n <node> args`` without blocking the event loop."""
        process = await asyncio.create_subprocess_exec(
            str(RABBITMQ_BIN / "rabbitmqctl"),
            "-n",
            self.name,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        if process.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()}")
        return out.decode()

    async def queue_consumers(self, queue: str) -> int:
        """The consumer count of ``queue`` as ``rabbitmqctl list_queues`` reports it."""
        out = await self.ctl("list_queues", "-q", "--no-table-headers", "name", "consumers")
        for line in out.splitlines():
            name, _, count = line.rpartition("\t")
            if name == queue:
                return int(count)
        return 0

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl_sync("stop")
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own node only, by its process
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def private_node() -> Iterator[PrivateNode]:
    """A private RabbitMQ node, started once for the module and stopped after it."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        unavailable(f"rabbitmq-server is not installed in {RABBITMQ_BIN}")
    root = Path(tempfile.mkdtemp(prefix="eventbus-rabbitmq-"))
    node = PrivateNode(root)
    try:
        node.start()
    except Exception as exc:
        node.stop()
        unavailable(f"cannot start a private RabbitMQ node: {exc}")
    yield node
    node.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
async def clean_up_the_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Delete the queues and streams each test's brokers declared."""
    async with removing_queues(monkeypatch):
        yield


@pytest.fixture(scope="session", autouse=True)
def sweep_the_server() -> Iterator[None]:
    """At the end: queues of test topics that subprocesses (group members) declared."""
    yield
    sweep()
