"""HAProxy as the reference: for the same client address and port, the backend must receive the
same PROXY header from mta-ingress as from HAProxy configured like the KRA chart.

The two proxies run one after the other on the same listening address, and the client binds the
same source port both times, so that every field of the header can be compared byte for byte.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ingress_process import IngressProcess, tcp_config
from tests.integration.peers import HAProxyInstance, free_port, haproxy_tcp_config, require_binary

pytestmark = pytest.mark.interop

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class HeaderCapture:
    """A backend that records the PROXY header of each connection, then greets and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.headers: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not self._complete(data):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.headers.append(data)
                conn.sendall(b"220 capture ready\r\n")

    @staticmethod
    def _complete(data: bytes) -> bool:
        if data.startswith(V2_SIGNATURE) and len(data) >= 16:
            return len(data) >= 16 + struct.unpack(">H", data[14:16])[0]
        return b"\r\n" in data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def capture() -> Iterator[HeaderCapture]:
    backend = HeaderCapture()
    yield backend
    backend.close()


def connect_from(source: tuple[str, int], target: tuple[str, int]) -> bytes:
    family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Reset on close: no TIME_WAIT, so the same 4-tuple is free for the second proxy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.settimeout(10)
        sock.bind(source)
        sock.connect(target)
        return sock.recv(100)


@pytest.mark.parametrize(("version", "haproxy_keyword"), [("v1", "send-proxy"),
                                                          ("v2", "send-proxy-v2")])
@pytest.mark.parametrize(("client_host", "listen_host"), [("127.0.0.9", "127.0.0.1"),
                                                          ("::1", "::1")])
def test_same_proxy_header_as_haproxy(tmp_path: Path, capture: HeaderCapture, version: str,
                                      haproxy_keyword: str, client_host: str,
                                      listen_host: str) -> None:
    require_binary("haproxy")
    listen_port = free_port()
    source = (client_host, free_port(client_host))
    target = (listen_host, listen_port)

    haproxy_config = haproxy_tcp_config(listen_port, ("127.0.0.1", capture.port),
                                        send_proxy=haproxy_keyword, listen_host=listen_host)
    with HAProxyInstance(tmp_path / "haproxy", haproxy_config) as haproxy:
        haproxy.start(wait_ports=[target])
        assert connect_from(source, target) == b"220 capture ready\r\n"

    bind = f"[{listen_host}]:{listen_port}" if ":" in listen_host else f"127.0.0.1:{listen_port}"
    config = tcp_config({"smtp587": {"bind": [bind], "backend": "mta-smtp"}},
                        {"mta-smtp": {"servers": [f"127.0.0.1:{capture.port}"],
                                      "send_proxy": version,
                                      # HAProxy here has no `check`: no probe connections either.
                                      "check": False}})
    (tmp_path / "ingress").mkdir()
    with IngressProcess(tmp_path / "ingress", config):
        assert connect_from(source, target) == b"220 capture ready\r\n"

    from_haproxy, from_ingress = capture.headers
    assert from_ingress == from_haproxy
    if version == "v1":
        family = "TCP6" if ":" in client_host else "TCP4"
        assert from_ingress == (f"PROXY {family} {client_host} {listen_host} {source[1]} "
                                f"{listen_port}\r\n").encode()
