"""``eventbus services`` / ``eventbus call``: formatting and argument errors (memory://)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventbus.cli import main
from eventbus.cli_services import format_services
from eventbus.registry import Node


def test_the_table_has_one_line_per_node_with_its_age() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def started(seconds: int) -> datetime:
        return now - timedelta(seconds=seconds)

    nodes = [
        Node("greeter", "n2", "a", "1.0", frozenset({"greeter.hello"}), started=started(75)),
        Node("calc", "n1", "a", "", frozenset({"calc.sub", "calc.add"}), started=started(7200)),
        Node("calc", "n0", "a", "2.0", frozenset(), started=started(3 * 86400 + 3600)),
        Node("legacy", "n9", "a"),
    ]
    lines = format_services(nodes, now=now).splitlines()
    assert [line.split() for line in lines] == [
        ["SERVICE", "VERSION", "NODE", "AGE", "ENDPOINTS"],
        ["calc", "-", "n1", "2h00m", "calc.add,", "calc.sub"],
        ["calc", "2.0", "n0", "3d01h", "-"],
        ["greeter", "1.0", "n2", "1m15s", "greeter.hello"],
        ["legacy", "-", "n9", "-", "-"],
    ]
    column = lines[0].index("ENDPOINTS")
    assert all(line[column - 1] == " " != line[column] for line in lines), "aligned columns"


def test_no_services_says_where_it_looked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["services", "--url", "memory://cli-empty", "--wait", "0"]) == 0
    err = capsys.readouterr().err
    assert "no services found on memory://cli-empty" in err
    assert "private to each process" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "nodots", "{}"], "service.endpoint"),
        (["call", "a.", "{}"], "service.endpoint"),
        (["call", "a.b", "[1,"], "must be JSON"),
        (["services", "--wait", "-1"], "--wait"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--url", "memory://cli-bad"]) == 2
    assert message in capsys.readouterr().err
