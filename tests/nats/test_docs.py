"""The runnable examples of docs/nats.md run, on the test server, and print what they say."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "nats.md"


def examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return [block for block in blocks if "asyncio.run(main())" in block]


def expected_output(block: str) -> list[str]:
    """The ``print(...)  # output`` comments of an example, in order."""
    return [m.group(1) for m in re.finditer(r"print\(.*\)\s+# (.+)", block)]


@pytest.mark.parametrize("block", examples(), ids=["quick-start", "request-reply"])
async def test_example_runs(block: str, url: str, topic: str) -> None:
    code = block.replace("nats://127.0.0.1:4222", url)
    code = re.sub(r'"(orders|pricing)\.', rf'"{topic}.\1.', code)  # fresh topics per run
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == expected_output(block)
