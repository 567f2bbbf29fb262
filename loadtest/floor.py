"""The reference floor of the benchmarks: the least a Python proxy on this stack can do.

``bench.py --floor`` measures this relay beside HAProxy and mta-ingress in the ``http-keepalive``
scenario, and in ``https-keepalive`` with ``--tls-cert``: TLS terminated as the ingress does it
(``ingress.proxy.tls_transport``, over uvloop's TCP transport) with the ingress's own listener
settings (``tls.store.base_context``) and the same certificate file HAProxy and mta-ingress serve.
It is what mta-ingress would cost with none of its features: uvloop transports, httptools (llhttp)
parsing every request and response, each request re-serialised with ``X-Forwarded-For`` appended,
writes held to the end of the loop's round as the ingress holds them
(``ingress.proxy.flow.WriteBatch``), one backend connection per client connection opened with it (no
pool, no routing, no validation beyond llhttp's, no access log, no metrics, no timeouts). Not in
``http-close``: a backend connection per client connection is more work per connection than
mta-ingress's pool, not a floor.

Its ratio to HAProxy says how much of mta-ingress's gap is the stack and how much is the work
mta-ingress does per request; ``--burn-us`` adds that much busy CPU time to each request, to
measure what each microsecond of Python per request costs in requests per second.

With ``--tcp`` it is the floor of the ``sessions`` scenario instead: the TCP relay of the SMTP
listeners at its least, each client connection relayed to a backend connection of its own opened
as ``ingress.proxy.tcp`` opens it (``create_connection`` in a task), behind the same PROXY v1
header (``ingress.protocol.proxy_protocol.encode_v1``), bytes passed on as they come, half-close
passed on; no log, no metrics, no timeouts, no server choice, no 421. ``--burn-us`` is then per
session.

With ``--forward`` it is the floor of ``egress-sessions``' forward mode: each connection's PROXY
header (v1 or v2, read by ``ingress.protocol.proxy_protocol.HeaderReader``) names the source to
send from and the destination, and the connection is made as ``ingress.proxy.egress`` makes it: a
socket bound to the source with ``IP_BIND_ADDRESS_NO_PORT`` (``bound_socket``), a non-blocking
connect awaited by a writer callback, then ``create_connection(sock=)`` in a task; then bytes
relayed as in ``--tcp``, no header sent on. No policy (it connects wherever the header says),
no log, no metrics, no timeouts.

With ``--epoll`` (and ``--tcp`` or ``--forward``) the same relay runs on an epoll set of its own,
edge-triggered, that uvloop watches as one descriptor (``EpollRelay``): the same header, connect
and half-close, with sockets and system calls instead of uvloop's transports, tasks and futures.
Its ratio to the transports' floor is what that layer costs per session.

It is a measuring instrument, not a proxy: it trusts its backend, answers nothing itself and
drops a client whose backend cannot be reached. Loopback only, like everything in loadtest/.
"""

from __future__ import annotations

import _socket
import argparse
import asyncio
import errno
import select
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import httptools
import uvloop


def _import_project() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        # `python loadtest/floor.py` puts loadtest/, not the repository, first on sys.path.
        sys.path.insert(0, root)


_import_project()
from ingress.protocol.proxy_protocol import (  # noqa: E402  (the path above first)
    HeaderReader,
    ProxyProtocolError,
    encode_v1,
)
from ingress.proxy.egress import bound_socket  # noqa: E402
from ingress.proxy.flow import Outbox, WriteBatch  # noqa: E402
from ingress.proxy.sockets import python_socket  # noqa: E402


