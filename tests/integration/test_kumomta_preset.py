"""The real ``mta-ingress run`` with ``preset = "kumomta"``, its two backends moved onto loopback
peers that stand in for kumod: an h11 origin for kumod's HTTP listener (port 8000) and an
aiosmtpd server requiring the PROXY protocol for its ESMTP listener (as kumod's
``require_proxy_protocol``). Only the servers are overridden; listeners are moved to loopback
ports, so routes, PROXY versions and listener kinds are the preset's own."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.haproxy_log import HTTPLOG, TCPLOG, parse
from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import EchoOrigin
from tests.integration.peers import AiosmtpdBackend, free_port
from tests.integration.test_http_proxy import request
from tests.integration.test_smtp_relay import MESSAGE, mail_after_header, send_mail
from tests.integration.tls_helpers import proxy_v1, proxy_v2

LISTENERS = ("smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied", "http", "http-proxied",
             "https", "https-proxied")
# The seed's curl example: user1 and a 32-hex-digit key, as HTTP basic auth.
AUTHORIZATION = "Basic " + base64.b64encode(b"user1:dfad6143b4520f8526e4f9a0b25ab42b").decode()
INJECT_BODY = json.dumps({
    "envelope_sender": "noreply@example.com",
    "content": "Subject: hello\r\n\r\nHello from the ingress test",
    "recipients": [{"email": "recipient@example.com"}],
}).encode()


@dataclass
class Kumo:
    """The ingress and the loopback peers standing in for the kumod Service."""

    ingress: IngressProcess
    http: EchoOrigin
    smtp: AiosmtpdBackend
    ports: dict[str, int]


def kumomta_config(ports: dict[str, int], http_port: int, smtp_port: int, cert_dir: Path) -> str:
    moved = "".join(f'[listeners.{name}]\nbind = ["127.0.0.1:{port}"]\n'
                    for name, port in ports.items())
    # The preset's backends keep their send_proxy and checks; only where they connect changes.
    return (
        'preset = "kumomta"\nkumomta_service = "kumod.mail.svc.cluster.local"\nworkers = 1\n'
        f'[timeouts]\ndrain = "0s"\n'
        # An empty directory: HTTPS is served with the self-signed fallback certificate.
        f'[tls]\ncert_dir = "{cert_dir}"\n'
        f"{moved}"
        f'[backends.kumod-http]\nservers = ["127.0.0.1:{http_port}"]\n'
        f'[backends.kumod-smtp]\nservers = ["127.0.0.1:{smtp_port}"]\n'
    )


@pytest.fixture
def kumo(tmp_path: Path) -> Iterator[Kumo]:
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    ports = {name: free_port() for name in LISTENERS}
    with EchoOrigin("kumod") as origin, AiosmtpdBackend(proxy_protocol=True) as smtp:
        text = kumomta_config(ports, origin.port, smtp.port, cert_dir)
        with IngressProcess(tmp_path, text) as ingress:
            yield Kumo(ingress, origin, smtp, ports)


def unverified_context() -> ssl.SSLContext:
    # The self-signed fallback certificate: what is tested here is the routing behind it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def inject(port: int, *, tls: bool = False) -> tuple[int, bytes]:
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=unverified_context())
        if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    try:
        connection.request("POST", "/api/inject/v1", body=INJECT_BODY, headers={
            "Content-Type": "application/json", "Authorization": AUTHORIZATION})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("listener", ["http", "https"])
def test_inject_api_reaches_kumod_with_body_and_authorization_unchanged(
        kumo: Kumo, listener: str) -> None:
    status, body = inject(kumo.ports[listener], tls=listener == "https")
    assert status == 200
    assert json.loads(body)["origin"] == "kumod"
    [received] = kumo.http.wait_for_requests(1)
    assert (received.method, received.target) == ("POST", "/api/inject/v1")
    assert received.body == INJECT_BODY
    assert received.header_values("authorization") == [AUTHORIZATION]
    assert received.header_values("content-type") == ["application/json"]
    assert received.header_values("x-forwarded-for") == ["127.0.0.1"]
    [line] = kumo.ingress.access_lines(1)
    fields = parse(HTTPLOG, line)
    # HAProxy's mark of a TLS frontend: "https~"
    assert (fields["frontend"], fields["backend"]) == (
        listener + ("~" if listener == "https" else ""), "kumod-http")


def test_inject_on_the_proxied_listener_forwards_the_header_address(kumo: Kumo) -> None:
    head = (f"POST /api/inject/v1 HTTP/1.1\r\nHost: kumo.example.com\r\n"
            f"Authorization: {AUTHORIZATION}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(INJECT_BODY)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", kumo.ports["http-proxied"]), timeout=10) as sock:
        sock.sendall(proxy_v2(("203.0.113.50", 50000), ("192.0.2.1", 80)) + head + INJECT_BODY)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 ")
    [received] = kumo.http.wait_for_requests(1)
    assert received.body == INJECT_BODY
    assert received.header_values("authorization") == [AUTHORIZATION]
    assert received.header_values("x-forwarded-for") == ["203.0.113.50"]


@pytest.mark.parametrize("path", [
    "/api/check-liveness/v1",
    "/metrics",
    "/api/admin/bounce/v1?x=1",
    "/",
    # GreenArrow's routes and blocked paths mean nothing here: kumod gets them like any other.
    "/api/v1/send.json",
    "/greenarrowadmin/h/stats_sends",
    "/.well-known/acme-challenge/abc",
])
def test_every_other_path_reaches_kumod(kumo: Kumo, path: str) -> None:
    status, _, body = request(kumo.ports["http"], "GET", path)
    assert status == 200
    echo = json.loads(body)
    assert (echo["origin"], echo["target"]) == ("kumod", path)


@pytest.mark.parametrize("listener", ["http", "https"])
def test_readiness_is_answered_locally(kumo: Kumo, listener: str) -> None:
    port = kumo.ports[listener]
    if listener == "https":
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                 context=unverified_context())
        try:
            connection.request("GET", "/.kubernetes-readiness-probe")
            response = connection.getresponse()
            status, body = response.status, response.read()
        finally:
            connection.close()
    else:
        status, _, body = request(port, "GET", "/.kubernetes-readiness-probe")
    assert (status, body) == (200, b"ready\n")
    assert kumo.http.requests == []


@pytest.mark.parametrize("listener", ["smtp25", "smtp587"])
def test_smtp_reaches_kumod_with_a_proxy_v2_header(kumo: Kumo, listener: str) -> None:
    client = send_mail("127.0.0.1", kumo.ports[listener])
    [message] = kumo.smtp.wait_for_messages(1)
    assert message.proxy_header is not None
    assert message.proxy_header.version == 2
    assert message.proxy_header.valid
    assert message.proxy_source == client
    assert message.proxy_header.destination == ("127.0.0.1", kumo.ports[listener])
    assert message.data == MESSAGE
    [line] = kumo.ingress.access_lines(1)
    fields = parse(TCPLOG, line)
    assert (fields["frontend"], fields["backend"]) == (listener, "kumod-smtp")


@pytest.mark.parametrize(("listener", "header"), [
    ("smtp25-proxied", proxy_v1(("203.0.113.9", 40001), ("192.0.2.1", 25))),
    ("smtp587-proxied", proxy_v2(("203.0.113.9", 40001), ("192.0.2.1", 587))),
    ("smtp587-proxied", proxy_v1(("2001:db8::9", 40001), ("2001:db8::1", 587))),
])
def test_proxied_smtp_passes_the_inbound_address_as_proxy_v2(
        kumo: Kumo, listener: str, header: bytes) -> None:
    mail_after_header(kumo.ports[listener], header)
    [message] = kumo.smtp.wait_for_messages(1)
    assert message.proxy_header is not None
    assert message.proxy_header.version == 2
    expected = ("2001:db8::9", 40001) if b"2001:db8" in header else ("203.0.113.9", 40001)
    assert message.proxy_source == expected
    assert message.data == MESSAGE
