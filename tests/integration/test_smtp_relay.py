"""The real ``mta-ingress run`` relaying SMTP to real SMTP servers on loopback."""

from __future__ import annotations

import itertools
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.haproxy_log import TCPLOG, parse
from tests.integration.ingress_process import IngressProcess, tcp_config
from tests.integration.peers import (
    AiosmtpdBackend,
    PostfixInstance,
    free_port,
    loopback_resolver,
    require_binary,
)

MESSAGE = b"Subject: relay test\r\n\r\nhello through mta-ingress\r\n"


def send_mail(host: str, port: int, *, source: str | None = None) -> tuple[str, int]:
    """One SMTP transaction; returns the client's own address as the ingress saw it."""
    source_address = (source, 0) if source else None
    with smtplib.SMTP(host, port, timeout=10, source_address=source_address) as client:
        sockname = client.sock.getsockname() if client.sock else ("", 0)
        client.sendmail("sender@example.org", ["rcpt@test.invalid"], MESSAGE)
    return sockname[0], sockname[1]


def mail_after_header(port: int, header: bytes) -> None:
    """One SMTP transaction on a raw socket, after ``header`` (an inbound PROXY header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header)
        converse(sock, [b"EHLO client.test", b"MAIL FROM:<a@example.org>",
                        b"RCPT TO:<b@test.invalid>", b"DATA"])
        sock.sendall(MESSAGE + b".\r\n")
        assert read_reply(sock).startswith(b"250")
        sock.sendall(b"QUIT\r\n")


@pytest.fixture(autouse=True, params=["uvloop", "epoll"])
def io_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here on both engines of the tcp listeners (``io_engine``): each
    configuration this module writes names the engine on its tcp listeners."""
    engine: str = request.param

    def with_engine(listeners: dict[str, dict[str, object]],
                    backends: dict[str, dict[str, object]], **top: object) -> str:
        return plain_tcp_config({name: {**body, "io_engine": engine}
                           if body.get("mode", "tcp") == "tcp" else body
                           for name, body in listeners.items()}, backends, **top)

    plain_tcp_config = tcp_config
    monkeypatch.setattr(sys.modules[__name__], "tcp_config", with_engine)
    return engine


@pytest.fixture
def backend() -> Iterator[AiosmtpdBackend]:
    with AiosmtpdBackend(proxy_protocol=True) as server:
        yield server


def relay_config(listen_port: int, backend_port: int, *, send_proxy: str = "v1",
                 accept_proxy: bool = False, listen_hosts: tuple[str, ...] = ("127.0.0.1",),
                 **top: object) -> str:
    binds = [f"[{h}]:{listen_port}" if ":" in h else f"{h}:{listen_port}" for h in listen_hosts]
    return tcp_config(
        {"smtp587": {"bind": binds, "backend": "mta-smtp", "accept_proxy": accept_proxy}},
        {"mta-smtp": {"servers": [f"127.0.0.1:{backend_port}"], "send_proxy": send_proxy}},
        **top,
    )


@pytest.mark.parametrize("send_proxy", ["v1", "v2"])
@pytest.mark.parametrize("client_host", ["127.0.0.1", "::1"])
def test_aiosmtpd_backend_sees_client_address(tmp_path: Path, backend: AiosmtpdBackend,
                                              send_proxy: str, client_host: str) -> None:
    port = free_port()
    config = relay_config(port, backend.port, send_proxy=send_proxy,
                          listen_hosts=("127.0.0.1", "::1"))
    with IngressProcess(tmp_path, config) as ingress:
        client = send_mail(client_host, port)
        [message] = backend.wait_for_messages(1)
        assert message.proxy_source == client
        assert message.data == MESSAGE
        [line] = ingress.access_lines(1)
    fields = parse(TCPLOG, line)
    assert (fields["client_ip"], int(fields["client_port"])) == client
    assert (fields["frontend"], fields["backend"], fields["termination_state"]) == (
        "smtp587", "mta-smtp", "--")


