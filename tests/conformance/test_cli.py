"""The operator commands as separate processes, on every broker that outlives a process.

``memory://`` lives inside one process, so it is left out here; tests/unit/test_cli_operator.py
runs the same commands in-process on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from eventbus.brokers import open_broker
from eventbus.testing import load
from tests.conformance.conftest import BROKER_OPTIONS, BROKERS

ROOT = Path(__file__).resolve().parents[2]


def options(broker_name: str) -> list[str]:
    """The suite's adapter options for this broker, as ``-o NAME=JSON`` arguments."""
    found = BROKER_OPTIONS.get(broker_name, {})
    return [arg for k, v in found.items() for arg in ("-o", f"{k}={orjson.dumps(v).decode()}")]


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(params=[name for name in BROKERS if name != "memory"])
def broker_name(request: pytest.FixtureRequest) -> str:
    """The conformance brokers whose topics outlive a process (all but memory://)."""
    name: str = request.param
    return name


@pytest.fixture
def cli(url: str, broker_name: str, topic: str) -> Run:
    """Run ``eventbus ARGS --url URL -o ...`` as a process on the broker under test."""

    def run(*args: str, on: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        where = on if on is not None else ["--url", url, *options(broker_name)]
        return subprocess.run(
            [sys.executable, "-m", "eventbus", *args, *where],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "CLI_APP_TOPIC": topic},
            check=False,
        )

    return run


def test_publish_replay_redeliver_as_processes(
    cli: Run, url: str, broker_name: str, topic: str, tmp_path: Path
) -> None:
    bodies = ['{"n":1}', '{"n":2,"fail":true}', '{"n":3}']
    for i, body in enumerate(bodies):
        done = cli("publish", topic, body, "--key", "k", "-H", f"x-i={i}")
        assert done.returncode == 0, done.stderr
        assert f"to {topic!r}" in done.stdout
    recording = tmp_path / "recording.jsonl"
    done = cli("replay", topic, "--to", str(recording))
    if not open_broker(url, **BROKER_OPTIONS.get(broker_name, {})).capabilities.retains:
        assert done.returncode == 2
        assert "keeps no messages" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert f"replayed 3 messages from {topic!r} to {recording}" in done.stderr
    messages = load(recording)
    assert [m.body for m in messages] == [b.encode() for b in bodies]
    assert [m.headers["x-i"] for m in messages] == ["0", "1", "2"]
    assert {m.key for m in messages} == {"k"}

    app = ["--app", "tests.cli_app:make_bus", "--json"]
    done = cli("redeliver", str(recording), *app, on=["--url", "memory://"])
    assert done.returncode == 1, done.stderr
    report = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [r["status"] for r in report] == ["processed", "dead_lettered", "processed"]
    assert [r["id"] for r in report] == [m.id for m in messages]
    assert report[2]["outcomes"][0]["result"] == {"billed": 3}


def test_replay_of_an_unknown_topic_as_a_process(cli: Run, topic: str) -> None:
    done = cli("replay", f"{topic}.never")
    assert done.returncode == 2
    assert done.stderr.startswith("eventbus: ")
    assert f"{topic}.never" in done.stderr or "keeps no messages" in done.stderr


def test_tail_as_a_process_sees_what_is_published(
    cli: Run, url: str, broker_name: str, topic: str
) -> None:
    command = ["tail", topic, "--json", "--count", "2", "--url", url, *options(broker_name)]
    tail = subprocess.Popen(
        [sys.executable, "-m", "eventbus", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert tail.stderr is not None
        ready = threading.Event()
        # The tail says so on stderr once its subscription is live; read that line off-thread
        # so a tail that never gets there fails the wait below instead of hanging the test.
        threading.Thread(
            target=lambda: ready.set() if "tailing" in tail.stderr.readline() else None,  # type: ignore[union-attr]
            daemon=True,
        ).start()
        assert ready.wait(60), "the tail did not subscribe"
        for body in ('{"n":1}', "plain text"):
            kind = "application/json" if body.startswith("{") else "text/plain"
            done = cli("publish", topic, body, "--content-type", kind)
            assert done.returncode == 0, done.stderr
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, err
    records = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["encoding"], r["body"]) for r in records] == [
        ("json", {"n": 1}),
        ("utf-8", "plain text"),
    ]
