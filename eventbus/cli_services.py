"""``eventbus services`` and ``eventbus call``: the service registry from a shell.

``eventbus services [--url URL]`` prints the services, nodes, versions, ages and
endpoints the registry sees on a broker; ``eventbus call service.endpoint '{"a": 1}'``
calls an endpoint through the registry (a node chosen client-side, failover on no
answer) and prints the reply as JSON. Exit status: 0 on a reply, 1 for a remote error,
a timeout or an unknown service, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson

from eventbus.brokers import open_broker
from eventbus.bus import EventBus
from eventbus.errors import ConfigurationError, RemoteError, RequestTimeout, ServiceNotFound
from eventbus.presence import PresenceRegistry
from eventbus.registry import Node, Registry

__all__ = ["add_service_commands", "format_services"]

Option = Callable[[str], tuple[str, object]]


def add_service_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], option: Option
) -> None:
    """Add ``services`` and ``call`` to the CLI; ``option`` parses ``-o NAME=VALUE``."""
    services = commands.add_parser("services", help="list services, nodes, versions and ages")
    services.set_defaults(handler=_services)
    call = commands.add_parser("call", help="call service.endpoint with a JSON payload")
    call.add_argument("target", help="service.endpoint, e.g. greeter.hello")
    call.add_argument("payload", nargs="?", default="{}", help="JSON payload (default {})")
    call.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt (5)")
    call.add_argument("--retries", type=int, default=1, help="attempts on other nodes (1)")
    call.set_defaults(handler=_call)
    for command in (services, call):
        command.add_argument(
            "--url", default=None, help="broker URL (default $EVENTBUS_URL, else memory://)"
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
            type=option,
            default=[],
            metavar="NAME=VALUE",
            help="broker adapter option (VALUE is read as JSON when it parses, else as text)",
        )


def _registry_bus(args: argparse.Namespace) -> EventBus:
    """The bus of ``services`` / ``call``: ``--url``, ``--option``s, a ``--wait`` to settle."""
    settle: float = args.wait
    if settle < 0:
        raise ConfigurationError(f"--wait must be >= 0 seconds, not {settle!r}")
    bus = EventBus(args.url, registry=lambda bus: PresenceRegistry(bus, settle=settle))
    if args.option:
        bus.use_broker(open_broker(bus.url, grace=bus.shutdown_timeout, **dict(args.option)))
    return bus


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