@pytest.mark.interop
@pytest.mark.parametrize("send_proxy", ["v1", "v2"])
@pytest.mark.parametrize("client_host", ["127.0.0.1", "::1"])
def test_postfix_logs_the_client_address(tmp_path: Path, send_proxy: str,
                                         client_host: str) -> None:
    require_binary("postfix")
    postfix_port = free_port()
    port = free_port()
    with PostfixInstance(tmp_path / "postfix", postfix_port) as postfix, \
            IngressProcess(tmp_path, relay_config(port, postfix_port, send_proxy=send_proxy,
                                                  listen_hosts=("127.0.0.1", "::1"))):
        client_address, _ = send_mail(client_host, port)
        postfix.wait_for_log(r"client=\S*\[" + client_address.replace(".", r"\.") + r"\]")
        assert client_address in postfix.client_addresses()


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.9 192.0.2.1 40001 11587\r\n",
    # v2, PROXY, TCP4 203.0.113.9:40001 -> 192.0.2.1:11587
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x09\xc0\x00\x02\x01\x9c\x41\x2d\x43",
    b"PROXY TCP6 2001:db8::9 2001:db8::1 40001 11587\r\n",
])
def test_inbound_proxy_header_address_is_sent_on(tmp_path: Path, backend: AiosmtpdBackend,
                                                 header: bytes) -> None:
    port = free_port()
    with IngressProcess(tmp_path, relay_config(port, backend.port, accept_proxy=True)):
        mail_after_header(port, header)
        [message] = backend.wait_for_messages(1)
    expected = ("2001:db8::9", 40001) if b"TCP6" in header else ("203.0.113.9", 40001)
    assert message.proxy_source == expected


