"""HTTP behaviour of the real ``mta-ingress run`` that the KRA contract and RFC 9112 ask for:
pipelining, X-Forwarded-For replacement, hop-by-hop fields both ways, HTTP/1.0 keep-alive,
close-delimited backend bodies, head size limits and backend connection reuse.

Clients are raw sockets (the bytes on the wire are the point), read with the small
``ResponseReader`` below, which reads pipelined responses one after the other.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ingress.protocol.http1 import Limits
from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import Cluster, EchoOrigin, RawOrigin
from tests.integration.peers import free_port

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5.0
LIMITS = Limits()


# --------------------------------------------------------------------------------------------
# A raw HTTP/1.1 response reader
# --------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # as received: order and case kept
    body: bytes
    framing: str  # "length", "chunked", "close" or "none"
    interim: list[int] = field(default_factory=list)  # 1xx statuses seen before this one

    def values(self, name: str) -> list[bytes]:
        lower = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == lower]

    def names(self) -> list[bytes]:
        return [key.lower() for key, _ in self.headers]

    def json(self) -> dict[str, object]:
        decoded: dict[str, object] = json.loads(self.body)
        return decoded


class ResponseReader:
    """Reads consecutive responses from one socket (pipelined ones included), by RFC 9112
    section 6.3: no body for HEAD, 1xx, 204, 304; then chunked; then Content-Length; else until
    the server closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"connection closed inside a chunked body: {self.buffer[:80]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read(self, method: str = "GET") -> Response:
        interim: list[int] = []
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    raise EOFError(f"connection closed before a response head: "
                                   f"{self.buffer[:80]!r}")
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *lines = head.split(b"\r\n")
            version, status_text, reason = [*status_line.split(b" ", 2), b""][:3]
            assert version == b"HTTP/1.1", status_line
            status = int(status_text)
            headers = [(name, value.strip()) for name, _, value in
                       (line.partition(b":") for line in lines)]
            if 100 <= status < 200:
                interim.append(status)
                continue
            break
        response = Response(status, reason, headers, b"", "none", interim)
        if method == "HEAD" or status in (204, 304):
            return response
        codings = b",".join(response.values("transfer-encoding")).lower()
        if codings:
            assert codings == b"chunked", codings
            response.framing = "chunked"
            body = bytearray()
            while size := int(self._take_line().split(b";")[0], 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            while self._take_line():  # trailer section
                pass
            response.body = bytes(body)
        elif lengths := response.values("content-length"):
            response.framing = "length"
            response.body = self._take(int(lengths[0]))
        else:
            response.framing = "close"
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def closed_by_peer(self, timeout: float = TIMEOUT) -> bool:
        """True when the server closes the connection (without sending more) within
        ``timeout``; False when it is still open then."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        self.buffer += data
        return not data



def connect(port: int) -> tuple[socket.socket, ResponseReader]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return sock, ResponseReader(sock)


def get_on_one_connection(port: int, paths: list[bytes]) -> list[Response]:
    """A GET for each path, one after the other on one keep-alive connection."""
    sock, reader = connect(port)
    responses = []
    with sock:
        for path in paths:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: t.example.org\r\n\r\n" % path)
            responses.append(reader.read())
    return responses


def http10_keep_alive_get(port: int, path: bytes) -> tuple[Response, bool]:
    """An HTTP/1.0 GET asking for keep-alive: the response, and whether the connection was
    still open 0.3 s after it."""
    sock, reader = connect(port)
    with sock:
        sock.sendall(b"GET %s HTTP/1.0\r\nHost: t.example.org\r\nConnection: keep-alive\r\n\r\n"
                     % path)
        response = reader.read()
        return response, not reader.closed_by_peer(0.3)


def exchange(port: int, data: bytes, method: str = "GET", *, closes: bool | None = None
             ) -> Response:
    """One request on a fresh connection; with ``closes``, also checks that the server then
    closes the connection (True) or keeps it open for a while (False)."""
    sock, reader = connect(port)
    with sock:
        sock.sendall(data)
        response = reader.read(method)
        if closes is not None:
            assert reader.closed_by_peer(TIMEOUT if closes else 0.3) == closes
        return response


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


Edit = Callable[[str], str]


@pytest.fixture
def start_ingress(tmp_path: Path, cluster: Cluster) -> Iterator[Callable[..., int]]:
    """Starts mta-ingress (greenarrow preset, only the plain HTTP listeners) in front of the
    cluster, after ``edit`` changed its configuration text; returns the HTTP port."""
    processes: list[IngressProcess] = []

    def start(edit: Edit = lambda text: text) -> int:
        port = free_port()
        workdir = tmp_path / f"ingress-{len(processes)}"
        workdir.mkdir()
        process = IngressProcess(workdir, edit(cluster.config(port, free_port())))
        processes.append(process)
        process.start()
        return port

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def port(start_ingress: Callable[..., int]) -> int:
    return start_ingress()


def events_for(origin: EchoOrigin) -> list[tuple[str, str]]:
    return [(request.method, request.target) for request in origin.requests]


# --------------------------------------------------------------------------------------------
# Pipelining
# --------------------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(port: int, cluster: Cluster) -> None:
    send_body = b'{"to": "a@example.org"}'
    requests = [
        ("GET", b"GET /click/1 HTTP/1.1\r\nHost: t.example.org\r\n\r\n"),
        ("POST", b"POST /api/v1/send.json HTTP/1.1\r\nHost: t.example.org\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
         % (len(send_body), send_body)),
        ("HEAD", b"HEAD /click/2 HTTP/1.1\r\nHost: t.example.org\r\n\r\n"),
        ("GET", b"GET /.kubernetes-readiness-probe HTTP/1.1\r\nHost: t.example.org\r\n\r\n"),
        ("GET", b"GET /.well-known/acme-challenge/token HTTP/1.1\r\nHost: t.example.org\r\n"
                b"\r\n"),
    ]
    sock, reader = connect(port)
    with sock:
        sock.sendall(b"".join(data for _, data in requests))  # one send: all five at once
        responses = [reader.read(method) for method, _ in requests]
        # and the connection is still in step for a sixth
        sock.sendall(b"GET /click/3 HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
        last = reader.read()

    assert [response.status for response in responses] == [200] * 5
    first, send, head, ready, acme = responses
    assert (first.json()["origin"], first.json()["target"]) == ("event-tracker", "/click/1")
    assert (send.json()["origin"], send.json()["body_length"]) == ("mta", len(send_body))
    assert head.body == b""
    assert int(head.values("content-length")[0]) > 0  # the GET's length, as HEAD says
    assert ready.body == b"ready\n"
    assert (acme.json()["origin"], acme.json()["target"]) == (
        "tls", "/.well-known/acme-challenge/token")
    assert last.json()["target"] == "/click/3"

    assert events_for(cluster.event_tracker) == [("GET", "/click/1"), ("HEAD", "/click/2"),
                                                 ("GET", "/click/3")]
    assert events_for(cluster.mta) == [("POST", "/api/v1/send.json")]
    assert cluster.mta.requests[0].body == send_body
    assert events_for(cluster.tls) == [("GET", "/.well-known/acme-challenge/token")]


def test_pipelined_requests_after_connection_close_are_not_processed(
        port: int, cluster: Cluster) -> None:
    """RFC 9112 section 9.6: after a request with "Connection: close", a server MUST NOT
    process further requests on that connection."""
    sock, reader = connect(port)
    with sock:
        sock.sendall(b"GET /click/1 HTTP/1.1\r\nHost: t.example.org\r\n\r\n"
                     b"GET /click/2 HTTP/1.1\r\nHost: t.example.org\r\nConnection: close\r\n\r\n"
                     b"GET /click/3 HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
        first, second = reader.read(), reader.read()
        assert reader.closed_by_peer()
    assert first.json()["target"] == "/click/1"
    assert second.json()["target"] == "/click/2"
    assert second.values("connection") == [b"close"]
    assert events_for(cluster.event_tracker) == [("GET", "/click/1"), ("GET", "/click/2")]


@pytest.mark.parametrize(("version", "close"), [(b"1.1", True), (b"1.0", False)],
                         ids=["http11-connection-close", "http10"])
def test_large_body_of_the_last_request_is_read_whole(port: int, cluster: Cluster,
                                                       version: bytes, close: bool) -> None:
    """The body of a request after which the connection closes arrives in many reads; every
    one of them is still the request's (found by the load test: bodies of 150 KB and more
    stalled when the request said Connection: close)."""
    body = bytes(range(256)) * 1200  # 300 KB
    sock, reader = connect(port)
    with sock:
        sock.sendall(b"POST /api/v1/send.json HTTP/" + version + b"\r\nHost: t.example.org\r\n"
                     + (b"Connection: close\r\n" if close else b"")
                     + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        for offset in range(0, len(body), 16384):  # as a client's socket writes it: in pieces
            sock.sendall(body[offset:offset + 16384])
            time.sleep(0.001)
        # then bytes that must not be read as a request
        sock.sendall(b"GET /click/never HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
        response = reader.read("POST")
        assert reader.closed_by_peer()
    assert response.status == 200
    [received] = cluster.mta.wait_for_requests(1)
    assert received.body == body
    assert events_for(cluster.event_tracker) == []


def test_many_pipelined_requests_pause_and_resume_reading(port: int) -> None:
    """Far more pipelined requests than the proxy queues (PIPELINE_LIMIT events): reading from
    the client pauses and resumes, and every request is answered, in order."""
    count = 300
    sock, reader = connect(port)
    with sock:
        sock.sendall(b"".join(b"GET /.kubernetes-readiness-probe?n=%d HTTP/1.1\r\n"
                              b"Host: t.example.org\r\n\r\n" % index
                              for index in range(count)))
        responses = [reader.read() for _ in range(count)]
        assert not reader.closed_by_peer(0.1)
    assert {(response.status, response.body) for response in responses} == {(200, b"ready\n")}


def test_body_of_a_locally_answered_request_is_not_read_as_a_request(
        port: int, cluster: Cluster) -> None:
    sock, reader = connect(port)
    with sock:
        # the body of the first request looks like the start of a request
        sock.sendall(b"POST /.kubernetes-readiness-probe HTTP/1.1\r\nHost: t.example.org\r\n"
                     b"Content-Length: 5\r\n\r\nGET /"
                     b"POST /api/v1/send.json HTTP/1.1\r\nHost: t.example.org\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                     b"GET /click/z HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
        ready, send, click = reader.read(), reader.read(), reader.read()
    assert (ready.status, ready.body) == (200, b"ready\n")
    assert send.json()["body_length"] == 5
    assert click.json()["target"] == "/click/z"
    assert events_for(cluster.mta) == [("POST", "/api/v1/send.json")]
    assert events_for(cluster.event_tracker) == [("GET", "/click/z")]


# --------------------------------------------------------------------------------------------
# X-Forwarded-For
# --------------------------------------------------------------------------------------------


def test_forwarded_for_replace_keeps_only_the_client_address(
        start_ingress: Callable[..., int], cluster: Cluster) -> None:
    port = start_ingress(lambda text: text.replace(
        "[listeners.http]\n", '[listeners.http]\nforwarded_for = "replace"\n'))
    response = exchange(port, (
        b"GET /click/1 HTTP/1.1\r\nHost: t.example.org\r\n"
        b"X-Forwarded-For: 198.51.100.7, 203.0.113.9\r\n"
        b"Forwarded: for=198.51.100.7;proto=https\r\n"
        b"x-FORWARDED-for: 192.0.2.1\r\n"
        b"X-Other: kept\r\nConnection: close\r\n\r\n"))
    assert response.status == 200
    [received] = cluster.event_tracker.requests
    assert received.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert received.header_values("forwarded") == []
    assert received.header_values("x-other") == ["kept"]


def test_forwarded_for_append_is_the_default(port: int, cluster: Cluster) -> None:
    exchange(port, b"GET /click/1 HTTP/1.1\r\nHost: t.example.org\r\n"
                   b"X-Forwarded-For: 198.51.100.7\r\nForwarded: for=198.51.100.7\r\n"
                   b"Connection: close\r\n\r\n")
    [received] = cluster.event_tracker.requests
    assert received.header_values("x-forwarded-for") == ["198.51.100.7", "127.0.0.1"]
    assert received.header_values("forwarded") == ["for=198.51.100.7"]


# --------------------------------------------------------------------------------------------
# Hop-by-hop fields
# --------------------------------------------------------------------------------------------

RAW_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def raw_backend(origin: RawOrigin, cluster: Cluster) -> Edit:
    """Configuration edit: the Event Tracker backend becomes ``origin``."""
    return lambda text: text.replace(f"127.0.0.1:{cluster.event_tracker.port}",
                                     f"127.0.0.1:{origin.port}")


def test_request_hop_by_hop_fields_are_removed_end_to_end_ones_kept_as_sent(
        start_ingress: Callable[..., int], cluster: Cluster) -> None:
    with RawOrigin(RAW_OK) as origin:
        port = start_ingress(raw_backend(origin, cluster))
        response = exchange(port, (
            b"GET /hop?x=1 HTTP/1.1\r\n"
            b"Host: t.example.org\r\n"
            b"Connection: keep-alive, X-Secret\r\n"
            b"X-First: 1\r\n"
            b"X-Secret: 1\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"x-MiXed-CaSe: Value With  Spaces\r\n"
            b"TE: trailers\r\n"
            b"Proxy-Connection: x\r\n"
            b"Upgrade: websocket\r\n"
            b"accept: */*\r\n"
            b"X-Dup: a\r\n"
            b"X-Dup: b\r\n"
            b"X-Last: z\r\n\r\n"))
        assert response.status == 200
        assert response.body == b"ok"
        [head] = origin.heads
    assert head == (
        b"GET /hop?x=1 HTTP/1.1\r\n"
        b"Host: t.example.org\r\n"
        b"X-First: 1\r\n"
        b"x-MiXed-CaSe: Value With  Spaces\r\n"
        b"accept: */*\r\n"
        b"X-Dup: a\r\n"
        b"X-Dup: b\r\n"
        b"X-Last: z\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\n\r\n")


def test_response_hop_by_hop_fields_are_removed(start_ingress: Callable[..., int],
                                                cluster: Cluster) -> None:
    backend_response = (b"HTTP/1.1 200 OK\r\n"
                        b"X-Before: 1\r\n"
                        b"Connection: X-Hop\r\n"
                        b"X-Hop: 1\r\n"
                        b"Keep-Alive: timeout=5\r\n"
                        b"Upgrade: h2c\r\n"
                        b"Content-Length: 2\r\n"
                        b"Set-Cookie: a=1\r\n"
                        b"Set-Cookie: b=2\r\n"
                        b"X-After: 2\r\n\r\nok")
    with RawOrigin(backend_response) as origin:
        port = start_ingress(raw_backend(origin, cluster))
        sock, reader = connect(port)
        with sock:
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
            response = reader.read()
            sock.sendall(b"GET /b HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
            again = reader.read()
    assert response.status == again.status == 200
    assert response.body == b"ok"
    assert response.headers == [(b"X-Before", b"1"), (b"Set-Cookie", b"a=1"),
                                (b"Set-Cookie", b"b=2"), (b"X-After", b"2"),
                                (b"Content-Length", b"2")]


def test_a_response_head_with_nothing_to_change_is_forwarded_as_it_came(
        start_ingress: Callable[..., int], cluster: Cluster) -> None:
    # HTTP/1.1, no hop-by-hop field but its Content-Length: the bytes the client reads are the
    # backend's, spacing and case included, on every request of the connection
    plain = (b"HTTP/1.1 200 OK\r\nx-first:\t1 \r\ncontent-length:  2\r\n"
             b"Set-Cookie: a=1\r\n\r\nok")
    with RawOrigin(plain) as origin:
        port = start_ingress(raw_backend(origin, cluster))
        sock, reader = connect(port)
        with sock:
            for path in (b"/a", b"/b"):
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: t.example.org\r\n\r\n" % path)
                assert reader._take(len(plain)) == plain
            assert not reader.closed_by_peer(0.3)
            # the last request: the head as it came, and the connection's own field after it
            sock.sendall(b"GET /c HTTP/1.1\r\nHost: t.example.org\r\nConnection: close\r\n\r\n")
            head, body = plain.split(b"\r\n\r\n")
            closing = head + b"\r\nConnection: close\r\n\r\n" + body
            assert reader._take(len(closing)) == closing
            assert reader.closed_by_peer()


@pytest.mark.parametrize("backend_response", [
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nproxy-authenticate: Basic\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
], ids=["keep-alive-field", "proxy-authenticate", "http10-backend"])
def test_a_response_head_with_something_to_change_is_rebuilt(
        start_ingress: Callable[..., int], cluster: Cluster, backend_response: bytes) -> None:
    # whole in one read, framed by its length: taken by the fast path, yet not forwarded as it
    # came (ResponseReader asserts the HTTP/1.1 status line)
    with RawOrigin(backend_response) as origin:
        port = start_ingress(raw_backend(origin, cluster))
        for response in get_on_one_connection(port, [b"/a", b"/b"]):
            assert (response.status, response.body) == (200, b"ok")
            assert response.names() == [b"content-length"]


def test_a_plain_response_to_an_http10_client_says_keep_alive(
        start_ingress: Callable[..., int], cluster: Cluster) -> None:
    with RawOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as origin:
        response, kept = http10_keep_alive_get(start_ingress(raw_backend(origin, cluster)), b"/a")
    assert (response.status, response.body) == (200, b"ok")
    assert kept
    assert response.values("connection") == [b"keep-alive"]


# --------------------------------------------------------------------------------------------
# HTTP/1.0 clients and close-delimited backend bodies
# --------------------------------------------------------------------------------------------


def test_http10_keep_alive_client_keeps_its_connection(port: int, cluster: Cluster) -> None:
    sock, reader = connect(port)
    with sock:
        for index in range(3):
            sock.sendall(b"GET /click/%d HTTP/1.0\r\nHost: t.example.org\r\n"
                         b"Connection: keep-alive\r\n\r\n" % index)
            response = reader.read()
            assert response.status == 200
            assert response.values("connection") == [b"keep-alive"]
            assert response.framing == "length"
            assert response.json()["target"] == f"/click/{index}"
        assert not reader.closed_by_peer(0.3)
    assert len(cluster.event_tracker.requests) == 3


def test_http10_keep_alive_client_gets_keep_alive_on_local_answers(port: int) -> None:
    response, kept = http10_keep_alive_get(port, b"/.kubernetes-readiness-probe")
    assert (response.status, response.body) == (200, b"ready\n")
    assert kept  # the connection is kept...
    assert response.values("connection") == [b"keep-alive"]  # ...so say so


def test_http10_client_without_keep_alive_is_closed_after_the_response(port: int) -> None:
    response = exchange(port, b"GET /click/1 HTTP/1.0\r\nHost: t.example.org\r\n\r\n",
                        closes=True)
    assert response.status == 200
    assert response.framing == "length"
    assert response.json()["target"] == "/click/1"
    assert b"keep-alive" not in b" ".join(response.values("connection")).lower()


def test_backend_connection_close_does_not_close_the_client_connection(
        start_ingress: Callable[..., int], cluster: Cluster) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    with RawOrigin(closing) as origin:
        port = start_ingress(raw_backend(origin, cluster))
        for response in get_on_one_connection(port, [b"/a", b"/b"]):
            assert (response.status, response.body) == (200, b"ok")
            assert response.values("connection") == []  # the backend's close is its own
        assert [head.split(b" ")[1] for head in origin.heads] == [b"/a", b"/b"]


def test_http10_request_without_host_is_forwarded_validly(
        start_ingress: Callable[..., int], cluster: Cluster) -> None:
    with RawOrigin(RAW_OK) as origin:
        port = start_ingress(raw_backend(origin, cluster))
        exchange(port, b"GET /click/1 HTTP/1.0\r\n\r\n", closes=True)
        [head] = origin.heads
    # Either the version is kept (what HAProxy does) or an HTTP/1.1 request carries a Host.
    assert head.startswith(b"GET /click/1 HTTP/1.0\r\n") or b"\r\nhost:" in head.lower()


def test_close_delimited_body_is_rechunked_for_http11_client(port: int) -> None:
    sock, reader = connect(port)
    with sock:
        sock.sendall(b"GET /close/70000 HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
        response = reader.read()
        assert response.status == 200
        assert response.framing == "chunked"
        assert response.values("connection") == []
        assert response.body == b"x" * 70000
        sock.sendall(b"GET /click/next HTTP/1.1\r\nHost: t.example.org\r\n\r\n")
        following = reader.read()
        assert following.json()["target"] == "/click/next"


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
@pytest.mark.parametrize("kind", [b"close", b"chunked"])
def test_backend_body_without_length_is_close_delimited_for_http10_client(
        port: int, connection: bytes, kind: bytes) -> None:
    response = exchange(
        port, b"GET /%s/70000 HTTP/1.0\r\nHost: t.example.org\r\n%s\r\n" % (kind, connection),
        closes=True)
    assert response.status == 200
    assert response.framing == "close"
    assert response.values("transfer-encoding") == []
    assert response.values("content-length") == []
    assert response.body == b"x" * 70000


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


def request_line_of(size: int) -> bytes:
    """``GET /aaa... HTTP/1.1`` of exactly ``size`` bytes (without CRLF)."""
    fixed = len(b"GET / HTTP/1.1")
    return b"GET /" + b"a" * (size - fixed) + b" HTTP/1.1"


def head_of(size: int) -> bytes:
    """A readiness request head of exactly ``size`` bytes, CRLF CRLF included."""
    start = b"GET /.kubernetes-readiness-probe HTTP/1.1\r\nHost: t.example.org\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def fields(count: int) -> bytes:
    return b"".join(b"X-Field-%d: %d\r\n" % (index, index) for index in range(count - 1))


def test_request_line_limit(port: int, cluster: Cluster) -> None:
    limit = LIMITS.max_request_line
    assert limit == 8192
    at_limit = request_line_of(limit)
    response = exchange(port, at_limit + b"\r\nHost: t.example.org\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert response.json()["target"] == at_limit.split(b" ")[1].decode()

    response = exchange(port, request_line_of(limit + 1) + b"\r\nHost: t\r\n\r\n",
                        closes=True)
    assert response.status == 414
    assert response.values("connection") == [b"close"]
    assert len(cluster.event_tracker.requests) == 1


def test_request_head_size_limit(port: int) -> None:
    limit = LIMITS.max_header_bytes
    assert limit == 65536
    response = exchange(port, head_of(limit))
    assert (response.status, response.body) == (200, b"ready\n")
    response = exchange(port, head_of(limit + 1), closes=True)
    assert response.status == 431


def padded(start: bytes, size: int) -> bytes:
    return start + b"p" * (size - len(start))


@pytest.mark.parametrize(("start", "status"), [
    # a request line whose end cannot be within the limit: limit + CR + one more byte
    (padded(b"GET /", LIMITS.max_request_line + 2), 414),
    # a head whose end cannot be within the limit
    (padded(b"GET / HTTP/1.1\r\nHost: t.example.org\r\nX-Pad: ", LIMITS.max_header_bytes), 431),
], ids=["request-line", "head"])
def test_limits_apply_before_the_head_is_complete(port: int, start: bytes, status: int) -> None:
    """An overlong head is refused as soon as it is too long, not at the request timeout.
    Exactly the bytes that decide are sent, so that none is left unread at the close."""
    sock, reader = connect(port)
    with sock:
        sock.sendall(start)  # and no end of line / end of head
        response = reader.read()
        assert response.status == status
        assert reader.closed_by_peer()


def test_header_count_limit(port: int, cluster: Cluster) -> None:
    limit = LIMITS.max_headers
    assert limit == 100
    head = b"GET /click/fields HTTP/1.1\r\nHost: t.example.org\r\n"
    response = exchange(port, head + fields(limit) + b"\r\n")  # Host + 99 = 100 fields
    assert response.status == 200
    [received] = cluster.event_tracker.requests
    assert len(received.headers) == limit + 1  # and X-Forwarded-For
    response = exchange(port, head + fields(limit + 1) + b"\r\n", closes=True)
    assert response.status == 431
    assert len(cluster.event_tracker.requests) == 1


# --------------------------------------------------------------------------------------------
# Backend connection reuse
# --------------------------------------------------------------------------------------------


def test_backend_connection_is_reused_across_client_connections(port: int,
                                                                cluster: Cluster) -> None:
    for index in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            connection.request("GET", f"/click/{index}")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        finally:
            connection.close()
    requests = cluster.event_tracker.wait_for_requests(3)
    # One origin connection carried all three. (origin.connections also counts the ingress's
    # TCP health checks, a connect and a close every 2 s, so it is not compared to 1.)
    assert len({request.connection_id for request in requests}) == 1
    assert len({request.peer for request in requests}) == 1
