"""`Client`: calls a service's endpoints on nodes chosen client-side (Go Micro's client).

Per call: the registry's live view gives the service's nodes (a dictionary lookup),
the `Selector` picks one, and the request goes to that node's own address
(``eventbus.node.<id>``) with the endpoint in a header. The reply comes back to the
bus's inbox like any request's. When the node does not answer in time (or the broker
knows nobody listens there), the node is marked and the call goes to another node,
as long as ``retries`` allow. An answer, even an error, is never retried: the
handler ran, and running it twice is the caller's decision.

Example:
    >>> async def main(bus) -> None:
    ...     calc = bus.client("calculator", selector="round_robin")
    ...     print(await calc.call("add", {"a": 1, "b": 2}, timeout=2.0))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventbus.codecs import Decoder, Encoder
from eventbus.errors import (
    ConfigurationError,
    RemoteError,
    RequestTimeout,
    ServiceNotFound,
    UndeliverableError,
)
from eventbus.message import DEADLINE, ERROR, ERROR_TYPE, TRACEPARENT, Message, new_id
from eventbus.middleware import chain
from eventbus.registry import Node
from eventbus.selector import Selector
from eventbus.server import ENDPOINT
from eventbus.tracing import current, new_traceparent

if TYPE_CHECKING:
    from eventbus.broker import Broker
    from eventbus.bus import EventBus

__all__ = ["Client"]

log = logging.getLogger("eventbus.client")

T = TypeVar("T")

_Route = tuple[tuple[Node, ...], str, tuple[Node, ...]]  # (registry nodes, topic, candidates)


class Client:
    """Calls the endpoints of one service, load-balanced over its live nodes.

    Get one with `EventBus.client` (which keeps one per service and settings, so the
    selector's state lasts). Calls may run concurrently from many tasks.

    Args:
        bus: The bus that sends the calls (started on the first call if needed).
        service: The service's name, as its nodes announce it.
        selector: A strategy name (``"random"``, ``"round_robin"``,
            ``"least_outstanding"``) or a `Selector`.
        version: Only call nodes announcing this version (with a strategy name).
        metadata: Only call nodes with these metadata pairs (with a strategy name).
        timeout: Default seconds to wait for each attempt's reply.
        retries: Default number of other attempts after a node did not answer.

    Raises:
        ConfigurationError: bad settings.
    """

    def __init__(
        self,
        bus: EventBus,
        service: str,
        *,
        selector: Selector | str = "random",
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        retries: int = 1,
    ) -> None:
        if not service or not isinstance(service, str):
            raise ConfigurationError(f"a client needs a service name, not {service!r}")
        if isinstance(selector, Selector):
            if version is not None or metadata:
                raise ConfigurationError(
                    "give version= and metadata= to the Selector, not to the client, "
                    "when you pass a Selector"
                )
            self.selector = selector
        else:
            self.selector = Selector(selector, version=version, metadata=metadata)
        _check(timeout, retries)
        self.bus = bus
        self.service = service
        self.timeout = timeout
        self.retries = retries
        self._routes: dict[str, _Route] = {}
        self._encoders: dict[tuple[str | None, type], tuple[str, Encoder]] = {}
        self._decoders: dict[tuple[str | None, Any], Decoder] = {}
        self._send: Callable[[Message], Awaitable[Any]] | None = None
        self._send_broker: Broker | None = None

    def __repr__(self) -> str:
        return f"Client({self.service!r}, selector={self.selector.name!r})"

    @overload
    async def call(
        self,
        endpoint: str,
        payload: object = ...,
        *,
        timeout: float | None = ...,
        retries: int | None = ...,
        response_type: None = ...,
        headers: Mapping[str, str] | None = ...,
        content_type: str | None = ...,
    ) -> Any: ...

    @overload
    async def call(
        self,
        endpoint: str,
        payload: object = ...,
        *,
        timeout: float | None = ...,
        retries: int | None = ...,
        response_type: type[T],
        headers: Mapping[str, str] | None = ...,
        content_type: str | None = ...,
    ) -> T: ...

    async def call(
        self,
        endpoint: str,
        payload: object = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        response_type: Any = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:
        """Call ``endpoint`` of the service with ``payload`` and return the decoded reply.

        ``endpoint`` is a method name (``"add"`` means topic ``<service>.add``) or a
        full topic the nodes serve. The call carries the current trace (a new one
        outside any) and never waits past the deadline of the call being served.

        Args:
            endpoint: The endpoint to call.
            payload: The request value (model, dataclass, dict, ...).
            timeout: Seconds to wait for each attempt's reply (client default 5).
            retries: Further attempts on other nodes when a node does not answer
                in time or cannot be reached (client default 1).
            response_type: Decode the reply into this type (``Message``: raw reply).
            headers: Extra headers for the request.
            content_type: Encode the payload with this content type.

        Raises:
            ServiceNotFound: the registry knows no live node of the service (or none
                passes the selector's filters). Raised without waiting, once the
                registry has settled after its start.
            RemoteError: the handler raised; unknown endpoints come back with
                ``remote_type == "EndpointNotFound"``.
            RequestTimeout: no node answered within ``timeout`` on any attempt.
            DecodeError: the reply does not decode into ``response_type``.
            BrokerUnavailable: the broker cannot be reached.
        """
        bus = self.bus
        if not bus.is_running:
            await bus.start()
        wait = self.timeout if timeout is None else timeout
        attempts = 1 + (self.retries if retries is None else retries)
        if timeout is not None or retries is not None:
            _check(wait, attempts - 1)
        context = current()
        if context is None:
            traceparent = new_traceparent()
            deadline = None
        else:
            traceparent = new_traceparent(context.traceparent)
            deadline = context.deadline
            if deadline is not None and deadline <= time.monotonic():
                raise _too_late(self.service, endpoint)
        _, topic, candidates = await self._route(endpoint)
        reply_to = await bus.replies.address()
        ct, body = self._encode(payload, content_type)
        send = self._send if self._send_broker is bus._broker else self._sender()
        assert send is not None
        selector = self.selector
        tried: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            this_wait = wait
            if deadline is not None:
                this_wait = min(wait, deadline - time.monotonic())
                if this_wait <= 0:
                    raise _too_late(self.service, topic)
            node = selector.select(candidates, tried)
            request_headers = {
                ENDPOINT: topic,
                DEADLINE: str(int(this_wait * 1000)),
                TRACEPARENT: traceparent,
            }
            if headers:
                request_headers.update(headers)
            message = Message(
                node.address,
                body,
                request_headers,
                ct,
                None,
                None,
                None,
                reply_to,
                new_id(),
                bus.source,
                topic,
            )
            try:
                reply = await bus.replies.request(message, this_wait, send)
            except (RequestTimeout, UndeliverableError) as exc:
                selector.release(node, exc)
                tried.append(node.id)
                if attempt >= attempts:
                    if isinstance(exc, UndeliverableError):
                        raise
                    raise _gave_up(self.service, topic, tried, this_wait) from exc
                log.warning(
                    "call to %r on node %s failed (%s: %s); trying again (attempt %d of %d) "
                    "[trace %s]",
                    topic,
                    node.id,
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    attempts,
                    traceparent[3:35],
                )
                _, topic, candidates = await self._route(endpoint)
                continue
            except BaseException:
                selector.release(node)
                raise
            selector.release(node)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("called %r on node %s [trace %s]", topic, node.id, traceparent[3:35])
            headers_in = reply.headers
            if ERROR_TYPE in headers_in:
                raise RemoteError(headers_in[ERROR_TYPE], headers_in.get(ERROR, ""), topic=topic)
            if response_type is Message:
                return reply
            key = (reply.content_type, response_type)
            decode = self._decoders.get(key)
            if decode is None:
                decode = self._decoders[key] = bus.codecs.decoder(*key)
            return decode(reply.body)

    async def nodes(self) -> tuple[Node, ...]:
        """The service's live nodes that pass the selector's filters."""
        return tuple(
            n for n in await self.bus.registry.nodes(self.service) if self.selector.accepts(n)
        )

    async def _route(self, endpoint: str) -> _Route:
        nodes = await self.bus.registry.nodes(self.service)
        cached = self._routes.get(endpoint)
        if cached is not None and cached[0] is nodes:
            return cached
        if not nodes:
            raise ServiceNotFound(await self._not_found())
        accepts = self.selector.accepts
        accepted = tuple(n for n in nodes if accepts(n))
        if not accepted:
            raise ServiceNotFound(
                f"service {self.service!r} has {len(nodes)} live node(s) but none passes the "
                f"selector's filters (version={self.selector.version!r}, "
                f"metadata={self.selector.metadata!r}); "
                f"versions: {', '.join(sorted({n.version or '-' for n in nodes}))}"
            )
        prefixed = f"{self.service}.{endpoint}"
        if any(prefixed in n.endpoints for n in accepted):
            topic = prefixed
        elif any(endpoint in n.endpoints for n in accepted):
            topic = endpoint
        else:
            topic = prefixed  # no node serves it: the node answers EndpointNotFound
        # Prefer the nodes that serve the endpoint (mixed versions during a rollout).
        serving = tuple(n for n in accepted if topic in n.endpoints) or accepted
        route = self._routes[endpoint] = (nodes, topic, serving)
        return route

    async def _not_found(self) -> str:
        known = await self.bus.registry.services()
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        hint = f"Is a bus with name={self.service!r} running on the same broker?"
        if self.bus.url.startswith("memory:"):
            hint += " (memory:// reaches only buses of this process)"
        return (
            f"no live node of service {self.service!r} is known to the registry on "
            f"{self.bus.url}; known services: {listed or 'none'}. {hint}"
        )

    def _encode(self, value: object, content_type: str | None) -> tuple[str, bytes]:
        key = (content_type, value.__class__)
        found = self._encoders.get(key)
        if found is None:
            found = self._encoders[key] = self.bus.codecs.encoder(value, content_type)
        return found[0], found[1](value)

    def _sender(self) -> Callable[[Message], Awaitable[Any]]:
        bus = self.bus
        broker = bus.broker
        last: Callable[[Message], Awaitable[Any]] = partial(broker.publish, durable=False)
        steps = bus.publish_middleware
        self._send = chain(steps, last) if steps else last
        self._send_broker = broker
        return self._send


def _check(timeout: float, retries: int) -> None:
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"retries must be a whole number >= 0, not {retries!r}")


def _too_late(service: str, endpoint: str) -> RequestTimeout:
    return RequestTimeout(
        f"the deadline of the call being served passed before {endpoint!r} of service "
        f"{service!r} could be called"
    )


def _gave_up(service: str, topic: str, tried: list[str], wait: float) -> RequestTimeout:
    nodes = ", ".join(tried)
    return RequestTimeout(
        f"no reply from service {service!r} to {topic!r} within {wait:g}s "
        f"(attempts on node(s) {nodes})"
    )
