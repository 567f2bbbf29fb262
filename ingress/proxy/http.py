"""HTTP/1.1 reverse proxy: local answers, routing, X-Forwarded-For, keep-alive both ways.

Theory of operation
-------------------
:class:`HttpSession` is the client connection's protocol.  Bytes from the client go through the
strict request parser (``ingress.protocol.http1``), whose events (request head, body data, end of
message) are queued in order; ``_pump`` takes them off the queue one exchange at a time, so that
pipelined requests are answered in order and a request head waits while the previous exchange
is still running.  The queue is bounded: past ``PIPELINE_LIMIT`` events, reading from the client
pauses.  The usual read, one whole request without a body with nothing queued or in progress
ahead of it, goes straight to its exchange (``_one_request``) without passing through the queue
or being turned into events (``RequestParser.take_whole``); so does the usual read of a backend,
one whole response framed by its length (``whole_response``).

Each request head is matched against the listener's route table.  A local answer (readiness,
blocked statistics pages) is written at once.  A backend request becomes an :class:`_Exchange`:
it takes an idle pooled connection to the chosen server or opens one (round robin over the
backend's servers, the next one on refusal, one deadline of ``timeouts.connect``; none reached
means ``503``), writes the request head re-serialised from parsed fields (hop-by-hop headers
removed, framing recomputed, ``X-Forwarded-For`` appended), then streams the body (re-chunked
when it came chunked; chunk extensions and trailers are gone). The usual request (HTTP/1.1,
taken by the fast path, no hop-by-hop or forwarding field but a Connection field of "close" or
"keep-alive") would come out the same, so its head goes as it came (``RequestHead.raw``, the
Connection line cut) with the X-Forwarded-* lines, formatted once per connection, appended.

The backend's bytes go through the response parser; its head is re-serialised for the client
the same way, its body streamed. The exception is the usual response: whole in one read, framed
by its Content-Length, HTTP/1.1, with no hop-by-hop field but that Content-Length.
Re-serialising it would give the client the same message (the same fields in another order and
spacing), so the head the fast path checked goes on as it came (``ResponseHead.raw``), with a
``Connection`` field added when this client needs one; that saves about 1.5 us of the ~12 us a
request costs in Python.

A response that ends cleanly returns the backend connection to the pool (only then: never a
connection with unread response bytes). A response that breaks off after bytes were sent to the
client closes the client connection: a truncated response is never presented as complete. A
backend silent for ``timeouts.server`` gets the client a ``504`` (if nothing was sent yet). A
pooled connection that turns out closed before any byte of the response arrived is retried once
on a fresh connection, for requests without a body.

Writes to clients and backends go through an ``Outbox`` each (``ingress.proxy.flow``): one of up to
16 KiB waits for the end of the loop's round of I/O callbacks and goes out with the round's
others, so that one wake-up of a peer serves many requests; a larger one goes at once, after
what is held. A session flushes before it closes its client connection.

Flow control is the TCP relay's: a transport whose write buffer is full pauses reading from the
other side.  Timeouts (request head, keep-alive idle, server silence) are checked by the
worker's sweep, about once a second.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ingress.config import ListenerConfig, Timeouts
from ingress.ops.logs import NO_SERVER as NO_SERVER_LABEL
from ingress.ops.logs import AccessLog, TlsFields, log_address
from ingress.ops.metrics import Metrics
from ingress.ops.metrics import metrics as metrics_of_this_process
from ingress.protocol import proxy_protocol
from ingress.protocol.http1 import (
    FORWARDED_FIELDS,
    FORWARDED_PROTO_FIELDS,
    HOP_BY_HOP,
    LAST_CHUNK,
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    chunk,
    serialize_request_head,
    serialize_response_head,
)
from ingress.proxy.flow import WRITE_HIGH_WATER, Outbox, WriteBatch, pause_reading, resume_reading
from routing.backends import NO_SERVER, Backend, Endpoint, NoServerReachedError, connect_first
from routing.pool import ConnectionPool
from routing.table import READINESS, LocalAnswer, RouteTable
from tls.acme import CHALLENGE_PREFIX, ChallengeDirectory

PIPELINE_LIMIT = 64
# Responses are bounded in their heads only: a listener's ``max_body`` is about what clients
# may send, and a backend's answer of any size is streamed.
RESPONSE_LIMITS = Limits()

REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


@dataclass(slots=True)
class WorkerState:
    """What every session of a worker may need to know about the worker."""

    draining: bool = False


@dataclass(slots=True)
class HttpContext:
    listener: ListenerConfig
    routes: RouteTable | None
    backends: dict[str, Backend]
    pool: ConnectionPool
    timeouts: Timeouts
    access_log: AccessLog
    sessions: set[HttpSession]
    state: WorkerState
    # The worker's loop, taken once: asyncio.get_running_loop() makes a getpid() system call
    # on every call (its fork check), and sessions are made per connection.
    loop: asyncio.AbstractEventLoop
    # The worker's one WriteBatch: small writes to clients and backends go out together.
    writes: WriteBatch
    limits: Limits = field(default_factory=Limits)
    worker: int = 0
    # Pending ACME HTTP-01 answers, when the ingress obtains certificates itself.
    acme_challenges: ChallengeDirectory | None = None
    metrics: Metrics = field(default_factory=metrics_of_this_process)


def _status_line_reason(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


def simple_response(status: int, body: bytes, content_type: bytes = b"text/plain",
                    *, close: bool, http10: bool = False, head: bool = False) -> bytes:
    """A response the proxy makes itself; ``head``: the answer to a HEAD request (the length of
    the body it would have, and no body)."""
    headers = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode()),
               (b"Cache-Control", b"no-cache")]
    if close:
        headers.append((b"Connection", b"close"))
    elif http10:
        # An HTTP/1.0 client keeps the connection only when told so.
        headers.append((b"Connection", b"keep-alive"))
    return serialize_response_head(status, _status_line_reason(status), headers) + (
        b"" if head else body)


def forwarded_request_headers(head: RequestHead, client_ip: str, mode: str,
                              proto_port: tuple[bytes, bytes] | None = None
                              ) -> list[tuple[bytes, bytes]]:
    """The request's fields as sent to the backend: hop-by-hop fields and those named in
    Connection removed, framing recomputed, the client's address appended to X-Forwarded-For
    as a new field after any existing ones (what HAProxy's ``option forwardfor`` does)."""
    drop = HOP_BY_HOP | head.connection_tokens if head.connection_tokens else HOP_BY_HOP
    if proto_port is not None:
        drop = drop | FORWARDED_PROTO_FIELDS
    if mode == "replace":
        drop = drop | FORWARDED_FIELDS
    headers = [(name, value) for name, value in head.headers if name.lower() not in drop]
    if head.host is None:
        # An HTTP/1.0 request may come without Host, but it goes on as HTTP/1.1, which requires
        # one: RFC 9112 section 3.2 says to send it empty when there is no authority.
        headers.insert(0, (b"Host", b""))
    if head.chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif head.content_length is not None:
        headers.append((b"Content-Length", str(head.content_length).encode()))
    headers += _forwarding_fields(client_ip, proto_port)
    return headers


def _forwarding_fields(client_ip: str, proto_port: tuple[bytes, bytes] | None
                       ) -> list[tuple[bytes, bytes]]:
    fields = [(b"X-Forwarded-For", client_ip.encode())]
    if proto_port is not None:
        fields += ((b"X-Forwarded-Proto", proto_port[0]), (b"X-Forwarded-Port", proto_port[1]))
    return fields


def forwarded_lines(client_ip: str, proto_port: tuple[bytes, bytes] | None) -> bytes:
    """What ends a request head forwarded as it came (RequestHead.raw, its blank line cut
    off): the fields forwarded_request_headers appends, then the blank line."""
    return b"".join([name + b": " + value + b"\r\n"
                     for name, value in _forwarding_fields(client_ip, proto_port)]) + b"\r\n"


class _Exchange:
    """One request forwarded to a backend, and its response."""

    __slots__ = (
        "backend", "chunked_response", "connect_started", "connected_at", "connection",
        "counted", "endpoints", "failed_connects", "head", "head_time", "last_server_activity",
        "pending", "request_body", "request_done", "request_start", "response_at",
        "response_bytes", "response_done", "response_head", "response_started", "retried",
        "reused", "route", "sent_before", "server_label", "started",
    )

    def __init__(self, head: RequestHead, backend: Backend, now: float, route: str,
                 request_start: float, head_time: float, sent_before: int) -> None:
        self.head = head
        self.backend = backend
        self.route = route  # the matched rule's label, for the metrics
        self.connection: _ServerConnection | None = None
        self.endpoints: list[Endpoint] = []
        self.pending: list[bytes] = []
        self.request_body = head.chunked or bool(head.content_length)
        self.request_done = not self.request_body
        self.response_head: ResponseHead | None = None
        self.response_started = False
        self.response_done = False
        self.chunked_response = False
        self.response_bytes = 0
        self.retried = False
        self.reused = False
        self.server_label = "-"
        # The server this exchange counts as active on (leastconn), until it ends.
        self.counted: str | None = None
        self.started = now
        self.last_server_activity = now
        # For the access log's timers (HAProxy's %TR/%Tw/%Tc/%Tr/%Ta): -1.0 is "never".
        self.request_start = request_start  # the first byte of the request head
        self.head_time = head_time  # from that byte to the whole head
        self.connect_started = -1.0
        self.connected_at = -1.0
        self.response_at = -1.0
        self.failed_connects = 0
        self.sent_before = sent_before  # the session's bytes to the client before this answer

    def connect_failed(self) -> None:
        self.failed_connects += 1
        self.backend.connect_failed()

    def release(self) -> None:
        """No longer active on its server: called on every way an exchange ends or leaves its
        connection, and harmless when it was not counted or already released."""
        if self.counted is not None:
            self.backend.release(self.counted)
            self.counted = None


class HttpSession(asyncio.Protocol):
    def __init__(self, ctx: HttpContext,
                 proxied_client: tuple[str, int] | None = None) -> None:
        """``proxied_client``: the client address of a PROXY header already read (the
        ``https-proxied`` listener reads it before the TLS handshake, see
        ingress.proxy.tls_accept)."""
        self._ctx = ctx
        self._proxied_client = proxied_client
        self._loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self._out: Outbox | None = None  # the transport's writes, through ctx.writes
        self._parser = RequestParser(ctx.limits)
        self._queue: deque[RequestHead | Data | EndOfMessage] = deque()
        self._exchange: _Exchange | None = None
        self._discarding_body = False
        self._awaiting_proxy = ctx.listener.accept_proxy and proxied_client is None
        self._tls: TlsFields | None = None  # for the access log
        # made only for a listener that reads a PROXY header; dropped once it is read
        self._inbound = proxy_protocol.HeaderReader() if self._awaiting_proxy else None
        self._closing = False
        # A request after which the connection closes has been parsed / read whole: bytes
        # after it are not read (they would be a request that must not be answered).
        self._last_head_seen = False
        self._input_done = False
        self._client_eof = False
        self._pumping = False
        self._client_paused = False
        self.client_address: tuple[str, int] | None = None
        self._client_text = "-"  # client_address as the log shows it
        self._proto_port: tuple[bytes, bytes] | None = None
        # forwarded_lines for this client, formatted once per connection
        self._forwarded_lines = b"\r\n"
        self._connected_at = self._last_activity = self._loop.time()
        self._head_started: float | None = None
        # When the head of the request being read began and when the last read came (for the
        # access log's request timers), and when the last answer was logged.
        self._head_began = self._read_at = self._last_end = self._connected_at
        # A malformed request was answered: nothing more of this client is read or logged.
        self._rejected = False
        self._received = 0  # bytes from and to the client, for the metrics
        self._sent = 0

    # --- client events -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._out = Outbox(self._ctx.writes, self.transport)
        peer = transport.get_extra_info("peername")
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            server_name = getattr(ssl_object, "requested_server_name", None)
            self._tls = TlsFields(ssl_object.version() or "-", server_name or "-")
        listener = self._ctx.listener
        if listener.forwarded_proto:
            sock = transport.get_extra_info("sockname")
            self._proto_port = (b"https" if listener.tls else b"http",
                                str(sock[1] if sock else 0).encode())
        self._set_client(self._proxied_client or ((peer[0], peer[1]) if peer else None))
        self._ctx.sessions.add(self)
        self._ctx.metrics.connection_opened(listener.name)
        self._ctx.access_log.connection_opened(listener.name)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_activity = self._read_at = now
        self._received += len(data)
        inbound = self._inbound
        if inbound is not None:
            try:
                parsed = inbound.feed(data)
            except proxy_protocol.ProxyProtocolError as bad_header:
                # Not named "error" like the HttpError below: mypyc gives a name one type per
                # function, and the second except clause would fail its check.
                self._log_rejection(0, "bad-proxy-header", f"{bad_header.reason}: {bad_header}")
                self._close_client()
                return
            if parsed is None:
                return
            header, data = parsed
            if header.client_address is not None:
                self._set_client(header.client_address)
            self._awaiting_proxy = False
            self._inbound = None
            if not data:
                return
        if self._input_done:
            return
        idle = self._exchange is None and not self._queue
        if idle:
            # The usual read: one whole bodiless request, straight to its exchange.
            whole = self._parser.take_whole(data)
            if whole is not None:
                self._head_started = None
                self._head_began = now
                self._one_request(whole)
                return
            if self._head_started is None:
                self._head_started = now
        self._head_began = self._head_started if self._head_started is not None else now
        try:
            events = self._parser.feed(data, try_whole=not idle)
        except HttpError as error:
            self._reject(error)
            return
        if self._parser.in_head:
            if self._head_started is None:
                self._head_started = now
        else:
            self._head_started = None
        if len(events) == 2 and not self._queue and self._exchange is None:
            head = events[0]
            if (type(head) is RequestHead and not head.chunked and not head.content_length
                    and type(events[1]) is EndOfMessage):
                self._one_request(head)
                return
        self._enqueue(events)
        self._pump()

    def _set_client(self, address: tuple[str, int] | None) -> None:
        self.client_address = address
        self._client_text = log_address(address)
        self._forwarded_lines = forwarded_lines(address[0] if address else "-", self._proto_port)

    def _one_request(self, head: RequestHead) -> None:
        """What _enqueue and _pump do for a whole request without a body (an empty chunked one
        has its last chunk to send: not this) that finds nothing queued or in progress ahead of
        it, the usual case, without the queue."""
        if not head.keep_alive:
            self._last_head_seen = self._input_done = True
        self._pump(head)

    def _enqueue(self, events: list[RequestHead | Data | EndOfMessage]) -> None:
        """Queue parsed events up to the end of the request after which the connection closes
        (Connection: close, HTTP/1.0): its body is still wanted, anything after it is not."""
        queue = self._queue
        for event in events:
            queue.append(event)
            if isinstance(event, RequestHead):
                if not event.keep_alive:
                    self._last_head_seen = True
            elif isinstance(event, EndOfMessage) and self._last_head_seen:
                self._input_done = True
                return

    def eof_received(self) -> bool:
        if self._rejected:
            return False
        try:
            events = self._parser.feed_eof()
        except HttpError as error:
            self._reject(error)
            return False
        self._queue.extend(events)
        self._closing = True
        self._client_eof = True
        self._pump()
        # Keep the transport open to write the response to a client that only shut down its side.
        return self._exchange is not None or bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._ctx.sessions.discard(self)
        self._ctx.metrics.connection_closed(self._ctx.listener.name, self._received, self._sent)
        self._abort_exchange(reset=exc is not None)
        # After the abort's line: like HAProxy's, a line counts its own connection.
        self._ctx.access_log.connection_closed(self._ctx.listener.name)

    def _abort_exchange(self, *, reset: bool) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.response_done:
            if exchange.connection is not None:
                exchange.connection.abandon()
            exchange.release()  # before the line, which counts the backend's other requests
            self._exchange = None
            # HAProxy's "C" and the phase: "D" for data moving (the response under way, the
            # request body still coming) and, as HAProxy has it, for a reset, which breaks
            # the connection whatever was moving; "H" for a close while the head was awaited.
            response = exchange.response_head
            self._log_exchange(
                exchange, status=response.status if response is not None else 0,
                end="client-aborted", termination="CD--" if reset
                or exchange.response_started or not exchange.request_done else "CH--")

    def pause_writing(self) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.connection is not None:
            pause_reading(exchange.connection.transport)

    def resume_writing(self) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.connection is not None:
            resume_reading(exchange.connection.transport)

    # --- the request queue ---------------------------------------------------------------------

    def _pump(self, head: RequestHead | None = None) -> None:
        """Start ``head`` (a request that was not queued, see _one_request), then work through
        the queue; one flush of what went to the backend at the end."""
        was_pumping, self._pumping = self._pumping, True
        try:
            if head is None or self._start(head):
                self._pump_queue()
        finally:
            self._pumping = was_pumping
        if self._exchange is not None:
            self._flush(self._exchange)
        self._after_pump()

    def _start(self, head: RequestHead) -> bool:
        """Begin the exchange of ``head``, the next request in order; False when it is not to
        be answered, and neither is anything queued after it."""
        if self.transport is None:
            return False
        if self._closing and not self._client_eof:
            # The last response said Connection: close: a request pipelined after it is not
            # answered (the client retries it on a new connection). A client that only shut
            # down its sending side still gets every answer.
            self._queue.clear()
            return False
        self._begin(head)
        return True

    def _pump_queue(self) -> None:
        queue = self._queue
        while queue and self.transport is not None:
            event = queue[0]
            if isinstance(event, RequestHead):
                if self._exchange is not None:
                    break  # pipelined: answered after the current exchange, in order
                queue.popleft()
                if not self._start(event):
                    break
                continue
            queue.popleft()
            if self._discarding_body:
                if isinstance(event, EndOfMessage):
                    self._discarding_body = False
                continue
            exchange = self._exchange
            if exchange is not None:
                self._send_body(exchange, event)

    def _after_pump(self) -> None:
        queue = self._queue
        if self.transport is None:
            return
        if len(queue) > PIPELINE_LIMIT and not self._client_paused:
            self._client_paused = True
            self.transport.pause_reading()
        elif len(queue) <= PIPELINE_LIMIT // 2 and self._client_paused:
            self._client_paused = False
            self.transport.resume_reading()
        if self._closing and self._exchange is None and not queue:
            self._close_client()

    def _begin(self, head: RequestHead) -> None:
        ctx = self._ctx
        if not head.keep_alive:
            self._closing = True
        if ctx.acme_challenges is not None and head.path.startswith(CHALLENGE_PREFIX):
            # Before the routes, which send this path to GreenArrow's TLS service: a token the
            # ingress itself is waiting on is answered here; any other goes its normal way.
            key_authorization = ctx.acme_challenges.answer(head.path)
            if key_authorization is not None:
                self._answer(head, 200, key_authorization, end="acme-challenge",
                             route="acme-challenge")
                return
        rule = ctx.routes.match(head.path, head.host) if ctx.routes is not None else None
        backend_name = rule.backend if rule is not None else ctx.listener.backend
        if rule is not None and rule.answer is not None:
            self._answer_locally(head, rule.answer, rule.label)
            return
        if backend_name is None:
            # HAProxy's state for a request that no backend takes: "SC", no server connected.
            self._answer(head, 503, b"No route for this request.\n", end="no-route",
                         termination="SC--")
            return
        now = self._loop.time()
        began = self._began(now)
        exchange = _Exchange(head, ctx.backends[backend_name], now,
                             rule.label if rule is not None else "-", began,
                             max(0.0, self._read_at - began), self._sent)
        self._exchange = exchange
        static = exchange.backend.static_endpoints()
        if static is not None:
            exchange.endpoints = static
            self._connect(exchange)
        else:
            task = self._loop.create_task(self._resolve_and_connect(exchange))
            task.add_done_callback(_report_unexpected)

    def _answer_locally(self, head: RequestHead, answer: LocalAnswer, route: str) -> None:
        status = answer.status
        body = answer.body
        if answer.kind == READINESS and self._ctx.state.draining:
            status, body = 503, b"draining\n"
        self._answer(head, status, body, answer.content_type, end="local", route=route)

    def _answer(self, head: RequestHead, status: int, body: bytes,
                content_type: bytes = b"text/plain", *, end: str, route: str = "-",
                termination: str = "LR--") -> None:
        """A response of the proxy's own (HAProxy's "L": handled locally), logged as HAProxy
        logs its own answers: the listener as backend, no server."""
        if head.chunked or head.content_length:
            self._discarding_body = True
        close = self._closing or self._ctx.state.draining
        if close:
            self._closing = True
        response = simple_response(
            status, body, content_type, close=close, http10=head.version == b"1.0",
            head=head.method == b"HEAD")
        self._send(response)
        now = self._loop.time()
        began = self._began(now)
        listener = self._ctx.listener.name
        self._log_request(head, status, len(response), backend=listener,
                          server=NO_SERVER_LABEL, end=end, started=now, route=route,
                          termination=termination, request_start=began,
                          head_time=max(0.0, self._read_at - began), queue_ms=-1,
                          connect_ms=-1, response_ms=-1, backend_connections=0,
                          server_connections=0, retries=0, metrics_backend="<local>")

    def _began(self, now: float) -> float:
        """When the request now beginning started: the first byte of its head, or for one
        read while the one before it was being answered (pipelined), now."""
        began = self._head_began
        return began if began >= self._last_end else now

    # --- backend connection --------------------------------------------------------------------

    async def _resolve_and_connect(self, exchange: _Exchange) -> None:
        exchange.endpoints = await exchange.backend.endpoints()
        if self._exchange is exchange:
            self._connect(exchange)

    def _connect(self, exchange: _Exchange) -> None:
        if not exchange.endpoints:
            self._fail_exchange(exchange, 503, NO_SERVER, "SC")
            return
        first = exchange.endpoints[0]
        exchange.connect_started = self._loop.time()
        if not exchange.retried:  # a retry is on a fresh connection
            pool = self._ctx.pool
            key = (first.host, first.port)
            pooled = pool.take(key)
            while pooled is not None:
                connection = cast(_ServerConnection, pooled)
                if connection.is_usable():
                    exchange.reused = True
                    exchange.server_label = first.server
                    self._attach(exchange, connection, exchange.connect_started)
                    return
                pooled = pool.take(key)
        task = self._loop.create_task(self._open(exchange))
        task.add_done_callback(_report_unexpected)

    async def _open(self, exchange: _Exchange) -> None:
        pool = self._ctx.pool
        try:
            async with asyncio.timeout(self._ctx.timeouts.connect):
                connection, endpoint = await connect_first(
                    exchange.endpoints,
                    lambda e: lambda: _ServerConnection(pool, (e.host, e.port),
                                                        self._ctx.writes),
                    exchange.connect_failed)
        except TimeoutError:
            # The log names the server being tried, as HAProxy names the one that failed.
            exchange.server_label = exchange.endpoints[
                min(exchange.failed_connects, len(exchange.endpoints) - 1)].server
            exchange.connect_failed()
            failure = f"connect timeout after {self._ctx.timeouts.connect:g}s"
            who = "sC"
        except NoServerReachedError as error:
            exchange.server_label = exchange.endpoints[-1].server  # all tried, in order
            failure = str(error)
            who = "SC"
        else:
            if self._exchange is not exchange or self.transport is None:
                connection.close()
                return
            exchange.server_label = endpoint.server
            self._attach(exchange, connection, self._loop.time())
            return
        self._fail_exchange(exchange, 503, failure, who)

    def _attach(self, exchange: _Exchange, connection: _ServerConnection, now: float) -> None:
        exchange.connection = connection
        # Counted whatever the balance: the access log's beconn and srv_conn are these counts.
        exchange.counted = exchange.server_label
        exchange.backend.acquire(exchange.server_label)
        exchange.last_server_activity = exchange.connected_at = now
        connection.start(self, exchange)
        head = exchange.head
        if head.raw:
            # Nothing in it that the serialisation below would drop or rewrite: the same
            # request, for a fraction of the work.
            request = head.raw[:-2] + self._forwarded_lines
        else:
            client_ip = self.client_address[0] if self.client_address else "-"
            request = serialize_request_head(head, forwarded_request_headers(
                head, client_ip, self._ctx.listener.forwarded_for, self._proto_port))
        # The head goes first, with whatever body bytes are already queued, in one send; inside
        # _pump the flush waits until the pump has queued the rest of this read's body events.
        exchange.pending.insert(0, request)
        if not self._pumping:
            self._flush(exchange)

    def _flush(self, exchange: _Exchange) -> None:
        pending = exchange.pending
        if exchange.connection is not None and pending:
            exchange.connection.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()

    def _send_body(self, exchange: _Exchange, event: Data | EndOfMessage) -> None:
        if isinstance(event, EndOfMessage):
            data = LAST_CHUNK if exchange.head.chunked else b""
            exchange.request_done = True
        else:
            data = chunk(event.data) if exchange.head.chunked else event.data
        if data:
            exchange.pending.append(data)  # sent by _flush, at the end of the pump

    # --- backend events (from _ServerConnection) -----------------------------------------------

    def response_events(self, exchange: _Exchange,
                        events: list[ResponseHead | Data | EndOfMessage]) -> None:
        exchange.last_server_activity = self._loop.time()
        out = self._out
        if self.transport is None or out is None:
            return
        # Everything one read of the backend produced goes out in one write: a small response
        # (head and body in one segment) costs one send() to the client, not two.
        parts: list[bytes] = []
        for event in events:
            if isinstance(event, Data):
                exchange.response_bytes += len(event.data)
                parts.append(chunk(event.data) if exchange.chunked_response else event.data)
            elif isinstance(event, ResponseHead):
                if 100 <= event.status < 200:
                    if event.status == 101:
                        self._send(b"".join(parts))
                        self._fail_exchange(exchange, 502, "protocol upgrade is not supported",
                                            "PH")
                        return
                    parts.append(serialize_response_head(
                        event.status, event.reason, _end_to_end(event.headers)))
                    continue
                exchange.response_head = event
                exchange.response_started = True
                exchange.response_at = exchange.last_server_activity
                parts.append(self._client_response_head(exchange, event))
            else:
                if exchange.chunked_response:
                    parts.append(LAST_CHUNK)
                data = b"".join(parts)
                self._sent += len(data)
                out.write(data)
                self._finish_exchange(exchange)
                return
        if parts:
            data = b"".join(parts) if len(parts) > 1 else parts[0]
            self._sent += len(data)
            out.write(data)

    def whole_response(self, exchange: _Exchange, head: ResponseHead, body: bytes) -> None:
        """What response_events does with a head, its body and the end, the usual read of a
        backend (ResponseParser.take_whole: a final response framed by its Content-Length or
        bodiless), without the events. (No last_server_activity: the exchange ends here.)"""
        out = self._out
        if self.transport is None or out is None:
            return
        exchange.response_head = head
        exchange.response_started = True
        exchange.response_bytes += len(body)
        data = self._client_response_head(exchange, head)  # never chunked: the length is known
        if body:
            data += body
        self._sent += len(data)
        out.write(data)
        self._finish_exchange(exchange)

    def _client_response_head(self, exchange: _Exchange, response: ResponseHead) -> bytes:
        request = exchange.head
        no_body = request.method == b"HEAD" or response.status in (204, 304)
        delimited = response.content_length is not None or no_body
        if not delimited and request.version != b"1.1":
            self._closing = True  # HTTP/1.0 client: the end of the body is the close
        if not exchange.request_done:
            # Answered before the request body was all read: the rest of it cannot be told
            # apart from a next request, so this connection ends here.
            self._closing = True
        if self._ctx.state.draining:
            self._closing = True
        connection = (b"close" if self._closing
                      else b"keep-alive" if request.version == b"1.0" else b"")
        raw = response.raw
        if raw:
            # Nothing of the backend's head to change (its framing is a Content-Length or none,
            # see ResponseHead.raw): it goes on as it came, with this connection's own field.
            return raw if not connection else raw[:-2] + b"Connection: " + connection + b"\r\n\r\n"
        headers = _end_to_end(response.headers)
        if response.content_length is not None:
            headers.append((b"Content-Length", str(response.content_length).encode()))
        elif not no_body and request.version == b"1.1":
            exchange.chunked_response = True
            headers.append((b"Transfer-Encoding", b"chunked"))
        if connection:
            headers.append((b"Connection", connection))
        return serialize_response_head(response.status, response.reason, headers)

    def _finish_exchange(self, exchange: _Exchange) -> None:
        exchange.response_done = True
        connection = exchange.connection
        response = exchange.response_head
        status = response.status if response is not None else 0
        exchange.release()
        if connection is not None:
            # Not pooled when its server has left the backend (DNS discovery): that server is
            # draining, and the connection would only wait idle for its timeout.
            connection.finish(reusable=exchange.request_done and response is not None
                              and response.keep_alive
                              and exchange.backend.serves(exchange.server_label))
        self._log_exchange(exchange, status=status, end="ok", termination="----")
        self._exchange = None
        self._head_started = None
        if self._queue:
            self._pump()
        else:
            self._after_pump()

    def server_failed(self, exchange: _Exchange, reason: str, *, status: int = 502,
                      retryable: bool = False, who: str = "S") -> None:
        """The backend connection broke, timed out, or sent a malformed response; ``who``: the
        first letter of HAProxy's termination state ("S" the server, "s" its timeout, "P" the
        proxy refusing what it sent)."""
        if self._exchange is not exchange:
            return
        connection = exchange.connection
        exchange.connection = None
        if connection is not None:
            connection.abandon()
        exchange.release()
        if (retryable and exchange.reused and not exchange.retried
                and not exchange.request_body and exchange.response_head is None):
            exchange.retried = True
            exchange.reused = False
            self._ctx.metrics.retried(exchange.backend.name)
            self._connect(exchange)
            return
        self._fail_exchange(exchange, status, reason,
                            who + ("D" if exchange.response_started else "H"))

    def _fail_exchange(self, exchange: _Exchange, status: int, reason: str,
                       state: str) -> None:
        """``state``: HAProxy's two-letter termination state (who ended it, in which phase)."""
        if self._exchange is not exchange:
            return
        exchange.release()
        if exchange.response_started:
            # Bytes of this response are already with the client: a complete-looking response
            # must not follow, and the client must see the break.
            self._log_exchange(exchange, status=exchange.response_head.status
                               if exchange.response_head else 0, end=f"server-broke: {reason}",
                               termination=state + "--")
            self._exchange = None
            self._close_client()
            return
        self._closing = self._closing or not exchange.request_done
        body = {503: b"No server is available to handle this request.\n",
                504: b"The server did not answer in time.\n"}.get(status, b"Bad gateway.\n")
        self._send(simple_response(status, body, close=self._closing,
                                   http10=exchange.head.version == b"1.0"))
        self._log_exchange(exchange, status=status, end=reason, termination=state + "--")
        if exchange.request_body and not exchange.request_done:
            self._discarding_body = True
        self._exchange = None
        self._pump()

    # --- errors, timeouts, logging -------------------------------------------------------------

    def _reject(self, error: HttpError) -> None:
        """Malformed request: the error's status, one log line, connection closed."""
        if self._rejected:
            return
        self._rejected = self._input_done = True
        sent = 0
        if self._exchange is None:
            # With an exchange under way, its response has started or is due first: no answer.
            body = f"{_status_line_reason(error.status).decode()}: {error.reason}\n".encode()
            response = simple_response(error.status, body, close=True)
            sent = len(response)
            self._send(response)
        # HAProxy's states: "cR" its client timeout while the request came, else "PR" (the
        # proxy refused the request).
        self._log_rejection(error.status, error.reason, error.detail,
                            termination="cR--" if error.status == 408 else "PR--",
                            bytes_read=sent)
        self._close_client()

    def _close_client(self) -> None:
        """Close after what is written so far, the held writes included."""
        if self.transport is not None and self._out is not None:
            self._out.close()

    def check_timeouts(self, now: float) -> None:
        timeouts = self._ctx.timeouts
        exchange = self._exchange
        if exchange is not None:
            if (exchange.connection is not None and not exchange.response_done
                    and now - exchange.last_server_activity >= timeouts.server):
                self.server_failed(exchange, "server-timeout", status=504, who="s")
            return
        if self._awaiting_proxy:
            if now - self._connected_at >= timeouts.proxy_header:
                self._log_rejection(0, "proxy-header-timeout", "")
                self._close_client()
            return
        if self._head_started is not None:
            if now - self._head_started >= timeouts.http_request:
                self._reject(HttpError(408, "request-timeout",
                                       f"no complete request head in {timeouts.http_request:g}s"))
            return
        if not self._queue and now - self._last_activity >= timeouts.http_keep_alive:
            self._close_client()

    def close_if_idle(self) -> None:
        """Shutdown: an idle keep-alive connection is closed now rather than at its timeout."""
        if self._exchange is None and not self._queue and self._head_started is None:
            self._close_client()

    def _send(self, data: bytes) -> None:
        if self.transport is not None and self._out is not None:
            self._sent += len(data)
            self._out.write(data)

    def _log_rejection(self, status: int, reason: str, detail: str, *,
                       termination: str = "PR--", bytes_read: int = 0) -> None:
        self._ctx.metrics.http_rejected(self._ctx.listener.name, reason)
        now = self._loop.time()
        began = self._head_started if self._head_started is not None else (
            self._head_began if self._head_began >= self._last_end else now)
        self._ctx.access_log.http_rejection(
            listener=self._ctx.listener.name, client=self._client_text, status=status,
            reason=reason, detail=detail, worker=self._ctx.worker, termination=termination,
            active_ms=_ms(now - (began if status else self._connected_at)),
            bytes_read=bytes_read, tls=self._tls)

    def _log_exchange(self, exchange: _Exchange, *, status: int, end: str,
                      termination: str) -> None:
        connected_at = exchange.connected_at
        response_at = exchange.response_at
        if exchange.response_head is not None and response_at < 0:
            response_at = self._loop.time()  # whole_response: the head came just now
        backend = exchange.backend
        server = exchange.server_label
        self._log_request(
            exchange.head, status, self._sent - exchange.sent_before,
            backend=backend.name, server=server if server != "-" else NO_SERVER_LABEL,
            end=end, started=exchange.started, route=exchange.route, termination=termination,
            request_start=exchange.request_start, head_time=exchange.head_time,
            queue_ms=0 if exchange.connect_started >= 0 else -1,
            connect_ms=_ms(connected_at - exchange.connect_started) if connected_at >= 0
            else -1,
            response_ms=_ms(response_at - connected_at) if response_at >= 0
            and connected_at >= 0 else -1,
            backend_connections=backend.busy, server_connections=backend.active.get(server, 0),
            retries=max(0, exchange.failed_connects - (0 if connected_at >= 0 else 1))
            + (1 if exchange.retried else 0))

    def _log_request(self, head: RequestHead, status: int, bytes_read: int, *, backend: str,
                     server: str, end: str, started: float, route: str, termination: str,
                     request_start: float, head_time: float, queue_ms: int, connect_ms: int,
                     response_ms: int, backend_connections: int, server_connections: int,
                     retries: int, metrics_backend: str | None = None) -> None:
        """``metrics_backend``: the metrics' name of the backend, when not ``backend``."""
        ctx = self._ctx
        now = self._last_end = self._loop.time()
        ctx.metrics.http_request(ctx.listener.name, route, metrics_backend or backend, status,
                                 now - started)
        ctx.access_log.http_request(
            client=self._client_text, listener=ctx.listener.name,
            backend=backend, server=server, request_ms=_ms(head_time), queue_ms=queue_ms,
            connect_ms=connect_ms, response_ms=response_ms,
            active_ms=_ms(now - request_start),
            # HAProxy's -1: no response was sent (a client that left first)
            status=status if status else -1,
            bytes_read=bytes_read, termination=termination,
            backend_connections=backend_connections, server_connections=server_connections,
            retries=retries, method=head.method, target=head.target,
            version=head.version, end=end, worker=ctx.worker, tls=self._tls)


def _ms(seconds: float) -> int:
    return int(seconds * 1000 + 0.5)


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's fields without hop-by-hop ones, in one pass over lowercased names; the
    fields a Connection header names are rare, so they are filtered afterwards only if any."""
    kept: list[tuple[bytes, bytes, bytes]] = []
    named: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        if lower == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
        elif lower not in HOP_BY_HOP:
            kept.append((lower, name, value))
    if named:
        return [(name, value) for lower, name, value in kept if lower not in named]
    return [(name, value) for _, name, value in kept]


def _report_unexpected(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        loop = task.get_loop()
        loop.call_exception_handler({"message": "HTTP proxy task failed",
                                     "exception": task.exception(), "task": task})


class _ServerConnection(asyncio.Protocol):
    """A connection to one backend server; serves one exchange at a time, then goes back to
    the pool if its response ended cleanly and the server keeps it alive."""

    def __init__(self, pool: ConnectionPool, key: tuple[str, int], writes: WriteBatch) -> None:
        self._pool = pool
        self._key = key
        self._writes = writes
        self.transport: asyncio.Transport | None = None
        self._out: Outbox | None = None
        self._session: HttpSession | None = None
        self._exchange: _Exchange | None = None
        self._parser: ResponseParser | None = None
        self._received_any = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._out = Outbox(self._writes, self.transport)

    def is_usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def start(self, session: HttpSession, exchange: _Exchange) -> None:
        self._session = session
        self._exchange = exchange
        parser = self._parser
        if parser is None:
            # Kept across the exchanges of a pooled connection: it is back in its initial state
            # after every response that ended cleanly, and only those are pooled.
            parser = self._parser = ResponseParser(RESPONSE_LIMITS)
        parser.expect(exchange.head.method)
        self._received_any = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and self._out is not None:
            self._out.write(data)

    def data_received(self, data: bytes) -> None:
        session, exchange, parser = self._session, self._exchange, self._parser
        if session is None or exchange is None or parser is None:
            # Bytes from an idle server: whatever they are, this connection is done.
            self._parser = None
            self.close()
            return
        self._received_any = True
        whole = parser.take_whole(data)
        if whole is not None:
            session.whole_response(exchange, whole[0], whole[1])
            return
        try:
            events = parser.feed(data, try_whole=False)
        except HttpError as error:
            session.server_failed(exchange, f"bad-response: {error.reason}", who="P")
            return
        session.response_events(exchange, events)

    def eof_received(self) -> bool:
        session, exchange, parser = self._session, self._exchange, self._parser
        if session is not None and exchange is not None and parser is not None:
            try:
                events = parser.feed_eof()
            except HttpError:
                session.server_failed(exchange, "server-closed-mid-response",
                                      retryable=not self._received_any)
                return False
            session.response_events(exchange, events)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        session, exchange = self._session, self._exchange
        self._session = self._exchange = None
        if session is not None and exchange is not None and not exchange.response_done:
            session.server_failed(exchange, "server-closed-mid-response",
                                  retryable=not self._received_any)
        else:
            self._pool.discard(self._key, self)

    def finish(self, *, reusable: bool) -> None:
        self._session = self._exchange = None
        if reusable and self.is_usable():
            self._pool.give(self._key, self)
        else:
            self._parser = None
            self.close()

    def abandon(self) -> None:
        self._session = self._exchange = None
        self._parser = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and self._out is not None:
            self._out.close()

    def pause_writing(self) -> None:
        if self._session is not None:
            pause_reading(self._session.transport)

    def resume_writing(self) -> None:
        if self._session is not None:
            resume_reading(self._session.transport)


def make_factory(ctx: HttpContext) -> Callable[[], HttpSession]:
    return lambda: HttpSession(ctx)


def make_proxied_factory(ctx: HttpContext
                         ) -> Callable[[tuple[str, int] | None], HttpSession]:
    return lambda client: HttpSession(ctx, client)

