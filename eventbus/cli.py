"""The ``eventbus`` command.

``eventbus run module:attr [--workers N]`` runs a bus until SIGINT/SIGTERM. With
``--workers N`` it runs N processes of the same bus: more members in the same
consumer groups, which is how eventbus scales out. A worker that dies is restarted.
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
from types import FrameType

from eventbus.bus import EventBus, default_bus
from eventbus.errors import ConfigurationError, EventBusError

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EVENTBUS_LOG_LEVEL", "INFO"),
        help="logging level (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a bus until SIGINT/SIGTERM")
    run.add_argument("target", help="module:attr naming an EventBus (or module, for its bus)")
    run.add_argument("--workers", type=int, default=1, help="processes to run (default 1)")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eventbus`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
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