class _Upstream(asyncio.Protocol):
    """The client's own backend connection: responses are parsed, then relayed as they came."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.outbox: Outbox | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses
        self.outbox = Outbox(self.client.writes, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        self.client.send_to_client(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, backend: tuple[str, int], burn_seconds: float,
                 writes: WriteBatch) -> None:
        self.backend = backend
        self.burn_seconds = burn_seconds
        self.writes = writes
        self.transport: asyncio.Transport | None = None
        self.outbox: Outbox | None = None
        self.upstream: _Upstream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.waiting: list[bytes] | None = []  # requests made before the backend connected
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b"-"
        self.url = b""
        self.fields: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.outbox = Outbox(self.writes, self.transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"-"
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, upstream = await loop.create_connection(lambda: _Upstream(self), *self.backend)
        except OSError:
            self.close()
            return
        self.upstream = upstream
        waiting, self.waiting = self.waiting or [], None
        if upstream.outbox is not None:
            for request in waiting:
                upstream.outbox.write(request)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += (name, b": ", value, b"\r\n")

    def on_message_complete(self) -> None:
        request = b"".join([self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n",
                            *self.fields, b"X-Forwarded-For: ", self.peer, b"\r\n\r\n"])
        self.fields = []
        burn(self.burn_seconds)
        if self.waiting is not None:
            self.waiting.append(request)
        elif self.upstream is not None and self.upstream.outbox is not None:
            self.upstream.outbox.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def send_to_client(self, data: bytes) -> None:
        if self.outbox is not None:
            self.outbox.write(data)

    def close(self) -> None:
        if self.transport is not None and self.outbox is not None:
            self.outbox.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.upstream is not None and self.upstream.outbox is not None:
            self.upstream.outbox.close()


class _TcpServerSide(asyncio.Protocol):
    """The backend connection of one relayed TCP session: every event goes to the session."""

    def __init__(self, session: _TcpSession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.server_connected(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        if self.session.client is not None:
            self.session.client.write(data)

    def eof_received(self) -> bool:
        return self.session.side_ended(server=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.server = None
        if self.session.client is not None:
            self.session.client.close()


class _TcpSession(asyncio.Protocol):
    """One relayed TCP session: the client side's protocol, which owns the backend connection."""

    def __init__(self, backend: tuple[str, int], burn_seconds: float) -> None:
        self.backend = backend
        self.burn_seconds = burn_seconds
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.header = b""
        self.waiting: list[bytes] = []  # client bytes that came before the backend connected
        self.eofs = 0
        self.connecting: asyncio.Task[None] | None = None  # held: a bare task may be collected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.header = encode_v1((peer[0], peer[1]), (local[0], local[1]))
        burn(self.burn_seconds)
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await loop.create_connection(lambda: _TcpServerSide(self), *self.backend)
        except OSError:
            if self.client is not None:
                self.client.close()

    def server_connected(self, transport: asyncio.Transport) -> None:
        if self.client is None:
            transport.abort()
            return
        self.server = transport
        transport.write(self.header)
        if self.waiting:
            transport.write(b"".join(self.waiting))
            self.waiting.clear()
        if self.eofs:
            transport.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.server is not None:
            self.server.write(data)
        else:
            self.waiting.append(data)

    def eof_received(self) -> bool:
        return self.side_ended(server=False)

    def side_ended(self, *, server: bool) -> bool:
        """An EOF from one side: passed on, and both closed once both sides have sent theirs."""
        self.eofs += 1
        if self.eofs == 2:
            for transport in (self.client, self.server):
                if transport is not None:
                    transport.close()
            return False
        other = self.client if server else self.server
        if other is not None:
            other.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client = None
        if self.server is not None:
            self.server.close()


class _ForwardSession(_TcpSession):
    """One forward-mode session: the PROXY header first, then the relay of ``_TcpSession``
    to the destination it names, from the source it names."""

    def __init__(self, burn_seconds: float) -> None:
        super().__init__(("", 0), burn_seconds)
        self.reader: HeaderReader | None = HeaderReader()
        self.sock: _socket.socket | None = None
        self.loop = asyncio.get_running_loop()  # made by the server's factory, in the loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)
        burn(self.burn_seconds)

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            super().data_received(data)
            return
        try:
            parsed = self.reader.feed(data)
        except ProxyProtocolError:
            self._drop()
            return
        if parsed is None:
            return
        self.reader = None
        header, payload = parsed
        if payload:
            self.waiting.append(payload)
        source, destination = header.client_address, header.destination
        if source is None or destination is None:
            self._drop()
            return
        try:
            self.sock = bound_socket(source[0])
        except OSError:
            self._drop()
            return
        error = self.sock.connect_ex(destination)
        if error == 0:
            self._wrap()
        elif error == errno.EINPROGRESS:
            self.loop.add_writer(self.sock.fileno(), self._writable)
        else:
            self._drop()

    def _writable(self) -> None:
        if self.sock is None:
            return
        self.loop.remove_writer(self.sock.fileno())
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._drop()
        else:
            self._wrap()

    def _wrap(self) -> None:
        # as ingress.proxy.egress does on uvloop
        assert self.sock is not None
        wrapped = python_socket(self.sock)
        self.sock = wrapped
        self.connecting = self.loop.create_task(self._transport_of(wrapped))

    async def _transport_of(self, sock: socket.socket) -> None:
        try:
            await self.loop.create_connection(lambda: _TcpServerSide(self), sock=sock)
        except OSError:
            self._drop()

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.server is None and self.sock is not None and self.connecting is None:
            # the client left while the connect was in progress
            self.loop.remove_writer(self.sock.fileno())
            self.sock.close()


# --epoll: the relay on an epoll set of its own, edge-triggered, which uvloop watches as one
# descriptor (add_reader); each socket is registered once, for reading and writing, and a read
# shorter than the buffer ends a round (the edge of EPOLLRDHUP says whether the peer's EOF came
# with it), so no call is made only to learn that nothing is left.
_EPOLL_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_READ_SIZE = 65536
# Bytes kept for a side that does not take them; past this the other side is not read until
# they are written, so a session holds at most about this much whatever the speeds.
_EPOLL_PENDING_LIMIT = 1024 * 1024


