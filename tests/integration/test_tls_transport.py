"""ingress.proxy.tls_transport, the TLS the listeners drive themselves, on loopback against real
clients (Python's ssl over a socket, a MemoryBIO client that sends a byte at a time, and openssl
s_client for a key update): bytes both ways, records split across reads, both kinds of end of
stream, a clean close, flow control passed through, and each way a handshake can fail."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
import uvloop

from ingress.proxy.tls_transport import TlsServerConnection, tls_factory
from tests.integration.peers import require_binary
from tls.store import base_context

HANDSHAKE_TIMEOUT = 0.5


class App(asyncio.Protocol):
    """Echoes what it gets, and records what happens to it; ``close`` as a whole read closes,
    ``big`` writes 4 MiB, ``bye`` answers and closes."""

    def __init__(self, keep_open_on_eof: bool) -> None:
        self.keep_open_on_eof = keep_open_on_eof
        self.transport: Any = None
        self.events: list[str] = []
        self.received = b""
        self.server_name: str | None = None
        self.version: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")
        ssl_object = transport.get_extra_info("ssl_object")
        self.server_name = ssl_object.requested_server_name
        self.version = ssl_object.version()

    def data_received(self, data: bytes) -> None:
        self.received += data
        if data == b"close":
            self.transport.close()
        elif data == b"big":
            self.transport.write(b"x" * (4 << 20))
        elif data == b"bye":
            self.transport.write(b"bye")
            self.transport.close()
        else:
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        if self.keep_open_on_eof:
            # later, as a response from a backend would come: after the TCP end that may follow
            asyncio.get_running_loop().call_later(0.05, self._answer_after_eof)
        return self.keep_open_on_eof

    def _answer_after_eof(self) -> None:
        self.transport.write(b"after eof")
        self.transport.close()

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")


class TlsServer:
    """TlsServerConnection on a loopback port, its uvloop loop in a thread of its own."""

    def __init__(self, context: ssl.SSLContext, keep_open_on_eof: bool = False) -> None:
        self.apps: list[App] = []
        self.failures: list[tuple[tuple[str, int] | None, str, str]] = []
        self.connections: list[TlsServerConnection] = []
        self.loop = uvloop.new_event_loop()
        self.keep_open_on_eof = keep_open_on_eof

        def make_app() -> App:
            app = App(self.keep_open_on_eof)
            self.apps.append(app)
            return app

        factory = tls_factory(context, make_app, handshake_timeout=HANDSHAKE_TIMEOUT,
                              on_failure=lambda *report: self.failures.append(report))

        def make_connection() -> TlsServerConnection:
            connection = factory()
            self.connections.append(connection)
            return connection

        self.server = self.loop.run_until_complete(
            self.loop.create_server(make_connection, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop and return its result."""
        async def run() -> Any:
            return function()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    leaf = ca.issue_cert("tls.test", "other.test")
    pem = tmp_path_factory.mktemp("tls") / "leaf.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = base_context()
    context.load_cert_chain(pem)

    def choose(connection: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        connection.context = context  # a context switch, as the certificate store makes
        connection.requested_server_name = server_name

    context.sni_callback = choose
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def server(server_context: ssl.SSLContext) -> Iterator[TlsServer]:
    running = TlsServer(server_context)
    yield running
    running.close()


def connect(server: TlsServer, client_context: ssl.SSLContext,
            name: str = "tls.test") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    # b"" from recv is then a close_notify; a TCP end without one raises SSLEOFError
    return client_context.wrap_socket(raw, server_hostname=name, suppress_ragged_eofs=False)


def read_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_bytes_go_both_ways_and_the_app_sees_the_tls_details(
        server: TlsServer, client_context: ssl.SSLContext) -> None:
    with connect(server, client_context, "other.test") as client:
        for message in (b"hello", b"y" * 100_000):
            client.sendall(message)
            assert read_exactly(client, len(message)) == message
        assert client.version() == "TLSv1.3"
        assert client.selected_alpn_protocol() is None  # the client offered none
    app = server.apps[0]
    assert app.server_name == "other.test"
    assert app.version == "TLSv1.3"
    wait_for(lambda: app.events[-1] == "lost", "the connection's end")
    assert server.failures == []


def test_a_client_sending_a_byte_at_a_time_is_understood(
        server: TlsServer, client_context: ssl.SSLContext) -> None:
    """Every record, the handshake's included, arrives split across many reads."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing, server_hostname="tls.test")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send_slowly() -> None:
            for byte in outgoing.read():
                raw.sendall(bytes([byte]))
                time.sleep(0.0005)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                send_slowly()
                incoming.write(raw.recv(65536))
        send_slowly()  # the client's Finished
        tls.write(b"split request")
        send_slowly()
        received = b""
        while received != b"split request":
            incoming.write(raw.recv(65536))
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
    assert server.apps[0].received == b"split request"


def test_a_close_from_the_app_sends_close_notify(
        server: TlsServer, client_context: ssl.SSLContext) -> None:
    with connect(server, client_context) as client:
        client.sendall(b"bye")
        assert read_exactly(client, 3) == b"bye"
        # b"" is a close_notify received; a TCP end without one raises SSLEOFError
        assert client.recv(100) == b""


def test_close_notify_from_the_client_is_end_of_stream(
        server: TlsServer, client_context: ssl.SSLContext) -> None:
    with connect(server, client_context) as client:
        client.sendall(b"ping")
        assert read_exactly(client, 4) == b"ping"
        # sends close_notify, then waits for the server's: the app did not keep the connection
        client.unwrap().close()
    wait_for(lambda: "lost" in server.apps[0].events, "the connection's end")
    assert server.apps[0].events == ["made", "eof", "lost"]


def test_a_tcp_end_without_close_notify_is_end_of_stream_too(
        server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    """And an application that keeps the connection open can still answer."""
    server = TlsServer(server_context, keep_open_on_eof=True)
    try:
        with connect(server, client_context) as client:
            client.sendall(b"ping")
            assert read_exactly(client, 4) == b"ping"
            # no close_notify: the TCP socket's own shutdown (SSLSocket's would drop the TLS)
            socket.socket.shutdown(client, socket.SHUT_WR)
            assert read_exactly(client, 9) == b"after eof"
        wait_for(lambda: "lost" in server.apps[0].events, "the connection's end")
        assert server.apps[0].events == ["made", "eof", "lost"]
    finally:
        server.close()


def test_close_notify_then_a_tcp_end_still_gets_the_answer(
        server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    """A client that sends close_notify and shuts down its side of TCP at once has only
    stopped writing: the TCP end is not a second end of stream that would close the connection
    before the application answers."""
    server = TlsServer(server_context, keep_open_on_eof=True)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing, server_hostname="tls.test")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            raw.sendall(outgoing.read())
            with pytest.raises(ssl.SSLWantReadError):
                tls.unwrap()  # writes close_notify, then would wait for the server's
            raw.sendall(outgoing.read())
            raw.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := raw.recv(65536):
                incoming.write(chunk)
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError,
                                         ssl.SSLEOFError):
                    while piece := tls.read(65536):
                        answer += piece
        assert answer == b"after eof"
        assert server.apps[0].events == ["made", "eof", "lost"]
    finally:
        server.close()


def test_a_client_that_does_not_read_pauses_the_app_until_it_reads(
        server: TlsServer, client_context: ssl.SSLContext) -> None:
    with connect(server, client_context) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"big")
        wait_for(lambda: "pause" in server.apps[0].events, "pause_writing")
        assert read_exactly(client, 4 << 20) == b"x" * (4 << 20)
        wait_for(lambda: "resume" in server.apps[0].events, "resume_writing")


def test_abort_resets_the_client(server: TlsServer, client_context: ssl.SSLContext) -> None:
    with connect(server, client_context) as client:
        client.sendall(b"ping")
        read_exactly(client, 4)
        server.call(lambda: server.connections[0].abort())
        try:
            ended = client.recv(100)
        except (ConnectionResetError, ssl.SSLEOFError):
            ended = None  # a reset, or a TCP end without close_notify
        assert ended is None, f"a clean close or data instead of an abort: {ended!r}"
    wait_for(lambda: "lost" in server.apps[0].events, "the connection's end")


def test_the_transport_interface_the_app_uses(
        server: TlsServer, client_context: ssl.SSLContext) -> None:
    with connect(server, client_context) as client:
        client.sendall(b"ping")
        read_exactly(client, 4)
        connection = server.connections[0]

        def inspect() -> dict[str, Any]:
            connection.set_write_buffer_limits(high=1 << 20)
            connection.pause_reading()
            paused = not connection.is_reading()
            connection.resume_reading()
            return {"paused": paused, "reading": connection.is_reading(),
                    "buffered": connection.get_write_buffer_size(),
                    "closing": connection.is_closing(),
                    "peer": connection.get_extra_info("peername"),
                    "sock": connection.get_extra_info("sockname"),
                    "cipher": connection.get_extra_info("cipher"),
                    "context": connection.get_extra_info("sslcontext")}

        seen = server.call(inspect)
        assert seen["paused"]
        assert seen["reading"]
        assert not seen["closing"]
        assert seen["buffered"] == 0
        assert seen["peer"] == client.getsockname()
        assert seen["sock"] == ("127.0.0.1", server.port)
        assert seen["cipher"][1] == "TLSv1.3"
        assert isinstance(seen["context"], ssl.SSLContext)
        server.call(lambda: connection.writelines([b"one ", b"two"]))
        assert read_exactly(client, 7) == b"one two"
        server.call(connection.close)
        assert server.call(connection.is_closing)
        assert client.recv(100) == b""


# --- handshakes that fail --------------------------------------------------------------------


def test_plain_http_on_the_tls_port_is_a_logged_handshake_failure(server: TlsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while raw.recv(100):  # an alert, then the end
            pass
        address = raw.getsockname()
    wait_for(lambda: bool(server.failures), "the failure report")
    [(peer, reason, detail)] = server.failures
    assert peer == address
    assert reason == "tls-handshake-failed"
    assert "http request" in detail, detail  # OpenSSL's name for this mistake
    assert server.apps[0].events == []  # the application never saw the connection


def test_a_client_that_stops_mid_handshake_times_out(server: TlsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        started = time.monotonic()
        assert raw.recv(100) == b""
        assert time.monotonic() - started >= HANDSHAKE_TIMEOUT * 0.9
    [(_, reason, detail)] = server.failures
    assert reason == "tls-handshake-failed"
    assert detail == f"not done after {HANDSHAKE_TIMEOUT:g} s"


def test_a_client_that_leaves_mid_handshake_is_reported(server: TlsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01")
    wait_for(lambda: bool(server.failures), "the failure report")
    [(_, reason, detail)] = server.failures
    assert reason == "tls-handshake-aborted"
    assert "during the handshake" in detail


def test_a_connection_without_a_byte_is_a_health_check_and_not_reported(
        server: TlsServer) -> None:
    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        assert raw.recv(100) == b""  # closed by the handshake timeout
    time.sleep(0.1)
    assert server.failures == []


def test_a_client_refusing_the_certificate_is_reported(server: TlsServer) -> None:
    strict = ssl.create_default_context()  # does not trust the test CA
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        strict.wrap_socket(raw, server_hostname="tls.test")
    wait_for(lambda: bool(server.failures), "the failure report")
    [(_, reason, detail)] = server.failures
    assert reason == "tls-handshake-failed"
    assert "alert" in detail.lower(), detail


def test_a_key_update_from_the_client_is_answered(server: TlsServer, ca: trustme.CA,
                                                  tmp_path: Path) -> None:
    """openssl s_client's "K" asks for a key update both ways: the server's own key update
    goes out from a read, not a write."""
    openssl = require_binary("openssl")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = subprocess.Popen(
        [openssl, "s_client", "-quiet", "-no_ign_eof", "-connect", f"127.0.0.1:{server.port}",
         "-servername", "tls.test", "-CAfile", str(ca_file), "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdin, stdout = cast(Any, client.stdin), cast(Any, client.stdout)
    try:
        stdin.write(b"before\n")
        stdin.flush()
        assert stdout.readline() == b"before\n"
        stdin.write(b"K\n")  # not sent as data: a KeyUpdate asking for the server's
        stdin.flush()
        time.sleep(0.2)
        stdin.write(b"after\n")
        stdin.flush()
        assert stdout.readline() == b"after\n"
    finally:
        client.kill()
        _, stderr = client.communicate(timeout=5)
    assert b"KEYUPDATE" in stderr.upper(), stderr
    assert server.apps[0].received == b"before\nafter\n"
    assert server.failures == []
