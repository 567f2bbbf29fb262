"""loadtest/floor.py, the benchmark's reference relay: a figure measured through it only means
something if it really proxies. On loopback: requests reach the origin re-serialised with
X-Forwarded-For appended, responses come back whole, keep-alive and pipelined requests included,
and the process stops cleanly on the signal bench.py sends it."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress.protocol.proxy_protocol import encode_v1, encode_v2
from tests.integration.origin import RawOrigin
from tests.integration.peers import free_port
from tls import selfsigned

ROOT = Path(__file__).resolve().parents[2]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def origin() -> Iterator[RawOrigin]:
    with RawOrigin(RESPONSE) as server:
        yield server


def _start_floor(port: int, backend_port: int | None, *options: str) -> subprocess.Popen[bytes]:
    backend = [] if backend_port is None else ["--backend-port", str(backend_port)]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "loadtest" / "floor.py"), "--port", str(port),
         *backend, *options], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
    process.kill()
    raise AssertionError("floor.py did not listen within 10 s")


def _stop(floor: subprocess.Popen[bytes]) -> None:
    floor.send_signal(signal.SIGUSR1)
    _, stderr = floor.communicate(timeout=10)
    assert floor.returncode == 0, stderr
    assert b"Traceback" not in stderr


def _read_responses(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(RESPONSE) < count:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_the_floor_relays_with_x_forwarded_for_and_stops_on_sigusr1(
        origin: RawOrigin) -> None:
    port = free_port()
    floor = _start_floor(port, origin.port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            assert _read_responses(sock, 1) == RESPONSE
            # two pipelined: answered in order on the same connection
            sock.sendall(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n")
            assert _read_responses(sock, 2) == RESPONSE * 2
        assert origin.heads == [
            b"GET %s HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n" % path
            for path in (b"/a?x=1", b"/b", b"/c")]
    finally:
        _stop(floor)


def test_the_floor_terminates_tls_like_the_https_listener(origin: RawOrigin,
                                                          tmp_path: Path) -> None:
    """bench.py's https-keepalive floor: the certificate file the proxies serve, TLS 1.3 with
    ALPN http/1.1 offered as the https listener does, the same relaying behind it."""
    cert = tmp_path / "bench.pem"
    cert.write_bytes(selfsigned.generate(("bench.localhost",), key_type="ecdsa"))
    port = free_port()
    floor = _start_floor(port, origin.port, "--tls-cert", str(cert))
    client = ssl.create_default_context(cafile=str(cert))
    client.set_alpn_protocols(["http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname="bench.localhost") as sock:
            assert sock.version() == "TLSv1.3"
            assert sock.selected_alpn_protocol() == "http/1.1"
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
            assert _read_responses(sock, 2) == RESPONSE * 2
        assert origin.heads == [
            b"GET %s HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n" % path
            for path in (b"/a", b"/b")]
    finally:
        _stop(floor)


# The floor's two engines: uvloop's transports, and its own epoll set under uvloop (--epoll)
ENGINES = pytest.mark.parametrize("engine", [[], ["--epoll"]], ids=["transports", "epoll"])


@ENGINES
def test_the_tcp_floor_relays_behind_a_proxy_v1_header_and_passes_half_close_on(
        engine: list[str]) -> None:
    """bench.py's sessions floor (--tcp): the server hears the client's real address in a PROXY
    v1 header, then the client's bytes; the client's EOF reaches the server, and the server's
    reply written after it still reaches the client."""
    heard: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve(count: int) -> None:
            # _start_floor's probe is a session too: the first one served
            for _ in range(count):
                connection, _ = listener.accept()
                with connection:
                    try:
                        connection.sendall(b"220 floor test\r\n")
                        received = b""
                        while chunk := connection.recv(65536):
                            received += chunk
                        heard.append(received)
                        connection.sendall(b"221 bye\r\n")
                    except OSError:  # the probe's session, abandoned by the floor
                        continue

        server = threading.Thread(target=serve, args=(2,))
        server.start()
        port = free_port()
        floor = _start_floor(port, listener.getsockname()[1], "--tcp", *engine)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                assert _read_until(sock, b"\r\n") == b"220 floor test\r\n"
                sock.sendall(b"QUIT\r\n")
                sock.shutdown(socket.SHUT_WR)
                assert _read_until(sock, b"") == b"221 bye\r\n"
                client_port = sock.getsockname()[1]
            server.join(10)
            assert heard[-1:] == [b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\nQUIT\r\n"
                             % (client_port, port)]
        finally:
            _stop(floor)


@ENGINES
def test_the_forward_floor_connects_from_the_headers_source_to_its_destination(
        engine: list[str]) -> None:
    """bench.py's egress-sessions floor (--forward): a PROXY v1 or v2 header naming a loopback
    source and a destination; the destination hears the client's bytes (not the header) from
    that source, and its reply comes back."""
    heard: list[tuple[str, bytes]] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        sink = listener.getsockname()

        def serve(count: int) -> None:
            for _ in range(count):
                connection, peer = listener.accept()
                with connection:
                    connection.sendall(b"220 sink\r\n")
                    received = b""
                    while chunk := connection.recv(65536):
                        received += chunk
                    heard.append((peer[0], received))
                    connection.sendall(b"221 bye\r\n")

        server = threading.Thread(target=serve, args=(2,))
        server.start()
        port = free_port()
        floor = _start_floor(port, None, "--forward", *engine)
        try:
            headers = [encode_v1(("127.0.0.8", 40000), sink),
                       encode_v2(("127.0.0.9", 40001), sink)]
            for header in headers:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(header + b"QUIT\r\n")
                    assert _read_until(sock, b"\r\n") == b"220 sink\r\n"
                    sock.shutdown(socket.SHUT_WR)
                    assert _read_until(sock, b"") == b"221 bye\r\n"
            server.join(10)
            assert heard == [("127.0.0.8", b"QUIT\r\n"), ("127.0.0.9", b"QUIT\r\n")]
        finally:
            _stop(floor)


@ENGINES
def test_the_tcp_floor_holds_back_a_fast_sender_for_a_slow_server_and_loses_nothing(
        engine: list[str]) -> None:
    """32 MiB from the client to a server that reads nothing for half a second: the floor keeps
    at most its limit, then stops reading the client, and every byte arrives in order."""
    payload = bytes(range(256)) * (32 * 4096)
    received = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            while True:
                connection, _ = listener.accept()
                with connection:
                    header = b""
                    while not header.endswith(b"\r\n"):
                        chunk = connection.recv(1)
                        if not chunk:
                            break
                        header += chunk
                    time.sleep(0.5)
                    while chunk := connection.recv(65536):
                        received.extend(chunk)
                    if not received:  # _start_floor's probe, which sends nothing
                        continue
                    connection.sendall(b"done")
                    return

        server = threading.Thread(target=serve)
        server.start()
        port = free_port()
        floor = _start_floor(port, listener.getsockname()[1], "--tcp", *engine)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                assert _read_until(sock, b"") == b"done"
            server.join(10)
            assert bytes(received) == payload
        finally:
            _stop(floor)


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    """Up to and including ``end``; with ``end`` empty, everything until the peer's EOF."""
    data = b""
    while not (end and data.endswith(end)):
        chunk = sock.recv(65536)
        if not chunk:
            assert not end, data
            break
        data += chunk
    return data
