"""TLS on an accepted connection, driven here over memory buffers rather than by the event loop.

uvloop's TLS transport (its ``SSLProtocol``) costs more than the TLS it does: per connection a
waiter future, the ``extra_info`` built at the end of the handshake, an exception formatted per
handshake and per shutdown step, a Python-level ``SSLObject`` wrapper call per read, write and
pending check, and a shutdown that waits for the peer's ``close_notify``. Measured on the
benchmark's relay, the same relay with TLS driven as below makes 11% more new TLS connections a
second and 15% more keep-alive requests (docs/benchmarks.md, "TLS driven by the ingress").

:class:`TlsServerConnection` is the protocol of the accepted TCP connection and, once the
handshake is done, the transport of the application protocol (an ``HttpSession``), with the
subset of the asyncio transport interface that protocol uses. Records are decrypted as they
arrive and all the plaintext of one read goes to the application in one ``data_received``;
what the application writes is encrypted and handed to the TCP transport at once, so the TCP
transport's write buffer is the application's and its flow control passes straight through.

Closing sends ``close_notify`` and closes the TCP connection once its buffer is written, without
waiting for the peer's ``close_notify`` (RFC 8446 section 6.1 does not require the wait, and
neither HAProxy nor nginx waits). A peer's ``close_notify`` or TCP end of stream, whichever comes
first, is the application's ``eof_received``. A handshake that fails or does not finish within the
listener's ``tls.handshake_timeout`` is reported to ``on_failure`` as ``tls-handshake-failed``, one
the client gives up (closes or resets the connection before the end) as ``tls-handshake-aborted``,
as HAProxy tells an "SSL handshake failure" from a "connection closed during SSL handshake"; but
nothing is reported when the peer sent nothing at all: a connection opened and closed without a
byte is a load balancer's TCP health check.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

# At most this much plaintext per SSLObject.read call: more than a TLS record holds (16 KiB).
_READ_SIZE = 65536
# What every connection's records are decrypted into: the loop runs one callback at a time and
# each read's plaintext is copied out before the next. A read without a buffer allocates a
# 64 KiB bytes object and shrinks it to what was read, in the C heap OpenSSL allocates from;
# the buffer saves 0.2-0.4 us of user time per HTTPS keep-alive request (docs/benchmarks.md,
# "Where the handshake's extra CPU goes").
_READ_BUFFER = memoryview(bytearray(_READ_SIZE))
# The reasons on_failure is given, those of the access log's rejections.
HANDSHAKE_FAILED = "tls-handshake-failed"
HANDSHAKE_ABORTED = "tls-handshake-aborted"

# on_failure(peer address, reason, detail)
FailureReport = Callable[[tuple[str, int] | None, str, str], None]


class TlsServerConnection(asyncio.Protocol):
    """Server-side TLS between an accepted TCP connection and ``app``, made before the handshake
    and given to the application as its transport when the handshake is done."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol, *,
                 handshake_timeout: float,
                 on_failure: FailureReport) -> None:
        """``on_failure`` is called with the peer's address, the reason and a description of
        a handshake that did not succeed (see the module's docstring), before the connection
        closes."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The SSLContext's own constructor of SSL objects, the one ssl.SSLObject calls: owner=self
        # makes this connection what the SNI callback receives (as it would an SSLObject), so
        # that the callback's context switch and requested_server_name land here.
        self._tls: Any = cast(Any, context)._wrap_bio(self._incoming, self._outgoing, True, None,
                                                      owner=self)
        self._app = app
        self._handshake_timeout = handshake_timeout
        self._on_failure = on_failure
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshaking = True
        self._app_connected = False
        self._received_any = False
        self._closing = False
        self._eof = False
        # The application's answer to its end of stream: True keeps the connection open for
        # its writes. A TCP end after a close_notify is not a second end of stream.
        self._open_after_eof = False
        # Set by the certificate store's SNI callback: the server name the client asked for.
        self.requested_server_name: str | None = None

    # --- what the SNI callback uses, as on an ssl.SSLObject ----------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        return cast(ssl.SSLContext, self._tls.context)

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self._tls.context = context

    def version(self) -> str | None:
        """The negotiated protocol version, as ``ssl.SSLObject.version``."""
        return cast("str | None", self._tls.version())

    def cipher(self) -> tuple[str, str, int] | None:
        return cast("tuple[str, str, int] | None", self._tls.cipher())

    # --- the TCP connection's events ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = (peer[0], peer[1]) if peer else None
        self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout,
                                                            self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._incoming.write(data)
        if self._handshaking:
            self._received_any = True  # only a handshake's failure report reads it
            if not self._handshake():
                return
        tls = self._tls
        incoming = self._incoming
        buffer = _READ_BUFFER
        first = b""
        more: list[bytes] | None = None
        closed_by_peer = False
        try:
            # Checking what is buffered before each read spares the SSLWantReadError that a read
            # with nothing left would raise, an exception built with a formatted message.
            while incoming.pending or tls.pending():
                size: int = tls.read(_READ_SIZE, buffer)
                if not size:
                    closed_by_peer = True
                    break
                chunk = buffer[:size].tobytes()
                if not first:
                    first = chunk
                elif more is None:
                    more = [first, chunk]
                else:
                    more.append(chunk)
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLError:
            # A record that does not decrypt: nothing after it can be trusted.
            self.abort()
            return
        if self._outgoing.pending:  # a key update or another post-handshake message to answer
            self._flush()
        if more is not None:
            self._app.data_received(b"".join(more))
        elif first:
            self._app.data_received(first)
        if closed_by_peer and not self._eof:
            self._peer_finished()

    def eof_received(self) -> bool | None:
        if self._handshaking:
            self._handshake_failed(HANDSHAKE_ABORTED,
                                   "connection closed by the client during the handshake")
            return False
        if self._closing:
            return False
        if self._eof:
            return self._open_after_eof
        # True keeps the TCP connection open to write the response to a client that only shut
        # down its side.
        return self._app_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._cancel_timer()
        if self._handshaking:
            self._handshaking = False
            if self._received_any and not self._closing:
                self._report(HANDSHAKE_ABORTED,
                             f"connection lost during the handshake: {exc or 'closed'}")
        if self._app_connected:
            self._app_connected = False
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app_connected:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_connected:
            self._app.resume_writing()

    # --- the transport the application sees --------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        transport = self._transport
        if transport is None or self._closing or not data:
            return
        try:
            self._tls.write(data)
        except ssl.SSLError:
            self.abort()  # the TLS state is broken (an earlier fatal alert): nothing can go out
            return
        transport.write(self._outgoing.read())

    def writelines(self, list_of_data: list[bytes]) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        transport = self._transport
        if self._closing or transport is None:
            return
        self._closing = True
        if not self._handshaking:
            try:
                self._tls.shutdown()
            except ssl.SSLError:
                pass  # close_notify is written before OpenSSL waits for the peer's
            self._flush()
        transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self._transport is None or self._transport.is_closing()

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport is not None and self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The TCP transport's, and ``ssl_object`` (this connection: ``version()``, ``cipher()``,
        ``requested_server_name``) and ``sslcontext``."""
        if name == "ssl_object":
            return self
        if name == "sslcontext":
            return self.context
        if name == "cipher":
            return self.cipher()
        if name == "peername":
            return self._peer
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    # --- internals ----------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """One handshake step; True once it is done and the application is connected."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as error:
            self._flush()  # the alert, if OpenSSL wrote one
            self._handshake_failed(HANDSHAKE_FAILED, str(error) or type(error).__name__)
            return False
        self._handshaking = False
        self._cancel_timer()
        self._flush()  # the last handshake flight and TLS 1.3 session tickets
        self._app_connected = True
        self._app.connection_made(cast(asyncio.BaseTransport, self))
        return not self._closing

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._handshaking and not self._closing:
            self._handshake_failed(HANDSHAKE_FAILED,
                                   f"not done after {self._handshake_timeout:g} s")

    def _handshake_failed(self, reason: str, detail: str) -> None:
        if self._received_any:
            self._report(reason, detail)
        self._handshaking = False
        self._cancel_timer()
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _report(self, reason: str, detail: str) -> None:
        try:
            self._on_failure(self._peer, reason, detail)
        finally:
            self._received_any = False  # reported once

    def _peer_finished(self) -> None:
        """The peer's close_notify: its end of stream, as a TCP FIN would be."""
        if not self._app_eof():
            self.close()

    def _app_eof(self) -> bool:
        """The application's end of stream, once: its answer, True to keep the connection
        open for its writes, stands for any later end (a TCP FIN after a close_notify)."""
        self._eof = True
        self._open_after_eof = bool(self._app.eof_received())
        return self._open_after_eof

    def _flush(self) -> None:
        transport = self._transport
        if self._outgoing.pending and transport is not None:
            transport.write(self._outgoing.read())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def tls_factory(context: ssl.SSLContext, make_app: Callable[[], asyncio.Protocol], *,
                handshake_timeout: float,
                on_failure: FailureReport) -> Callable[[], TlsServerConnection]:
    """A listener's protocol factory: TLS in front of what ``make_app`` makes."""
    return lambda: TlsServerConnection(context, make_app(), handshake_timeout=handshake_timeout,
                                       on_failure=on_failure)
