"""HAProxy 2.6 as the reference for HTTP: the origins must receive from mta-ingress what they
receive from HAProxy configured like the KRA chart's ingress, for a corpus of ordinary requests.

Both proxies run at the same time in front of the SAME three origins (MTA, Event Tracker, TLS).
Each case is played by the same client code once through HAProxy and once through mta-ingress;
then what each origin recorded is compared: which origin, method, target, body, and the header
fields as a multiset (h11 lowercases names), X-Forwarded-For also as an ordered list of values.

Differences that are legitimate, and the only ones normalised away:

* Field name case and order. HAProxy lowercases every name and keeps the framing field in
  place; mta-ingress keeps the client's case and appends the recomputed Content-Length or
  Transfer-Encoding after the end-to-end fields. Names are compared lowercased (the origin's
  h11 does that), fields as a multiset.
* HTTP version towards the origin. HAProxy forwards an HTTP/1.0 request as HTTP/1.0 and adds
  ``Connection: keep-alive`` to keep its server connection; mta-ingress forwards every request
  as HTTP/1.1, where keep-alive is the default. For an HTTP/1.0 request, HAProxy's version and
  that one added field are normalised to what mta-ingress sends.
* Chunk boundaries: both forward a chunked request chunked (HAProxy relays the chunks,
  mta-ingress re-chunks what it decoded); the origin compares de-chunked bodies.

On the client side, field name case differs the same way (HAProxy sends lowercase), and
``Connection``, ``Content-Length`` and ``Transfer-Encoding`` are each proxy's own decision for
its client connection (in this corpus every origin response has a Content-Length, which both
pass on), so responses are compared on status, the remaining fields (lowercased, as a
multiset) and the decoded echo. The local readiness answer is compared on status,
Content-Type, Content-Length and body; mta-ingress adds ``Cache-Control: no-cache`` to it,
HAProxy does not (normalised).

Observed while writing this, outside the corpus of normal requests (not normalised; the
mta-ingress side is tested in test_http_behaviour.py):

* HAProxy 2.6 forwards the fields named in ``Connection`` (and that ``Connection`` field minus
  its keep-alive/close tokens), ``Keep-Alive``, ``TE``, ``Upgrade`` and ``Proxy-Connection``,
  in requests and in responses; mta-ingress removes them (RFC 9110 section 7.6.1).
* A close-delimited origin response reaches an HTTP/1.1 client close-delimited (connection
  closed) through HAProxy, chunked (connection kept) through mta-ingress.
* An incomplete request line longer than 8 KiB: HAProxy waits for more (until its client
  timeout), mta-ingress answers 414 at once; an incomplete head over HAProxy's buffer (16 KiB)
  gets HAProxy's 400 HTML page, mta-ingress allows 64 KiB and then answers 431.
* An HTTP/1.0 keep-alive client: HAProxy adds ``connection: keep-alive`` to its own readiness
  answer; mta-ingress does too (it did not on local answers once: a regression test there).
* An HTTP/1.0 request without Host: HAProxy forwards it as HTTP/1.0; mta-ingress forwards it as
  HTTP/1.1 with an empty Host (RFC 9112 section 3.2), normalised below.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import Cluster, EchoOrigin, ReceivedRequest
from tests.integration.peers import HAProxyInstance, free_port, require_binary
from tests.integration.test_http_behaviour import ResponseReader

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

TIMEOUT = 10.0
HOST = "mail.example.org"


# --------------------------------------------------------------------------------------------
# The two proxies and the shared origins
# --------------------------------------------------------------------------------------------


class RecordingOrigin(EchoOrigin):
    """EchoOrigin that also records the HTTP version of each request (ReceivedRequest has no
    field for it). The cases send one request at a time, so the two lists stay in step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.versions: list[str] = []

    def _read_request(self, conn: socket.socket, http: h11.Connection  # type: ignore[override]
                      ) -> tuple[h11.Request | None, bytes]:
        request, body = EchoOrigin._read_request(conn, http)
        if request is not None:
            with self._lock:
                self.versions.append(request.http_version.decode())
        return request, body

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.versions.clear()

    def snapshot(self) -> list[tuple[ReceivedRequest, str]]:
        with self._lock:
            assert len(self.requests) == len(self.versions)
            return list(zip(self.requests, self.versions, strict=True))


class RecordingCluster(Cluster):
    def __init__(self) -> None:  # no super().__init__(): its origins would be left unclosed
        self.mta = RecordingOrigin("mta")
        self.event_tracker = RecordingOrigin("event-tracker")
        self.tls = RecordingOrigin("tls")

    def origins(self) -> list[RecordingOrigin]:
        origins = [self.mta, self.event_tracker, self.tls]
        assert all(isinstance(origin, RecordingOrigin) for origin in origins)
        return origins  # type: ignore[return-value]


