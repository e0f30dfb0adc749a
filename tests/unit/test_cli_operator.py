"""The operator commands, run in-process with ``main(argv)`` on ``memory://``.

``memory://`` lives in one process, so publish, replay, tail and redeliver share it
here; tests/conformance/test_cli.py runs the same commands as processes on real brokers.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from eventbus.brokers.memory import hub
from eventbus.cli import main
from eventbus.display import describe, parse_since
from eventbus.message import Message, new_id
from eventbus.testing import load, save


@pytest.fixture
def url() -> str:
    return f"memory://cli-{new_id()}"


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"cli.{new_id()}"
    monkeypatch.setenv("CLI_APP_TOPIC", name)
    return name


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_publish_replay_redeliver_round_trip(
    url: str, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", topic, '{"n": 1}', "--url", url, "--key", "c-1", "-H", "x-t=acme"]) == 0
    assert main(["publish", topic, '{"n": 2, "fail": true}', "--url", url]) == 0
    assert (
        main(["publish", topic, "\u00e9t\u00e9", "--content-type", "text/plain", "--url", url]) == 0
    )
    published = lines(capsys.readouterr().out)
    assert len(published) == 3
    assert published[0].startswith("published ")
    assert f"to {topic!r} on {url}" in published[0]

    recording = tmp_path / "orders.jsonl"
    assert main(["replay", topic, "--url", url, "--to", str(recording)]) == 0
    err = capsys.readouterr().err
    assert f"replayed 3 messages from {topic!r} to {recording}" in err
    first, second, third = load(recording)
    assert (first.body, first.key, dict(first.headers)) == (b'{"n": 1}', "c-1", {"x-t": "acme"})
    assert second.body == b'{"n": 2, "fail": true}'
    assert (third.body, third.content_type) == ("\u00e9t\u00e9".encode(), "text/plain")
    assert first.source == "eventbus-cli"
    assert not Path(f"{recording}.partial").exists()

    code = main(["redeliver", str(recording), "--app", "tests.cli_app:make_bus", "--url", url])
    out, err = capsys.readouterr()
    assert code == 1, "not every message was processed"
    report = lines(out)
    assert (
        report[0]
        == f'1 {topic} id={first.id}: processed by make_bus.<locals>.bill -> {{"billed":1}}'
    )
    assert report[1].startswith(
        f"2 {topic} id={second.id}: dead_lettered by make_bus.<locals>.bill"
    )
    assert "after 2 attempt(s): ValueError: order 2 refused" in report[1]
    assert f"(dead-lettered to '{topic}.dlq')" in report[1]
    assert report[2].startswith(f"3 {topic} id={third.id}: dead_lettered")
    assert "DecodeError" in report[2]
    assert "redelivered 3 message(s): 2 dead_lettered, 1 processed" in err

    # The dead-letter records went to the broker given with --url.
    dlq = tmp_path / "dlq.jsonl"
    assert main(["replay", f"{topic}.dlq", "--url", url, "--to", str(dlq)]) == 0
    assert [m.id for m in load(dlq)] == [second.id, third.id]


def test_redeliver_json_report_and_success_status(
    url: str, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = tmp_path / "ok.jsonl"
    save(
        recording,
        [Message(topic, b'{"n":%d}' % i, content_type="application/json") for i in range(3)],
    )
    code = main(
        ["redeliver", str(recording), "--app", "tests.cli_app:make_bus", "--url", url, "--json"]
    )
    assert code == 0
    records = [orjson.loads(line) for line in lines(capsys.readouterr().out)]
    assert [r["status"] for r in records] == ["processed"] * 3
    assert records[2]["outcomes"] == [
        {
            "subscriber": "make_bus.<locals>.bill",
            "group": "billing",
            "status": "processed",
            "attempts": 1,
            "result": {"billed": 2},
            "error": None,
        }
    ]


def write_broken(path: Path, topic: str) -> None:
    good = Message(topic, b'{"n":1}', content_type="application/json")
    path.write_text(
        "\n".join(
            [
                save_line(good),
                '{"topic": "x"}',
                save_line(Message(topic, b'{"n":2}', content_type="application/json")),
            ]
        )
        + "\n"
    )


def save_line(message: Message) -> str:
    from eventbus.testing import format_line

    return format_line(message)


def test_redeliver_stops_at_a_broken_line_or_carries_on(
    url: str, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = tmp_path / "broken.jsonl"
    write_broken(recording, topic)
    args = ["redeliver", str(recording), "--app", "tests.cli_app:make_bus", "--url", url]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f'eventbus: {recording}:2: "body" is missing' in err

    assert main([*args, "--skip-bad-lines"]) == 1
    out, err = capsys.readouterr()
    assert [line.split(": ")[1].split(" ")[0] for line in lines(out)] == ["processed", "processed"]
    assert f'eventbus: skipped {recording}:2: "body" is missing' in err
    assert "1 broken line(s) skipped" in err


def test_replay_of_an_unknown_topic_fails_clearly_and_writes_nothing(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "never.jsonl"
    assert main(["replay", "no.such.topic", "--url", url, "--to", str(target)]) == 2
    err = capsys.readouterr().err
    assert "eventbus: topic 'no.such.topic' does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_replay_prints_readable_or_json_lines_and_honours_since(
    url: str, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["publish", topic, '{"a":[1,2]}', "--url", url, "-H", "x-t=acme", "--key", "k"]) == 0
    )
    capsys.readouterr()
    assert main(["replay", topic, "--url", url]) == 0
    out = capsys.readouterr().out
    assert f"] {topic} id=" in out
    assert "key=k content-type=application/json offset=0" in out
    assert "  x-t: acme\n" in out
    assert '  {\n    "a": [\n      1,\n      2\n    ]\n  }' in out

    assert main(["replay", topic, "--url", url, "--json"]) == 0
    (line,) = lines(capsys.readouterr().out)
    assert orjson.loads(line)["body"] == {"a": [1, 2]}

    assert main(["replay", topic, "--url", url, "--json", "--since", "1m"]) == 0
    assert len(lines(capsys.readouterr().out)) == 1
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert main(["replay", topic, "--url", url, "--json", "--since", later]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "replayed 0 messages" in err


def test_long_replays_show_progress(
    url: str, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        main(["publish", topic, f'{{"n": {i}}}', "--url", url])
    capsys.readouterr()
    assert main(["replay", topic, "--url", url, "--json", "--progress", "0.000001"]) == 0
    err = lines(capsys.readouterr().err)
    assert [line.split(" (")[0] for line in err[:3]] == [
        "replayed 1 messages",
        "replayed 2 messages",
        "replayed 3 messages",
    ]
    assert "/s), now at " in err[0]
    assert err[3].startswith(f"replayed 3 messages from {topic!r} in ")


def test_publish_checks_its_input(url: str, topic: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", topic, "{not json", "--url", url]) == 2
    assert "the body is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["publish", topic, "{}", "--url", url, "--header", "no-equals-sign"])
    assert caught.value.code == 2
    assert "a header is NAME=VALUE, not 'no-equals-sign'" in capsys.readouterr().err
    assert main(["publish", topic, "{}", "--url", "carrier-pigeon://x"]) == 2
    assert "unknown broker URL" in capsys.readouterr().err


def test_publish_reads_binary_bodies_from_stdin(
    url: str, topic: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\x00raw")))
    args = ["publish", topic, "-", "--content-type", "application/octet-stream", "--url", url]
    assert main(args) == 0
    target = tmp_path / "raw.jsonl"
    assert main(["replay", topic, "--url", url, "--to", str(target)]) == 0
    (message,) = load(target)
    assert message.body == b"\xff\x00raw"


def tail_in_thread(argv: list[str]) -> tuple[threading.Thread, dict[str, int]]:
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
    thread.start()
    return thread, result


def wait_for_subscriber(url: str, topic: str) -> None:
    """Wait (with a deadline) until the tail thread's subscription is on the hub."""
    topics = hub(url.removeprefix("memory://")).topics
    deadline = time.monotonic() + 10
    while not (topic in topics and topics[topic].groups):
        assert time.monotonic() < deadline, "the tail never subscribed"
        time.sleep(0.002)


