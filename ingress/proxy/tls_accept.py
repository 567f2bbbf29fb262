"""HTTPS behind a PROXY-protocol load balancer: the header first, in clear, then TLS.

On ``https-proxied`` the outer load balancer writes a PROXY header and then relays the client's
TLS bytes, often in the same segment. Once an event-loop transport exists for a socket it reads
whatever arrives (uvloop starts reading after ``connection_made`` whatever the protocol asks),
and bytes it has read cannot be handed back to the TLS layer. So these listeners accept their
connections themselves, outside any transport: each accepted socket is watched with
``add_reader``, *peeked* at (``MSG_PEEK``) until the header is complete, exactly the header's
bytes are consumed, and only then does the socket become a transport
(``loop.connect_accepted_socket``) with TLS on it, whose first read is the ClientHello. The
HTTP session gets the client address from the header.

On both TLS listeners the handshake is driven by ``ingress.proxy.tls_transport``; one that fails is
logged here as a rejection, with the reason ``tls-handshake-failed`` or, when the client gave
up, ``tls-handshake-aborted``.

A socket stays readable while it holds bytes, so peeking at an incomplete header would wake the
loop again at once; but while the header is incomplete every byte seen is part of it, so those
bytes are consumed as they come and only the last read, the one that completes the header, is
measured exactly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from ingress.ops.logs import AccessLog, log_address
from ingress.ops.metrics import metrics
from ingress.protocol import proxy_protocol
from ingress.proxy.tls_transport import HANDSHAKE_FAILED, FailureReport, TlsServerConnection

log = logging.getLogger("mta_ingress")

# The largest header: v2's 16 bytes and a 16-bit length of addresses and TLVs.
MAX_HEADER = 16 + 65535
# Accepts taken per wake-up, so one busy listener cannot starve the loop's other work.
ACCEPT_BATCH = 64
# Out of descriptors or memory: stop accepting for this long rather than spin on the error.
ACCEPT_PAUSE = 1.0
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def log_rejection(access_log: AccessLog, listener: str, worker: int, client: str, reason: str,
                  detail: str) -> None:
    metrics().http_rejected(listener, reason)
    access_log.http_rejection(listener=listener, client=client, status=0, reason=reason,
                              detail=detail, worker=worker)


def handshake_failure_logger(listener: str, access_log: AccessLog, worker: int,
                             client: tuple[str, int] | None = None) -> FailureReport:
    """The ``on_failure`` of a TLS listener's connections. The client is the peer, unless
    ``client`` is given: the PROXY header's address, the peer being the outer load balancer."""
    fixed_client = log_address(client) if client is not None else None

    def log_failure(peer: tuple[str, int] | None, reason: str, detail: str) -> None:
        log_rejection(access_log, listener, worker,
                      fixed_client if fixed_client is not None else log_address(peer),
                      reason, detail)
    return log_failure


class ProxiedTlsListener:
    """One bound ``https-proxied`` socket; has the ``close``/``wait_closed`` of a Server."""

    def __init__(self, sock: socket.socket, *, context: ssl.SSLContext,
                 handshake_timeout: float, header_timeout: float,
                 listener: str, access_log: AccessLog, worker: int,
                 make_session: Callable[[tuple[str, int] | None], asyncio.Protocol]) -> None:
        self._sock = sock
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self.listener = listener
        self.access_log = access_log
        self.worker = worker
        self.make_session = make_session
        self.loop = asyncio.get_running_loop()
        self.pending: set[_HeaderReader] = set()
        self.handshakes: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        self.loop.add_reader(self._sock.fileno(), self._accept_ready)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on, as with a Server."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        return None

    def _accept_ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno == errno.ECONNABORTED:
                    continue
                if error.errno in _RESOURCE_ERRORS:
                    log.warning("msg=\"accept paused\" listener=%s error=%r pause_s=%g",
                                self.listener, error, ACCEPT_PAUSE)
                    self.loop.remove_reader(self._sock.fileno())
                    self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                    return
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _HeaderReader(self, conn)
            self.pending.add(reader)
            reader.start()

    def _resume_accepting(self) -> None:
        if not self._closed:
            self.loop.add_reader(self._sock.fileno(), self._accept_ready)

    def log_rejection(self, client: str, reason: str, detail: str) -> None:
        log_rejection(self.access_log, self.listener, self.worker, client, reason, detail)


class _HeaderReader:
    """One accepted connection until its PROXY header has been read."""

    def __init__(self, owner: ProxiedTlsListener, sock: socket.socket) -> None:
        self._owner = owner
        self._sock = sock
        self._fd = sock.fileno()
        self._header = bytearray()
        self._deadline: asyncio.TimerHandle | None = None
        try:
            peer = sock.getpeername()
            self._peer: tuple[str, int] | None = (peer[0], peer[1])
        except OSError:
            self._peer = None
        self._client = log_address(self._peer)

    def start(self) -> None:
        loop = self._owner.loop
        self._deadline = loop.call_later(self._owner.header_timeout, self._timed_out)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            peeked = self._sock.recv(MAX_HEADER - len(self._header), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._end("client-error-before-proxy-header", str(error))
            return
        if not peeked:
            self._end("client-closed-before-proxy-header", "")
            return
        try:
            parsed = proxy_protocol.parse_header(bytes(self._header) + peeked)
        except proxy_protocol.ProxyProtocolError as error:
            self._end("bad-proxy-header", f"{error.reason}: {error}")
            return
        # While the header is incomplete, everything peeked belongs to it.
        wanted = len(peeked) if parsed is None else parsed[1] - len(self._header)
        try:
            taken = self._sock.recv(wanted)
        except OSError as error:
            self._end("client-error-before-proxy-header", str(error))
            return
        if len(taken) != wanted:  # peeked bytes stay in the socket until read: cannot happen
            self._end("bad-proxy-header", "header bytes vanished between peek and read")
            return
        self._header += taken
        if parsed is None:
            if len(self._header) >= MAX_HEADER:
                self._end("bad-proxy-header", "header longer than any valid one")
            return
        self._detach()
        header = parsed[0]
        client_address = header.client_address or self._peer
        owner = self._owner
        task = owner.loop.create_task(_start_tls(owner, self._sock, client_address))
        owner.handshakes.add(task)
        task.add_done_callback(owner.handshakes.discard)

    def _timed_out(self) -> None:
        self._deadline = None
        self._end("proxy-header-timeout", "")

    def _end(self, reason: str, detail: str) -> None:
        self._detach()
        self._sock.close()
        # A connection closed before sending anything is the outer balancer's TCP health check.
        if reason != "client-closed-before-proxy-header" or self._header:
            self._owner.log_rejection(self._client, reason, detail)

    def _detach(self) -> None:
        self._owner.pending.discard(self)
        self._owner.loop.remove_reader(self._fd)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


async def _start_tls(owner: ProxiedTlsListener, sock: socket.socket,
                     client_address: tuple[str, int] | None) -> None:
    log_failure = handshake_failure_logger(owner.listener, owner.access_log, owner.worker,
                                           client_address)
    try:
        # The session is connected when the handshake is done; its first bytes are the request.
        await owner.loop.connect_accepted_socket(
            lambda: TlsServerConnection(owner.context, owner.make_session(client_address),
                                        handshake_timeout=owner.handshake_timeout,
                                        on_failure=log_failure),
            sock)
    except OSError as error:
        sock.close()
        log_failure(None, HANDSHAKE_FAILED, str(error) or type(error).__name__)