class _EpollSide:
    """One socket of a session: what is kept for it, and which EOFs have passed."""

    __slots__ = ("closed", "connecting", "eof_in", "eof_out", "fd", "hangup", "peer", "pending",
                 "reader", "sock", "starved")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: _EpollSide = self
        self.pending = b""  # bytes for this socket that it has not taken yet
        self.hangup = False  # this socket's peer has sent its EOF, maybe behind unread bytes
        self.eof_in = False  # ... and every byte before it has been read
        self.eof_out = False  # the other side's EOF is to be passed on once pending is written
        self.starved = False  # not read: the other side's pending is over the limit
        self.connecting = False  # a server side until its first EPOLLOUT
        self.closed = False
        # --forward, client side only: reads go to the PROXY header until it is complete
        self.reader: HeaderReader | None = None


class EpollRelay:
    """The TCP relay of ``--tcp`` and ``--forward`` (same header, same connect, same half-close)
    on a nested epoll instead of uvloop's transports: what a relay costs in Python when each
    session is two sockets and a few system calls, with no transport, task or future."""

    def __init__(self, port: int, backend: tuple[str, int], burn_seconds: float,
                 forward: bool) -> None:
        self.backend = backend
        self.burn_seconds = burn_seconds
        self.forward = forward
        self.epoll = select.epoll(sizehint=4096)
        self.sides: dict[int, _EpollSide] = {}
        self.listening = socket.socket()
        self.listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listening.bind(("127.0.0.1", port))
        self.listening.listen(4096)
        self.listening.setblocking(False)
        self.local = ("127.0.0.1", port)
        self.epoll.register(self.listening.fileno(), select.EPOLLIN)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.epoll.fileno(), self._ready)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.epoll.fileno())
        for side in list(self.sides.values()):
            self._close(side)
        self.listening.close()
        self.epoll.close()

    def _ready(self) -> None:
        listening = self.listening.fileno()
        for fd, events in self.epoll.poll(0, 512):
            if fd == listening:
                self._accept()
                continue
            side = self.sides.get(fd)
            if side is None:
                continue
            if events & select.EPOLLOUT:
                side.connecting = False
                if side.pending or side.eof_out:
                    self._flush(side)
            if events & select.EPOLLIN:
                self._read(side, bool(events & (select.EPOLLRDHUP | select.EPOLLHUP)))
            elif events & (select.EPOLLERR | select.EPOLLHUP):
                self._close(side)

    def _accept(self) -> None:
        while True:
            try:
                client, address = self.listening.accept()
            except BlockingIOError:
                return
            except OSError:  # out of descriptors, for instance: the next round tries again
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            burn(self.burn_seconds)
            side = _EpollSide(client)
            self._register(side)
            if self.forward:
                side.reader = HeaderReader()
            else:
                self._connect(side, socket.socket(), self.backend,
                              encode_v1((address[0], address[1]), self.local))

    def _register(self, side: _EpollSide) -> None:
        self.sides[side.fd] = side
        self.epoll.register(side.fd, _EPOLL_EVENTS)

    def _connect(self, client: _EpollSide, sock: _socket.socket, destination: tuple[str, int],
                 first: bytes) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(destination)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self._close(client)
            return
        server = _EpollSide(sock)
        server.connecting = True
        server.peer, client.peer = client, server
        # written on the first EPOLLOUT, which is the connect completing
        server.pending = first + client.pending
        client.pending = b""
        self._register(server)

    def _read(self, side: _EpollSide, hangup: bool) -> None:
        side.hangup = side.hangup or hangup
        sock = side.sock
        while not side.starved:
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                self._close(side)
                return
            if not data:
                side.hangup = True
                break
            if side.reader is not None:
                if not self._read_header(side, data):
                    return
            else:
                self._send(side.peer, data)
                if side.peer.closed:
                    return
            if len(data) < _READ_SIZE:
                break
        if side.hangup and not side.eof_in and not side.starved:
            side.eof_in = True
            if side.peer is side:  # no server yet: nothing to pass the EOF to
                self._close(side)
                return
            side.peer.eof_out = True
            if not side.peer.pending and not side.peer.connecting:
                self._shut(side.peer)

    def _read_header(self, client: _EpollSide, data: bytes) -> bool:
        """--forward: False when the session ended (a bad header, a refused connect)."""
        assert client.reader is not None
        try:
            parsed = client.reader.feed(data)
        except ProxyProtocolError:
            self._close(client)
            return False
        if parsed is None:
            return True
        client.reader = None
        header, payload = parsed
        source, destination = header.client_address, header.destination
        if source is None or destination is None:
            self._close(client)
            return False
        try:
            sock = bound_socket(source[0])
        except OSError:
            self._close(client)
            return False
        client.pending = payload
        self._connect(client, sock, destination, b"")
        return not client.closed

    def _send(self, side: _EpollSide, data: bytes) -> None:
        """Bytes for ``side``: written now, or kept behind what is already kept."""
        if side.pending or side.connecting:
            side.pending += data
        else:
            try:
                sent = side.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(side)
                return
            if sent < len(data):
                side.pending = data[sent:]
        if len(side.pending) > _EPOLL_PENDING_LIMIT:
            side.peer.starved = True

    def _flush(self, side: _EpollSide) -> None:
        if side.pending:
            try:
                sent = side.sock.send(side.pending)
            except BlockingIOError:
                return
            except OSError:
                self._close(side)
                return
            side.pending = side.pending[sent:]
            if side.pending:
                return
        if side.eof_out:
            self._shut(side)
        source = side.peer
        if source.starved and not source.closed:
            source.starved = False
            self._read(source, False)

    def _shut(self, side: _EpollSide) -> None:
        """The other side's EOF, passed on; both sockets closed once both EOFs have passed."""
        side.eof_out = False
        if side.eof_in:
            self._close(side)
            return
        try:
            side.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(side)

    def _close(self, side: _EpollSide) -> None:
        for one in (side, side.peer):
            if not one.closed:
                one.closed = True
                del self.sides[one.fd]
                one.sock.close()  # which also takes it out of the epoll set


