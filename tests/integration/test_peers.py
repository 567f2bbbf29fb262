"""The peers of tests/integration/peers.py, checked on their own: PROXY headers written by hand
straight to aiosmtpd and Postfix, and HAProxy in front of them. No mta-ingress here, so that a
failure in the relay tests cannot come from the harness."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.peers import (
    AiosmtpdBackend,
    HAProxyInstance,
    PostfixInstance,
    SmtpReplyError,
    free_port,
    haproxy_tcp_config,
    ipv6_loopback_available,
    live_processes_in_group,
    read_smtp_reply,
    require_binary,
    smtp_transaction,
    wait_for_port,
)

# Each test starts and stops its own servers; none needs more than a few seconds.
pytestmark = pytest.mark.timeout(60)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# A line starting with a dot checks the dot-stuffing on both sides.
MESSAGE = b"Subject: peers test\r\n\r\nhello\r\n.leading dot\r\n"

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")


def v2_tcp4_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """PROXY v2, command PROXY, TCP over IPv4: 16 bytes of preamble, 12 of addresses."""
    addresses = struct.pack("!4s4sHH", socket.inet_aton(source[0]),
                            socket.inet_aton(destination[0]), source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(addresses)) + addresses


def send_mail(address: tuple[str, int], header: bytes = b"", *,
              rcpt: str = "user@test.invalid") -> tuple[str, int]:
    """``header`` then one SMTP transaction; returns the client's own address."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(header)
        smtp_transaction(sock, mail_from="sender@example.org", rcpt_tos=[rcpt], data=MESSAGE)
        host, port = sock.getsockname()[:2]
    return host, port


@pytest.fixture
def backend() -> Iterator[AiosmtpdBackend]:
    with AiosmtpdBackend() as server:
        yield server


# ---------------------------------------------------------------------------------------------
# aiosmtpd backend
# ---------------------------------------------------------------------------------------------


def test_v2_header_is_28_bytes() -> None:
    assert len(v2_tcp4_header(("192.0.2.10", 4242), ("127.0.0.1", 25))) == 28


@pytest.mark.parametrize(("header", "source", "version"), [
    (b"PROXY TCP4 192.0.2.10 127.0.0.1 4242 25\r\n", ("192.0.2.10", 4242), 1),
    (v2_tcp4_header(("192.0.2.10", 4242), ("127.0.0.1", 25)), ("192.0.2.10", 4242), 2),
    (b"PROXY TCP6 2001:db8::10 ::1 4242 25\r\n", ("2001:db8::10", 4242), 1),
], ids=["v1-tcp4", "v2-tcp4", "v1-tcp6"])
def test_backend_records_proxy_source_and_message(backend: AiosmtpdBackend, header: bytes,
                                                  source: tuple[str, int], version: int) -> None:
    client = send_mail((backend.host, backend.port), header)

    [message] = backend.wait_for_messages(1)
    assert message.proxy_source == source
    assert message.peer == client
    assert message.mail_from == "sender@example.org"
    assert message.rcpt_tos == ["user@test.invalid"]
    assert message.data == MESSAGE
    [seen] = backend.proxy_headers
    assert seen == message.proxy_header
    assert seen.valid
    assert seen.version == version
    assert seen.source == source
    assert seen.raw == header
    assert seen.v1_line == (header if version == 1 else None)
    assert seen.peer == client


def test_backend_waits_for_the_header_before_its_banner(backend: AiosmtpdBackend) -> None:
    with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(10)
        sock.sendall(b"PROXY TCP4 192.0.2.11 127.0.0.1 4243 25\r\n")
        with sock.makefile("rb") as reader:
            code, text = read_smtp_reply(reader)
        assert code == 220
        assert "backend.test" in text


def test_backend_records_header_of_session_without_message(backend: AiosmtpdBackend) -> None:
    with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.12 127.0.0.1 4244 25\r\n")
        with sock.makefile("rb") as reader:
            assert read_smtp_reply(reader)[0] == 220
            sock.sendall(b"QUIT\r\n")
            assert read_smtp_reply(reader)[0] == 221

    [seen] = backend.wait_for_proxy_headers(1)
    assert seen.source == ("192.0.2.12", 4244)
    assert backend.messages == []


def test_backend_records_invalid_header_and_hangs_up(backend: AiosmtpdBackend) -> None:
    header = b"PROXY TCP4 192.0.2.300 127.0.0.1 4245 25\r\n"
    with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
        sock.sendall(header)
        assert sock.recv(100) == b""

    [seen] = backend.wait_for_proxy_headers(1)
    assert not seen.valid
    assert seen.error
    assert seen.raw == header
    assert seen.source is None


def test_backend_without_proxy_protocol() -> None:
    with AiosmtpdBackend(proxy_protocol=False) as server:
        client = send_mail((server.host, server.port))
        [message] = server.wait_for_messages(1)
    assert message.proxy_source is None
    assert message.peer == client
    assert server.proxy_headers == []


