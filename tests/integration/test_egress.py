"""The egress listeners (docs/egress.md) with the real ``mta-ingress run`` and real peers on
loopback: an aiosmtpd sink that records the address each session came from, KumoMTA's own
SOCKS5 exchange (ingress/demo/egress_clients.py), curl ``--socks5`` and python-socks as other
clients, and HAProxy configured as KumoMTA documents for the PROXY-header forward mode.

Sources are loopback addresses (127.0.0.2-254 are all this host's); the sink listens on
127.0.0.200, off the client's own 127.0.0.1, which allow_clients puts on the deny list.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress.config.users import hash_password
from ingress.demo.egress_clients import Socks5RefusedError, proxy_header_connect, socks5_connect
from ingress.protocol import socks5
from routing.egress import normalised
from tests.integration.ingress_process import IngressProcess, tcp_config
from tests.integration.peers import (
    AiosmtpdBackend,
    HAProxyInstance,
    free_port,
    ipv6_loopback_available,
    require_binary,
    smtp_transaction,
)

SINK_HOST = "127.0.0.200"
SOURCES = ["127.0.0.5", "127.0.0.7", "127.0.0.8", "::1"]


class ConnectionCounter:
    """A plain TCP listener that counts who connects: proof that a refused session reached
    nobody (the sink's records only show sessions that got as far as a message)."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer[0])
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def sink() -> Iterator[AiosmtpdBackend]:
    with AiosmtpdBackend(SINK_HOST, proxy_protocol=False) as backend:
        yield backend


@pytest.fixture
def counter() -> Iterator[ConnectionCounter]:
    listener = ConnectionCounter(SINK_HOST)
    yield listener
    listener.close()


@pytest.fixture(autouse=True, params=["uvloop", "epoll"])
def io_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here on both engines of the egress listeners (``io_engine``), which
    ``egress_config`` names on both listeners."""
    engine: str = request.param
    monkeypatch.setattr(sys.modules[__name__], "IO_ENGINE", engine)
    return engine


IO_ENGINE = "uvloop"


def egress_config(socks_port: int, forward_port: int, ports: list[int], *,
                  users_file: Path | None = None, **top: object) -> str:
    common: dict[str, object] = {
        "io_engine": IO_ENGINE,
        "egress_sources": SOURCES, "egress_ports": ports,
        "allow_clients": ["127.0.0.1/32"],
        # Loopback is the test's whole network: off the deny list, except one address that a
        # test uses as the denied destination.
        "deny_destinations": ["127.0.0.99/32", "10.0.0.0/8"],
    }
    socks: dict[str, object] = {"bind": [f"127.0.0.1:{socks_port}"], "mode": "socks5", **common}
    if users_file is not None:
        socks["users_file"] = str(users_file)
    listeners = {
        "egress-socks": socks,
        "egress-forward": {"bind": [f"127.0.0.1:{forward_port}"], "mode": "forward", **common},
    }
    return tcp_config(listeners, {}, **{"timeouts": {"connect": "1s", "drain": "0s"}, **top})


@contextlib.contextmanager
def running_egress(tmp_path: Path, ports: list[int], **options: object
                   ) -> Iterator[tuple[IngressProcess, int, int]]:
    socks_port, forward_port = free_port(), free_port()
    text = egress_config(socks_port, forward_port, ports, **options)  # type: ignore[arg-type]
    with IngressProcess(tmp_path, text) as ingress:
        yield ingress, socks_port, forward_port


def client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def access_line(ingress: IngressProcess, needle: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [line for line in ingress.access_lines() if needle in line]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access line with {needle!r}: {ingress.access_lines()}")


# --- SOCKS5 ------------------------------------------------------------------------------------


def test_kumomta_bind_then_connect_leaves_from_the_bound_source(
        tmp_path: Path, sink: AiosmtpdBackend) -> None:
    with running_egress(tmp_path, [sink.port]) as (ingress, socks_port, _):
        with client(socks_port) as sock:
            session = socks5_connect(sock, (SINK_HOST, sink.port), source="127.0.0.7")
            assert session.bound is not None
            assert session.bound[0] == "127.0.0.7"
            assert session.local[0] == "127.0.0.7"
            smtp_transaction(sock)
        [message] = sink.wait_for_messages(1)
        assert message.peer[0] == "127.0.0.7"
        line = access_line(ingress, "kind=egress")
        assert "source=127.0.0.7" in line
        assert f"destination={SINK_HOST}:{sink.port}" in line
        assert "client=127.0.0.1:" in line
        assert "end=" in line


def test_connect_without_bind_leaves_from_the_default_source(
        tmp_path: Path, sink: AiosmtpdBackend) -> None:
    with running_egress(tmp_path, [sink.port]) as (_, socks_port, _forward):
        with client(socks_port) as sock:
            session = socks5_connect(sock, (SINK_HOST, sink.port))
            assert session.bound is None
            assert session.local[0] == SOURCES[0]
            smtp_transaction(sock)
        [message] = sink.wait_for_messages(1)
        assert message.peer[0] == SOURCES[0]


def _exchange(sock: socket.socket, message: bytes, parse: object) -> object:
    sock.sendall(message)
    data = b""
    # Byte by byte: the remote's banner may follow a CONNECT reply in the same segment, and
    # belongs to the SMTP session after it.
    while True:
        parsed = parse(data)  # type: ignore[operator]
        if parsed is not None:
            return parsed[0]
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk


def _greet(sock: socket.socket) -> None:
    assert _exchange(sock, socks5.encode_greeting([socks5.METHOD_NO_AUTH]),
                     socks5.parse_method_choice) == socks5.METHOD_NO_AUTH


def _request(sock: socket.socket, command: int, host: str, port: int) -> socks5.Reply:
    reply = _exchange(sock, socks5.encode_request(command, host, port), socks5.parse_reply)
    assert isinstance(reply, socks5.Reply)
    return reply


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_curl_socks5_sends_a_message_from_the_default_source(
        tmp_path: Path, sink: AiosmtpdBackend) -> None:
    curl = require_binary("curl")
    message = tmp_path / "message.eml"
    message.write_bytes(b"Subject: through curl\r\n\r\nhello\r\n")
    with running_egress(tmp_path, [sink.port]) as (_, socks_port, _forward):
        subprocess.run(
            [curl, "--silent", "--show-error", "--max-time", "10",
             "--socks5", f"127.0.0.1:{socks_port}", f"smtp://{SINK_HOST}:{sink.port}",
             "--mail-from", "sender@example.org", "--mail-rcpt", "user@test.invalid",
             "--upload-file", str(message)], check=True, capture_output=True, timeout=20)
        [received] = sink.wait_for_messages(1)
        assert received.peer[0] == SOURCES[0]
        assert b"through curl" in received.data


def test_python_socks_with_rfc1929_credentials(tmp_path: Path, sink: AiosmtpdBackend) -> None:
    from python_socks.sync import Proxy

    users = tmp_path / "egress-users"
    users.write_text(f"kumo:{hash_password(b'right horse', log2_n=10)}\n")
    with running_egress(tmp_path, [sink.port], users_file=users) as (ingress, socks_port, _):
        proxy = Proxy.from_url(f"socks5://kumo:right%20horse@127.0.0.1:{socks_port}")
        sock = proxy.connect(dest_host=SINK_HOST, dest_port=sink.port, timeout=10)
        with sock:
            smtp_transaction(sock)
        [received] = sink.wait_for_messages(1)
        assert received.peer[0] == SOURCES[0]
        assert "user=kumo" in access_line(ingress, "kind=egress")


def test_rfc1929_good_and_bad_password(tmp_path: Path, sink: AiosmtpdBackend) -> None:
    users = tmp_path / "egress-users"
    users.write_text(f"# the MTAs' account\nkumo:{hash_password(b'secret', log2_n=10)}\n")
    with running_egress(tmp_path, [sink.port], users_file=users) as (ingress, socks_port, _):
        with client(socks_port) as sock:
            socks5_connect(sock, (SINK_HOST, sink.port), source="127.0.0.8",
                           credentials=(b"kumo", b"secret"))
            smtp_transaction(sock)
        assert sink.wait_for_messages(1)[0].peer[0] == "127.0.0.8"
        for credentials in ((b"kumo", b"wrong"), (b"nobody", b"secret")):
            with client(socks_port) as sock, pytest.raises(Socks5RefusedError) as refused:
                socks5_connect(sock, (SINK_HOST, sink.port), credentials=credentials)
            assert refused.value.step == "authentication"
        # Without credentials, a listener with a users file chooses no method at all.
        with client(socks_port) as sock, pytest.raises(Socks5RefusedError) as refused:
            socks5_connect(sock, (SINK_HOST, sink.port))
        assert refused.value.code == socks5.METHOD_NONE_ACCEPTABLE
        assert "reason=auth-failed" in access_line(ingress, "reason=auth-failed")
        assert "reason=auth-required" in access_line(ingress, "reason=auth-required")
        assert len(sink.messages) == 1


@pytest.mark.parametrize(("case", "steps", "expected"), [
    ("source-not-listed", [(socks5.CMD_BIND, "127.0.0.9", 0)], socks5.REP_NOT_ALLOWED),
    ("port-not-allowed", [(socks5.CMD_CONNECT, SINK_HOST, "other")], socks5.REP_NOT_ALLOWED),
    ("denied-destination", [(socks5.CMD_CONNECT, "127.0.0.99", "counter")],
     socks5.REP_NOT_ALLOWED),
    ("client-network", [(socks5.CMD_CONNECT, "127.0.0.1", "counter")], socks5.REP_NOT_ALLOWED),
    ("family-mismatch", [(socks5.CMD_BIND, "127.0.0.7", 0), (socks5.CMD_CONNECT, "::1", "counter")],
     socks5.REP_NOT_ALLOWED),
    ("udp-associate", [(socks5.CMD_UDP_ASSOCIATE, "0.0.0.0", 0)],
     socks5.REP_COMMAND_NOT_SUPPORTED),
    ("domain-name", [(socks5.CMD_CONNECT, "mx.example.net", "counter")],
     socks5.REP_ADDRESS_TYPE_NOT_SUPPORTED),
    ("connection-refused", [(socks5.CMD_CONNECT, SINK_HOST, "closed")],
     socks5.REP_CONNECTION_REFUSED),
])
def test_every_refusal_has_its_reply_code_and_reaches_nobody(
        tmp_path: Path, case: str, steps: list[tuple[int, str, int | str]],
        expected: int) -> None:
    # The counter listens where the refused request points, where that is a loopback address
    # this host has (a name points nowhere: the counter then waits at the sink's address).
    counter_host = next((host for _, host, port in steps if port == "counter"), SINK_HOST)
    if normalised(counter_host) is None or (":" in counter_host
                                            and not ipv6_loopback_available()):
        counter_host = SINK_HOST
    counter = ConnectionCounter(counter_host)
    closed_port, other_port = free_port(SINK_HOST), free_port(SINK_HOST)
    ports = {"counter": counter.port, "closed": closed_port, "other": other_port}
    try:
        with running_egress(tmp_path, [counter.port, closed_port]) as (ingress, socks_port, _):
            with client(socks_port) as sock:
                _greet(sock)
                replies = [_request(sock, command, host, ports.get(str(port), 0)
                                    if isinstance(port, str) else port)
                           for command, host, port in steps]
                assert replies[-1].code == expected, (case, replies)
                assert all(reply.code == socks5.REP_SUCCEEDED for reply in replies[:-1])
                assert _closed(sock)
            line = access_line(ingress, "kind=egress")
            assert "end=refused" in line or case == "connection-refused", line
            time.sleep(0.2)
            assert counter.peers == [], case
    finally:
        counter.close()


def test_connect_timeout_answers_ttl_expired(tmp_path: Path) -> None:
    # A listener whose accept queue is full drops further SYNs (tcp_abort_on_overflow = 0), so
    # a connect to it waits: the loopback stand-in for an MX that does not answer.
    full = socket.socket()
    full.bind((SINK_HOST, 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((SINK_HOST, port))
            fillers.append(filler)
        time.sleep(0.2)
        with running_egress(tmp_path, [port]) as (ingress, socks_port, _):
            with client(socks_port) as sock:
                _greet(sock)
                started = time.monotonic()
                reply = _request(sock, socks5.CMD_CONNECT, SINK_HOST, port)
                assert reply.code == socks5.REP_TTL_EXPIRED
                assert time.monotonic() - started < 5
            assert "end=connect-failed" in access_line(ingress, "kind=egress")
    finally:
        for filler in fillers:
            filler.close()
        full.close()


def test_a_client_outside_allow_clients_is_closed_at_accept(
        tmp_path: Path, counter: ConnectionCounter) -> None:
    with running_egress(tmp_path, [counter.port]) as (ingress, socks_port, forward_port):
        for port in (socks_port, forward_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5,
                                          source_address=("127.0.0.3", 0)) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(socks5.encode_greeting([socks5.METHOD_NO_AUTH]))
                assert _closed(sock)
        assert "reason=client-not-allowed" in access_line(ingress, "reason=client-not-allowed")
        assert counter.peers == []


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_ipv6_destination_from_an_ipv6_source(tmp_path: Path) -> None:
    with AiosmtpdBackend("::1", proxy_protocol=False) as sink6, \
            running_egress(tmp_path, [sink6.port]) as (_, socks_port, _forward):
        with client(socks_port) as sock:
            session = socks5_connect(sock, ("::1", sink6.port), source="::1")
            assert session.local[0] == "::1"
            smtp_transaction(sock)
        assert sink6.wait_for_messages(1)[0].peer[0] == "::1"


# --- forward mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_forward_header_names_the_source(tmp_path: Path, sink: AiosmtpdBackend,
                                         version: int) -> None:
    with running_egress(tmp_path, [sink.port]) as (ingress, _, forward_port):
        with client(forward_port) as sock:
            proxy_header_connect(sock, "127.0.0.8", (SINK_HOST, sink.port), version=version)
            smtp_transaction(sock)
        [message] = sink.wait_for_messages(1)
        assert message.peer[0] == "127.0.0.8"
        assert "source=127.0.0.8" in access_line(ingress, "kind=egress")


@pytest.mark.parametrize(("source", "destination", "reason"), [
    ("127.0.0.9", SINK_HOST, "source-not-allowed"),
    ("127.0.0.8", "127.0.0.99", "destination-denied"),
    ("127.0.0.8", "127.0.0.1", "destination-denied"),
])
def test_forward_refusal_closes_without_connecting(
        tmp_path: Path, source: str, destination: str, reason: str) -> None:
    counter = ConnectionCounter(destination)
    try:
        with running_egress(tmp_path, [counter.port]) as (ingress, _, forward_port):
            with client(forward_port) as sock:
                proxy_header_connect(sock, source, (destination, counter.port))
                assert _closed(sock)
            assert f"reason={reason}" in access_line(ingress, "kind=egress")
            time.sleep(0.2)
            assert counter.peers == []
    finally:
        counter.close()


def test_forward_local_header_is_refused(tmp_path: Path, counter: ConnectionCounter) -> None:
    with running_egress(tmp_path, [counter.port]) as (ingress, _, forward_port):
        with client(forward_port) as sock:
            sock.sendall(b"PROXY UNKNOWN\r\n")
            assert _closed(sock)
        assert "reason=not-an-address" in access_line(ingress, "kind=egress")
        assert counter.peers == []


def test_forward_side_by_side_with_haproxy(tmp_path: Path, sink: AiosmtpdBackend) -> None:
    """HAProxy as KumoMTA's docs configure it for ha_proxy_server (accept-proxy, a server of
    0.0.0.0 that takes the header's destination, usesrc clientip), and mta-ingress's forward
    listener: one header each, both sessions arrive at the sink from the header's source."""
    require_binary("haproxy")
    haproxy_port = free_port()
    config = f"""\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend egress_forward
    bind 127.0.0.1:{haproxy_port} accept-proxy
    default_backend to_the_mx

backend to_the_mx
    source 0.0.0.0 usesrc clientip
    server mx 0.0.0.0
"""
    with HAProxyInstance(tmp_path / "haproxy", config) as haproxy, \
            running_egress(tmp_path, [sink.port]) as (_, _socks, forward_port):
        for port in (haproxy_port, forward_port):
            with client(port) as sock:
                proxy_header_connect(sock, "127.0.0.8", (SINK_HOST, sink.port))
                smtp_transaction(sock)
        messages = sink.wait_for_messages(2)
        assert [message.peer[0] for message in messages] == ["127.0.0.8", "127.0.0.8"], \
            haproxy.output()


def test_sigterm_lets_a_session_in_flight_finish(tmp_path: Path, sink: AiosmtpdBackend) -> None:
    socks_port, forward_port = free_port(), free_port()
    text = egress_config(socks_port, forward_port, [sink.port],
                         timeouts={"connect": "1s", "drain": "1s", "grace": "20s"})
    with IngressProcess(tmp_path, text) as ingress:
        with client(socks_port) as sock:
            socks5_connect(sock, (SINK_HOST, sink.port), source="127.0.0.7")
            ingress.signal(signal.SIGTERM)
            time.sleep(1.5)  # past the drain: the listener is closed, the session is not
            smtp_transaction(sock)
        assert ingress.wait(15) == 0
        [message] = sink.wait_for_messages(1)
        assert message.peer[0] == "127.0.0.7"


def test_check_config_warns_of_a_source_not_on_this_host(tmp_path: Path) -> None:
    import sys

    config = tmp_path / "egress.toml"
    config.write_text(egress_config(free_port(), free_port(), [25]).replace(
        '"127.0.0.5"', '"192.0.2.77"'))
    run = [sys.executable, "-m", "ingress", "check-config", "--config", str(config)]
    relaxed = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "egress_sources[0]: 192.0.2.77 is not an address of this host" in relaxed.stderr
    strict = subprocess.run([*run, "--strict"], capture_output=True, text=True, timeout=30)
    assert strict.returncode == 1
    assert (f"error: {config}: listeners.egress-socks.egress_sources[0]: 192.0.2.77"
            in strict.stderr)
    # At start it is a warning: the address may be plumbed, or float to this node, later.
    with IngressProcess(tmp_path, config.read_text()) as ingress:
        assert "egress source not on this host" in ingress.stderr()
        assert "192.0.2.77 is not an address of this host" in ingress.stderr()


def test_metrics_by_source_outcome_and_reason(tmp_path: Path, sink: AiosmtpdBackend) -> None:
    from tests.integration.test_metrics import scrape, value

    with running_egress(tmp_path, [sink.port]) as (ingress, socks_port, forward_port):
        for source in ("127.0.0.7", "127.0.0.8"):
            with client(socks_port) as sock:
                socks5_connect(sock, (SINK_HOST, sink.port), source=source)
                smtp_transaction(sock)
        with client(forward_port) as sock:
            proxy_header_connect(sock, "127.0.0.8", (SINK_HOST, sink.port))
            smtp_transaction(sock)
        with client(socks_port) as sock:
            _greet(sock)
            assert _request(sock, socks5.CMD_BIND, "127.0.0.9", 0).code == socks5.REP_NOT_ALLOWED
        sink.wait_for_messages(3)
        assert ingress.admin_port is not None
        deadline = time.monotonic() + 5
        while True:
            samples = scrape(ingress.admin_port)
            ended = value(samples, "mta_ingress_egress_sessions_total")
            if ended >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        sessions = "mta_ingress_egress_sessions_total"
        assert value(samples, sessions, listener="egress-socks", source="127.0.0.7") == 1
        assert value(samples, sessions, listener="egress-socks", source="127.0.0.8") == 1
        assert value(samples, sessions, listener="egress-forward", source="127.0.0.8") == 1
        assert value(samples, sessions, listener="egress-socks", source="-",
                     outcome="refused") == 1
        assert value(samples, "mta_ingress_egress_refusals_total", listener="egress-socks",
                     reason="source-not-allowed") == 1
        assert value(samples, "mta_ingress_egress_bytes_total", source="127.0.0.8",
                     direction="to-remote") > 0
        assert value(samples, "mta_ingress_egress_bytes_total", source="127.0.0.8",
                     direction="to-client") > 0
        assert value(samples, "mta_ingress_egress_connect_seconds_count", source="127.0.0.8") == 2
        # Destinations are never labels: the series stay bounded by the configuration.
        assert not any(SINK_HOST in str(labels) for _, labels in samples)


def test_a_listener_without_users_refuses_a_client_that_insists_on_a_password(
        tmp_path: Path, counter: ConnectionCounter) -> None:
    with running_egress(tmp_path, [counter.port]) as (ingress, socks_port, _):
        with client(socks_port) as sock:
            method = _exchange(sock, socks5.encode_greeting([socks5.METHOD_USERPASS]),
                               socks5.parse_method_choice)
            assert method == socks5.METHOD_NONE_ACCEPTABLE
            assert _closed(sock)
        assert "reason=no-acceptable-method" in access_line(ingress, "kind=egress")
        assert counter.peers == []


def test_pipelined_and_byte_by_byte_negotiations(tmp_path: Path, sink: AiosmtpdBackend) -> None:
    exchange = (socks5.encode_greeting([socks5.METHOD_NO_AUTH])
                + socks5.encode_request(socks5.CMD_BIND, "127.0.0.8", 0)
                + socks5.encode_request(socks5.CMD_CONNECT, SINK_HOST, sink.port))
    expected_replies = 2 + 10 + 10  # method choice, BIND reply, CONNECT reply (IPv4)
    with running_egress(tmp_path, [sink.port]) as (_, socks_port, _forward):
        for pieces in ([exchange], [exchange[i:i + 1] for i in range(len(exchange))]):
            with client(socks_port) as sock:
                for piece in pieces:
                    sock.sendall(piece)
                    if len(pieces) > 1:
                        time.sleep(0.005)
                replies = b""
                while len(replies) < expected_replies:
                    chunk = sock.recv(expected_replies - len(replies))
                    assert chunk, replies
                    replies += chunk
                assert socks5.parse_method_choice(replies) == (socks5.METHOD_NO_AUTH, 2)
                bound = socks5.parse_reply(replies[2:])
                connected = socks5.parse_reply(replies[12:])
                assert bound is not None
                assert bound[0].code == socks5.REP_SUCCEEDED
                assert connected is not None
                assert connected[0].host == "127.0.0.8"
                smtp_transaction(sock)
        assert [message.peer[0] for message in sink.wait_for_messages(2)] == ["127.0.0.8"] * 2


def test_malformed_and_silent_clients_are_closed(tmp_path: Path) -> None:
    socks_port, forward_port = free_port(), free_port()
    text = egress_config(socks_port, forward_port, [25],
                         timeouts={"socks_handshake": "1s", "proxy_header": "1s"})
    with IngressProcess(tmp_path, text) as ingress:
        with client(socks_port) as sock:
            sock.sendall(b"\x04\x01\x00\x19\x7f\x00\x00\x01\x00")  # SOCKS4
            assert _closed(sock)
        with client(forward_port) as sock:
            sock.sendall(b"HELO not a proxy header\r\n")
            assert _closed(sock)
        for port in (socks_port, forward_port):
            with client(port) as sock:
                started = time.monotonic()
                assert _closed(sock)
                assert 0.9 < time.monotonic() - started < 4
        lines = ingress.access_lines(4)
        assert sum("reason=malformed" in line for line in lines) == 2, lines
        assert any("end=handshake-timeout" in line for line in lines), lines
        assert any("end=proxy-header-timeout" in line for line in lines), lines


def test_a_request_pipelined_behind_a_refused_one_is_not_acted_on(
        tmp_path: Path, counter: ConnectionCounter) -> None:
    with running_egress(tmp_path, [counter.port]) as (ingress, socks_port, _):
        with client(socks_port) as sock:
            sock.sendall(socks5.encode_greeting([socks5.METHOD_NO_AUTH])
                         + socks5.encode_request(socks5.CMD_BIND, "127.0.0.9", 0)
                         + socks5.encode_request(socks5.CMD_CONNECT, SINK_HOST, counter.port))
            answer = b""
            while chunk := sock.recv(64):
                answer += chunk
        assert answer == (socks5.encode_method_choice(socks5.METHOD_NO_AUTH)
                          + socks5.encode_reply(socks5.REP_NOT_ALLOWED))
        assert "reason=source-not-allowed" in access_line(ingress, "kind=egress")
        time.sleep(0.2)
        assert counter.peers == []


def test_the_port_of_a_bind_is_the_kernels_to_choose(tmp_path: Path,
                                                    sink: AiosmtpdBackend) -> None:
    with running_egress(tmp_path, [sink.port]) as (_, socks_port, _forward):
        with client(socks_port) as sock:
            _greet(sock)
            bound = _request(sock, socks5.CMD_BIND, "127.0.0.7", 2525)
            assert (bound.code, bound.host, bound.port) == (socks5.REP_SUCCEEDED, "127.0.0.7", 0)
            connected = _request(sock, socks5.CMD_CONNECT, SINK_HOST, sink.port)
            assert connected.code == socks5.REP_SUCCEEDED
            assert connected.host == "127.0.0.7"
            assert connected.port != 2525
            smtp_transaction(sock)
        assert sink.wait_for_messages(1)[0].peer[0] == "127.0.0.7"
