"""The ``eventbus`` command: run services, and look at and replay topics.

``eventbus run module:attr [--workers N]`` runs a bus until SIGINT/SIGTERM. With
``--workers N`` it runs N processes of the same bus: more members in the same
consumer groups, which is how eventbus scales out. A worker that dies is restarted.

Operator commands, each on the broker at ``--url`` (default ``$EVENTBUS_URL``, else
``memory://``, which is private to one process):

- ``eventbus tail TOPIC [--json] [--count N]``: print messages as they arrive.
- ``eventbus replay TOPIC [--since WHEN] [--to FILE]``: the retained messages, as
  JSON Lines (a recording) or printed; progress on stderr.
- ``eventbus publish TOPIC BODY [--key K] [--header k=v] [--content-type T]``.
- ``eventbus redeliver FILE --app module:attr``: run a recording through the app's
  handlers and print what happened to each message (exit status 1 unless all were
  processed).

Service commands, through the registry (see ``eventbus.cli_services``):

- ``eventbus services``: the services, nodes, versions, ages and endpoints.
- ``eventbus call service.endpoint '{"json": 1}'``: call an endpoint, print the reply.

Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import IO, Any

import orjson

from eventbus.bus import EventBus, default_bus, setting_on_signals
from eventbus.cli_services import add_service_commands
from eventbus.display import (
    Progress,
    describe,
    describe_redelivery,
    parse_since,
    redact,
    redelivery_record,
)
from eventbus.errors import ConfigurationError, EventBusError, RecordingError
from eventbus.message import Message, format_time
from eventbus.recording import Redelivery, format_line, is_json, load
from eventbus.subscriber import PROCESSED
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


# -- operator commands: tail, replay, publish, redeliver ---------------------------------


def _add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def with_url(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument(
            "--url", default=None, help="broker URL (default $EVENTBUS_URL, else memory://)"
        )
        command.add_argument(
            "-o",
            "--option",
            action="append",
            type=_option,
            default=[],
            metavar="NAME=VALUE",
            help="broker adapter option, e.g. -o streams=true for RabbitMQ "
            "(VALUE is read as JSON when it parses, else as text)",
        )
        return command

    tail = with_url(commands.add_parser("tail", help="print a topic's messages as they arrive"))
    tail.add_argument("topic")
    tail.add_argument("--json", action="store_true", help="one JSON Lines record per message")
    tail.add_argument("-n", "--count", type=_positive, help="stop after N messages")
    tail.set_defaults(handler=_synchronous(_tail))

    replay = with_url(commands.add_parser("replay", help="read the messages a topic retained"))
    replay.add_argument("topic")
    replay.add_argument(
        "--since",
        type=parse_since,
        help="from this time on: ISO 8601 (2024-05-01T12:00:00Z; no zone = UTC) "
        "or a duration ago (90s, 15m, 2h, 7d)",
    )
    replay.add_argument("--to", metavar="FILE", help="write a JSON Lines recording to FILE")
    replay.add_argument("--json", action="store_true", help="print JSON Lines, not readable text")
    replay.add_argument(
        "--progress",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between progress lines on stderr (default 1; 0 turns them off)",
    )
    replay.set_defaults(handler=_replay)

    publish = with_url(commands.add_parser("publish", help="publish one message"))
    publish.add_argument("topic")
    publish.add_argument("body", help="the body: JSON by default; - reads it from stdin")
    publish.add_argument("--key", help="partition / ordering key")
    publish.add_argument(
        "-H", "--header", action="append", type=_header, default=[], metavar="NAME=VALUE"
    )
    publish.add_argument(
        "--content-type", default="application/json", help="default application/json"
    )
    publish.set_defaults(handler=_synchronous(_publish))

    redeliver = with_url(
        commands.add_parser(
            "redeliver",
            help="run a recording through an app's handlers and report each message",
            description="Run the messages of a JSON Lines recording through the handlers "
            "of an app's bus (decode, middleware, retry, dead-letter) and print what "
            "happened to each. --url puts the bus on that broker instead of its own "
            "(memory:// keeps everything in this process); on a shared broker its "
            "subscribers join their groups while it runs. Exit status 1 unless every "
            "message was processed.",
        )
    )
    redeliver.add_argument("file")
    redeliver.add_argument(
        "--app", required=True, metavar="MODULE:ATTR", help="the EventBus with the handlers"
    )
    redeliver.add_argument("--json", action="store_true", help="one JSON object per message")
    redeliver.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="report broken lines and carry on (default: stop at the first)",
    )
    redeliver.set_defaults(handler=_redeliver)


def _synchronous(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Command:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(command(args))

    return run


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _option(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"an option is NAME=VALUE, not {text!r}")
    try:
        value: object = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return name, value


def _bus(args: argparse.Namespace) -> EventBus:
    """The bus of an operator command: ``--url`` with the ``--option`` adapter options."""
    bus = EventBus(args.url)
    if args.option:
        from eventbus.brokers import open_broker

        bus.use_broker(open_broker(bus.url, grace=bus.shutdown_timeout, **dict(args.option)))
    return bus


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a header is NAME=VALUE, not {text!r}")
    return name, value


async def _until_stopped(done: asyncio.Event) -> None:
    """Wait for ``done``, SIGINT or SIGTERM (signals only where they can be caught)."""
    with setting_on_signals(done):
        await done.wait()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _quiet_stdout() -> None:
    """After a broken pipe (``| head``): point stdout at /dev/null so exit does not fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def _tail(args: argparse.Namespace) -> int:
    show = format_line if args.json else describe
    done = asyncio.Event()
    seen = 0
    broken = False

    async def on_message(message: Message) -> None:
        nonlocal seen, broken
        if done.is_set():
            return
        try:
            _write(show(message))
        except BrokenPipeError:
            broken = True
            done.set()
            return
        seen += 1
        if args.count is not None and seen >= args.count:
            done.set()

    bus = _bus(args)
    async with bus:
        # Straight on the broker, without the handler pipeline: a tail never retries,
        # dead-letters or joins a group; it sees what is published from now on.
        subscription = await bus.broker.subscribe(args.topic, on_message)
        where = redact(bus.url)
        print(f"tailing {args.topic!r} on {where} (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            await _until_stopped(done)
        finally:
            await subscription.close()
    if broken:
        _quiet_stdout()
    return 0


def _replay(args: argparse.Namespace) -> int:
    if args.to is None:
        return asyncio.run(_replay_to(args, None))
    # Written aside and renamed when complete: a failed replay leaves no half recording.
    partial = f"{args.to}.partial"
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as file:
            code = asyncio.run(_replay_to(args, file))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    os.replace(partial, args.to)
    return code


async def _replay_to(args: argparse.Namespace, file: IO[str] | None) -> int:
    progress = Progress(args.progress)
    show = format_line if args.json else describe
    try:
        async with _bus(args) as bus:
            async for message in bus.replay(args.topic, since=args.since):
                if file is None:
                    _write(show(message))
                else:
                    file.write(format_line(message))
                    file.write("\n")
                progress.tick(message)
    except EventBusError:
        if progress.count:
            kept = f"; {args.to} is not written" if file is not None else ""
            print(
                f"eventbus: replay stopped after {progress.count:,} messages{kept}", file=sys.stderr
            )
        raise
    since = f" since {format_time(args.since)}" if args.since else ""
    target = f" to {args.to}" if args.to else ""
    progress.finish(f"replayed {progress.count:,} messages from {args.topic!r}{since}{target}")
    return 0


def _read_body(text: str) -> bytes:
    return sys.stdin.buffer.read() if text == "-" else text.encode("utf-8")


async def _publish(args: argparse.Namespace) -> int:
    body = _read_body(args.body)
    content_type: str = args.content_type
    if is_json(content_type):
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ConfigurationError(
                f"the body is not valid JSON ({exc}); quote it for the shell "
                "('{\"id\": 1}'), or pass --content-type text/plain to send text"
            ) from None
    async with _bus(args) as bus:
        # Straight to the broker: the body goes out byte for byte, whatever its type.
        message = Message(
            args.topic,
            body,
            dict(args.header),
            content_type,
            key=args.key,
            source="eventbus-cli",
        )
        await bus.broker.publish(message)
    _write(f"published {message.id} to {args.topic!r} on {redact(bus.url)}")
    return 0


def _redeliver(args: argparse.Namespace) -> int:
    bad: list[RecordingError] = []

    def report_bad(error: RecordingError) -> None:
        bad.append(error)
        print(f"eventbus: skipped {error}", file=sys.stderr)

    messages = load(args.file, on_error=report_bad if args.skip_bad_lines else "raise")
    bus = load_bus(args.app)
    if args.url:
        from eventbus.brokers import open_broker

        bus.use_broker(open_broker(args.url, grace=bus.shutdown_timeout, **dict(args.option)))
    elif args.option:
        raise ConfigurationError("--option applies to the broker given with --url; add --url")

    async def run() -> list[Redelivery]:
        async with bus:
            return await bus.redeliver(messages)

    report = asyncio.run(run())
    for index, item in enumerate(report, start=1):
        if args.json:
            _write(orjson.dumps(redelivery_record(bus, index, item)).decode("utf-8"))
        else:
            _write(describe_redelivery(bus, index, item))
    counts = Counter(item.status for item in report)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing"
    skipped = f"; {len(bad)} broken line(s) skipped" if bad else ""
    print(f"redelivered {len(report)} message(s): {summary}{skipped}", file=sys.stderr)
    return 0 if not bad and counts[PROCESSED] == len(report) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventbus",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="logging level (default $EVENTBUS_LOG_LEVEL, else INFO for run, WARNING otherwise)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a bus until SIGINT/SIGTERM")
    run.add_argument("target", help="module:attr naming an EventBus (or module, for its bus)")
    run.add_argument("--workers", type=int, default=1, help="processes to run (default 1)")
    run.set_defaults(handler=_run)
    _add_operator_commands(commands)
    add_service_commands(commands, _option)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eventbus`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    level = args.log_level or os.environ.get("EVENTBUS_LOG_LEVEL")
    args.log_level = level or ("INFO" if args.command == "run" else "WARNING")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] {%(trace_id)s}: %(message)s",
    )
    install_log_filter()  # the trace id of the call being served, or "-"
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigurationError, EventBusError) as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
