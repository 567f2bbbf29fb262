"""The access log beside HAProxy 2.6's: the same requests and sessions through both, each line
parsed by the same pattern (tests/haproxy_log.py, the layouts as log shippers parse them), and
the fields that say what happened compared.

HAProxy is configured as the KRA chart's is, with ``option httplog`` / ``option tcplog`` and
two changes that make it behave as mta-ingress does, so that the same events happen: ``retries
0`` (mta-ingress tries each server of a backend once; these backends have one) and ``option
abortonclose`` (mta-ingress gives up a request whose client has gone; without the option
HAProxy waits for the server and logs its 504). What is compared: the termination state, the
status, which timers are -1 (the phases that never happened), the backend, whether a server
was reached (``<NOSRV>``), the retries, the request field. What differs by design: server names
(HAProxy's are configured names, ours are ``host:port``), the byte counts (different error
pages and header fields) and the timers' values.  A client that resets its connection while
it waits for the response is "CD" on both, as HAProxy's table has it for a broken connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.haproxy_log import HTTPLOG, TCPLOG, extras, parse
from tests.integration.ingress_process import IngressProcess
from tests.integration.peers import HAProxyInstance, free_port, require_binary

pytestmark = pytest.mark.interop

SERVER_TIMEOUT = 1  # seconds, on both: the 504 case waits for it
BIG_BODY = 20_000_000


class Origin:
    """One HTTP/1.1 origin: ``/slow`` never answers (until the proxy gives up), ``/big`` sends
    a long body slowly, anything else a short 200; and an SMTP-like TCP server: a banner, then
    ``221`` and a close on ``QUIT``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.http = self._listen(self._http_session)
        self.smtp = self._listen(self._smtp_session)

    def _listen(self, handler: Callable[[socket.socket], None]) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.settimeout(0.2)

        def accept() -> None:
            with sock:
                while not self._stop.is_set():
                    try:
                        conn, _ = sock.accept()
                    except TimeoutError:
                        continue
                    threading.Thread(target=self._serve, args=(handler, conn),
                                     daemon=True).start()
        threading.Thread(target=accept, daemon=True).start()
        port: int = sock.getsockname()[1]
        return port

    @staticmethod
    def _serve(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                handler(conn)
            except OSError:
                pass

    def _http_session(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            target = head.split(b" ", 2)[1]
            if target.startswith(b"/slow"):
                conn.settimeout(SERVER_TIMEOUT + 5)
                conn.recv(1)  # the proxy's close ends this
                return
            if target.startswith(b"/big"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_BODY)
                for _ in range(BIG_BODY // 100_000):
                    if self._stop.is_set():
                        return
                    conn.sendall(b"x" * 100_000)
                    time.sleep(0.02)
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    def _smtp_session(self, conn: socket.socket) -> None:
        conn.sendall(b"220 origin ESMTP\r\n")
        buffer = b""
        while b"QUIT\r\n" not in buffer:
            data = conn.recv(4096)
            if not data:
                return
            buffer += data
        conn.sendall(b"221 bye\r\n")

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Proxies:
    http: dict[str, int]  # "haproxy" / "mta-ingress" -> port
    smtp: dict[str, int]
    smtp_down: dict[str, int]
    haproxy: HAProxyInstance
    ingress: IngressProcess


def haproxy_config(ports: dict[str, int], origin: Origin, down: int,
                   quiet: bool = False) -> str:
    dontlog = "\n    option dontlog-normal" if quiet else ""
    return f"""\
global
    nbthread 1
    log stdout format raw local0

defaults
    log global
    mode http{dontlog}
    option httplog
    option forwardfor
    option http-keep-alive
    option abortonclose
    retries 0
    timeout connect 5s
    timeout client 1m
    timeout server {SERVER_TIMEOUT}s

frontend http
    bind 127.0.0.1:{ports["http"]}
    http-request return status 200 content-type text/plain string "ready\\n" \
if {{ path_beg /.kubernetes-readiness-probe }}
    use_backend down if {{ path_beg /down }}
    default_backend et

backend et
    server et1 127.0.0.1:{origin.http}

backend down
    server down1 127.0.0.1:{down}

listen smtp
    mode tcp
    option tcplog
    bind 127.0.0.1:{ports["smtp"]}
    server mta1 127.0.0.1:{origin.smtp}

listen smtpdown
    mode tcp
    option tcplog
    bind 127.0.0.1:{ports["smtp_down"]}
    server mta1 127.0.0.1:{down}
"""


def ingress_config(ports: dict[str, int], origin: Origin, down: int,
                   quiet: bool = False) -> str:
    return f"""\
preset = "none"
workers = 1
log_normal = {"false" if quiet else "true"}

[timeouts]
server = "{SERVER_TIMEOUT}s"
drain = "0s"

[listeners.http]
bind = ["127.0.0.1:{ports["http"]}"]
mode = "http"
routes = "main"
backend = "et"

[[routes.main]]
path_prefix = "/.kubernetes-readiness-probe"
return = "readiness"

[[routes.main]]
path_prefix = "/down"
backend = "down"

[listeners.smtp]
bind = ["127.0.0.1:{ports["smtp"]}"]
backend = "mta"

[listeners.smtpdown]
bind = ["127.0.0.1:{ports["smtp_down"]}"]
backend = "mtadown"

[backends.et]
servers = ["127.0.0.1:{origin.http}"]
check = false

[backends.down]
servers = ["127.0.0.1:{down}"]
check = false

[backends.mta]
servers = ["127.0.0.1:{origin.smtp}"]
check = false

[backends.mtadown]
servers = ["127.0.0.1:{down}"]
check = false
"""


def _start(tmp_path_factory: pytest.TempPathFactory, quiet: bool) -> Iterator[Proxies]:
    require_binary("haproxy")
    workdir = tmp_path_factory.mktemp("log-parity-quiet" if quiet else "log-parity")
    origin = Origin()
    down = free_port()  # nothing listens there: connections are refused
    names = ("http", "smtp", "smtp_down")
    ports = {name: {"haproxy": free_port(), "mta-ingress": free_port()} for name in names}
    (workdir / "ingress").mkdir()
    haproxy = HAProxyInstance(workdir / "haproxy", haproxy_config(
        {name: ports[name]["haproxy"] for name in names}, origin, down, quiet))
    ingress = IngressProcess(workdir / "ingress", ingress_config(
        {name: ports[name]["mta-ingress"] for name in names}, origin, down, quiet))
    try:
        with haproxy, ingress:
            yield Proxies(ports["http"], ports["smtp"], ports["smtp_down"], haproxy, ingress)
    finally:
        origin.stop()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    yield from _start(tmp_path_factory, quiet=False)


@pytest.fixture(scope="module")
def quiet_proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    """HAProxy with ``option dontlog-normal``, mta-ingress with ``log_normal = false``."""
    yield from _start(tmp_path_factory, quiet=True)


def _lines(proxies: Proxies, name: str) -> list[str]:
    if name == "haproxy":
        text = proxies.haproxy.output_path.read_text(errors="replace")
        return [line for line in text.splitlines() if line[:1].isdigit()]
    return proxies.ingress.stdout_path.read_text(errors="replace").splitlines()


def _new_line(proxies: Proxies, name: str, before: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _lines(proxies, name)
        if len(lines) > before:
            assert len(lines) == before + 1, lines[before:]
            return lines[before]
        time.sleep(0.05)
    raise AssertionError(f"{name} logged nothing in {timeout}s")


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a client that gives up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def normal(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /click/abc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert b"hello" in _read_until_closed(sock, 5)


def readiness(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /.kubernetes-readiness-probe HTTP/1.1\r\nHost: t\r\n"
                     b"Connection: close\r\n\r\n")
        assert b"ready" in _read_until_closed(sock, 5)


def bad_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert _read_until_closed(sock, 5).startswith(b"HTTP/1.1 400 ")


def server_down(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /down/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(sock, 5).startswith(b"HTTP/1.1 503 ")


def server_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(sock, SERVER_TIMEOUT + 5).startswith(b"HTTP/1.1 504 ")


def client_aborts_waiting(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.3)
    _reset(sock)


def client_aborts_mid_body(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    received = 0
    while received < 200_000:
        received += len(sock.recv(65536))
    _reset(sock)


HTTP_CASES: dict[str, tuple[Callable[[int], None], str]] = {
    "normal": (normal, "----"),
    "local answer": (readiness, "LR--"),
    "bad request (400)": (bad_request, "PR--"),
    "server refuses (503)": (server_down, "SC--"),
    "server timeout (504)": (server_timeout, "sH--"),
    "client abort before the response": (client_aborts_waiting, "CD--"),
    "client abort during the body": (client_aborts_mid_body, "CD--"),
}


def _outcome(fields: dict[str, str]) -> dict[str, object]:
    """What both proxies must agree on; see the module docstring for what is left out."""
    timers = ("time_request", "time_queue", "time_connect", "time_response")
    return {
        "termination_state": fields["termination_state"],
        "status": fields.get("status"),
        "happened": tuple(fields[name] != "-1" for name in timers if name in fields),
        "frontend": fields["frontend"],
        "backend": fields["backend"],
        "no server": fields["server"] == "<NOSRV>",
        "retries": fields["retries"],
        "request": fields.get("request"),
        "no queues": (fields["srv_queue"], fields["backend_queue"]) == ("0", "0"),
    }


def _both(proxies: Proxies, ports: dict[str, int], play: Callable[[int], None],
          pattern: str) -> dict[str, str]:
    lines = {}
    for name in ("haproxy", "mta-ingress"):
        before = len(_lines(proxies, name))
        play(ports[name])
        lines[name] = _new_line(proxies, name, before, timeout=SERVER_TIMEOUT + 10)
    print(f"{pattern} lines:\n  HAProxy:     {lines['haproxy']}\n"
          f"  mta-ingress: {lines['mta-ingress']}")
    return lines


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_httplog_line_says_what_haproxys_says(proxies: Proxies, case: str) -> None:
    play, state = HTTP_CASES[case]
    lines = _both(proxies, proxies.http, play, "httplog")
    haproxy = _outcome(parse(HTTPLOG, lines["haproxy"]))
    ours_fields = parse(HTTPLOG, lines["mta-ingress"])
    ours = _outcome(ours_fields)
    assert haproxy["termination_state"] == state  # the case is the one meant
    assert ours == haproxy
    # The connection counts: the line's own connection is open on both.
    assert int(ours_fields["actconn"]) >= 1
    assert int(ours_fields["feconn"]) >= 1
    assert extras(lines["mta-ingress"])["worker"] == "0"


def smtp_quit(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"220")
        sock.sendall(b"QUIT\r\n")
        assert b"221" in _read_until_closed(sock, 5)


def smtp_client_resets(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    assert sock.recv(100).startswith(b"220")
    sock.sendall(b"EHLO x\r\n")  # unanswered, so the reset comes with data in flight
    time.sleep(0.1)
    _reset(sock)


def smtp_backend_down(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        _read_until_closed(sock, 10)


TCP_CASES: dict[str, tuple[Callable[[int], None], str, str]] = {
    "session ends with QUIT": (smtp_quit, "--", "smtp"),
    "client resets": (smtp_client_resets, "CD", "smtp"),
    "server refuses": (smtp_backend_down, "SC", "smtp_down"),
}


@pytest.mark.parametrize("case", list(TCP_CASES))
def test_tcplog_line_says_what_haproxys_says(proxies: Proxies, case: str) -> None:
    play, state, listener = TCP_CASES[case]
    ports = proxies.smtp if listener == "smtp" else proxies.smtp_down
    lines = _both(proxies, ports, play, "tcplog")
    haproxy = parse(TCPLOG, lines["haproxy"])
    ours = parse(TCPLOG, lines["mta-ingress"])
    assert haproxy["termination_state"] == state
    assert _outcome(ours) | {"frontend": None, "backend": None} == \
        _outcome(haproxy) | {"frontend": None, "backend": None}
    # HAProxy's listen section is frontend and backend at once; ours are two names.
    assert (haproxy["frontend"], haproxy["backend"]) == (listener.replace("_", ""),) * 2
    assert (ours["frontend"], ours["backend"]) == (
        listener.replace("_", ""), "mta" if listener == "smtp" else "mtadown")
    assert "bytes_in" in extras(lines["mta-ingress"])


def test_log_normal_off_logs_the_cases_haproxys_dontlog_normal_logs(
        quiet_proxies: Proxies) -> None:
    """Every case above through both, then a 503 as the marker that the last line is in: the
    same cases, in the same order, leave a line on each (errors, timeouts, aborts, 5xx), and
    the same ones (a normal request, a local answer, an SMTP session that ends with QUIT)
    leave none."""
    proxies = quiet_proxies
    cases = [(proxies.http, play) for play, _ in HTTP_CASES.values()]
    cases += [(proxies.smtp if listener == "smtp" else proxies.smtp_down, play)
              for play, _, listener in TCP_CASES.values()]
    states = {}
    for name in ("haproxy", "mta-ingress"):
        before = len(_lines(proxies, name))
        for ports, play in [*cases, (proxies.http, server_down)]:
            play(ports[name])
        deadline = time.monotonic() + SERVER_TIMEOUT + 10
        while time.monotonic() < deadline:
            lines = _lines(proxies, name)[before:]
            if lines and "/down/x" in lines[-1]:
                break
            time.sleep(0.05)
        states[name] = [_termination(line) for line in lines]
    print(f"termination states logged: {states}")
    assert states["mta-ingress"] == states["haproxy"]
    assert states["haproxy"] == ["PR--", "SC--", "sH--", "CD--", "CD--", "CD", "SC", "SC--"]


def _termination(line: str) -> str:
    fields = parse(HTTPLOG if line.split()[2] == "http" else TCPLOG, line)
    return fields["termination_state"]
