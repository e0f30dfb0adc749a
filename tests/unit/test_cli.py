"""The `eventbus run` command, including --workers supervision, in real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eventbus import ConfigurationError, EventBus
from eventbus.cli import load_bus, main

APP = textwrap.dedent(
    """
    import os, pathlib
    from eventbus import EventBus

    OUT = pathlib.Path(os.environ["APP_OUT"])
    bus = EventBus("memory://cli-app", name="cli-app")

    @bus.subscriber("jobs")
    async def job(n: int) -> None: ...

    async def mark(message, call_next):
        return await call_next(message)

    original = bus._on_started

    async def started() -> None:
        await original()
        (OUT / f"started-{os.getpid()}").write_text(os.environ.get("EVENTBUS_WORKER", "-"))

    async def closing() -> None:
        (OUT / f"stopped-{os.getpid()}").write_text("bye")

    bus._on_started = started
    bus._on_closing = closing

    def factory() -> EventBus:
        return bus

    not_a_bus = 42
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cli_app.py").write_text(APP)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APP_OUT", str(out))
    monkeypatch.syspath_prepend(str(tmp_path))
    return out


def wait_for_files(directory: Path, prefix: str, count: int, timeout: float = 30.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(directory.glob(f"{prefix}-*"))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(
        f"expected {count} {prefix} files in {directory}, got {list(directory.iterdir())}"
    )


def test_load_bus_forms(app: Path) -> None:
    assert isinstance(load_bus("cli_app:bus"), EventBus)
    assert load_bus("cli_app:factory") is load_bus("cli_app:bus")
    assert load_bus("cli_app") is load_bus("cli_app:bus")
    with pytest.raises(ConfigurationError, match="not an EventBus"):
        load_bus("cli_app:not_a_bus")
    with pytest.raises(ConfigurationError, match="has no attribute"):
        load_bus("cli_app:missing")
    with pytest.raises(ConfigurationError, match="cannot import"):
        load_bus("no_such_module_here")
    assert main(["run", "no_such_module_here"]) == 2


def test_run_stops_gracefully_on_sigterm(app: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus", "run", "cli_app:bus"], cwd=app.parent
    )
    try:
        wait_for_files(app, "started", 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (app / f"stopped-{proc.pid}").read_text() == "bye"


def test_workers_run_n_processes_and_replace_a_dead_one(app: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus", "run", "cli_app:bus", "--workers", "2"], cwd=app.parent
    )
    try:
        first = wait_for_files(app, "started", 2)
        workers = {int(p.name.split("-")[1]): p.read_text() for p in first}
        assert sorted(workers.values()) == ["0", "1"]
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        wait_for_files(app, "started", 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = {p.name for p in app.glob("stopped-*")}
    alive = {p.name.replace("started", "stopped") for p in app.glob("started-*")}
    assert stopped == alive - {f"stopped-{victim}"}, "every live worker shut down gracefully"