@needs_ipv6
def test_backend_on_ipv6_loopback() -> None:
    with AiosmtpdBackend("::1") as server:
        client = send_mail(("::1", server.port), b"PROXY TCP6 2001:db8::13 ::1 4246 25\r\n")
        [message] = server.wait_for_messages(1)
    assert message.proxy_source == ("2001:db8::13", 4246)
    assert message.peer == client


def test_backend_stop_frees_the_port() -> None:
    server = AiosmtpdBackend()
    with server:
        port = server.port
        # An open session must not keep the server (or its thread) alive.
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    with idle, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    with pytest.raises(TimeoutError):
        server.wait_for_messages(1, timeout=0.1)


def test_require_binary_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUIRE_INTEROP", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-program-here not installed"):
        require_binary("no-such-program-here")
    monkeypatch.setenv("REQUIRE_INTEROP", "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-program-here not installed"):
        require_binary("no-such-program-here")


@pytest.mark.interop
def test_require_binary_looks_in_postfix_daemon_directory() -> None:
    assert require_binary("master").endswith("/master")


def test_haproxy_tcp_config_text() -> None:
    config = haproxy_tcp_config(2525, ("::1", 2526), send_proxy="send-proxy-v2",
                                accept_proxy=True, nbthread=4, listen_host="::1")
    assert "mode tcp" in config
    assert "timeout connect 5s" in config
    assert "bind [::1]:2525 accept-proxy" in config
    assert "server s1 [::1]:2526 send-proxy-v2" in config
    assert "nbthread 4" in config
    assert "server s1 127.0.0.1:25\n" in haproxy_tcp_config(1, ("127.0.0.1", 25), send_proxy="")
    with pytest.raises(ValueError, match="send_proxy"):
        haproxy_tcp_config(1, ("127.0.0.1", 25), send_proxy="v2")


def test_wait_for_port_times_out() -> None:
    port = free_port()
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.3)


# ---------------------------------------------------------------------------------------------
# Postfix
# ---------------------------------------------------------------------------------------------


def _postfix_header_params() -> list[object]:
    v6 = pytest.param(b"PROXY TCP6 2001:db8::33 ::1 5555 25\r\n", "2001:db8::33", True,
                      id="v1-tcp6-over-ipv6", marks=needs_ipv6)
    return [
        pytest.param(b"PROXY TCP4 192.0.2.33 127.0.0.1 5555 25\r\n", "192.0.2.33", False,
                     id="v1-tcp4"),
        pytest.param(b"PROXY TCP6 2001:db8::33 ::1 5555 25\r\n", "2001:db8::33", False,
                     id="v1-tcp6"),
        pytest.param(v2_tcp4_header(("192.0.2.34", 5555), ("127.0.0.1", 25)), "192.0.2.34",
                     False, id="v2-tcp4"),
        v6,
    ]


@pytest.mark.interop
@pytest.mark.parametrize(("header", "address", "over_ipv6"), _postfix_header_params())
def test_postfix_logs_proxied_client(tmp_path: Path, header: bytes, address: str,
                                     over_ipv6: bool) -> None:
    port = free_port()
    port6 = free_port("::1") if over_ipv6 else None
    with PostfixInstance(tmp_path, port, port6=port6) as postfix:
        target = ("::1", port6) if port6 is not None else ("127.0.0.1", port)
        send_mail(target, header)
        postfix.wait_for_log(r"client=\S*\[" + address.replace(".", r"\.") + r"\]")
        assert postfix.client_addresses() == [address]
        # The message went through cleanup and qmgr to the discard transport.
        postfix.wait_for_log(r"discard\[\d+\]: \w+: to=<user@test\.invalid>.*status=sent")


@pytest.mark.interop
def test_postfix_without_proxy_protocol(tmp_path: Path) -> None:
    with PostfixInstance(tmp_path, free_port(), proxy_protocol=False) as postfix:
        send_mail(("127.0.0.1", postfix.port))
        postfix.wait_for_log(r"client=\S*\[127\.0\.0\.1\]")
        assert postfix.client_addresses() == ["127.0.0.1"]


@pytest.mark.interop
def test_postfix_rejects_a_session_without_header(tmp_path: Path) -> None:
    with PostfixInstance(tmp_path, free_port()) as postfix, \
            socket.create_connection(("127.0.0.1", postfix.port), timeout=10) as sock:
        sock.sendall(b"EHLO client.test\r\n")
        # smtpd gives up on a connection whose first bytes are not a PROXY header.
        assert sock.recv(100).startswith(b"421 ")
        postfix.wait_for_log(r"smtpd\[\d+\]: warning: haproxy read: ")
        assert postfix.client_addresses() == []


