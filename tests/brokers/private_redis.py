"""A private redis-server for tests that kill their server: own port, own data dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import unavailable

__all__ = ["PrivateRedis", "running"]


class PrivateRedis:
    """A redis-server process of this test's own: AOF on, fsync on every write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.directory / "redis.log")],
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # nothing to await: poll the port
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"private redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what AOF fsynced survives."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def running(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Yield a started private redis-server (AOF on, fsync always); kill it afterwards.

    Test modules wrap it in a fixture: ``yield from running(tmp_path)``.
    """
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed: these Redis tests start their own")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()
