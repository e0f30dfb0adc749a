"""Client-side load balancing: which node of a service takes the next call.

A `Selector` filters a service's nodes (by version, metadata or a predicate) and picks
one per call with a strategy:

- ``random`` (the default): uniform over the nodes;
- ``round_robin``: each node in turn;
- ``least_outstanding``: the node with the fewest calls of this selector in flight
  (ties taken in turn).

A node that failed to answer (timeout, undeliverable) is marked and skipped for
``cooldown`` seconds, unless no other node is left. A node that answers is unmarked.
All of it is plain in-process bookkeeping: selection costs a few hundred nanoseconds.

Example:
    >>> selector = Selector("round_robin", version="2.1.0", metadata={"zone": "a"})
    >>> # client = bus.client("calculator", selector=selector)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeAlias

from eventbus.errors import ConfigurationError
from eventbus.registry import Node

__all__ = ["STRATEGIES", "Selector", "Strategy"]

Strategy: TypeAlias = Callable[[Sequence[Node], "Selector"], Node]
"""Picks one node of a non-empty sequence; may read the selector's `outstanding`."""


def _random(nodes: Sequence[Node], selector: Selector) -> Node:
    return nodes[0] if len(nodes) == 1 else random.choice(nodes)


def _round_robin(nodes: Sequence[Node], selector: Selector) -> Node:
    selector.turn += 1
    return nodes[selector.turn % len(nodes)]


def _least_outstanding(nodes: Sequence[Node], selector: Selector) -> Node:
    outstanding = selector.outstanding
    selector.turn += 1
    count = len(nodes)
    start = selector.turn % count
    best = nodes[start]
    fewest = outstanding.get(best.id, 0)
    for step in range(1, count):
        node = nodes[(start + step) % count]
        load = outstanding.get(node.id, 0)
        if load < fewest:
            best, fewest = node, load
    return best


STRATEGIES: dict[str, Strategy] = {
    "random": _random,
    "round_robin": _round_robin,
    "least_outstanding": _least_outstanding,
}
"""The built-in strategies, by name."""


class Selector:
    """Filters a service's nodes and picks one per call.

    One selector keeps the state of its strategy (the round-robin turn, calls in
    flight per node, marked nodes); a `Client` owns one. Not thread-safe: use it from
    one event loop.

    Args:
        strategy: ``"random"`` (default), ``"round_robin"``, ``"least_outstanding"``
            or a function ``(nodes, selector) -> node``.
        version: Only nodes announcing exactly this version.
        metadata: Only nodes whose metadata contains all these pairs.
        filter: Only nodes for which this predicate holds.
        cooldown: Seconds a node that failed to answer is skipped.

    Raises:
        ConfigurationError: unknown strategy or negative cooldown.
    """

    def __init__(
        self,
        strategy: str | Strategy = "random",
        *,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        filter: Callable[[Node], bool] | None = None,
        cooldown: float = 5.0,
    ) -> None:
        if isinstance(strategy, str):
            if strategy not in STRATEGIES:
                known = ", ".join(STRATEGIES)
                raise ConfigurationError(
                    f"unknown selector strategy {strategy!r}; use one of {known} or a function"
                )
            self.name = strategy
            self._choose = STRATEGIES[strategy]
        elif callable(strategy):
            self.name = getattr(strategy, "__name__", "custom")
            self._choose = strategy
        else:
            raise ConfigurationError(
                f"a selector strategy is a name or a function, not {strategy!r}"
            )
        if cooldown < 0:
            raise ConfigurationError(f"cooldown must be >= 0 seconds, not {cooldown!r}")
        self.version = version
        self.metadata: dict[str, str] = dict(metadata or {})
        self.filter = filter
        self.cooldown = cooldown
        self.turn = -1
        """The strategy's turn counter (round robin, tie-breaking)."""
        self.outstanding: dict[str, int] = {}
        """Calls in flight per node id (picked and not yet released)."""
        self._marked: dict[str, float] = {}  # node id -> monotonic time it is usable again

    def __repr__(self) -> str:
        return f"Selector({self.name!r})"

    def accepts(self, node: Node) -> bool:
        """Whether ``node`` passes the version, metadata and predicate filters."""
        if self.version is not None and node.version != self.version:
            return False
        if self.metadata:
            theirs = node.metadata
            for key, value in self.metadata.items():
                if theirs.get(key) != value:
                    return False
        return self.filter is None or self.filter(node)

    def select(self, nodes: Sequence[Node], avoid: Collection[str] = ()) -> Node:
        """Pick a node of ``nodes`` (already filtered) and count a call in flight on it.

        Nodes in ``avoid`` (ids already tried for this call) and marked nodes are
        skipped while another node is left. Every `select` must be paired with a
        `release`.

        Raises:
            ValueError: ``nodes`` is empty.
        """
        if not nodes:
            raise ValueError("select() needs at least one node")
        pool = nodes
        if avoid or self._marked:
            pool = self._usable(nodes, avoid)
        node = self._choose(pool, self)
        self.outstanding[node.id] = self.outstanding.get(node.id, 0) + 1
        return node

    def release(self, node: Node, error: BaseException | None = None) -> None:
        """End a call on ``node``: ``error`` when it failed to answer (marks it), else ``None``."""
        left = self.outstanding.get(node.id, 1) - 1
        if left > 0:
            self.outstanding[node.id] = left
        else:
            self.outstanding.pop(node.id, None)
        if error is not None:
            self.mark(node)
        elif self._marked:
            self._marked.pop(node.id, None)

    def mark(self, node: Node) -> None:
        """Skip ``node`` for ``cooldown`` seconds (unless no other node is left)."""
        if self.cooldown > 0:
            self._marked[node.id] = time.monotonic() + self.cooldown

    def is_marked(self, node: Node) -> bool:
        """Whether ``node`` is being skipped after a failure."""
        until = self._marked.get(node.id)
        return until is not None and until > time.monotonic()

    def _usable(self, nodes: Sequence[Node], avoid: Collection[str]) -> Sequence[Node]:
        marked = self._marked
        if marked:
            now = time.monotonic()
            for node_id, until in list(marked.items()):
                if until <= now:
                    del marked[node_id]
        fresh = [n for n in nodes if n.id not in avoid and n.id not in marked]
        if fresh:
            return fresh
        untried = [n for n in nodes if n.id not in avoid]
        return untried or nodes
