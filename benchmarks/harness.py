"""Shared pieces of the benchmarks: payloads, timers, and the ratio table.

Every broker benchmark measures, in one run on the same server, the plain client
library, eventbus and FastStream, and prints each one's figures with its ratio to the
plain client (higher is better for rates, lower for latencies).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

PAYLOAD_BYTES = 256


def payload(i: int) -> dict[str, object]:
    """A JSON object of ~256 bytes when encoded, numbered ``i``."""
    base: dict[str, object] = {"id": i, "kind": "reading", "sensor": f"sensor-{i % 97}", "pad": ""}
    size = len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * max(PAYLOAD_BYTES - size, 0)
    return base


@dataclass
class Row:
    """One contender's figures in one benchmark table."""

    name: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class Table:
    """Figures of several contenders; the first row is the baseline of the ratios."""

    title: str
    columns: dict[str, str]  # column -> "rate" (higher is better) or "latency"
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, **figures: float) -> None:
        self.rows.append(Row(name, dict(figures)))

    def render(self) -> str:
        base = self.rows[0].figures if self.rows else {}
        head = f"{'':<22}" + "".join(f"{c:>26}" for c in self.columns)
        lines = [f"== {self.title}", head]
        for row in self.rows:
            cells = []
            for column, kind in self.columns.items():
                value = row.figures.get(column)
                if value is None:
                    cells.append(f"{'n/a':>26}")
                    continue
                unit = "/s" if kind == "rate" else " ms"
                ratio = ""
                if column in base and base[column] and row is not self.rows[0]:
                    ratio = f" ({value / base[column]:.2f}x)"
                text = f"{value:,.0f}{unit}" if kind == "rate" else f"{value:.3f}{unit}"
                cells.append(f"{text + ratio:>26}")
            lines.append(f"{row.name:<22}" + "".join(cells))
        return "\n".join(lines)


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    """Seconds ``fn`` takes, after a full garbage collection."""
    gc.collect()
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def latencies(call: Callable[[int], Awaitable[object]], count: int) -> tuple[float, float]:
    """Sequential calls; returns (p50, p99) in milliseconds."""
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def concurrent_rate(
    call: Callable[[int], Awaitable[object]], total: int, workers: int
) -> float:
    """Calls per second with ``workers`` concurrent callers sharing ``total`` calls."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await call(i)

    seconds = await timed(lambda: _gather(worker() for _ in range(workers)))
    return total / seconds


async def _gather(coros: object) -> None:
    await asyncio.gather(*coros)  # type: ignore[call-overload]


def arguments(description: str, default_n: int = 50_000) -> argparse.Namespace:
    """Common command line: ``--n`` messages, ``--requests`` for latency runs, ``--url``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=default_n, help="messages per throughput run")
    parser.add_argument("--requests", type=int, default=5_000, help="requests per latency run")
    parser.add_argument("--url", default=None, help="broker URL (default: the local server)")
    return parser.parse_args()
