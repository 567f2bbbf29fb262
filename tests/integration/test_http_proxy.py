"""The real ``mta-ingress run`` as the HTTP front end of the KRA contract, with h11 origins."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import Cluster
from tests.integration.peers import free_port, require_binary


@pytest.fixture
def ingress(tmp_path: Path, cluster: Cluster) -> Iterator[tuple[IngressProcess, int, int]]:
    port, proxied = free_port(), free_port()
    with IngressProcess(tmp_path, cluster.config(port, proxied)) as process:
        yield process, port, proxied


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(("path", "origin"), [
    ("/api/v1/send.json", "mta"),
    ("/api/v1/send.jsonX?x=1", "mta"),
    ("/.lets_encrypt_challenge_preflight", "tls"),
    ("/.well-known/acme-challenge/abc", "tls"),
    ("/click/1234?u=5", "event-tracker"),
    ("/", "event-tracker"),
])
def test_contract_routes(ingress: tuple[IngressProcess, int, int], path: str,
                         origin: str) -> None:
    _, port, _ = ingress
    status, _, body = request(port, "GET", path)
    assert status == 200
    echo = json.loads(body)
    assert echo["origin"] == origin
    assert echo["target"] == path


def test_readiness_and_statistics_are_answered_locally(
        ingress: tuple[IngressProcess, int, int], cluster: Cluster) -> None:
    _, port, _ = ingress
    assert request(port, "GET", "/.kubernetes-readiness-probe")[::2] == (200, b"ready\n")
    for path in ("/greenarrowadmin/h/stats_sends", "/ga/eui/disk_queue_summary",
                 "/ga/eui/dynamic_deliveries"):
        status, headers, body = request(port, "GET", path)
        assert status == 200
        assert headers["Content-Type"] == "text/html"
        assert b"statistics" in body.lower()
    assert cluster.event_tracker.requests == []


def test_x_forwarded_for_is_appended(ingress: tuple[IngressProcess, int, int],
                                     cluster: Cluster) -> None:
    _, port, _ = ingress
    request(port, "GET", "/click", headers={"X-Forwarded-For": "198.51.100.7"})
    [received] = cluster.event_tracker.wait_for_requests(1)
    assert received.header_values("x-forwarded-for") == ["198.51.100.7", "127.0.0.1"]


def test_inbound_proxy_header_address_goes_into_x_forwarded_for(
        ingress: tuple[IngressProcess, int, int], cluster: Cluster) -> None:
    _, _, proxied = ingress
    response = raw_exchange(
        proxied, b"PROXY TCP4 203.0.113.50 127.0.0.1 50000 80\r\n"
        b"GET /open/1 HTTP/1.1\r\nHost: t.example.org\r\nConnection: close\r\n\r\n", timeout=10)
    assert response.startswith(b"HTTP/1.1 200 ")
    [received] = cluster.event_tracker.wait_for_requests(1)
    assert received.header_values("x-forwarded-for") == ["203.0.113.50"]


def test_keep_alive_client_mixing_routes_and_backend_reuse(
        ingress: tuple[IngressProcess, int, int], cluster: Cluster) -> None:
    _, port, _ = ingress
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in ["/click/1", "/api/v1/send.json", "/click/2", "/api/v1/send.json",
                     "/.kubernetes-readiness-probe", "/click/3"]:
            connection.request("POST" if "send" in path else "GET", path,
                               body=b'{"x": 1}' if "send" in path else None)
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()
    event_tracker = cluster.event_tracker.wait_for_requests(3)
    mta = cluster.mta.wait_for_requests(2)
    # The ingress kept one connection per origin and reused it (health-check probes connect
    # too, but carry no request).
    assert len({r.connection_id for r in event_tracker}) == 1
    assert len({r.connection_id for r in mta}) == 1


def test_chunked_and_large_bodies_arrive_whole(ingress: tuple[IngressProcess, int, int],
                                               cluster: Cluster) -> None:
    _, port, _ = ingress
    payload = bytes(range(256)) * 20_000  # 5 MB

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 70_000):
            yield payload[start:start + 70_000]

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/api/v1/send.json", body=chunks(),
                       headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["body_length"] == len(payload)
    connection.request("POST", "/api/v1/send.json", body=payload)
    response = connection.getresponse()
    assert json.loads(response.read())["body_length"] == len(payload)
    connection.close()
    first, second = cluster.mta.wait_for_requests(2)
    assert first.body == payload
    assert second.body == payload
    assert first.header_values("transfer-encoding") == ["chunked"]


@pytest.mark.parametrize(("path", "size"), [("/big/3000000", 3_000_000),
                                            ("/chunked/1500000", 1_500_000),
                                            ("/close/700000", 700_000)])
def test_response_bodies_of_every_framing(ingress: tuple[IngressProcess, int, int], path: str,
                                          size: int) -> None:
    _, port, _ = ingress
    status, _, body = request(port, "GET", path)
    assert status == 200
    assert body == b"x" * size


def test_head_204_304(ingress: tuple[IngressProcess, int, int]) -> None:
    _, port, _ = ingress
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("HEAD", "/click/1")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b""
        for status in (204, 304):
            connection.request("GET", f"/status/{status}")
            response = connection.getresponse()
            assert response.status == status
            assert response.read() == b""
        connection.request("GET", "/click/after")  # the connection is still in step
        assert json.loads(connection.getresponse().read())["target"] == "/click/after"
    finally:
        connection.close()


def test_expect_100_continue_end_to_end(ingress: tuple[IngressProcess, int, int],
                                        cluster: Cluster, tmp_path: Path) -> None:
    curl = require_binary("curl")
    _, port, _ = ingress
    payload = tmp_path / "payload.json"
    payload.write_bytes(b"{" + b" " * 2_000_000 + b"}")
    result = subprocess.run(
        [curl, "-sS", "-v", "-H", "Expect: 100-continue", "--data-binary", f"@{payload}",
         f"http://127.0.0.1:{port}/api/v1/send.json"],
        capture_output=True, timeout=30, check=True)
    assert b"< HTTP/1.1 100" in result.stderr
    assert json.loads(result.stdout)["body_length"] == 2_000_002


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


@pytest.mark.parametrize(("data", "status"), [
    (b"POST /api/v1/send.json HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /api/v1/send.json HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Content-Length: 5\r\n\r\nabcde", 400),
    (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n", 400),
    (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
])
def test_hostile_requests_are_refused_and_never_reach_the_origin(
        ingress: tuple[IngressProcess, int, int], cluster: Cluster, data: bytes,
        status: int) -> None:
    process, port, _ = ingress
    response = raw_exchange(port, data)
    assert response.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in response
    time.sleep(0.2)
    assert cluster.mta.requests == cluster.event_tracker.requests == []
    assert any("end=rejected" in line for line in process.access_lines(1))


def test_slow_request_head_gets_408(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied, timeouts='http_request = "500ms"')
    with IngressProcess(tmp_path, config), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3


def test_backend_down_gets_503_quickly(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace(
        f"127.0.0.1:{cluster.tls.port}", f"127.0.0.1:{free_port()}")
    with IngressProcess(tmp_path, config):
        started = time.monotonic()
        status, _, _ = request(port, "GET", "/.well-known/acme-challenge/x")
        assert status == 503
        assert time.monotonic() - started < 1


def test_slow_backend_gets_504(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied, timeouts='server = "500ms"')
    with IngressProcess(tmp_path, config):
        started = time.monotonic()
        status, _, _ = request(port, "GET", "/slow/3")
        assert status == 504
        assert time.monotonic() - started < 2.5


def test_backend_reset_mid_response_closes_the_client(
        ingress: tuple[IngressProcess, int, int]) -> None:
    _, port, _ = ingress
    response = raw_exchange(port, b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 1000" in head
    assert len(body) < 1000  # cut short and closed: never a complete-looking response


def test_pooled_connection_closed_by_backend_is_not_a_failure(
        ingress: tuple[IngressProcess, int, int], cluster: Cluster) -> None:
    _, port, _ = ingress
    assert request(port, "GET", "/click/1")[0] == 200
    with cluster.event_tracker._lock:  # the origin drops its idle keep-alive connections
        for conn in cluster.event_tracker._open:
            conn.shutdown(socket.SHUT_RDWR)
    for index in range(3):
        assert request(port, "GET", f"/click/{index}")[0] == 200


def test_sigterm_under_keep_alive(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace('drain = "0s"', 'drain = "1s"')
    process = IngressProcess(tmp_path, config)
    process.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/click/before")
        response = connection.getresponse()
        response.read()
        assert response.getheader("Connection") is None
        process.signal(signal.SIGTERM)
        process.wait_for_stderr("shutting down")
        status, _, body = request(port, "GET", "/.kubernetes-readiness-probe")
        assert (status, body) == (503, b"draining\n")
        connection.request("GET", "/click/after")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Connection") == "close"
        response.read()
        connection.close()
        assert process.wait(10) == 0
    finally:
        process.stop()


def test_health_checks_take_a_dead_server_out(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied, dead = free_port(), free_port(), free_port()
    config = cluster.config(port, proxied).replace(
        f'servers = ["127.0.0.1:{cluster.event_tracker.port}"]',
        f'servers = ["127.0.0.1:{cluster.event_tracker.port}", "127.0.0.1:{dead}"]\n'
        'check_interval = "100ms"')
    with IngressProcess(tmp_path, config) as process:
        process.wait_for_stderr(f'msg="server down" backend=event-tracker-http '
                                f"server=127.0.0.1:{dead}")
        statuses = [request(port, "GET", f"/click/{i}")[0] for i in range(10)]
    assert statuses == [200] * 10  # round robin never lands on the dead server any more


def test_every_server_down_gets_503_at_once(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace(
        f'servers = ["127.0.0.1:{cluster.tls.port}"]',
        f'servers = ["127.0.0.1:{free_port()}"]\ncheck_interval = "100ms"')
    with IngressProcess(tmp_path, config) as process:
        process.wait_for_stderr('msg="server down" backend=tls-http')
        started = time.monotonic()
        assert request(port, "GET", "/.well-known/acme-challenge/x")[0] == 503
        assert time.monotonic() - started < 0.5
        assert any("every server down" in line for line in process.access_lines(1))


def test_sigterm_under_keep_alive_load_fails_no_request(tmp_path: Path, cluster: Cluster) -> None:
    """Clients keep requesting on keep-alive connections while the ingress drains: each client
    stops when a response tells it `Connection: close` (a client then reconnects to another
    replica); no request may go unanswered."""
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace('drain = "0s"', 'drain = "1500ms"')
    process = IngressProcess(tmp_path, config)
    process.start()
    results: list[tuple[int, str | None]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                connection.request("GET", f"/click/{index}")
                response = connection.getresponse()
                response.read()
                with lock:
                    results.append((response.status, response.getheader("Connection")))
                if response.getheader("Connection") == "close":
                    return
        except (OSError, http.client.HTTPException) as error:
            with lock:
                failures.append(f"client {index}: {error!r}")
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        process.signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert process.wait(15) == 0
    finally:
        process.stop()
    assert failures == []
    assert len(results) > 50
    assert all(status == 200 for status, _ in results)
    assert sum(1 for _, connection in results if connection == "close") == 8


def test_configured_body_limit_gets_413(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace(
        f'[listeners.http]\nbind = ["127.0.0.1:{port}"]\n',
        f'[listeners.http]\nbind = ["127.0.0.1:{port}"]\nmax_body = "1KiB"\n')
    with IngressProcess(tmp_path, config):
        assert request(port, "POST", "/api/v1/send.json", body=b"x" * 1024)[0] == 200
        assert request(port, "POST", "/api/v1/send.json", body=b"x" * 1025)[0] == 413
        # the limit is on what clients send, not on what backends answer
        status, _, body = request(port, "GET", "/big/5000")
        assert (status, len(body)) == (200, 5000)
    assert len(cluster.mta.requests) == 1


def test_forwarded_proto_and_port_when_enabled(tmp_path: Path, cluster: Cluster) -> None:
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace(
        f'[listeners.http]\nbind = ["127.0.0.1:{port}"]\n',
        f'[listeners.http]\nbind = ["127.0.0.1:{port}"]\nforwarded_proto = true\n')
    with IngressProcess(tmp_path, config):
        request(port, "GET", "/click/1", headers={"X-Forwarded-Proto": "https"})
    [received] = cluster.event_tracker.wait_for_requests(1)
    assert received.header_values("x-forwarded-proto") == ["http"]  # the client's is replaced
    assert received.header_values("x-forwarded-port") == [str(port)]


def test_a_plain_request_reaches_the_backend_with_only_the_forwarding_fields_added(
        tmp_path: Path, cluster: Cluster) -> None:
    """The head the fast path forwards as it came (RequestHead.raw): its own fields in their
    order, its Connection field removed, then the proxy's X-Forwarded-* fields."""
    port, proxied = free_port(), free_port()
    config = cluster.config(port, proxied).replace(
        f'[listeners.http]\nbind = ["127.0.0.1:{port}"]\n',
        f'[listeners.http]\nbind = ["127.0.0.1:{port}"]\nforwarded_proto = true\n')
    with IngressProcess(tmp_path, config):
        response = raw_exchange(
            port, b"GET /click/7?u=1 HTTP/1.1\r\nHost: t.example.org\r\n"
            b"User-Agent:  probe/1 \r\nConnection: close\r\nAccept: */*\r\n\r\n", timeout=10)
    assert response.startswith(b"HTTP/1.1 200 ")
    [received] = cluster.event_tracker.wait_for_requests(1)
    assert (received.method, received.target) == ("GET", "/click/7?u=1")
    assert received.headers == [
        ("host", "t.example.org"), ("user-agent", "probe/1"), ("accept", "*/*"),
        ("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"),
        ("x-forwarded-port", str(port)),
    ]


def test_forwarded_proto_is_off_by_default(ingress: tuple[IngressProcess, int, int],
                                           cluster: Cluster) -> None:
    _, port, _ = ingress
    request(port, "GET", "/click/1")
    [received] = cluster.event_tracker.wait_for_requests(1)
    assert received.header_values("x-forwarded-proto") == []
    assert received.header_values("x-forwarded-port") == []
