"""Private nats-server processes for tests that kill servers or need special settings.

Each runs on a spare loopback port with its own store directory; the shared server on
4222 is never touched.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import unavailable


class NatsServer:
    """A private nats-server that a test may kill -9 and restart (same port, same store)."""

    def __init__(self, workdir: Path, *args: str, scheme: str = "nats") -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            unavailable("nats-server is not installed: cannot start a private NATS server")
        assert binary is not None
        self.binary = binary
        self.workdir = workdir
        self.args = args
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / f"nats-server-{self.port}.log", "ab")  # noqa: SIM115  # the process owns it
        command = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), *self.args]
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited: see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the private nats-server did not listen on {self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
