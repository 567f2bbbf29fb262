"""The part every relayed TCP session shares: two transports and the bytes between them.

The ingress's SMTP relay (``tcp.RelaySession``) and the egress tier's sessions
(``egress.EgressSession``) differ in what happens before a server connection exists (an inbound
PROXY header, a SOCKS5 negotiation, which server and from which address) and in what they log;
once connected they relay the same way, here:

- bytes from each side are written to the other as they come, each ``bytes`` object handed
  over as is (no streams: they would add a copy and a task per direction);
- flow control: a side whose write buffer passes the high-water mark pauses reading from the
  other until it drains, so a session holds at most two write buffers whatever the speeds;
- half-close: an EOF from one side is passed on as an EOF and the other direction keeps
  flowing; when both sides have sent theirs, both transports close;
- client bytes that arrive while the server connection is being opened are kept (reading
  pauses past ``PENDING_LIMIT``) and written once it exists.

A subclass opens the server connection with ``ServerSide`` as its protocol and implements
``server_connected`` (which calls ``attach_server`` then ``send_pending``), ``_maybe_done`` for
its log line and metrics, and ``_before_connect_eof`` for the end of a client that leaves before
a server is chosen.
"""

from __future__ import annotations

import abc
import asyncio
from typing import cast

from ingress.proxy.flow import WRITE_HIGH_WATER, pause_reading, resume_reading

# Client bytes kept while the server connection is being opened; an SMTP client sends nothing
# before the banner, so this only matters for pipelining clients and other TCP protocols.
PENDING_LIMIT = 256 * 1024

# States, in order: what a session waits for before it connects (a PROXY header, a SOCKS5
# negotiation), then connecting, relaying, closed.
AWAIT_PROXY, NEGOTIATING, CONNECTING, RELAY, CLOSED = range(5)


class Relay(asyncio.Protocol, metaclass=abc.ABCMeta):
    __slots__ = (
        "_client_eof", "_connected_at", "_detail", "_end", "_last_activity", "_loop", "_pending",
        "_pending_paused", "_pending_size", "_server", "_server_eof", "_started", "_state",
        "bytes_in", "bytes_out", "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, state: int) -> None:
        self._loop = loop
        self._state = state
        self.transport: asyncio.Transport | None = None
        self._server: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_paused = False
        self._client_eof = False
        self._server_eof = False
        self._end = ""
        self._detail = ""
        self.bytes_in = 0   # from the client (to the server)
        self.bytes_out = 0  # to the client (from the server)
        self._connected_at = -1.0  # -1.0: never
        self._started = self._last_activity = loop.time()

    # --- client side ---------------------------------------------------------------------------

    def take_client(self, transport: asyncio.BaseTransport) -> asyncio.Transport:
        """The start of ``connection_made``: the client's transport, with its buffer limit."""
        client = cast(asyncio.Transport, transport)
        self.transport = client
        client.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        return client

    def relay_to_server(self, data: bytes) -> None:
        """``data_received`` in RELAY."""
        self.bytes_in += len(data)
        self._last_activity = self._loop.time()
        self._server.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self._client_eof = True
        state = self._state
        if state < CONNECTING:
            self._finish(self._before_connect_eof())
            return False
        if state == RELAY:
            if self._server_eof:
                self._end = self._end or "closed"
                self._close_both()
                return False
            self._end = self._end or "client-closed"
            server = self._server
            if server is not None and server.can_write_eof():
                server.write_eof()
        # CONNECTING: the EOF is passed on once the server connection exists.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._end:
            self._end = "client-reset" if exc is not None else "client-closed"
        self._stop_connecting()
        server = self._server
        if server is not None and not server.is_closing():
            server.close()
        self._maybe_done()

    def pause_writing(self) -> None:
        pause_reading(self._server)

    def resume_writing(self) -> None:
        resume_reading(self._server)

    def keep(self, data: bytes) -> None:
        """Client bytes that came before the server connection exists (counted now: they are
        the session's, whether or not a server ever takes them)."""
        self.bytes_in += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > PENDING_LIMIT and self.transport is not None:
            self._pending_paused = True
            self.transport.pause_reading()

    # --- the server connection -----------------------------------------------------------------

    def attach_server(self, transport: asyncio.Transport) -> bool:
        """The first step of ``server_connected``: False (and the transport aborted) when the
        client left while the connection was being opened."""
        if self.transport is None or self._state != CONNECTING:
            transport.abort()
            return False
        self._server = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._state = RELAY
        self._connected_at = self._last_activity = self._loop.time()
        return True

    def send_pending(self, transport: asyncio.Transport) -> None:
        """The last step of ``server_connected``, after whatever goes first (a PROXY header, the
        SOCKS5 reply): the kept client bytes, and the client's EOF if it came meanwhile."""
        if self._pending:
            transport.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0
            if self._pending_paused and self.transport is not None:
                self._pending_paused = False
                self.transport.resume_reading()
        if self._client_eof and transport.can_write_eof():
            self._end = "client-closed"
            transport.write_eof()

    @abc.abstractmethod
    def server_connected(self, transport: asyncio.Transport) -> None:
        """The server connection is open: ``attach_server``, then ``send_pending``."""

    def server_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._last_activity = self._loop.time()
        self.transport.write(data)  # type: ignore[union-attr]

    def server_eof(self) -> bool:
        self._server_eof = True
        if self._client_eof:
            self._end = self._end or "closed"
            self._close_both()
            return False
        self._end = self._end or "server-closed"
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        return True

    def server_lost(self, exc: Exception | None) -> None:
        self._server = None
        if not self._end:
            self._end = "server-reset" if exc is not None else "server-closed"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._maybe_done()

    def server_pause_writing(self) -> None:
        pause_reading(self.transport)

    def server_resume_writing(self) -> None:
        resume_reading(self.transport)

    # --- ending --------------------------------------------------------------------------------

    def idle_expired(self, now: float, idle: float) -> bool:
        return self._state == RELAY and now - self._last_activity >= idle

    def _finish(self, end: str, detail: str = "") -> None:
        self._end = end
        self._detail = detail
        self._close_both()

    def _close_both(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self._server is not None and not self._server.is_closing():
            self._server.close()

    def abort(self, end: str) -> None:
        """End the session at once (shutdown grace expired)."""
        self._end = end
        for transport in (self.transport, self._server):
            if transport is not None:
                transport.abort()

    def _closed_now(self) -> int:
        """In ``_maybe_done``: the state the session ended in, once both transports are gone
        (CLOSED when it is not over yet or was already counted)."""
        if self.transport is not None or self._server is not None:
            return CLOSED
        state = self._state
        self._state = CLOSED
        return state

    # --- what a subclass says ------------------------------------------------------------------

    def _before_connect_eof(self) -> str:
        return "client-closed"

    def _stop_connecting(self) -> None:
        """The client is gone: cancel whatever is opening the server connection."""

    @abc.abstractmethod
    def _maybe_done(self) -> None:
        """A side has ended: the session's log line and metrics, once ``_closed_now`` says
        the session has just closed."""


class ServerSide(asyncio.Protocol):
    """The server connection's protocol: every event goes to the session."""

    __slots__ = ("_session",)

    def __init__(self, session: Relay) -> None:
        self._session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._session.server_connected(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._session.server_data(data)

    def eof_received(self) -> bool:
        return self._session.server_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.server_lost(exc)

    def pause_writing(self) -> None:
        self._session.server_pause_writing()

    def resume_writing(self) -> None:
        self._session.server_resume_writing()