def read_reply(sock: socket.socket) -> bytes:
    """A whole (possibly multi-line) SMTP reply."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) >= 2 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def converse(sock: socket.socket, commands: list[bytes]) -> None:
    banner = read_reply(sock)
    assert banner.startswith(b"220"), banner
    for command in commands:
        sock.sendall(command + b"\r\n")
        reply = read_reply(sock)
        assert reply[:1] in (b"2", b"3"), (command, reply)


@pytest.mark.parametrize(("header", "reason"), [
    (b"EHLO client.test\r\n", "not-proxy-protocol"),
    (b"PROXY TCP4 203.0.113.9 192.0.2.1 040001 11587\r\n", "v1-bad-port"),
])
def test_bad_inbound_header_closes_and_logs(tmp_path: Path, backend: AiosmtpdBackend,
                                            header: bytes, reason: str) -> None:
    port = free_port()
    with IngressProcess(tmp_path, relay_config(port, backend.port, accept_proxy=True)) as ingress:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(header)
            assert sock.recv(100) == b""  # closed, nothing said, nothing relayed
        [line] = ingress.access_lines(1)
    assert "end=bad-proxy-header" in line
    assert reason in line
    assert backend.proxy_headers == []


def test_missing_inbound_header_times_out(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port()
    config = relay_config(port, backend.port, accept_proxy=True,
                          timeouts={"proxy_header": "300ms"})
    with IngressProcess(tmp_path, config) as ingress:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            assert sock.recv(100) == b""
            assert time.monotonic() - started < 3
        [line] = ingress.access_lines(1)
    assert "end=proxy-header-timeout" in line


def test_backend_refusing_gets_421_at_once(tmp_path: Path) -> None:
    port, dead_port = free_port(), free_port()
    with IngressProcess(tmp_path, relay_config(port, dead_port)) as ingress:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert read_reply(sock) == b"421 4.3.2 Service not available, try again later\r\n"
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 2
        [line] = ingress.access_lines(1)
    assert "end=no-backend" in line
    assert " SC " in line  # HAProxy's: the server refused, while connecting
    assert "Connection refused" in line


def test_unresolvable_backend_name_is_logged_once_per_worker_naming_the_backend(
        tmp_path: Path) -> None:
    # RFC 6761: names under .invalid never resolve.  Health checks every 200 ms and sessions
    # retry the name several times a second in each of the two workers.
    port = free_port()
    config = tcp_config(
        {"smtp587": {"bind": [f"127.0.0.1:{port}"], "backend": "mta-smtp"}},
        {"mta-smtp": {"servers": ["mta.ingress-test.invalid:587"], "check_interval": "200ms"}},
        workers=2)
    # The name is looked up by the system resolver: pointed at loopback, so that the test sends
    # nothing off the machine.
    with IngressProcess(tmp_path, config,
                        command_prefix=loopback_resolver(tmp_path)) as ingress:
        ingress.wait_for_stderr("does not resolve", 15)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                assert read_reply(sock).startswith(b"421 4.3.2 ")
            time.sleep(0.1)
        stderr = ingress.stderr()
    lines = [line for line in stderr.splitlines() if "does not resolve" in line]
    assert lines, stderr
    assert all("backend=mta-smtp" in line and "name=mta.ingress-test.invalid" in line
               and "server=mta.ingress-test.invalid:587" in line for line in lines), lines
    assert all("level=WARNING" in line for line in lines), lines
    kinds_by_worker: dict[str, list[str]] = {}
    for line in lines:
        pid = line.split("pid=", 1)[1].split()[0]
        kinds_by_worker.setdefault(pid, []).append(line.split("error=", 1)[1].split()[0])
    assert len(kinds_by_worker) == 2, lines  # both workers say it
    for kinds in kinds_by_worker.values():
        # Once, and again only if the resolver's answer changed kind.
        assert all(a != b for a, b in itertools.pairwise(kinds)), lines


def test_backend_not_answering_gets_421_within_connect_timeout(tmp_path: Path) -> None:
    # A listener whose accept queue is full drops further SYNs: a silent backend, on loopback.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(silent.getsockname())
            fillers.append(filler)
        time.sleep(0.2)
        port = free_port()
        config = relay_config(port, silent.getsockname()[1], timeouts={"connect": "1s"})
        with IngressProcess(tmp_path, config) as ingress:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                assert read_reply(sock).startswith(b"421 4.3.2 ")
            elapsed = time.monotonic() - started
            [line] = ingress.access_lines(1)
        assert 0.9 < elapsed < 3.0
        assert " sC " in line  # the connect's timeout, while connecting
        assert "detail=\"connect timeout after 1s\"" in line
    finally:
        for filler in fillers:
            filler.close()
        silent.close()


def test_second_server_is_tried_when_first_refuses(tmp_path: Path,
                                                   backend: AiosmtpdBackend) -> None:
    port = free_port()
    config = tcp_config(
        {"smtp": {"bind": [f"127.0.0.1:{port}"], "backend": "pair"}},
        {"pair": {"servers": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{backend.port}"],
                  "send_proxy": "v1"}},
    )
    with IngressProcess(tmp_path, config) as ingress:
        for _ in range(4):  # round-robin starts on each server in turn
            send_mail("127.0.0.1", port)
        assert len(backend.wait_for_messages(4)) == 4
        lines = ingress.access_lines(4)
    # HAProxy's counters field ends in the retries: the sessions that began on the dead server
    retries = sorted(int(line.split(" 0/0 ")[0].rsplit("/", 1)[1]) for line in lines)
    assert retries == [0, 0, 1, 1], lines


def test_half_close_keeps_the_other_direction(tmp_path: Path) -> None:
    """The client shuts down its sending side; the backend still answers after reading EOF."""
    received = bytearray()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer_after_eof() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)
            conn.sendall(b"got %d bytes\n" % len(received))

    thread = threading.Thread(target=answer_after_eof, daemon=True)
    thread.start()
    port = free_port()
    config = tcp_config({"raw": {"bind": [f"127.0.0.1:{port}"], "backend": "raw"}},
                        # The server accepts one connection: no health-check probes.
                        {"raw": {"servers": [f"127.0.0.1:{server.getsockname()[1]}"],
                                 "check": False}})
    try:
        with IngressProcess(tmp_path, config) as ingress, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"x" * 100_000)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            assert reply == b"got 100000 bytes\n"
            thread.join(5)
            [line] = ingress.access_lines(1)
        assert "bytes_in=100000" in line
        assert parse(TCPLOG, line)["bytes_read"] == "17"
    finally:
        server.close()


def test_large_message_arrives_whole(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port()
    body = b"".join(b"line %08d of a large message ................................\r\n" % i
                    for i in range(200_000))  # about 14 MB
    with IngressProcess(tmp_path, relay_config(port, backend.port)), \
            smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@example.org", ["b@test.invalid"], b"Subject: big\r\n\r\n" + body)
    [message] = backend.wait_for_messages(1)
    assert message.data == b"Subject: big\r\n\r\n" + body


def test_idle_session_is_closed(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port()
    config = relay_config(port, backend.port, timeouts={"tcp_idle": "500ms"})
    with IngressProcess(tmp_path, config) as ingress, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert read_reply(sock).startswith(b"220")
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.4 < time.monotonic() - started < 3
        [line] = ingress.access_lines(1)
    assert "end=idle-timeout" in line


def test_sigterm_lets_open_sessions_finish_and_serves_during_drain(
        tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port()
    config = relay_config(port, backend.port, timeouts={"drain": "1s", "grace": "20s"})
    ingress = IngressProcess(tmp_path, config)
    ingress.start()
    try:
        open_session = smtplib.SMTP("127.0.0.1", port, timeout=10)
        open_session.ehlo()
        open_session.mail("a@example.org")
        ingress.signal(signal.SIGTERM)
        ingress.wait_for_stderr("shutting down")
        send_mail("127.0.0.1", port)  # during the drain period: still served
        time.sleep(1.5)  # past the drain: the listener is closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        open_session.rcpt("b@test.invalid")
        open_session.data(MESSAGE)
        assert ingress.process is not None
        assert ingress.process.poll() is None  # still waiting for the open session
        open_session.quit()
        assert ingress.wait(10) == 0
        assert len(backend.wait_for_messages(2)) == 2
    finally:
        ingress.stop()


def test_serves_and_drains_as_pid_1(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    # In a container the supervisor is pid 1 (the image's exec-form entrypoint), so a worker's
    # parent is pid 1 while the supervisor lives: that must not read as an orphaned worker.
    unshare = require_binary("unshare")
    probe = subprocess.run([unshare, "--pid", "--fork", "--", "true"], capture_output=True,
                           text=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {probe.stderr.strip()}")
    port = free_port()
    ingress = IngressProcess(tmp_path, relay_config(port, backend.port, workers=2),
                             command_prefix=(unshare, "--pid", "--fork", "--kill-child", "--"))
    ingress.start()
    try:
        [supervisor] = worker_pids(ingress)  # unshare's one child, pid 1 in its namespace
        status = Path(f"/proc/{supervisor}/status").read_text()
        assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.MULTILINE), status
        for _ in range(4):
            send_mail("127.0.0.1", port)
        assert len(backend.wait_for_messages(4)) == 4
        os.kill(supervisor, signal.SIGTERM)
        assert ingress.wait(15) == 0
        assert "exited before it was ready" not in ingress.stderr()
        assert "restarting" not in ingress.stderr()
    finally:
        ingress.stop()


def test_dead_worker_is_restarted(tmp_path: Path, backend: AiosmtpdBackend) -> None:
    port = free_port()
    with IngressProcess(tmp_path, relay_config(port, backend.port, workers=2)) as ingress:
        pids = worker_pids(ingress)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        ingress.wait_for_stderr("restarting")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(worker_pids(ingress)) < 2:
            time.sleep(0.05)
        assert len(worker_pids(ingress)) == 2
        for _ in range(6):
            send_mail("127.0.0.1", port)
        assert len(backend.wait_for_messages(6)) == 6


def worker_pids(ingress: IngressProcess) -> list[int]:
    assert ingress.process is not None
    children = Path(f"/proc/{ingress.process.pid}/task/{ingress.process.pid}/children")
    return [int(pid) for pid in children.read_text().split()]


def test_port_in_use_fails_start_with_a_clear_message(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        port = blocker.getsockname()[1]
        ingress = IngressProcess(tmp_path, relay_config(port, free_port()))
        ingress.start(wait_ready=False)
        assert ingress.wait(15) == 1
        assert "cannot listen" in ingress.stderr()
        assert "Address already in use" in ingress.stderr()
    finally:
        blocker.close()
