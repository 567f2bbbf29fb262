"""loadtest.load.s_time, the bench's handshake load, against a real TLS server on loopback:
parallel ``openssl s_time -new`` processes, their handshakes summed and told apart from a
server that is not there."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from loadtest import load, procstat
from tls import selfsigned

pytestmark = pytest.mark.skipif(shutil.which(load.OPENSSL) is None, reason="openssl not installed")


def mark() -> load.Mark:
    return load.Mark(procstat.CpuSample(time.monotonic(), {}, {}, {}), {})


class HandshakeServer(threading.Thread):
    """Accepts on loopback and completes one TLS handshake per connection, counting them."""

    def __init__(self, certificate: Path) -> None:
        super().__init__(daemon=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.handshakes = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.settimeout(5)
            try:
                with self.context.wrap_socket(connection, server_side=True):
                    self.handshakes += 1
            except OSError:  # the client closed first, or its reset reached the tickets' send
                connection.close()
        self.listener.close()


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    certificate = tmp_path / "bench.pem"
    certificate.write_bytes(selfsigned.generate(("bench.localhost",), key_type="ecdsa"))
    thread = HandshakeServer(certificate)
    thread.start()
    yield thread
    thread.stopping.set()
    thread.join(5)


def test_s_time_sums_the_handshakes_of_parallel_clients_over_the_window(
        server: HandshakeServer) -> None:
    argv = [load.OPENSSL, "s_time", "-new", "-connect", f"127.0.0.1:{server.port}"]
    started = time.monotonic()
    result = load.s_time(argv, clients=3, warmup=1, duration=1, mark=mark)
    assert not result.errors
    assert result.argv == [*argv, "-time", "1"]
    assert result.handshakes > 3
    # the window is the measured run's, not the warm-up's: about a second of the two
    assert 0.9 <= result.window.seconds <= time.monotonic() - started - 0.9
    # every handshake the clients counted came on a connection the server accepted (the
    # warm-up's too); the server may see a client's close before its session tickets are out
    assert server.accepted >= result.handshakes
    assert server.handshakes > 0
    assert result.loadgen_cpu_s > 0


def test_s_time_counts_each_client_that_could_not_connect_as_an_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = load.s_time([load.OPENSSL, "s_time", "-new", "-connect", f"127.0.0.1:{port}"],
                         clients=2, warmup=0, duration=1, mark=mark)
    assert result.handshakes == 0
    assert sum(result.errors.values()) == 2
    assert all(kind.startswith("s_time-failed: ") for kind in result.errors)
