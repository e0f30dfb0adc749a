"""The ``eventbus`` command.

``eventbus run module:attr [--workers N]`` runs a bus until SIGINT/SIGTERM. With
``--workers N`` it runs N processes of the same bus: more members in the same
consumer groups, which is how eventbus scales out. A worker that dies is restarted.

``eventbus services [--url URL]`` lists the services, nodes, versions and ages the
registry sees on a broker; ``eventbus call service.endpoint '{"json": 1}' [--url URL]``
calls an endpoint through the registry and prints the reply as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType

import orjson

from eventbus.brokers import open_broker
from eventbus.bus import EventBus, default_bus
from eventbus.errors import (
    ConfigurationError,
    EventBusError,
    RemoteError,
    RequestTimeout,
    ServiceNotFound,
)
from eventbus.presence import PresenceRegistry
from eventbus.registry import Node, Registry
from eventbus.tracing import install_log_filter

__all__ = ["load_bus", "main"]

log = logging.getLogger("eventbus.cli")

Command = Callable[[argparse.Namespace], int]


def load_bus(target: str) -> EventBus:
    """Import ``module:attr`` (or ``module``) and return the `EventBus` it names.

    ``attr`` may be a bus or a function returning one. Without ``attr``, the module's
    ``bus`` attribute is used, else the default bus its handlers registered on.

    Raises:
        ConfigurationError: the module or attribute cannot be found, or is no bus.
    """
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    if not attr:
        found = getattr(module, "bus", None)
        return found if isinstance(found, EventBus) else default_bus()
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from None
    if callable(value) and not isinstance(value, EventBus):
        value = value()
    if not isinstance(value, EventBus):
        raise ConfigurationError(f"{target!r} is a {type(value).__name__}, not an EventBus")
    return value


def _run(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _supervise(args.target, args.workers, args.log_level)
    bus = load_bus(args.target)
    asyncio.run(bus.run())
    return 0


def _supervise(target: str, workers: int, log_level: str) -> int:
    """Run ``workers`` child processes of ``eventbus run target``; restart those that die."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    command = [sys.executable, "-m", "eventbus", "--log-level", log_level, "run", target]

    def spawn(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "EVENTBUS_WORKER": str(index)}
        return subprocess.Popen(command, env=env)

    procs = {i: spawn(i) for i in range(workers)}
    restarts = dict.fromkeys(procs, 0)
    log.info("supervising %d workers of %s: %s", workers, target, [p.pid for p in procs.values()])
    try:
        while not stopping:
            time.sleep(0.2)
            for index, proc in list(procs.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                restarts[index] += 1
                delay = min(0.5 * 2 ** min(restarts[index], 6), 30.0)
                log.warning(
                    "worker %d (pid %d) exited with %d; restarting in %.1fs",
                    index,
                    proc.pid,
                    code,
                    delay,
                )
                time.sleep(delay)
                procs[index] = spawn(index)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30.0
        for proc in procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _broker_options(pairs: Sequence[str]) -> dict[str, object]:
    """``["fetch_wait=0.05", "name=x"]`` -> options; values are read as JSON when they parse."""
    options: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--option takes NAME=VALUE, not {pair!r}")
        try:
            options[name] = orjson.loads(text)
        except orjson.JSONDecodeError:
            options[name] = text
    return options


def _registry_bus(args: argparse.Namespace) -> EventBus:
    settle: float = args.wait
    if settle < 0:
        raise ConfigurationError(f"--wait must be >= 0 seconds, not {settle!r}")
    url = args.url or os.environ.get("EVENTBUS_URL") or "memory://"
    broker = open_broker(url, **_broker_options(args.option)) if args.option else None
    return EventBus(url, broker=broker, registry=lambda bus: PresenceRegistry(bus, settle=settle))


def _age(node: Node, now: datetime) -> str:
    if node.started is None:
        return "-"
    seconds = max(int((now - node.started).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_services(nodes: Sequence[Node], now: datetime | None = None) -> str:
    """The table ``eventbus services`` prints: one line per node, grouped by service."""
    now = now or datetime.now(UTC)
    header = ("SERVICE", "VERSION", "NODE", "AGE", "ENDPOINTS")
    rows = [header]
    for node in sorted(nodes, key=lambda n: (n.service, n.version, n.id)):
        endpoints = ", ".join(sorted(node.endpoints)) or "-"
        rows.append((node.service, node.version or "-", node.id, _age(node, now), endpoints))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def _services(args: argparse.Namespace) -> int:
    async def collect() -> tuple[str, list[Node]]:
        bus = _registry_bus(args)
        async with bus:
            registry = bus.registry
            found = [
                node for name in await registry.services() for node in await registry.nodes(name)
            ]
        return bus.url, found

    url, nodes = asyncio.run(collect())
    if not nodes:
        hint = ""
        if url.startswith("memory:"):
            hint = " (memory:// is private to each process: point --url at a network broker)"
        print(f"no services found on {url}{hint}", file=sys.stderr)
        return 0
    print(format_services(nodes))
    return 0


def _call(args: argparse.Namespace) -> int:
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"the payload must be JSON: {exc}") from None

    async def call() -> object:
        bus = _registry_bus(args)
        async with bus:
            service, endpoint = await _split_target(args.target, bus.registry)
            client = bus.client(service, timeout=args.timeout, retries=args.retries)
            return await client.call(endpoint, payload)

    try:
        reply = asyncio.run(call())
    except (RemoteError, RequestTimeout, ServiceNotFound) as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return 1
    if isinstance(reply, bytes):
        sys.stdout.buffer.write(reply)
        sys.stdout.flush()
    elif isinstance(reply, str):
        print(reply)
    else:
        print(orjson.dumps(reply, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return 0


async def _split_target(target: str, registry: Registry) -> tuple[str, str]:
    """``service.endpoint`` -> (service, endpoint), the longest live service name first."""
    parts = target.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigurationError(
            f"call takes service.endpoint (e.g. greeter.hello), not {target!r}"
        )
    for cut in range(len(parts) - 1, 0, -1):
        service = ".".join(parts[:cut])
        if await registry.nodes(service):
            return service, ".".join(parts[cut:])
    known = ", ".join(await registry.services()) or "none"
    raise ServiceNotFound(
        f"no live service matches {target!r} (read as service.endpoint); known services: {known}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EVENTBUS_LOG_LEVEL"),
        help="logging level (default INFO for run, WARNING otherwise)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a bus until SIGINT/SIGTERM")
    run.add_argument("target", help="module:attr naming an EventBus (or module, for its bus)")
    run.add_argument("--workers", type=int, default=1, help="processes to run (default 1)")
    run.set_defaults(handler=_run, quiet=False)
    services = commands.add_parser("services", help="list services, nodes, versions and ages")
    services.set_defaults(handler=_services, quiet=True)
    call = commands.add_parser("call", help="call service.endpoint with a JSON payload")
    call.add_argument("target", help="service.endpoint, e.g. greeter.hello")
    call.add_argument("payload", nargs="?", default="{}", help="JSON payload (default {})")
    call.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt (5)")
    call.add_argument("--retries", type=int, default=1, help="attempts on other nodes (1)")
    call.set_defaults(handler=_call, quiet=True)
    for command in (services, call):
        command.add_argument(
            "--url", default=None, help="broker URL (default: EVENTBUS_URL, else memory://)"
        )
        command.add_argument(
            "--wait",
            type=float,
            default=1.0,
            help="seconds to wait for nodes to answer the presence query (default 1)",
        )
        command.add_argument(
            "-o",
            "--option",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="broker adapter option, e.g. -o fetch_wait=0.05 (repeatable)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eventbus`` console script."""
    args = _parser().parse_args(argv)
    if args.log_level is None:
        args.log_level = "WARNING" if args.quiet else "INFO"
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] {%(trace_id)s}: %(message)s",
    )
    install_log_filter()
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigurationError, EventBusError) as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