def haproxy_http_config(port: int, cluster: Cluster) -> str:
    """The HTTP part of the KRA chart's HAProxy configuration, on loopback."""
    return f"""\
global
    nbthread 1

defaults
    mode http
    option forwardfor
    option http-keep-alive
    http-reuse aggressive
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend http_in
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "ready\\n" \
if {{ path_beg /.kubernetes-readiness-probe }}
    use_backend mta if {{ path_beg /api/v1/send.json }}
    use_backend tls if {{ path_beg /.lets_encrypt_challenge_preflight }} \
or {{ path_beg /.well-known/acme-challenge/ }}
    default_backend event_tracker

backend mta
    server mta 127.0.0.1:{cluster.mta.port}

backend tls
    server tls 127.0.0.1:{cluster.tls.port}

backend event_tracker
    server event_tracker 127.0.0.1:{cluster.event_tracker.port}
"""


@dataclass
class Setup:
    cluster: RecordingCluster
    ports: dict[str, int]
    workdir: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_binary("haproxy")
    workdir = tmp_path_factory.mktemp("parity")
    cluster = RecordingCluster()
    haproxy_port, ingress_port = free_port(), free_port()
    (workdir / "ingress").mkdir()
    with cluster.mta, cluster.event_tracker, cluster.tls, \
            HAProxyInstance(workdir / "haproxy", haproxy_http_config(haproxy_port, cluster)), \
            IngressProcess(workdir / "ingress", cluster.config(ingress_port, free_port())):
        yield Setup(cluster, {"haproxy": haproxy_port, "mta-ingress": ingress_port}, workdir)


# --------------------------------------------------------------------------------------------
# What a client saw, what the origins saw
# --------------------------------------------------------------------------------------------

# Each proxy decides these for its own connection with the client.
CLIENT_HOP_FIELDS = frozenset({"connection", "content-length", "transfer-encoding"})


@dataclass(frozen=True)
class Reply:
    status: int
    fields: tuple[tuple[str, str], ...]  # lowercased names, sorted, CLIENT_HOP_FIELDS removed
    echo: tuple[str, str, str, int] | None  # origin, method, target, body_length from the echo
    body: bytes | None  # the body when it is not an echo

    @classmethod
    def of(cls, status: int, headers: list[tuple[str, str]], body: bytes) -> Reply:
        fields = tuple(sorted((name.lower(), value) for name, value in headers
                              if name.lower() not in CLIENT_HOP_FIELDS))
        if ("content-type", "application/json") in fields and body:
            echo = json.loads(body)
            return cls(status, fields, (echo["origin"], echo["method"], echo["target"],
                                        echo["body_length"]), None)
        # A local answer (readiness): mta-ingress adds "Cache-Control: no-cache".
        fields = tuple(item for item in fields if item != ("cache-control", "no-cache"))
        return cls(status, fields, None, body)


@dataclass(frozen=True)
class Seen:
    """One request as an origin received it, with the legitimate differences normalised."""

    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]  # the multiset, sorted
    x_forwarded_for: tuple[str, ...]  # in order
    body: bytes

    @classmethod
    def of(cls, request: ReceivedRequest, version: str) -> Seen:
        fields = list(request.headers)
        if version == "1.0" and ("connection", "keep-alive") in fields:
            # HAProxy's HTTP/1.0 forwarding: see the module docstring.
            fields.remove(("connection", "keep-alive"))
            version = "1.1"
        if ("host", "") in fields:
            # mta-ingress forwards a Host-less HTTP/1.0 request as HTTP/1.1 with an empty Host
            # (RFC 9112 section 3.2); HAProxy keeps HTTP/1.0 and sends none.
            fields.remove(("host", ""))
        return cls(request.method, request.target, version, tuple(sorted(fields)),
                   tuple(request.header_values("x-forwarded-for")), request.body)


@dataclass
class Observed:
    replies: list[Reply]
    seen: dict[str, list[Seen]] = field(default_factory=dict)


Client = Callable[[int, Path], list[Reply]]


def observe(setup: Setup, proxy: str, client: Client) -> Observed:
    origins = setup.cluster.origins()
    for origin in origins:
        origin.clear()
    replies = client(setup.ports[proxy], setup.workdir)
    # Every request a client got its response to was recorded before the origin answered.
    return Observed(replies, {origin.name: [Seen.of(request, version)
                                            for request, version in origin.snapshot()]
                              for origin in origins})


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


Body = bytes | Callable[[], Iterator[bytes]] | None


