"""The examples in docs/redis.md run as written (on a private redis-server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers.private_redis import PrivateRedis, running

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    yield from running(tmp_path)


EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "redis.md").read_text(), re.S)


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_example_runs(code: str, private_redis: PrivateRedis) -> None:
    env = {**os.environ, "EVENTBUS_URL": private_redis.url}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout, "an example prints what it did"
