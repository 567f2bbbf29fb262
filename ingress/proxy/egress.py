"""The egress tier: an MTA's outbound SMTP relayed from the public address it asks for.

Theory of operation
-------------------
Two listener modes, one session class. The MTA (KumoMTA, GreenArrow) connects and says which of
this host's addresses to send from and which remote MX to reach:

``socks5``    as KumoMTA's KumoProxy speaks it (RFC 1928, RFC 1929): greeting, then
              username/password when the listener has a users_file, then a BIND request
              carrying the source address and a CONNECT on the same connection (a CONNECT
              alone leaves from the listener's default source of the destination's family).
              Every request gets its reply; a refused one gets the RFC 1928 code that says why.
``forward``   a PROXY v1 or v2 header whose source is the address to send from and whose
              destination is the remote, as HAProxy's ``accept-proxy`` with ``usesrc clientip``
              reads it for KumoMTA's ``ha_proxy_server`` and GreenArrow's ``proxy_server``.
              There is no reply channel: a refusal or a failed connect closes the connection.

States, in order::

    NEGOTIATING  (socks5) the client's messages are parsed as they arrive; nothing reaches
                 any remote before a CONNECT is allowed.
    AWAIT_PROXY  (forward) bytes are buffered until the PROXY header is complete.
    CONNECTING   a socket bound to the source connects to the destination, within
                 timeouts.connect; client bytes that arrive meanwhile are kept.
    RELAY        bytes flow both ways, as in the ingress's TCP relay (ingress/proxy/tcp.py):
                 flow control by the other side's write buffer, half-close passed on.
    CLOSED       both transports are gone; one access line and the session's metrics.

Every decision (client, source, port, destination) is routing/egress.py's, checked before any
socket is made: a refused session never opens a connection to anyone. The source socket is
bound with IP_BIND_ADDRESS_NO_PORT, so the kernel picks its port at connect time from the whole
four-tuple space: one source can hold more sessions to distinct MXs than it has ephemeral ports.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ingress.config import ListenerConfig, Timeouts
from ingress.config.users import Authenticator
from ingress.ops.logs import AccessLog, address_text
from ingress.ops.metrics import Metrics
from ingress.ops.metrics import metrics as metrics_of_this_process
from ingress.protocol import proxy_protocol, socks5
from ingress.proxy.relay import (
    AWAIT_PROXY,
    CLOSED,
    CONNECTING,
    NEGOTIATING,
    RELAY,
    Relay,
    ServerSide,
)
from ingress.proxy.sockets import (
    Engine,
    PendingConnect,
    connect_socket,
    family_of,
    python_socket,
    stream_socket,
)
from ingress.proxy.timers import Deadline, Deadlines
from routing import egress
from routing.egress import EgressPolicy

log = logging.getLogger("mta_ingress.egress")

# Linux: bind() takes the address only and the port is chosen by connect(); the constant is
# in the socket module from Python 3.12.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# The SOCKS5 negotiation's steps: what the next client message is.
GREETING, CREDENTIALS, CHECKING, REQUEST = range(4)

# Refusal reasons beyond routing/egress.py's (a fixed set: they are metric labels).
AUTH_REQUIRED = "auth-required"
AUTH_FAILED = "auth-failed"
# Without a users file only "no authentication" is offered: a client that insists on a method
# this listener does not do is told so (0xFF) rather than let in on credentials nobody checks.
NO_METHOD = "no-acceptable-method"
COMMAND_NOT_SUPPORTED = "command-not-supported"
MALFORMED = "malformed"
OUT_OF_ORDER = "out-of-order"

# RFC 1928's reply for each connect error; KumoProxy's mapping, with "not allowed" for a
# firewall's refusal (EACCES, EPERM from a local rule).
_CONNECT_REPLIES = {
    errno.ECONNREFUSED: socks5.REP_CONNECTION_REFUSED,
    errno.ENETUNREACH: socks5.REP_NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: socks5.REP_HOST_UNREACHABLE,
    errno.ETIMEDOUT: socks5.REP_TTL_EXPIRED,
    errno.EACCES: socks5.REP_NOT_ALLOWED,
    errno.EPERM: socks5.REP_NOT_ALLOWED,
}


def connect_reply(error: OSError) -> int:
    return _CONNECT_REPLIES.get(error.errno or 0, socks5.REP_GENERAL_FAILURE)


@dataclass(slots=True)
class EgressContext:
    """What every session of one egress listener shares."""

    listener: ListenerConfig
    policy: EgressPolicy
    authenticator: Authenticator | None
    timeouts: Timeouts
    access_log: AccessLog
    sessions: set[EgressSession]
    loop: asyncio.AbstractEventLoop
    worker: int = 0
    metrics: Metrics = field(default_factory=metrics_of_this_process)
    # io_engine = "epoll": the worker's engine, which opens the remote connections too
    engine: Engine | None = None
    # every session's connect timeout, on one loop timer (ingress/proxy/timers.py)
    connect_deadlines: Deadlines = field(init=False)

    def __post_init__(self) -> None:
        self.connect_deadlines = Deadlines(self.loop, self.timeouts.connect)


def policy_of(listener: ListenerConfig) -> EgressPolicy:
    return EgressPolicy.build(listener.egress_sources, listener.egress_ports,
                              listener.allow_clients, listener.deny_destinations)


def bound_socket(source: str) -> _socket.socket:
    """A non-blocking TCP socket bound to ``source``, its port left to connect (raises
    OSError: EADDRNOTAVAIL when the address is not this host's)."""
    # Non-blocking from the start: one ioctl less than setblocking(False).
    sock = stream_socket(family_of(source))
    try:
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            pass  # not Linux: bind picks the port now, which works, with fewer of them
        sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock


def source_warnings(listeners: list[ListenerConfig]) -> list[str]:
    """``listeners.NAME.egress_sources[i]: ...`` for every source this host cannot bind: a
    warning at start (an address may be plumbed later, or float to this node), an error for
    ``check-config --strict``."""
    warnings = []
    for listener in listeners:
        if not listener.egress:
            continue
        for index, source in enumerate(listener.egress_sources):
            try:
                bound_socket(source).close()
            except OSError as error:
                warnings.append(
                    f"listeners.{listener.name}.egress_sources[{index}]: {source} is not an "
                    f"address of this host (bind: {error.strerror}); sessions from it will "
                    "fail until it is")
    return warnings


class EgressSession(Relay):
    __slots__ = (
        "_buffer", "_checking", "_connect_handle", "_connect_started", "_connect_task", "_ctx",
        "_destination", "_inbound", "_pending_connect", "_reason", "_socket", "_source", "_step",
        "_writer",
        "client_address", "user",
    )

    def __init__(self, ctx: EgressContext) -> None:
        super().__init__(ctx.loop, NEGOTIATING if ctx.listener.mode == "socks5" else AWAIT_PROXY)
        self._ctx = ctx
        self._step = GREETING
        self._buffer = bytearray()
        self._inbound = proxy_protocol.HeaderReader()
        self._socket: _socket.socket | None = None
        self._source = "-"
        self._destination: tuple[str, int] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._connect_handle: Deadline | None = None
        self._writer = -1  # the socket's descriptor while its connect is awaited
        self._pending_connect: PendingConnect | None = None  # the same, on the engine
        self._checking: asyncio.Future[bool] | None = None
        self._reason = ""
        self.user = "-"
        self.client_address: tuple[str, int] | None = None
        self._connect_started = -1.0

    # --- client side ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self.take_client(transport)
        peer = client.get_extra_info("peername")
        self.client_address = (peer[0], peer[1]) if peer else None
        ctx = self._ctx
        ctx.sessions.add(self)
        ctx.metrics.connection_opened(ctx.listener.name)
        ctx.access_log.connection_opened(ctx.listener.name)
        if self.client_address is None or not ctx.policy.client_allowed(self.client_address[0]):
            self._refuse(egress.CLIENT_NOT_ALLOWED)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == RELAY:
            self.relay_to_server(data)
        elif state == NEGOTIATING:
            self._buffer += data
            self._negotiate()
        elif state == AWAIT_PROXY:
            self._read_proxy_header(data)
        elif state == CONNECTING:
            self.keep(data)

    def _before_connect_eof(self) -> str:
        return "client-closed-before-request"

    def _stop_connecting(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        if self._checking is not None:
            self._checking.cancel()
        if self._connect_handle is not None:
            self._connect_handle.cancel()
            self._connect_handle = None
        self._stop_waiting()
        self._close_socket()

    # --- SOCKS5 negotiation --------------------------------------------------------------------

    def _negotiate(self) -> None:
        buffer = self._buffer
        # Not past a refusal: a request pipelined behind a refused one must not be acted on
        # (the client is being closed, but its bytes are already here).
        while self._state == NEGOTIATING and buffer and not self._end:
            step = self._step
            try:
                if step == GREETING:
                    greeting = socks5.parse_greeting(buffer)
                    if greeting is None:
                        return
                    del buffer[:greeting[1]]
                    self._choose_method(greeting[0])
                elif step == CREDENTIALS:
                    credentials = socks5.parse_credentials(buffer)
                    if credentials is None:
                        return
                    del buffer[:credentials[1]]
                    self._check_credentials(credentials[0])
                elif step == REQUEST:
                    request = socks5.parse_request(buffer)
                    if request is None:
                        return
                    del buffer[:request[1]]
                    self._request(request[0])
                else:
                    return  # CHECKING: the rest waits for the password's verdict
            except socks5.Socks5Error as error:
                self._refuse(MALFORMED, reply=error.reply if step == REQUEST else None,
                             detail=f"{error.reason}: {error}")
                return

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _choose_method(self, greeting: socks5.Greeting) -> None:
        # With a users file, RFC 1929 is required even of a client that also offers "none"
        # (KumoMTA offers both whenever it has credentials).
        wanted = (socks5.METHOD_USERPASS if self._ctx.authenticator is not None
                  else socks5.METHOD_NO_AUTH)
        if wanted not in greeting.methods:
            self._write(socks5.encode_method_choice(socks5.METHOD_NONE_ACCEPTABLE))
            self._refuse(AUTH_REQUIRED if wanted == socks5.METHOD_USERPASS else NO_METHOD,
                         detail=f"methods offered: {list(greeting.methods)}")
            return
        self._write(socks5.encode_method_choice(wanted))
        self._step = CREDENTIALS if wanted == socks5.METHOD_USERPASS else REQUEST

    def _check_credentials(self, credentials: socks5.Credentials) -> None:
        authenticator = self._ctx.authenticator
        if authenticator is None:  # not reached: the method chosen was "none"
            self._refuse(OUT_OF_ORDER)
            return
        self.user = credentials.username.decode("utf-8", "replace")
        self._step = CHECKING
        # scrypt takes tens of milliseconds on purpose: off the loop, which serves every other
        # session meanwhile (the authenticator caches what it has verified).
        self._checking = self._loop.run_in_executor(
            None, authenticator.check, credentials.username, credentials.password)
        self._checking.add_done_callback(self._credentials_checked)

    def _credentials_checked(self, verdict: asyncio.Future[bool]) -> None:
        self._checking = None
        if verdict.cancelled() or self.transport is None or self._end:
            return
        if verdict.exception() is not None or not verdict.result():
            self._write(socks5.encode_auth_status(False))
            self._refuse(AUTH_FAILED, detail=f"user {self.user!r}")
            return
        self._write(socks5.encode_auth_status(True))
        self._step = REQUEST
        self._negotiate()  # a client may have sent its request already

    def _request(self, request: socks5.Request) -> None:
        if request.command == socks5.CMD_BIND:
            self._bind(request)
        elif request.command == socks5.CMD_CONNECT:
            self._connect_request(request)
        else:
            self._refuse(COMMAND_NOT_SUPPORTED, reply=socks5.REP_COMMAND_NOT_SUPPORTED,
                         detail=f"command {request.command}")

    def _bind(self, request: socks5.Request) -> None:
        """KumoMTA's way of naming the source: BIND to it, then CONNECT."""
        if self._socket is not None:
            self._refuse(OUT_OF_ORDER, reply=socks5.REP_GENERAL_FAILURE, detail="second BIND")
            return
        if request.address_type == socks5.ATYP_DOMAIN:
            self._refuse(egress.NOT_AN_ADDRESS, reply=socks5.REP_ADDRESS_TYPE_NOT_SUPPORTED,
                         detail=f"BIND to a name: {request.host!r}")
            return
        choice = self._ctx.policy.source_for(request.host)
        if choice.address is None:
            self._refuse(choice.refusal or egress.SOURCE_NOT_ALLOWED,
                         reply=socks5.REP_NOT_ALLOWED, detail=f"source {request.host}")
            return
        try:
            # The port is the kernel's to choose at connect time (KumoMTA sends 0): a client
            # has no business holding a port of the sending address.
            self._socket = bound_socket(choice.address)
        except OSError as error:
            self._source = choice.address
            self._fail("bind-failed", socks5.REP_GENERAL_FAILURE,
                       f"bind {choice.address}: {error.strerror}")
            return
        self._source = choice.address
        host, port = self._socket.getsockname()[:2]
        self._write(socks5.encode_reply(socks5.REP_SUCCEEDED, (host, port)))

    def _connect_request(self, request: socks5.Request) -> None:
        if request.address_type == socks5.ATYP_DOMAIN:
            # Resolving MX hosts is the MTA's job (KumoProxy refuses names too); a name here
            # would also let a client pick a destination past the deny list by DNS.
            self._refuse(egress.NOT_AN_ADDRESS, reply=socks5.REP_ADDRESS_TYPE_NOT_SUPPORTED,
                         detail=f"CONNECT to a name: {request.host!r}")
            return
        leftover = bytes(self._buffer)
        self._buffer.clear()
        self._open(None if self._socket is not None else "", request.host, request.port,
                   reply=socks5.REP_NOT_ALLOWED)
        if leftover and self._state == CONNECTING:
            self.keep(leftover)

    # --- forward mode: the PROXY header --------------------------------------------------------

    def _read_proxy_header(self, data: bytes) -> None:
        if self._end:
            return  # refused already: nothing more is read
        try:
            parsed = self._inbound.feed(data)
        except proxy_protocol.ProxyProtocolError as error:
            self._refuse(MALFORMED, detail=f"{error.reason}: {error}")
            return
        if parsed is None:
            return
        header, payload = parsed
        source, destination = header.client_address, header.destination
        if source is None or destination is None:
            self._refuse(egress.NOT_AN_ADDRESS,
                         detail="LOCAL or UNKNOWN header: no source and destination to use")
            return
        self._open(source[0], destination[0], destination[1], reply=None)
        if payload and self._state == CONNECTING:
            self.keep(payload)

    # --- the remote connection -----------------------------------------------------------------

    def _open(self, requested: str | None, host: str, port: int, *, reply: int | None) -> None:
        """Check the destination and the source, then connect. ``requested``: the source the
        client named (forward mode), "" for the default one of the destination's family (a
        SOCKS5 CONNECT without BIND), None for the socket bound by BIND."""
        policy = self._ctx.policy
        self._destination = (host, port)
        version, refusal = policy.destination(host, port)
        if refusal is not None:
            self._refuse(refusal, reply=reply, detail=f"destination {address_text((host, port))}")
            return
        if requested is None:
            sock = self._socket
            if sock is None or (sock.family == socket.AF_INET6) != (version == 6):
                self._refuse(egress.NO_SOURCE_FOR_FAMILY, reply=reply,
                             detail=f"bound {self._source}, destination {host}")
                return
        else:
            choice = policy.source_for(requested or None, version)
            if choice.address is None:
                self._refuse(choice.refusal or egress.SOURCE_NOT_ALLOWED, reply=reply,
                             detail=f"source {requested or '(default)'}")
                return
            self._source = choice.address
            try:
                self._socket = bound_socket(choice.address)
            except OSError as error:
                self._fail("bind-failed", socks5.REP_GENERAL_FAILURE if reply is not None
                           else None, f"bind {choice.address}: {error.strerror}")
                return
        self._connect()

    def _connect(self) -> None:
        """A non-blocking connect, its completion awaited by a writer callback, not
        ``loop.sock_connect``: uvloop resolves the address there without the socket type, which
        sends even an IP literal through getaddrinfo in libuv's thread pool (36 us and five
        futex calls a session); and one timer for the deadline rather than asyncio.timeout."""
        sock, destination = self._socket, self._destination
        if sock is None or destination is None:
            return
        loop = self._loop
        self._state = CONNECTING
        self._connect_started = loop.time()
        self._connect_handle = self._ctx.connect_deadlines.add(self._connect_deadline)
        engine = self._ctx.engine
        if engine is not None:
            # the engine makes the transport when the connect completes: no task either
            try:
                self._pending_connect = connect_socket(engine, sock, destination,
                                                       self._remote_factory,
                                                       self._engine_connect_failed)
            except OSError as refused:
                self._connect_failed(refused)
            return
        error = sock.connect_ex(destination)
        if error == 0:
            self._wrap_socket()
        elif error == errno.EINPROGRESS:
            self._writer = sock.fileno()
            loop.add_writer(self._writer, self._connect_writable)
        else:
            self._connect_failed(OSError(error, os.strerror(error)))

    def _connect_writable(self) -> None:
        self._stop_waiting()
        sock = self._socket
        if sock is None:
            return
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._connect_failed(OSError(error, os.strerror(error)))
        else:
            self._wrap_socket()

    def _wrap_socket(self) -> None:
        # No synchronous way to make a transport of a connected socket: one task, whose
        # create_connection calls server_connected.
        sock = self._socket
        if sock is not None:
            wrapped = python_socket(sock)
            self._socket = wrapped
            self._connect_task = self._loop.create_task(self._transport_of(wrapped))

    async def _transport_of(self, sock: socket.socket) -> None:
        try:
            await self._loop.create_connection(self._remote_factory, sock=sock)
        except OSError as error:
            self._connect_failed(error)

    def _engine_connect_failed(self, error: OSError) -> None:
        # the engine has closed the socket already
        self._pending_connect = None
        self._socket = None
        self._connect_failed(error)

    def _connect_deadline(self) -> None:
        self._connect_handle = None
        if self._state != CONNECTING:
            return
        task = self._connect_task
        if task is not None and not task.done():
            task.cancel()
        self._connect_ended()
        self._fail("connect-failed", socks5.REP_TTL_EXPIRED,
                   f"connect timeout after {self._ctx.timeouts.connect:g}s")

    def _connect_failed(self, error: OSError) -> None:
        self._connect_ended()
        self._fail("connect-failed", connect_reply(error),
                   f"connect {address_text(self._destination)}: {error.strerror or error}")

    def _stop_waiting(self) -> None:
        if self._writer >= 0:
            self._loop.remove_writer(self._writer)
            self._writer = -1

    def _connect_ended(self) -> None:
        """A connect that failed or will not finish: its timer, its wait and its socket go."""
        if self._connect_handle is not None:
            self._connect_handle.cancel()
            self._connect_handle = None
        self._stop_waiting()
        self._close_socket()
        self._ctx.metrics.egress_connected(self._ctx.listener.name, self._source,
                                           self._loop.time() - self._connect_started)

    def _remote_factory(self) -> ServerSide:
        return ServerSide(self)

    def server_connected(self, transport: asyncio.Transport) -> None:
        self._socket = None  # the transport's now, closed with it
        self._pending_connect = None
        if self._connect_handle is not None:
            self._connect_handle.cancel()
            self._connect_handle = None
        if not self.attach_server(transport):
            return
        ctx = self._ctx
        ctx.metrics.egress_connected(ctx.listener.name, self._source,
                                     self._connected_at - self._connect_started)
        if ctx.listener.mode == "socks5":
            local = transport.get_extra_info("sockname")
            self._write(socks5.encode_reply(socks5.REP_SUCCEEDED, (local[0], local[1])))
        self.send_pending(transport)

    # --- ending --------------------------------------------------------------------------------

    def _refuse(self, reason: str, *, reply: int | None = None, detail: str = "") -> None:
        """Refused by policy or for malformed input: counted by reason, the SOCKS5 reply sent
        when there is a reply channel, the client closed; nothing was sent anywhere else."""
        ctx = self._ctx
        self._reason = reason
        ctx.metrics.egress_refused(ctx.listener.name, reason)
        if reply is not None:
            self._write(socks5.encode_reply(reply))
        self._finish("refused", detail)

    def _fail(self, end: str, reply: int | None, detail: str) -> None:
        """The remote could not be reached (or the source bound): an error, not a refusal."""
        if self._ctx.listener.mode == "socks5" and reply is not None:
            self._write(socks5.encode_reply(reply))
        self._finish(end, detail)

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the worker's sweep, like the TCP relay's sessions."""
        state = self._state
        timeouts = self._ctx.timeouts
        if state == NEGOTIATING:
            if now - self._started >= timeouts.socks_handshake:
                self._finish("handshake-timeout")
        elif state == AWAIT_PROXY:
            if now - self._started >= timeouts.proxy_header:
                self._finish("proxy-header-timeout")
        elif self.idle_expired(now, timeouts.tcp_idle):
            self._finish("idle-timeout")

    def _close_socket(self) -> None:
        if self._pending_connect is not None:
            # through the engine, which forgets the socket and closes it after its round
            self._pending_connect.cancel()
            self._pending_connect = None
        elif self._socket is not None:
            self._socket.close()
        self._socket = None

    def _maybe_done(self) -> None:
        state = self._closed_now()
        if state == CLOSED:
            return
        connected = state == RELAY
        ctx = self._ctx
        ctx.sessions.discard(self)
        name = ctx.listener.name
        seconds = self._loop.time() - self._started
        outcome = self._end
        ctx.metrics.connection_closed(name, self.bytes_in, self.bytes_out)
        ctx.metrics.egress_session(name, self._source, outcome, self.bytes_in,
                                   self.bytes_out)
        connect_ms = (_ms(self._connected_at - self._connect_started) if connected
                      else -1)
        ctx.access_log.egress_session(
            listener=name, client=address_text(self.client_address), user=self.user,
            source=self._source, destination=address_text(self._destination),
            bytes_to_remote=self.bytes_in, bytes_to_client=self.bytes_out,
            connect_ms=connect_ms, duration_ms=_ms(seconds), end=outcome, reason=self._reason,
            worker=ctx.worker, detail=self._detail[:200])
        ctx.access_log.connection_closed(name)


def _ms(seconds: float) -> int:
    return int(seconds * 1000 + 0.5)


def make_factory(ctx: EgressContext) -> Callable[[], EgressSession]:
    return lambda: EgressSession(ctx)