def http_client(requests: list[tuple[str, str, Body, dict[str, str]]]) -> Client:
    """The requests in order on one http.client keep-alive connection; a body given as a
    function of no arguments is sent chunked, one chunk per piece it yields."""
    def run(port: int, _: Path) -> list[Reply]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        replies = []
        try:
            for method, target, body, headers in requests:
                chunked = callable(body)
                connection.request(method, target, body=body() if callable(body) else body,
                                   headers={"Host": HOST, **headers}, encode_chunked=chunked)
                response = connection.getresponse()
                replies.append(Reply.of(response.status, response.getheaders(),
                                        response.read()))
        finally:
            connection.close()
        return replies
    return run


def raw_client(data: list[bytes], methods: list[str] | None = None) -> Client:
    """Each element of ``data`` sent in turn on one raw connection, its response read."""
    def run(port: int, _: Path) -> list[Reply]:
        replies = []
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            reader = ResponseReader(sock)
            for index, request in enumerate(data):
                sock.sendall(request)
                response = reader.read(methods[index] if methods else "GET")
                replies.append(Reply.of(
                    response.status,
                    [(name.decode(), value.decode()) for name, value in response.headers],
                    response.body))
        return replies
    return run


def curl_expect_continue(size: int) -> Client:
    def run(port: int, workdir: Path) -> list[Reply]:
        curl = require_binary("curl")
        payload = workdir / f"expect-{size}.json"
        payload.write_bytes(b'{"x": "' + b"e" * (size - 10) + b'"}')
        headers = workdir / "curl-headers"
        result = subprocess.run(
            [curl, "-sS", "--max-time", str(TIMEOUT), "-D", str(headers),
             "-H", f"Host: {HOST}", "-H", "Expect: 100-continue",
             "-H", "Content-Type: application/json", "--data-binary", f"@{payload}",
             f"http://127.0.0.1:{port}/api/v1/send.json"],
            capture_output=True, timeout=TIMEOUT + 5, check=True)
        blocks = headers.read_bytes().decode().strip().split("\r\n\r\n")
        assert blocks[0].startswith("HTTP/1.1 100"), blocks  # the 100 reached the client
        status_line, *lines = blocks[-1].split("\r\n")
        fields = [(name, value.strip()) for name, _, value in
                  (line.partition(":") for line in lines)]
        return [Reply.of(int(status_line.split()[1]), fields, result.stdout)]
    return run


SEND = "/api/v1/send.json"
JSON = {"Content-Type": "application/json"}
MEGABYTE = bytes(range(256)) * 4096


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@dataclass(frozen=True)
class Case:
    client: Client
    requests: int  # how many reach an origin


