"""The broker examples run as a user runs them, each on its own broker family.

``examples/<broker>_orders.py`` (``examples/orders.py`` for memory://) runs as a process
on the broker under test, with the suite's topic name and fast test options.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conformance.conftest import BROKER_OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def test_the_order_service_example_runs_on_its_broker(
    url: str, broker_name: str, topic: str
) -> None:
    program = "orders.py" if broker_name == "memory" else f"{broker_name}_orders.py"
    env = {
        **os.environ,
        "EVENTBUS_URL": url,
        "EXAMPLE_TOPICS": topic,
        "EXAMPLE_OPTIONS": orjson.dumps(BROKER_OPTIONS.get(broker_name, {})).decode(),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / program)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pricing answered: {'total': 28.5}" in out
    assert out.count("shipped 10") == 4, out
    assert "REORDERED" not in out
    assert "audit saw 40 orders" in out
    assert "replay since start gives 40 orders" in out