@pytest.mark.parametrize("as_json", [False, True])
def test_tail_prints_messages_as_they_arrive(
    url: str, topic: str, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    thread, result = tail_in_thread(
        ["tail", topic, "--url", url, "--count", "2", *(["--json"] if as_json else [])]
    )
    wait_for_subscriber(url, topic)
    assert main(["publish", topic, '{"n":1}', "--url", url, "--key", "k1"]) == 0
    assert main(["publish", topic, "bin\xff", "--content-type", "text/plain", "--url", url]) == 0
    thread.join(10)
    assert not thread.is_alive()
    assert result == {"code": 0}
    out, err = capsys.readouterr()
    assert f"tailing {topic!r} on {url}" in err
    shown = [line for line in lines(out) if not line.startswith("published ")]
    if as_json:
        records = [orjson.loads(line) for line in shown]
        assert [(r.get("key", None), r["body"]) for r in records] == [
            ("k1", {"n": 1}),
            (None, "bin\u00ff"),
        ]
    else:
        assert shown[0].endswith("key=k1 content-type=application/json")
        assert shown[1:4] == ["  {", '    "n": 1', "  }"]
        assert shown[5] == "  bin\u00ff"


def test_since_accepts_times_and_durations() -> None:
    assert parse_since("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    before = datetime.now(UTC)
    assert abs((before - parse_since("90s")) - timedelta(seconds=90)) < timedelta(seconds=5)
    assert abs((before - parse_since("2h")) - timedelta(hours=2)) < timedelta(seconds=5)
    assert abs((before - parse_since("7d")) - timedelta(days=7)) < timedelta(seconds=5)
    with pytest.raises(argparse.ArgumentTypeError, match="or a duration ago"):
        parse_since("last tuesday")


def test_binary_bodies_are_shown_as_hex() -> None:
    text = describe(Message("t", bytes(range(250, 256)) + b"\x00" * 70))
    assert (
        text.splitlines()[1] == "  <76 bytes> fa fb fc fd fe ff " + "00 " * 57 + "00 ... (12 more)"
    )


def test_passwords_are_not_printed(topic: str, capsys: pytest.CaptureFixture[str]) -> None:
    from eventbus.display import redact

    assert redact("amqp://guest:secret@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_adapter_options_reach_the_broker(
    url: str, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", topic, "{}", "--url", url, "-o", "flavour=1"]) == 2
    assert "unknown option(s) flavour for memory://" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", topic, "--url", url, "-o", "no-equals"])
    assert "an option is NAME=VALUE" in capsys.readouterr().err


def test_redeliver_of_a_missing_file_or_app_is_a_clear_error(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["redeliver", str(missing), "--app", "tests.cli_app:make_bus"]) == 2
    assert f"No such file or directory: '{missing}'" in capsys.readouterr().err
    save(missing, [])
    assert main(["redeliver", str(missing), "--app", "tests.no_such_app:bus", "--url", url]) == 2
    assert "cannot import 'tests.no_such_app'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["redeliver", str(missing)])
    assert "--app" in capsys.readouterr().err
