"""The admin listener of the real ``mta-ingress run``: /metrics counts what two workers served,
and /readyz (like the readiness path) turns to 503 as soon as a drain starts."""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import Cluster
from tests.integration.peers import AiosmtpdBackend, free_port, smtp_transaction

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def config(cluster: Cluster, smtp: AiosmtpdBackend, ports: dict[str, int], *,
           workers: int = 2, drain: str = "0s") -> str:
    disabled = "".join(f"[listeners.{name}]\nenabled = false\n" for name in (
        "smtp25-proxied", "smtp587-proxied", "http-proxied", "https", "https-proxied"))
    return (
        f'preset = "greenarrow"\nworkers = {workers}\n[timeouts]\ndrain = "{drain}"\n'
        f"{disabled}"
        f'[listeners.http]\nbind = ["127.0.0.1:{ports["http"]}"]\n'
        f'[listeners.smtp25]\nbind = ["127.0.0.1:{ports["smtp25"]}"]\n'
        f'[listeners.smtp587]\nbind = ["127.0.0.1:{ports["smtp587"]}"]\n'
        f"{cluster.backends_toml()}"
        f'[backends.mta-smtp]\nservers = ["127.0.0.1:{smtp.port}"]\n'
        f'[backends.event-tracker-smtp]\nservers = ["127.0.0.1:{smtp.port}"]\n'
    )


def one_request(port: int, request: bytes) -> bytes:
    """A request on a connection of its own, so that the kernel spreads them over workers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def scrape(admin_port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return parse_samples(text)


def from_files(metrics_dir: Path) -> Samples:
    """What /metrics would answer from the workers' files as they are now: the same
    collector, without a worker flushing first."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return parse_samples(generate_latest(registry).decode())


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, items), v in samples.items() if n == name and wanted <= set(items))


