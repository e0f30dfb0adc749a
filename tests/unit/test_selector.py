"""Selector strategies, filters and marks, without a broker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from eventbus import ConfigurationError
from eventbus.registry import Node
from eventbus.selector import Selector


def nodes(count: int, **fields: object) -> tuple[Node, ...]:
    return tuple(
        Node("calc", f"n{i}", f"eventbus.node.n{i}", **fields)  # type: ignore[arg-type]
        for i in range(count)
    )


def test_round_robin_takes_each_node_in_turn() -> None:
    selector = Selector("round_robin")
    pool = nodes(3)
    picked = [selector.select(pool).id for _ in range(7)]
    assert picked == ["n0", "n1", "n2", "n0", "n1", "n2", "n0"]


def test_random_uses_every_node() -> None:
    selector = Selector()
    pool = nodes(4)
    counts = Counter(selector.select(pool).id for _ in range(4000))
    assert set(counts) == {"n0", "n1", "n2", "n3"}
    assert min(counts.values()) > 800


def test_least_outstanding_balances_calls_in_flight() -> None:
    selector = Selector("least_outstanding")
    pool = nodes(2)
    first = [selector.select(pool) for _ in range(10)]
    assert Counter(n.id for n in first) == {"n0": 5, "n1": 5}
    for node in first:
        if node.id == "n0":
            selector.release(node)
    # n0 is idle now, n1 has 5 in flight: the next 5 all go to n0.
    assert {selector.select(pool).id for _ in range(5)} == {"n0"}
    assert selector.outstanding == {"n0": 5, "n1": 5}


def test_release_counts_down_and_forgets_idle_nodes() -> None:
    selector = Selector()
    (node,) = nodes(1)
    selector.select([node])
    selector.select([node])
    selector.release(node)
    assert selector.outstanding == {node.id: 1}
    selector.release(node)
    assert selector.outstanding == {}


def test_a_failed_node_is_skipped_until_cooldown_or_success() -> None:
    selector = Selector("round_robin", cooldown=60)
    pool = nodes(2)
    bad = selector.select(pool)
    selector.release(bad, TimeoutError())
    assert selector.is_marked(bad)
    assert {selector.select(pool).id for _ in range(6)} == {pool[1].id}
    # With no other node left, a marked node is still used rather than failing.
    assert selector.select([bad]) is bad
    selector.release(bad)  # it answered: no longer marked
    assert not selector.is_marked(bad)


def test_cooldown_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("eventbus.selector.time.monotonic", lambda: clock[0])
    selector = Selector("round_robin", cooldown=5)
    pool = nodes(2)
    selector.mark(pool[0])
    assert [selector.select(pool).id for _ in range(2)] == ["n1", "n1"]
    clock[0] += 5.1
    assert [selector.select(pool).id for _ in range(2)] == ["n0", "n1"]


def test_avoid_skips_nodes_already_tried() -> None:
    selector = Selector()
    pool = nodes(3)
    assert {selector.select(pool, avoid={"n0", "n2"}).id for _ in range(20)} == {"n1"}
    assert selector.select(pool, avoid={"n0", "n1", "n2"}) in pool, "all tried: any node"


def test_filters_by_version_metadata_and_predicate() -> None:
    v1 = Node("calc", "a", "x", "1.0", metadata={"zone": "a"})
    v2 = Node("calc", "b", "x", "2.0", metadata={"zone": "b", "gpu": "yes"})
    assert [n.id for n in (v1, v2) if Selector(version="2.0").accepts(n)] == ["b"]
    assert [n.id for n in (v1, v2) if Selector(metadata={"zone": "a"}).accepts(n)] == ["a"]
    both = Selector(metadata={"zone": "b", "gpu": "yes"})
    assert [n.id for n in (v1, v2) if both.accepts(n)] == ["b"]
    assert not Selector(filter=lambda n: n.id == "zzz").accepts(v1)


def test_custom_strategy() -> None:
    def last(pool: Sequence[Node], selector: Selector) -> Node:
        return pool[-1]

    selector = Selector(last)
    assert selector.name == "last"
    assert selector.select(nodes(3)).id == "n2"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="round_robin"):
        Selector("fastest")
    with pytest.raises(ConfigurationError, match="cooldown"):
        Selector(cooldown=-1)
    with pytest.raises(ValueError, match="at least one node"):
        Selector().select(())
