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

It is a measuring instrument, not a proxy: it trusts its backend, answers nothing itself and
drops a client whose backend cannot be reached. Loopback only, like everything in loadtest/.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
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
        self.sock: socket.socket | None = None
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
        self.connecting = self.loop.create_task(self._transport_of())

    async def _transport_of(self) -> None:
        try:
            await self.loop.create_connection(lambda: _TcpServerSide(self), sock=self.sock)
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
                forward: bool = False) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # SIGUSR1 too: bench.py stops every proxy but mta-ingress with HAProxy's soft-stop signal
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        loop.add_signal_handler(signum, stop.set)
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
    options = parser.parse_args(argv)
    if (options.tcp or options.forward) and options.tls_cert:
        parser.error("--tcp and --forward relay plain TCP: no --tls-cert")
    if options.forward == (options.backend_port is not None):
        parser.error("--backend-port is required, except with --forward, which has none")
    context = tls_context(options.tls_cert) if options.tls_cert else None
    uvloop.run(serve(options.port, ("127.0.0.1", options.backend_port or 0), options.burn_us,
                     context, options.tcp, options.forward))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