def readyz(admin: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get(path: str, host: str = "track.mail.test") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def test_metrics_count_what_two_workers_served(tmp_path: object, cluster: Cluster) -> None:
    ports = {name: free_port() for name in ("http", "smtp25", "smtp587")}
    with AiosmtpdBackend() as smtp:
        process = IngressProcess(tmp_path, config(cluster, smtp, ports))  # type: ignore[arg-type]
        with process:
            assert process.admin_port is not None
            clicks, sends, probes, malformed = 20, 5, 3, 2
            for index in range(clicks):
                assert one_request(ports["http"], get(f"/click/{index}")).startswith(
                    b"HTTP/1.1 200")
            body = b'{"message": {}}'
            for _ in range(sends):
                answer = one_request(ports["http"], (
                    b"POST /api/v1/send.json HTTP/1.1\r\nHost: api.mail.test\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body))
                assert answer.startswith(b"HTTP/1.1 200")
            for _ in range(probes):
                assert one_request(ports["http"], get("/.kubernetes-readiness-probe")) \
                    .startswith(b"HTTP/1.1 200")
            for _ in range(malformed):
                assert one_request(ports["http"], b"GET /x HTTP/1.1\r\nHost: a\r\n"
                                   b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   ).startswith(b"HTTP/1.1 400")
            sessions = {"smtp587": 6, "smtp25": 3}
            for listener, count in sessions.items():
                for _ in range(count):
                    with socket.create_connection(("127.0.0.1", ports[listener]),
                                                  timeout=5) as sock:
                        smtp_transaction(sock)
            smtp.wait_for_messages(sum(sessions.values()))

            connections = clicks + sends + probes + malformed
            deadline = time.monotonic() + 5
            # A session's end is counted when both its sides have closed, and the other
            # worker's request counts reach the shared files within its next sweep (1 s).
            while True:
                samples = scrape(process.admin_port)
                if (value(samples, "mta_ingress_tcp_sessions_total") == sum(sessions.values())
                        and value(samples, "mta_ingress_connections_active") == 0
                        and value(samples, "mta_ingress_http_requests_total")
                        == clicks + sends + probes) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            workers = {line.rsplit("worker=", 1)[1].split()[0]
                       for line in process.access_lines(connections) if "worker=" in line}
        assert workers == {"0", "1"}, "the requests did not reach both workers"

    requests = "mta_ingress_http_requests_total"
    assert value(samples, requests, listener="http", route="*", backend="event-tracker-http",
                 code="2xx") == clicks
    assert value(samples, requests, route="/api/v1/send.json", backend="mta-http",
                 code="2xx") == sends
    assert value(samples, requests, route="/.kubernetes-readiness-probe", backend="<local>",
                 code="2xx") == probes
    assert value(samples, requests) == clicks + sends + probes
    assert value(samples, "mta_ingress_http_request_duration_seconds_count",
                 listener="http") == clicks + sends + probes
    assert value(samples, "mta_ingress_http_rejected_requests_total", listener="http",
                 reason="cl-and-te") == malformed
    assert value(samples, "mta_ingress_connections_total", listener="http") == connections
    assert value(samples, "mta_ingress_connections_total", listener="smtp587") == 6
    assert value(samples, "mta_ingress_connections_active") == 0
    for listener, count in sessions.items():
        assert value(samples, "mta_ingress_tcp_sessions_total", listener=listener) == count
        assert value(samples, "mta_ingress_tcp_session_duration_seconds_count",
                     listener=listener) == count
    assert value(samples, "mta_ingress_received_bytes_total", listener="http") > 0
    assert value(samples, "mta_ingress_sent_bytes_total", listener="smtp587") > 0
    assert value(samples, "mta_ingress_backend_connect_failures_total") == 0


def test_readiness_turns_503_on_sigterm_before_the_listeners_close(
        tmp_path: object, cluster: Cluster) -> None:
    ports = {name: free_port() for name in ("http", "smtp25", "smtp587")}
    with AiosmtpdBackend() as smtp:
        process = IngressProcess(tmp_path,  # type: ignore[arg-type]
                                 config(cluster, smtp, ports, workers=1, drain="3s"))
        with process:
            admin = f"http://127.0.0.1:{process.admin_port}"
            assert readyz(admin) == (200, b"ready\n")
            process.signal(signal.SIGTERM)
            deadline = time.monotonic() + 2
            while (answer := readyz(admin)) == (200, b"ready\n"):
                assert time.monotonic() < deadline, "/readyz still 200 after SIGTERM"
                time.sleep(0.05)
            assert answer == (503, b"draining\n")
            # Still draining: the traffic listener accepts and says it is not ready.
            probe = one_request(ports["http"], get("/.kubernetes-readiness-probe"))
            assert probe.startswith(b"HTTP/1.1 503"), probe
            with urllib.request.urlopen(f"{admin}/livez", timeout=5) as live:
                assert live.status == 200
            assert process.wait(10) == 0


def test_counts_are_written_when_sigterm_arrives(tmp_path: Path, cluster: Cluster) -> None:
    ports = {name: free_port() for name in ("http", "smtp25", "smtp587")}
    admin_port, metrics_dir = free_port(), tmp_path / "metrics"
    with AiosmtpdBackend() as smtp:
        process = IngressProcess(tmp_path, config(cluster, smtp, ports, workers=1, drain="3s")
                                 + f'[admin]\nbind = ["127.0.0.1:{admin_port}"]\n'
                                 f'metrics_dir = "{metrics_dir}"\n')
        with process:
            clicks = 7
            for index in range(clicks):
                assert one_request(ports["http"], get(f"/click/{index}")).startswith(
                    b"HTTP/1.1 200")
            # At once: the worker's once-a-second write has most likely not come yet.
            process.signal(signal.SIGTERM)
            deadline = time.monotonic() + 2
            while readyz(f"http://127.0.0.1:{admin_port}") != (503, b"draining\n"):
                assert time.monotonic() < deadline, "/readyz still 200 after SIGTERM"
                time.sleep(0.01)
            # The drain has begun (3 s of it left): the counts are in the files already.
            during = from_files(metrics_dir)
            assert process.wait(10) == 0
    after = from_files(metrics_dir)
    for samples in (during, after):
        assert value(samples, "mta_ingress_http_requests_total", listener="http",
                     backend="event-tracker-http", code="2xx") == clicks
        assert value(samples, "mta_ingress_http_request_duration_seconds_count",
                     listener="http") == clicks
        assert value(samples, "mta_ingress_connections_total", listener="http") == clicks