@pytest.mark.interop
def test_postfix_does_not_relay(tmp_path: Path) -> None:
    with PostfixInstance(tmp_path, free_port()) as postfix, \
            socket.create_connection(("127.0.0.1", postfix.port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.35 127.0.0.1 5555 25\r\n")
        with pytest.raises(SmtpReplyError, match="RCPT"):
            smtp_transaction(sock, rcpt_tos=["someone@example.com"])
        postfix.wait_for_log(r"NOQUEUE: reject: RCPT from \S*\[192\.0\.2\.35\]")


@pytest.mark.interop
def test_two_postfix_instances_at_once(tmp_path: Path) -> None:
    first = PostfixInstance(tmp_path / "a", free_port())
    second = PostfixInstance(tmp_path / "b", free_port())
    with first, second:
        send_mail(("127.0.0.1", first.port), b"PROXY TCP4 192.0.2.41 127.0.0.1 5555 25\r\n")
        send_mail(("127.0.0.1", second.port), b"PROXY TCP4 192.0.2.42 127.0.0.1 5555 25\r\n")
        first.wait_for_log(r"client=\S*\[192\.0\.2\.41\]")
        second.wait_for_log(r"client=\S*\[192\.0\.2\.42\]")
        assert first.client_addresses() == ["192.0.2.41"]
        assert second.client_addresses() == ["192.0.2.42"]
        groups = [first.pid, second.pid]
    for pgid in groups:
        assert pgid is not None
        assert live_processes_in_group(pgid) == []
    for port in (first.port, second.port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
    # The log outlives the instance, for post-mortems.
    assert "192.0.2.41" in first.log_text()


# ---------------------------------------------------------------------------------------------
# HAProxy
# ---------------------------------------------------------------------------------------------


@pytest.mark.interop
def test_haproxy_send_proxy_to_backend(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port()
    config = haproxy_tcp_config(port, (backend.host, backend.port))
    with HAProxyInstance(tmp_path, config) as haproxy:
        # As the parity tests do: start() again while running only waits for the ports.
        haproxy.start(wait_ports=[("127.0.0.1", port)])
        client = send_mail(("127.0.0.1", port))
        [message] = backend.wait_for_messages(1)

    assert message.proxy_source == client
    assert message.proxy_source[0] == "127.0.0.1"
    assert message.proxy_header is not None
    line = message.proxy_header.v1_line
    assert line is not None
    assert line.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
    assert line == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client[1]} {port}\r\n".encode()
    # Waiting for haproxy to listen did not go through it to the backend.
    assert backend.proxy_headers == [message.proxy_header]
    assert haproxy.output() == "", haproxy.output()


@pytest.mark.interop
def test_haproxy_accept_proxy_then_send_proxy_v2(tmp_path: Path,
                                                 backend: AiosmtpdBackend) -> None:
    port = free_port()
    config = haproxy_tcp_config(port, (backend.host, backend.port), send_proxy="send-proxy-v2",
                                accept_proxy=True, nbthread=2)
    with HAProxyInstance(tmp_path, config):
        send_mail(("127.0.0.1", port), b"PROXY TCP4 192.0.2.77 127.0.0.1 7777 25\r\n")
        [message] = backend.wait_for_messages(1)
    assert message.proxy_source == ("192.0.2.77", 7777)
    assert message.proxy_header is not None
    assert message.proxy_header.version == 2
    assert message.proxy_header.v1_line is None


@pytest.mark.interop
def test_haproxy_send_proxy_v2_to_postfix(tmp_path: Path) -> None:
    port = free_port()
    with PostfixInstance(tmp_path, free_port()) as postfix, \
            HAProxyInstance(tmp_path, haproxy_tcp_config(port, ("127.0.0.1", postfix.port),
                                                         send_proxy="send-proxy-v2")):
        send_mail(("127.0.0.1", port), rcpt="someone@test.invalid")
        postfix.wait_for_log(r"client=\S*\[127\.0\.0\.1\]")
        assert postfix.client_addresses() == ["127.0.0.1"]


@needs_ipv6
@pytest.mark.interop
def test_haproxy_on_ipv6_and_stop(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port("::1")
    config = haproxy_tcp_config(port, (backend.host, backend.port), listen_host="::1")
    haproxy = HAProxyInstance(tmp_path, config)
    with haproxy:
        client = send_mail(("::1", port))
        [message] = backend.wait_for_messages(1)
        pgid = haproxy.pid
    assert message.proxy_source == client
    assert message.proxy_header is not None
    assert message.proxy_header.v1_line == f"PROXY TCP6 ::1 ::1 {client[1]} {port}\r\n".encode()
    assert pgid is not None
    assert live_processes_in_group(pgid) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", port), timeout=10).close()


@pytest.mark.interop
def test_haproxy_reports_a_bad_config(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="rejects the configuration"):
        HAProxyInstance(tmp_path, "frontend broken\n    bind 127.0.0.1:1 nonsense\n").start()