CASES: dict[str, Case] = {
    "get-with-query": Case(http_client([
        ("GET", "/click/1234?u=5&l=https%3A%2F%2Fexample.org%2Fa%3Fb%3Dc&empty=&flag", None,
         {"User-Agent": "parity/1", "Accept": "*/*"}),
        ("GET", "/open/77.gif?", None, {}),
    ]), 2),
    "odd-but-valid-targets": Case(raw_client([
        b"GET /o/%C3%A9t%C3%A9/a~b!$&'()*+,;=:@.-_/%7e%2F?q=a/b?c&d=%20&e=~!$'()*+,;=:@/? "
        b"HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
        b"GET //double//slash/./dot/../segments HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
        b"GET /API/v1/send.json HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",  # case-sensitive
        b"GET /%61pi/v1/send.json HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",  # not decoded
        b"GET /api/v1/send.json.extra/more?x HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
        b"GET /.well-known/acme-challenge/ HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
        b"GET /.well-known/acme-challenge HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
        b"GET /.lets_encrypt_challenge_preflight?token=a%2Fb HTTP/1.1\r\n"
        b"Host: MAIL.example.org:80\r\n\r\n",
        # absolute-form: both route on its path and forward it unchanged
        b"GET http://mail.example.org/api/v1/send.json?x=1 HTTP/1.1\r\n"
        b"Host: mail.example.org\r\n\r\n",
        b"GET http://mail.example.org HTTP/1.1\r\nHost: mail.example.org\r\n\r\n",
    ]), 11),
    "unusual-field-values": Case(raw_client([
        b"GET /click/body HTTP/1.1\r\nHost: mail.example.org.\r\nContent-Length: 3\r\n"
        b"X-Empty:\r\nX-Latin: caf\xe9\r\nX-Spaces:   a  b   \r\n"
        b"x-forwarded-for: 198.51.100.1\r\nX-FORWARDED-FOR: 198.51.100.2\r\n\r\nabc",
        b"GET /click/empty-chunked HTTP/1.1\r\nHost: [::1]:8080\r\nAccept-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/v1/send.json HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\n\r\n",
    ]), 3),
    "post-content-length": Case(http_client([
        ("POST", SEND, b'{"message": {"to": "a@example.org", "subject": "hi"}}', JSON),
        ("POST", SEND, b"", JSON),
        ("PUT", "/click/put", b"x=1", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("DELETE", "/click/delete", None, {}),
    ]), 4),
    "post-chunked": Case(http_client([
        ("POST", SEND, lambda: pieces(b'{"message": "' + b"c" * 70_000 + b'"}', 8_000),
         {**JSON, "Transfer-Encoding": "chunked"}),
        ("POST", SEND, lambda: iter([b"{", b"}"]), {"Transfer-Encoding": "chunked"}),
    ]), 2),
    "head": Case(http_client([
        ("HEAD", "/click/1", None, {}),
        ("HEAD", SEND, None, {}),
        ("GET", "/click/after-head", None, {}),
    ]), 3),
    "keep-alive-mixing-routes": Case(http_client([
        ("GET", "/click/1", None, {}),
        ("POST", SEND, b'{"n": 1}', JSON),
        ("GET", "/.kubernetes-readiness-probe", None, {}),
        ("GET", "/.well-known/acme-challenge/token-1", None, {}),
        ("HEAD", "/open/2", None, {}),
        ("GET", "/.lets_encrypt_challenge_preflight", None, {}),
        ("POST", SEND, b'{"n": 2}', JSON),
        ("GET", "/click/3?x=y", None, {"Cookie": "a=b; c=d"}),
    ]), 7),
    "expect-100-continue": Case(curl_expect_continue(200_000), 1),
    "one-megabyte-body": Case(http_client([
        ("POST", SEND, MEGABYTE, {"Content-Type": "application/octet-stream"}),
        ("GET", "/click/after-megabyte", None, {}),
    ]), 2),
    "client-x-forwarded-for": Case(http_client([
        ("GET", "/click/xff", None, {"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}),
        ("POST", SEND, b"{}", {**JSON, "X-Forwarded-For": "192.0.2.33",
                               "X-Real-IP": "192.0.2.33"}),
    ]), 2),
    "http10-with-host": Case(raw_client([
        b"GET /click/10 HTTP/1.0\r\nHost: mail.example.org\r\nConnection: keep-alive\r\n\r\n",
        b"POST /api/v1/send.json HTTP/1.0\r\nHost: mail.example.org\r\n"
        b"Connection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /click/10-last HTTP/1.0\r\nHost: mail.example.org\r\n\r\n",
    ]), 3),
}

@pytest.mark.parametrize("name", [
    *CASES,
    "http10-without-host",
])
def test_origins_receive_the_same_as_through_haproxy(setup: Setup, name: str) -> None:
    case = CASES.get(name) or Case(raw_client([
        b"GET /click/no-host HTTP/1.0\r\n\r\n",
    ]), 1)
    reference = observe(setup, "haproxy", case.client)
    ours = observe(setup, "mta-ingress", case.client)
    assert sum(len(seen) for seen in reference.seen.values()) == case.requests, reference
    assert ours.replies == reference.replies
    for origin, seen in reference.seen.items():
        assert ours.seen[origin] == seen, origin


# --------------------------------------------------------------------------------------------
# The local readiness answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_bytes", "method"), [
    (b"GET /.kubernetes-readiness-probe HTTP/1.1\r\nHost: 10.0.0.5:10080\r\n"
     b"User-Agent: kube-probe/1.29\r\nAccept: */*\r\nConnection: close\r\n\r\n", "GET"),
    (b"GET /.kubernetes-readiness-probe/extra?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
    (b"HEAD /.kubernetes-readiness-probe HTTP/1.1\r\nHost: a\r\n\r\n", "HEAD"),
    (b"GET /.kubernetes-readiness-probe HTTP/1.0\r\n\r\n", "GET"),
    (b"POST /.kubernetes-readiness-probe HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
     "POST"),
], ids=["kube-probe", "prefix-and-query", "head", "http10", "post-with-body"])
def test_readiness_answer_matches_haproxy(setup: Setup, request_bytes: bytes,
                                          method: str) -> None:
    for origin in setup.cluster.origins():
        origin.clear()
    answers = {}
    for proxy, port in setup.ports.items():
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(request_bytes)
            response = ResponseReader(sock).read(method)
        answers[proxy] = (response.status, response.values("content-type"),
                          response.values("content-length"), response.body)
    assert answers["mta-ingress"] == answers["haproxy"]
    status, content_type, _, body = answers["haproxy"]
    assert (status, content_type) == (200, [b"text/plain"])
    assert body == (b"" if method == "HEAD" else b"ready\n")
    assert [origin.snapshot() for origin in setup.cluster.origins()] == [[], [], []]