def burn(seconds: float) -> None:
    if seconds:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


def tls_context(cert: Path) -> ssl.SSLContext:
    """The https listener's settings (protocol versions, ciphers, groups, ALPN) and one
    certificate file, key included, as HAProxy's ``crt`` and the ingress's store read it."""
    # here, not at the top: only the https floor needs the TLS imports
    from tls.store import base_context

    context = base_context()
    context.load_cert_chain(cert)
    return context


def _factory(backend: tuple[str, int], burn_us: float, context: ssl.SSLContext | None,
             writes: WriteBatch, tcp: bool = False,
             forward: bool = False) -> Callable[[], asyncio.Protocol]:
    if forward:
        return lambda: _ForwardSession(burn_us / 1e6)
    if tcp:
        return lambda: _TcpSession(backend, burn_us / 1e6)

    def make_client() -> asyncio.Protocol:
        return _Client(backend, burn_us / 1e6, writes)
    if context is None:
        return make_client
    from ingress.proxy.tls_transport import tls_factory

    def ignore_failure(_peer: tuple[str, int] | None, _reason: str, _detail: str) -> None:
        return None

    return tls_factory(context, make_client, handshake_timeout=10.0, on_failure=ignore_failure)


async def serve(port: int, backend: tuple[str, int], burn_us: float,
                context: ssl.SSLContext | None = None, tcp: bool = False,
                forward: bool = False, epoll: bool = False) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # SIGUSR1 too: bench.py stops every proxy but mta-ingress with HAProxy's soft-stop signal
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        loop.add_signal_handler(signum, stop.set)
    if epoll:
        relay = EpollRelay(port, backend, burn_us / 1e6, forward)
        relay.start(loop)
        try:
            await stop.wait()
        finally:
            relay.close(loop)
        return
    server = await loop.create_server(_factory(backend, burn_us, context, WriteBatch(loop), tcp,
                                               forward), "127.0.0.1", port, backlog=4096)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--backend-port", type=int,
                        help="the origin on 127.0.0.1:PORT (not with --forward)")
    parser.add_argument("--burn-us", type=float, default=0.0,
                        help="busy CPU time added to every request (with --tcp: session), "
                             "in microseconds")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="serve HTTPS with this certificate, chain and key")
    parser.add_argument("--tcp", action="store_true",
                        help="relay TCP sessions behind a PROXY v1 header (the sessions floor)")
    parser.add_argument("--forward", action="store_true",
                        help="egress forward mode: connect from the PROXY header's source to "
                             "its destination (the egress-sessions floor)")
    parser.add_argument("--epoll", action="store_true",
                        help="with --tcp or --forward: relay on an epoll set of its own that "
                             "uvloop watches as one descriptor, instead of uvloop's transports")
    options = parser.parse_args(argv)
    if options.epoll and not (options.tcp or options.forward):
        parser.error("--epoll relays TCP: with --tcp or --forward only")
    if (options.tcp or options.forward) and options.tls_cert:
        parser.error("--tcp and --forward relay plain TCP: no --tls-cert")
    if options.forward == (options.backend_port is not None):
        parser.error("--backend-port is required, except with --forward, which has none")
    context = tls_context(options.tls_cert) if options.tls_cert else None
    uvloop.run(serve(options.port, ("127.0.0.1", options.backend_port or 0), options.burn_us,
                     context, options.tcp, options.forward, options.epoll))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
