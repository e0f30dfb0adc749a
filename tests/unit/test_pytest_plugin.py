"""The pytest plugin's fixtures, and the documentation's test example, run as pytest sessions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
README = Path(__file__).resolve().parents[2] / "README.md"


def run_pytest(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


PLUGIN_TESTS = """
import pytest
from eventbus import EventBus
from eventbus.testing import TestBus

pytestmark = pytest.mark.asyncio  # pytest-asyncio's strict mode: the fixtures work there too


async def test_memory_bus_is_started_and_private(memory_bus: EventBus) -> None:
    assert memory_bus.is_running
    assert memory_bus.url.startswith("memory://test-")
    got = []
    await memory_bus.subscribe("t", got.append)
    await memory_bus.publish("t", {"n": 1})
    await memory_bus.subscribers[0].wait_for(processed=1)
    assert got == [{"n": 1}]


async def test_testbus_wraps_app_bus(testbus: TestBus, app_bus: EventBus) -> None:
    assert testbus.bus is app_bus
    assert app_bus.is_running
    await testbus.publish("t", {"n": 2})
    assert testbus.payloads("t") == [{"n": 2}]


def test_eventbus_url(eventbus_url: str) -> None:
    assert eventbus_url == "memory://from-option"


async def test_url_bus(url_bus: EventBus) -> None:
    assert url_bus.is_running
    assert url_bus.url == "memory://from-option"
"""


def test_fixtures_work_in_strict_mode_and_the_url_comes_from_the_option(tmp_path: Path) -> None:
    (tmp_path / "test_plugin.py").write_text(PLUGIN_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
    done = run_pytest(tmp_path, "--eventbus-url", "memory://from-option")
    assert "4 passed" in done.stdout, done.stdout + done.stderr

    done = run_pytest(tmp_path)
    assert "2 passed, 2 skipped" in done.stdout, done.stdout + done.stderr
    assert "no broker URL: pass --eventbus-url URL or set EVENTBUS_URL" in done.stdout


@pytest.mark.parametrize(
    ("doc", "files", "passed"),
    [
        (DOCS, {"shop.py", "test_shop.py", "conftest.py", "pytest.ini"}, 4),
        (README, {"shop.py", "test_shop.py", "pytest.ini"}, 4),
    ],
    ids=["docs/testing.md", "README.md"],
)
def test_the_documented_example_runs(
    tmp_path: Path, doc: Path, files: set[str], passed: int
) -> None:
    """Every block of the document that starts with ``# <file name>`` is written out and run."""
    blocks = re.findall(r"```(?:python|ini)\n# (\S+)\n(.*?)```", doc.read_text(), re.S)
    found = {name: text for name, text in blocks}
    assert set(found) == files
    for name, text in found.items():
        (tmp_path / name).write_text(text)
    done = run_pytest(tmp_path)
    assert f"{passed} passed" in done.stdout, done.stdout + done.stderr
