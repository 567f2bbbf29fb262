"""HTTPS behind a PROXY-protocol load balancer: the header first, in clear, then TLS.

On ``https-proxied`` the outer load balancer writes a PROXY header and then relays the client's
TLS bytes, often in the same segment. A transport that has read them cannot give the TLS bytes
back to the TLS layer, so this protocol does not let the transport read: it pauses it at once,
*peeks* at the socket (``MSG_PEEK``, through a duplicate of its descriptor) until the header is
complete, consumes exactly the header's bytes, and only then starts TLS on the transport, whose
first read is the ClientHello. The HTTP session is attached once the handshake is done, with the
client address from the header.

The duplicate descriptor is never registered with the event loop: an epoll registration made
through a duplicate outlives the duplicate's close (it belongs to the shared open file), and
events for the closed number would reach whichever connection gets that number next. So the
peek runs on a timer instead: at once after the accept (the load balancer sends the header with
the connection), then after ``FIRST_RETRY``, doubling up to ``LAST_RETRY``; the worker's
PROXY-header timeout bounds the whole wait. A bad header closes the connection with a log line,
as on the other ``-proxied`` listeners.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import cast

from ingress import proxy_protocol
from ingress.observe import AccessLog, address_text

FIRST_RETRY = 0.001
LAST_RETRY = 0.05
# The largest header: v2's 16 bytes and a 16-bit length of addresses and TLVs.
MAX_HEADER = 16 + 65535


class ProxiedTlsAcceptor(asyncio.Protocol):
    def __init__(self, *, context: ssl.SSLContext, handshake_timeout: float,
                 shutdown_timeout: float, header_timeout: float, listener: str,
                 access_log: AccessLog, worker: int,
                 make_session: Callable[[tuple[str, int] | None], asyncio.Protocol]) -> None:
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._shutdown_timeout = shutdown_timeout
        self._tls_started = False
        self._header_timeout = header_timeout
        self._listener = listener
        self._access_log = access_log
        self._worker = worker
        self._make_session = make_session
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer: socket.socket | None = None
        self._session: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # decrypted bytes that came before the session was set
        self._early_eof = False
        self._deadline: asyncio.TimerHandle | None = None
        self._client = "-"
        self._retry = FIRST_RETRY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # uvloop starts reading after connection_made returns, whatever it was told inside it;
        # paused from the ready queue instead, which runs before the loop polls for I/O again.
        self._transport.pause_reading()
        self._loop.call_soon(self._keep_paused)
        peer = transport.get_extra_info("peername")
        if peer:
            self._client = address_text((peer[0], peer[1]))
        sock = transport.get_extra_info("socket")
        self._peer = socket.socket(fileno=socket.dup(sock.fileno()))
        self._peer.setblocking(False)
        self._deadline = self._loop.call_later(self._header_timeout, self._header_timed_out)
        self._loop.call_soon(self._peek)

    def _keep_paused(self) -> None:
        if self._transport is not None and not self._tls_started:
            self._transport.pause_reading()

    def _peek(self) -> None:
        peer, transport = self._peer, self._transport
        if peer is None or transport is None:
            return
        try:
            data = peer.recv(MAX_HEADER, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._peek_later()
            return
        except OSError:
            self._close()
            return
        if not data:
            self._close()
            return
        try:
            parsed = proxy_protocol.parse_header(data)
        except proxy_protocol.ProxyProtocolError as error:
            self._reject("bad-proxy-header", f"{error.reason}: {error}")
            return
        if parsed is None:
            self._peek_later()
            return
        header, length = parsed
        try:
            consumed = peer.recv(length)
        except OSError:
            self._close()
            return
        if len(consumed) != length:  # peeked bytes are in the socket: cannot be short
            self._reject("bad-proxy-header", "header bytes vanished between peek and read")
            return
        self._stop_peeking()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._tls_started = True
        task = self._loop.create_task(self._start_tls(header.client_address))
        task.add_done_callback(_ignore_result)

    def _peek_later(self) -> None:
        self._loop.call_later(self._retry, self._peek)
        self._retry = min(self._retry * 2, LAST_RETRY)

    async def _start_tls(self, client_address: tuple[str, int] | None) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            tls_transport = await self._loop.start_tls(
                transport, self, self._context, server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
                ssl_shutdown_timeout=self._shutdown_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as error:
            self._log("tls-handshake-failed", str(error) or type(error).__name__)
            transport.abort()
            return
        if tls_transport is None:
            return
        if client_address is None:
            peer = transport.get_extra_info("peername")
            client_address = (peer[0], peer[1]) if peer else None
        session = self._make_session(client_address)
        self._session = session
        tls_transport.set_protocol(session)
        session.connection_made(tls_transport)
        for data in self._early:
            session.data_received(data)
        self._early.clear()
        if self._early_eof and not session.eof_received():
            tls_transport.close()

    # Between the end of the handshake and the session's arrival, TLS may already have
    # decrypted the first request: kept, and handed over in order.
    def data_received(self, data: bytes) -> None:
        if not self._tls_started:
            # The transport read bytes the peek was to see: the header can no longer be told
            # apart from the TLS stream, so this connection cannot go on.
            self._reject("bad-proxy-header", "bytes read before the header was complete")
            return
        if self._session is not None:
            self._session.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._session is not None:
            return self._session.eof_received()
        self._early_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_peeking()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        session, self._session = self._session, None
        self._transport = None
        if session is not None:
            session.connection_lost(exc)

    def _header_timed_out(self) -> None:
        self._deadline = None
        self._reject("proxy-header-timeout", "")

    def _reject(self, reason: str, detail: str) -> None:
        self._log(reason, detail)
        self._close()

    def _log(self, reason: str, detail: str) -> None:
        self._access_log.http_rejection(listener=self._listener, client=self._client,
                                        status=0, reason=reason, detail=detail,
                                        worker=self._worker)

    def _close(self) -> None:
        self._stop_peeking()
        if self._transport is not None:
            self._transport.abort()

    def _stop_peeking(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        task.get_loop().call_exception_handler({
            "message": "PROXY-then-TLS set-up failed", "exception": task.exception(),
            "task": task})
