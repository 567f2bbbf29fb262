"""TCP relay: SMTP (or any TCP protocol) to a backend, behind a PROXY protocol header.

Theory of operation
-------------------
A session is two transports: the client's (accepted by a listener) and the backend's (opened by
the session).  :class:`RelaySession` is the client side's protocol and owns the session;
:class:`_BackendSide` is the backend's protocol and only forwards events to the session.

States, in order::

    AWAIT_PROXY  (accept-proxy listeners only) bytes are buffered until the inbound PROXY
                 header is complete; nothing is sent to anyone before that, and a bad or late
                 header closes the client with a log line saying why.
    CONNECTING   servers are tried in round-robin order until one accepts or the connect
                 timeout runs out; client bytes that arrive meanwhile are kept (reading pauses
                 past a limit).  If none accepts: SMTP ``421`` to the client, then close, so that
                 the sender queues and retries instead of hanging.
    RELAY        the outbound PROXY header is written alone, first, then any kept client bytes,
                 then bytes flow both ways.  SMTP servers speak first: nothing waits for the
                 client.
    CLOSED       both transports are gone; one log line is written.

Once connected, the relaying itself (flow control, half-close, kept bytes) is
``ingress/proxy/relay.py``'s, shared with the egress tier's sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ingress.config import ListenerConfig, Timeouts
from ingress.ops.logs import NO_SERVER as NO_SERVER_LABEL
from ingress.ops.logs import AccessLog, address_text, log_address
from ingress.ops.metrics import Metrics
from ingress.ops.metrics import metrics as metrics_of_this_process
from ingress.protocol import proxy_protocol
from ingress.proxy.relay import AWAIT_PROXY, CLOSED, CONNECTING, RELAY, Relay, ServerSide
from ingress.proxy.sockets import (
    Engine,
    PendingConnect,
    SocketTransport,
    connect_socket,
    create_connection,
    family_of,
    stream_socket,
)
from ingress.proxy.timers import Deadline, Deadlines
from routing.backends import NO_SERVER as NO_SERVER_REACHED
from routing.backends import (
    Backend,
    Endpoint,
    NoServerReachedError,
    connect_failure,
    connect_first,
)

log = logging.getLogger("mta_ingress.tcp")

SMTP_UNAVAILABLE = b"421 4.3.2 Service not available, try again later\r\n"


@dataclass(slots=True)
class RelayContext:
    """What every session of one listener shares."""

    listener: ListenerConfig
    backend: Backend
    send_proxy: str
    timeouts: Timeouts
    access_log: AccessLog
    sessions: set[RelaySession]
    # The worker's loop, taken once: asyncio.get_running_loop() makes a getpid() system call
    # on every call (its fork check), and sessions are made per connection.
    loop: asyncio.AbstractEventLoop
    worker: int = 0
    metrics: Metrics = field(default_factory=metrics_of_this_process)
    # io_engine = "epoll": the worker's engine, which opens the backend connections too; to
    # servers by address in callbacks (connect_socket), to servers by name in the task
    engine: Engine | None = None
    # every session's connect timeout, on one loop timer (ingress/proxy/timers.py)
    connect_deadlines: Deadlines = field(init=False)

    def __post_init__(self) -> None:
        self.connect_deadlines = Deadlines(self.loop, self.timeouts.connect)


def outbound_header(version: str, client: tuple[str, int], local: tuple[str, int]) -> bytes:
    if version == "v1":
        return proxy_protocol.encode_v1(client, local)
    if version == "v2":
        return proxy_protocol.encode_v2(client, local)
    return b""


class RelaySession(Relay):
    __slots__ = (
        "_connect_handle", "_connect_started", "_connect_task", "_connect_timed_out", "_counted",
        "_ctx", "_endpoints", "_failed_connects", "_inbound", "_pending_connect", "_server_label",
        "client_address", "local_address",
    )

    def __init__(self, ctx: RelayContext) -> None:
        super().__init__(ctx.loop, AWAIT_PROXY)
        self._ctx = ctx
        self._connect_task: asyncio.Task[None] | None = None
        # io_engine = "epoll", servers by address: the connects end in callbacks, no task
        self._pending_connect: PendingConnect | None = None
        self._endpoints: list[Endpoint] = []
        self._connect_handle: Deadline | None = None
        self._connect_timed_out = False
        self._inbound = proxy_protocol.HeaderReader()
        self._server_label = "-"
        self._counted = False  # active on _server_label until the session ends
        # For the access log's timers (HAProxy's %Tw/%Tc): -1.0 is "never".
        self._connect_started = -1.0
        self._failed_connects = 0
        self.client_address: tuple[str, int] | None = None
        self.local_address: tuple[str, int] | None = None

    # --- client side ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self.take_client(transport)
        peer = client.get_extra_info("peername")
        sock = client.get_extra_info("sockname")
        self.client_address = (peer[0], peer[1]) if peer else None
        self.local_address = (sock[0], sock[1]) if sock else None
        self._ctx.sessions.add(self)
        self._ctx.metrics.connection_opened(self._ctx.listener.name)
        self._ctx.access_log.connection_opened(self._ctx.listener.name)
        if not self._ctx.listener.accept_proxy:
            self._start_connect()

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == RELAY:
            self.relay_to_server(data)
        elif state == CONNECTING:
            self._last_activity = self._loop.time()
            self.keep(data)
        elif state == AWAIT_PROXY:
            self._read_proxy_header(data)

    def _before_connect_eof(self) -> str:
        return "client-closed-before-proxy-header"

    def _stop_connecting(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        if self._pending_connect is not None:
            self._pending_connect.cancel()
            self._pending_connect = None
            self._cancel_connect_deadline()

    # --- inbound PROXY header ------------------------------------------------------------------

    def _read_proxy_header(self, data: bytes) -> None:
        try:
            parsed = self._inbound.feed(data)
        except proxy_protocol.ProxyProtocolError as error:
            self._finish("bad-proxy-header", detail=f"{error.reason}: {error}")
            return
        if parsed is None:
            return
        header, payload = parsed
        if header.client_address is not None:
            self.client_address = header.client_address
            if header.destination is not None:
                self.local_address = header.destination
        # The header itself is not session traffic: only what follows it is counted.
        self._start_connect()
        if payload:
            self.keep(payload)

    # --- backend connection --------------------------------------------------------------------

    def _start_connect(self) -> None:
        self._state = CONNECTING
        loop = self._loop
        self._connect_started = loop.time()
        # One timer for the whole attempt, over every server tried: the client hears the 421
        # within timeouts.connect however many servers there are.
        self._connect_handle = self._ctx.connect_deadlines.add(self._connect_deadline)
        endpoints = self._ctx.backend.static_endpoints()
        if self._ctx.engine is not None and endpoints is not None:
            self._endpoints = endpoints
            self._connect_next(NO_SERVER_REACHED)
            return
        self._connect_task = loop.create_task(self._connect(endpoints))

    def _connect_deadline(self) -> None:
        self._connect_handle = None
        if self._state != CONNECTING:
            return
        pending = self._pending_connect
        if pending is not None:
            pending.cancel()
            self._pending_connect = None
            self._connect_timed_out = True
            self._timed_out(self._endpoints)
            return
        task = self._connect_task
        if task is not None and not task.done():
            self._connect_timed_out = True
            task.cancel()

    # --- on the engine: each server in turn, by callbacks -----------------------------------

    def _connect_next(self, failure: str) -> None:
        """Connect to the next server of ``_endpoints``, from the ``_failed_connects``-th on;
        when none is left, the client hears why the last one failed."""
        engine = self._ctx.engine
        endpoints = self._endpoints
        assert engine is not None
        while self._failed_connects < len(endpoints):
            endpoint = endpoints[self._failed_connects]
            sock = stream_socket(family_of(endpoint.host))
            try:
                self._pending_connect = connect_socket(
                    engine, sock, (endpoint.host, endpoint.port), self._backend_factory,
                    self._engine_connect_failed, self._engine_connected)
            except OSError as error:
                sock.close()
                failure = connect_failure(endpoint, error)
                self._connect_failed()
                continue
            return
        self._no_server(endpoints, failure)

    def _engine_connected(self, transport: SocketTransport, protocol: asyncio.Protocol) -> None:
        self._pending_connect = None
        self._connected_to(self._endpoints[self._failed_connects])

    def _engine_connect_failed(self, error: OSError) -> None:
        self._pending_connect = None
        failure = connect_failure(self._endpoints[self._failed_connects], error)
        self._connect_failed()
        self._connect_next(failure)

    # --- in a task: servers by name, or on uvloop's transports ----------------------------

    async def _connect(self, endpoints: list[Endpoint] | None) -> None:
        try:
            if endpoints is None:
                endpoints = await self._ctx.backend.endpoints()
            engine = self._ctx.engine
            _, endpoint = await connect_first(
                endpoints, self._backend_factory_for, self._connect_failed,
                None if engine is None else partial(create_connection, engine))
        except NoServerReachedError as error:
            self._no_server(endpoints or [], str(error))
        except asyncio.CancelledError:
            if not self._connect_timed_out:
                self._cancel_connect_deadline()
                raise
            self._timed_out(endpoints or [])
        else:
            self._connected_to(endpoint)

    # --- how a connect attempt ends, either way ------------------------------------------

    def _connected_to(self, endpoint: Endpoint) -> None:
        self._server_label = endpoint.server
        # Only a session that is relaying counts: one whose client left meanwhile has already
        # ended (or will, without relaying).  Counted whatever the balance: the access log's
        # beconn and srv_conn are these counts.
        if self._state == RELAY:
            self._counted = True
            self._ctx.backend.acquire(endpoint.server)
        self._cancel_connect_deadline()

    def _no_server(self, endpoints: list[Endpoint], failure: str) -> None:
        # The log names the last server tried, as HAProxy names the one that failed.
        if endpoints:
            self._server_label = endpoints[-1].server
        self._cancel_connect_deadline()
        self._refuse(failure)

    def _timed_out(self, endpoints: list[Endpoint]) -> None:
        if endpoints:
            self._server_label = endpoints[min(self._failed_connects, len(endpoints) - 1)].server
        self._connect_failed()
        self._cancel_connect_deadline()
        self._refuse(f"connect timeout after {self._ctx.timeouts.connect:g}s")

    def _connect_failed(self) -> None:
        self._failed_connects += 1
        self._ctx.backend.connect_failed()

    def _cancel_connect_deadline(self) -> None:
        if self._connect_handle is not None:
            self._connect_handle.cancel()
            self._connect_handle = None

    def _backend_factory_for(self, endpoint: Endpoint) -> Callable[[], ServerSide]:
        return self._backend_factory

    def _backend_factory(self) -> ServerSide:
        return ServerSide(self)

    def server_connected(self, transport: asyncio.Transport) -> None:
        if not self.attach_server(transport):
            return
        client, local = self.client_address, self.local_address
        if self._ctx.send_proxy != "none" and client is not None and local is not None:
            # The header goes alone, in one write, before any payload: some receivers read
            # exactly one segment for it.
            transport.write(outbound_header(self._ctx.send_proxy, client, local))
        self.send_pending(transport)

    def _refuse(self, failure: str) -> None:
        if self.transport is None:
            return
        log.warning("msg=\"no backend server reachable\" listener=%s backend=%s client=%s "
                    "error=%r", self._ctx.listener.name, self._ctx.backend.name,
                    address_text(self.client_address), failure)
        if self._ctx.listener.on_backend_down == "smtp-421":
            self.transport.write(SMTP_UNAVAILABLE)
            self.bytes_out += len(SMTP_UNAVAILABLE)
        self._finish("no-backend", detail=failure)

    # --- ending ---------------------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the worker's sweep (see ``Worker``): one periodic pass
        over the sessions costs less than a timer armed and cancelled by every session."""
        if self._state == AWAIT_PROXY:
            if now - self._started >= self._ctx.timeouts.proxy_header:
                self._finish("proxy-header-timeout")
        elif self.idle_expired(now, self._ctx.timeouts.tcp_idle):
            self._finish("idle-timeout")

    def _maybe_done(self) -> None:
        state = self._closed_now()
        if state == CLOSED:
            return
        ctx = self._ctx
        ctx.sessions.discard(self)
        if self._counted:
            self._counted = False
            ctx.backend.release(self._server_label)
        seconds = self._loop.time() - self._started
        metrics = ctx.metrics
        metrics.connection_closed(ctx.listener.name, self.bytes_in, self.bytes_out)
        metrics.tcp_session(ctx.listener.name, ctx.backend.name, self._end, seconds)
        total_ms = _ms(seconds)
        if state == AWAIT_PROXY:
            # No session yet (HAProxy's connection-error line, not a tcplog one).
            ctx.access_log.connection_error(
                frontend=ctx.listener.name, client=log_address(self.client_address),
                end=self._end, reason=self._end, detail=self._detail, worker=ctx.worker,
                age_ms=total_ms)
        else:
            connected_at, connect_started = self._connected_at, self._connect_started
            server = self._server_label
            ctx.access_log.tcp_session(
                frontend=ctx.listener.name,
                client=log_address(self.client_address),
                backend=ctx.backend.name,
                server=server if server != "-" else NO_SERVER_LABEL,
                queue_ms=0 if connect_started >= 0 else -1,
                connect_ms=_ms(connected_at - connect_started) if connected_at >= 0 else -1,
                total_ms=total_ms,
                bytes_out=self.bytes_out,
                bytes_in=self.bytes_in,
                termination=termination_state(self._end, connected_at >= 0,
                                              self._connect_timed_out),
                backend_connections=ctx.backend.busy,
                server_connections=ctx.backend.active.get(server, 0),
                retries=max(0, self._failed_connects - (0 if connected_at >= 0 else 1)),
                end=self._end,
                worker=ctx.worker,
                detail=self._detail[:200],
            )
        # After the line: like HAProxy's, a session's line counts its own connection.
        ctx.access_log.connection_closed(ctx.listener.name)


def termination_state(end: str, connected: bool, connect_timed_out: bool) -> str:
    """HAProxy's two-letter state of a TCP session that ended as ``end`` says: who ended it
    ("C" client, "S" server, "c"/"s" their timeouts, "K" the proxy's shutdown, "-" nobody
    unexpectedly) and in which phase ("C" connecting to the server, "D" data)."""
    if end in ("closed", "client-closed", "server-closed"):
        # A side that closes cleanly, once relaying, is how every session ends.
        return "--" if connected else "CC"
    if end == "no-backend":
        return "sC" if connect_timed_out else "SC"
    phase = "D" if connected else "C"
    if end == "client-reset":
        return "C" + phase
    if end == "server-reset":
        return "S" + phase
    if end == "idle-timeout":
        return "c" + phase
    return "K" + phase  # ended by the ingress itself: the shutdown's grace expired


def _ms(seconds: float) -> int:
    return int(seconds * 1000 + 0.5)


def make_factory(ctx: RelayContext) -> Callable[[], RelaySession]:
    return lambda: RelaySession(ctx)

