"""The real ``mta-ingress run`` terminating TLS on ``https`` and ``https-proxied``.

Certificates come from a trustme CA (root plus intermediate, see tls_helpers) and go into the
certificate directory the way GreenArrow's TLS pod writes it. Clients are the real curl and
openssl binaries, sslyze, and Python's ssl module where a test must choose every byte sent.
Everything stays on 127.0.0.1; names reach the ingress only as SNI (curl --resolve,
openssl -servername), never through DNS.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.haproxy_log import CONNECTION_ERROR, HTTPLOG, parse
from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import Cluster
from tests.integration.peers import free_port, require_binary
from tests.integration.tls_helpers import (
    TIMEOUT,
    BioTlsClient,
    Leaf,
    Pki,
    http_request,
    install,
    proxy_v1,
    proxy_v2,
    read_response,
    s_client,
    served_certificate,
    wait_for_serial,
    write_atomically,
)

POLL_INTERVAL = 1.0
# Short, so that a PROXY header the ingress never sees fails a test in seconds, not minutes.
PROXY_HEADER_TIMEOUT = 2.0
CLIENT_ADDRESS = ("203.0.113.7", 40123)


def https_config(cluster: Cluster, cert_dir: Path, port: int, proxied: int,
                 workers: int = 1) -> str:
    disabled = "".join(f"[listeners.{name}]\nenabled = false\n" for name in (
        "smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied", "http", "http-proxied"))
    return (
        f'preset = "greenarrow"\nworkers = {workers}\n'
        f'[timeouts]\ndrain = "0s"\nproxy_header = "{PROXY_HEADER_TIMEOUT:g}s"\n'
        f'[tls]\ncert_dir = "{cert_dir}"\npoll_interval = "{POLL_INTERVAL:g}s"\n'
        'handshake_timeout = "3s"\n'
        f"{disabled}"
        f'[listeners.https]\nbind = ["127.0.0.1:{port}"]\n'
        f'[listeners.https-proxied]\nbind = ["127.0.0.1:{proxied}"]\n'
        f"{cluster.backends_toml()}"
    )


@dataclass
class HttpsIngress:
    process: IngressProcess
    port: int  # https
    proxied: int  # https-proxied


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    return directory


@pytest.fixture
def start_ingress(tmp_path: Path, cluster: Cluster, cert_dir: Path
                  ) -> Iterator[Callable[[], HttpsIngress]]:
    # A factory, not a ready process: most tests must fill the directory before the start.
    started: list[IngressProcess] = []

    def start() -> HttpsIngress:
        port, proxied = free_port(), free_port()
        process = IngressProcess(tmp_path, https_config(cluster, cert_dir, port, proxied))
        started.append(process)
        process.start()
        return HttpsIngress(process, port, proxied)

    yield start
    for process in started:
        process.stop()


def curl_https(curl: str, port: int, name: str, path: str, *options: str
               ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [curl, "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:127.0.0.1", *options,
         f"https://{name}:{port}{path}"], capture_output=True, timeout=15, check=False)


def subject_line(output: str) -> str:
    match = re.search(r"^subject=(.*)$", output, re.MULTILINE)
    assert match is not None, output
    return match.group(1)


def warnings_about(process: IngressProcess, file_name: str) -> list[str]:
    return [line for line in process.stderr().splitlines()
            if "level=WARNING" in line and file_name in line]


def wait_for_warnings(process: IngressProcess, file_name: str, count: int,
                      timeout: float = POLL_INTERVAL + 3) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = warnings_about(process, file_name)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} warnings about {file_name} expected:\n"
                                 f"{process.stderr()}")
        time.sleep(0.05)


def common_name(leaf: Leaf) -> str:
    [attribute] = leaf.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attribute.value)


# --- 1. names, files, defaults, chains --------------------------------------------------------


def test_sni_picks_the_file_and_unknown_names_get_the_default(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    curl, openssl = require_binary("curl"), require_binary("openssl")
    first = pki.issue("a.example.org", "www.a.example.org")
    wildcard = pki.issue("*.b.example.org", "b.example.org")
    install(cert_dir, "a.pem", first)  # first alphabetically: the default
    install(cert_dir, "b.pem", wildcard, key_beside=True)  # the other layout of the directory
    ingress = start_ingress()

    for name, path, origin in [("a.example.org", "/click/1", "event-tracker"),
                               ("www.a.example.org", "/api/v1/send.json", "mta"),
                               ("b.example.org", "/.well-known/acme-challenge/t", "tls"),
                               ("x.b.example.org", "/api/v1/send.json", "mta"),
                               ("y.b.example.org", "/click/2", "event-tracker")]:
        result = curl_https(curl, ingress.port, name, path, "--cacert", str(pki.ca_file))
        assert result.returncode == 0, (name, result.stderr)
        echo = json.loads(result.stdout)
        assert (echo["origin"], echo["target"]) == (origin, path), name

    for server_name, leaf in [("a.example.org", first), ("x.b.example.org", wildcard),
                              ("X.B.Example.ORG", wildcard),  # SNI is case-insensitive
                              ("unknown.example.net", first), (None, first),
                              # a wildcard covers one label only (RFC 6125 6.4.3)
                              ("deep.x.b.example.org", first)]:
        output = s_client(openssl, ingress.port, server_name, "-CAfile", str(pki.ca_file),
                          "-verify_return_error", "-showcerts")
        # -verify_return_error: the handshake fails unless the intermediate was sent along,
        # since the CA file holds only the root
        assert "Verify return code: 0 (ok)" in output, (server_name, output)
        assert f"CN = {common_name(leaf)}" in subject_line(output), (server_name, output)
        assert re.search(r"^ 1 s:.*Testing CA", output, re.MULTILINE), output
        assert served_certificate(ingress.port, server_name).serial_number == leaf.serial, \
            server_name

    # The wildcard's own SAN list, as a client sees it, is what curl verified above.
    sans = served_certificate(ingress.port, "z.b.example.org").extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["*.b.example.org", "b.example.org"]


# --- 2. https-proxied: the PROXY header comes in clear before the handshake --------------------


def test_proxied_listener_with_curl_haproxy_protocol(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress],
        cluster: Cluster) -> None:
    curl = require_binary("curl")
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    # curl 7.x has no --haproxy-clientip: its v1 header carries the real (loopback) address.
    result = curl_https(curl, ingress.proxied, "p.example.org", "/click/curl",
                        "--haproxy-protocol", "--cacert", str(pki.ca_file))
    assert result.returncode == 0, (result.stderr, ingress.process.access_lines())
    assert json.loads(result.stdout)["target"] == "/click/curl"
    [received] = cluster.event_tracker.wait_for_requests(1)
    assert received.header_values("x-forwarded-for") == ["127.0.0.1"]


HEADERS = {
    "v1": proxy_v1(CLIENT_ADDRESS, ("127.0.0.1", 443)),
    "v2": proxy_v2(CLIENT_ADDRESS, ("127.0.0.1", 443)),
    "v2-ipv6": proxy_v2(("2001:db8::7", 40123), ("2001:db8::1", 443)),
}


def proxied_exchange(port: int, context: ssl.SSLContext, header: bytes, delivery: str,
                     path: str) -> bytes:
    """One request over https-proxied, the header delivered as ``delivery`` says."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = BioTlsClient(sock, context, "p.example.org")
        hello = client.client_hello()
        if delivery == "one-send":
            # header and ClientHello in one segment, as a load balancer relays them
            sock.sendall(header + hello)
        elif delivery == "header-then-hello":
            sock.sendall(header)
            time.sleep(0.05)
            sock.sendall(hello)
        else:  # "split-header": a header that arrives in two pieces
            sock.sendall(header[:11])
            time.sleep(0.05)
            sock.sendall(header[11:] + hello)
        client.finish_handshake()
        return client.exchange_until_close(http_request("p.example.org", path, close=True))


@pytest.mark.parametrize("delivery", ["one-send", "header-then-hello", "split-header"])
@pytest.mark.parametrize("version", sorted(HEADERS))
def test_proxied_header_address_reaches_the_origin(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress],
        cluster: Cluster, version: str, delivery: str) -> None:
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    context = pki.client_context()
    address = "2001:db8::7" if version == "v2-ipv6" else CLIENT_ADDRESS[0]
    # Several connections: a race between the ingress and the client's segmenting would show
    # only some of the time.
    for index in range(4):
        started = time.monotonic()
        try:
            response = proxied_exchange(ingress.proxied, context, HEADERS[version], delivery,
                                        f"/click/{index}")
        except (OSError, ssl.SSLError) as error:
            # the access log is flushed in batches: wait for the line about this connection
            lines = ingress.process.access_lines(index + 1, timeout=1.0)
            pytest.fail(f"connection {index} failed after {time.monotonic() - started:.2f}s: "
                        f"{error!r}\naccess log: {lines}")
        assert response.startswith(b"HTTP/1.1 200 "), response
        received = cluster.event_tracker.wait_for_requests(index + 1)[index]
        assert received.target == f"/click/{index}"
        assert received.header_values("x-forwarded-for") == [address]


@pytest.mark.parametrize("bad", [
    b"PROXY TCP4 203.0.113.7\r\n",  # a v1 line without its ports
    b"PROXY TCP9 203.0.113.7 127.0.0.1 1 2\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),  # v2 with version 3
    b"",  # no header at all: the ClientHello itself is not a PROXY header
], ids=["v1-short", "v1-family", "v2-version", "none"])
def test_bad_proxy_header_closes_before_any_tls(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress], bad: bytes,
        cluster: Cluster) -> None:
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    for attempt in range(3):  # a race inside the ingress would show only some of the time
        with socket.create_connection(("127.0.0.1", ingress.proxied), timeout=TIMEOUT) as sock:
            hello = BioTlsClient(sock, pki.client_context(), "p.example.org").client_hello()
            started = time.monotonic()
            sock.sendall(bad + hello)
            received = read_until_closed(sock)
            elapsed = time.monotonic() - started
        assert received == b"", "the ingress answered TLS after a bad PROXY header"
        lines = ingress.process.access_lines(attempt + 1)
        # at once, not when the PROXY-header timeout fires
        assert elapsed < PROXY_HEADER_TIMEOUT / 2, (attempt, elapsed, lines)
        assert len(lines) == attempt + 1, lines
        assert parse(CONNECTION_ERROR, lines[-1])["frontend"] == "https-proxied"
        assert "end=rejected reason=bad-proxy-header" in lines[-1], lines[-1]
    assert cluster.event_tracker.requests == []


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_silent_and_partial_headers_time_out_and_health_checks_are_not_logged(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    # the outer balancer's TCP check: connect, close; no line for it
    socket.create_connection(("127.0.0.1", ingress.proxied), timeout=TIMEOUT).close()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", ingress.proxied), timeout=TIMEOUT) as silent, \
            socket.create_connection(("127.0.0.1", ingress.proxied), timeout=TIMEOUT) as partial:
        partial.sendall(HEADERS["v2"][:20])
        assert read_until_closed(silent) == b""
        assert read_until_closed(partial) == b""
    elapsed = time.monotonic() - started
    assert PROXY_HEADER_TIMEOUT * 0.9 < elapsed < PROXY_HEADER_TIMEOUT + 2, elapsed
    lines = ingress.process.access_lines(2)
    assert len(lines) == 2, lines
    assert all("reason=proxy-header-timeout" in line for line in lines), lines


def test_failed_handshake_after_a_good_header_is_logged_with_the_header_address(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress],
        cluster: Cluster) -> None:
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    with socket.create_connection(("127.0.0.1", ingress.proxied), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        sock.sendall(HEADERS["v1"] + b"GET / HTTP/1.1\r\nHost: p.example.org\r\n\r\n")
        received = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert b"HTTP/1.1" not in received  # no plain-text answer on a TLS port
    assert elapsed < 2, elapsed
    [line] = ingress.process.access_lines(1)
    assert "reason=tls-handshake-failed" in line, line
    assert CLIENT_ADDRESS[0] in line, line
    assert cluster.event_tracker.requests == []


def test_failed_handshakes_on_the_https_listener_are_logged_but_not_health_checks(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress],
        cluster: Cluster) -> None:
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    socket.create_connection(("127.0.0.1", ingress.port), timeout=TIMEOUT).close()
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=TIMEOUT) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: p.example.org\r\n\r\n")
        assert b"HTTP/1.1" not in read_until_closed(plain)
        client = plain.getsockname()
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=TIMEOUT) as stalled:
        started = time.monotonic()
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        assert read_until_closed(stalled) == b""
        elapsed = time.monotonic() - started
    assert 3 * 0.9 < elapsed < 3 + 2, elapsed  # the configured handshake_timeout
    lines = ingress.process.access_lines(2)
    assert len(lines) == 2, lines
    assert all("reason=tls-handshake-failed" in line for line in lines), lines
    assert f"{client[0]}:{client[1]}" in lines[0], lines[0]
    assert "http request" in lines[0], lines[0]
    assert "not done after 3 s" in lines[1], lines[1]
    assert cluster.event_tracker.requests == []


# --- 3. replacing a certificate while clients connect ------------------------------------------


def test_certificate_replaced_under_load(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    name = "load.example.org"
    old = pki.issue(name)
    install(cert_dir, "load.pem", old)
    ingress = start_ingress()
    context = pki.client_context()
    stop = threading.Event()
    # (time the connection was opened, time its handshake ended, serial it got)
    handshakes: list[tuple[float, float, int]] = []
    failures: list[str] = []
    responses: list[int] = []

    def client() -> None:
        while not stop.is_set():
            opened = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", ingress.port),
                                              timeout=TIMEOUT) as raw, \
                        context.wrap_socket(raw, server_hostname=name) as tls, \
                        tls.makefile("rb") as reader:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    serial = x509.load_der_x509_certificate(der).serial_number
                    handshakes.append((opened, time.monotonic(), serial))
                    for index in range(2):  # keep-alive: the second reuses the session
                        tls.sendall(http_request(name, f"/click/{index}"))
                        status, _, _ = read_response(reader)
                        responses.append(status)
            except (OSError, ssl.SSLError, ValueError, AssertionError) as error:
                failures.append(f"{time.monotonic() - opened:.3f}s: {error!r}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        new = pki.issue(name)
        replaced = time.monotonic()
        install(cert_dir, "load.pem", new)
        time.sleep(POLL_INTERVAL + 1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT + 1)
    assert failures == []
    assert set(responses) == {200}
    assert len(responses) == 2 * len(handshakes)
    first_new = min((ended for _, ended, serial in handshakes if serial == new.serial),
                    default=None)
    assert first_new is not None, f"{new.serial} never served: {handshakes[-3:]}"
    assert first_new - replaced <= POLL_INTERVAL + 1.0
    # once the new certificate is out, a connection opened later never gets the old one
    assert all(serial == new.serial for opened, _, serial in handshakes if opened > first_new)
    assert any(serial == old.serial for _, _, serial in handshakes)
    assert "load.pem" in ingress.process.stderr()


# --- 4. broken files never replace a good one --------------------------------------------------


def test_half_written_file_and_mismatched_key_keep_the_last_good_certificate(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    name = "site.example.org"
    good, newer, stranger = pki.issue(name), pki.issue(name), pki.issue(name)
    install(cert_dir, "site.pem", good)
    ingress = start_ingress()
    assert served_certificate(ingress.port, name).serial_number == good.serial

    # A writer that writes in place (not by rename), caught half way.
    (cert_dir / "site.pem").write_bytes(newer.one_file[:len(newer.one_file) // 2])
    [first, *_] = wait_for_warnings(ingress.process, "site.pem", 1)
    assert 'msg="certificate not loaded"' in first
    assert "last good version stays in service" in first
    assert served_certificate(ingress.port, name).serial_number == good.serial

    # A complete file whose key belongs to another certificate.
    before = len(warnings_about(ingress.process, "site.pem"))
    write_atomically(cert_dir / "site.pem", newer.chain_pem + stranger.key_pem)
    last = wait_for_warnings(ingress.process, "site.pem", before + 1)[-1]
    assert "does not match" in last, last
    assert served_certificate(ingress.port, name).serial_number == good.serial

    install(cert_dir, "site.pem", newer)
    wait_for_serial(ingress.port, name, newer.serial, POLL_INTERVAL + 2, pki.client_context())


# --- 5. an empty directory: self-signed, then the real certificate without a restart -----------


def test_empty_directory_serves_self_signed_until_a_certificate_arrives(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    curl, openssl = require_binary("curl"), require_binary("openssl")
    ingress = start_ingress()
    result = curl_https(curl, ingress.port, "late.example.org", "/click/1", "-k")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["origin"] == "event-tracker"
    output = s_client(openssl, ingress.port, "late.example.org")
    issuer = re.search(r"^issuer=(.*)$", output, re.MULTILINE)
    assert issuer is not None, output
    assert "mta-ingress self-signed" in issuer.group(1)
    assert "serving a self-signed one" in ingress.process.stderr()

    leaf = pki.issue("late.example.org")
    arrived = time.monotonic()
    install(cert_dir, "late.pem", leaf)
    wait_for_serial(ingress.port, "late.example.org", leaf.serial, 2 * POLL_INTERVAL + 0.5)
    assert time.monotonic() - arrived <= 2 * POLL_INTERVAL + 0.5
    result = curl_https(curl, ingress.port, "late.example.org", "/click/2",
                        "--cacert", str(pki.ca_file))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "/click/2"


def test_print_config_shows_the_names_of_the_self_signed_certificate_served(
        cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    ingress = start_ingress()
    printed = subprocess.run(
        [sys.executable, "-m", "ingress", "print-config", "--config",
         str(ingress.process.config_path)], capture_output=True, text=True, timeout=30,
        check=True)
    names = tomllib.loads(printed.stdout)["tls"]["self_signed_names"]
    assert names == ["ga1-ingress", "localhost"]  # the default docs/configuration.md gives
    served = served_certificate(ingress.port, None).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert served == names


# --- 6. Mozilla's intermediate configuration, by sslyze ----------------------------------------


def test_sslyze_mozilla_intermediate(pki: Pki, cert_dir: Path,
                                     start_ingress: Callable[[], HttpsIngress]) -> None:
    name = "scan.example.org"
    install(cert_dir, "scan.pem", pki.issue_webpki(name))
    ingress = start_ingress()
    # host:port{ip} connects to the ip and sends the host as SNI: no DNS look-up. The test
    # root goes in as a custom trust store, which the Mozilla check's path validation accepts.
    result = subprocess.run(
        [sys.executable, "-m", "sslyze", "--mozilla_config=intermediate", "--certinfo",
         "--certinfo_ca_file", str(pki.ca_file), f"{name}:{ingress.port}{{127.0.0.1}}"],
        capture_output=True, timeout=90, check=False)
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    # the verdict first: the scan's full report is long
    verdict = output[output.find("COMPLIANCE AGAINST"):]
    assert result.returncode == 0, verdict
    assert f"{name}:{ingress.port}: OK - Compliant." in output, verdict


# --- 7. ECDSA and RSA for one name --------------------------------------------------------------


def test_ecdsa_is_preferred_and_rsa_still_served(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    openssl = require_binary("openssl")
    name = "dual.example.org"
    ecdsa, rsa = pki.issue(name), pki.issue(name, key_type="rsa")
    # RSA first alphabetically, so that file order alone cannot explain an ECDSA answer
    install(cert_dir, "a-rsa.pem", rsa)
    install(cert_dir, "b-ecdsa.pem", ecdsa)
    ingress = start_ingress()

    output = s_client(openssl, ingress.port, name, "-CAfile", str(pki.ca_file),
                      "-verify_return_error")
    assert "Verify return code: 0 (ok)" in output, output
    assert "Peer signature type: ECDSA" in output, output
    assert "Server public key is 256 bit" in output, output
    assert served_certificate(ingress.port, name).serial_number == ecdsa.serial

    output = s_client(openssl, ingress.port, name, "-CAfile", str(pki.ca_file),
                      "-verify_return_error", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
    assert "Verify return code: 0 (ok)" in output, output
    assert "Cipher is ECDHE-RSA-AES128-GCM-SHA256" in output, output
    assert re.search(r"Peer signature type: RSA", output), output
    assert "Server public key is 2048 bit" in output, output

    rsa_only = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    rsa_only.load_verify_locations(str(pki.ca_file))
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    assert served_certificate(ingress.port, name, rsa_only).serial_number == rsa.serial


# --- 8. the access log ---------------------------------------------------------------------------


def test_access_log_records_tls_version_and_sni(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    curl = require_binary("curl")
    install(cert_dir, "a.pem", pki.issue("log.example.org"))
    ingress = start_ingress()
    result = curl_https(curl, ingress.port, "log.example.org", "/click/logged",
                        "--cacert", str(pki.ca_file))
    assert result.returncode == 0, result.stderr
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=None) as tls, tls.makefile("rb") as reader:
        tls.sendall(http_request("x", "/click/no-sni", close=True))
        assert read_response(reader)[0] == 200
    lines = ingress.process.access_lines(2)
    [with_sni] = [line for line in lines if "/click/logged" in line]
    assert " https~ event-tracker-http/" in with_sni  # HAProxy's mark of a TLS frontend
    assert with_sni.endswith(" tls=TLSv1.3 sni=log.example.org"), with_sni
    [without] = [line for line in lines if "/click/no-sni" in line]
    assert without.endswith(" tls=TLSv1.3 sni=-"), without


def https_exchange(port: int, context: ssl.SSLContext, name: str, path: str,
                   session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession | None, bool]:
    """One request on a new connection, offering ``session``: the session to resume next time
    (its tickets come after the handshake, read with the response) and whether it resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=name, session=session) as tls, \
            tls.makefile("rb") as reader:
        tls.sendall(http_request(name, path))
        assert read_response(reader)[0] == 200
        return tls.session, tls.session_reused


def test_a_session_resumes_after_its_certificate_file_is_renewed(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    """A renewal (the TLS pod's every 60 days or so) swaps the certificates, not the ticket key:
    the clients' sessions still resume, so a renewal is no storm of full handshakes, while new
    handshakes get the new certificate."""
    name = "renew.example.org"
    install(cert_dir, "a.pem", pki.issue(name))
    ingress = start_ingress()
    context = pki.client_context()
    session, _ = https_exchange(ingress.port, context, name, "/click/before")
    renewed = pki.issue(name)
    install(cert_dir, "a.pem", renewed)
    wait_for_serial(ingress.port, name, renewed.serial, POLL_INTERVAL + 2, context)
    _, reused = https_exchange(ingress.port, context, name, "/click/after", session)
    assert reused


def test_sessions_resume_on_every_worker_and_under_another_files_name(
        pki: Pki, cert_dir: Path, tmp_path: Path, cluster: Cluster) -> None:
    """TLS 1.3 tickets are sealed with the front context's key, made before the workers fork
    (tls/store.py): a session from one worker resumes on the other, and one made under a name
    served by another file (an SNI switch of context) resumes too. Workers share a port by
    SO_REUSEPORT, so the kernel spreads the connections: they are opened until both have
    resumed sessions (bounded)."""
    install(cert_dir, "a.pem", pki.issue("default.example.org"))
    install(cert_dir, "b.pem", pki.issue("other.example.org"))
    port, proxied = free_port(), free_port()
    process = IngressProcess(tmp_path, https_config(cluster, cert_dir, port, proxied, workers=2))
    process.start()
    try:
        context = pki.client_context()
        for name in ("default.example.org", "other.example.org"):
            session, reused = https_exchange(port, context, name, "/click/first")
            assert not reused
            assert session is not None
            for attempt in range(60):
                # each resumption hands out new tickets; the first session stays valid too
                _, reused = https_exchange(port, context, name, f"/click/resumed-{attempt}",
                                           session)
                assert reused, f"{name}: connection {attempt} did a full handshake"
                lines = [line for line in process.access_lines()
                         if "/click/resumed-" in line and f"sni={name}" in line]
                if {"worker=0", "worker=1"} <= {field for line in lines
                                                  for field in line.split()}:
                    break
            else:
                raise AssertionError(f"{name}: 60 resumed connections, one worker only")
    finally:
        process.stop()


def test_access_log_of_proxied_https_has_the_header_address(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    install(cert_dir, "p.pem", pki.issue("p.example.org"))
    ingress = start_ingress()
    response = proxied_exchange(ingress.proxied, pki.client_context(), HEADERS["v1"],
                                "one-send", "/click/proxied")
    assert response.startswith(b"HTTP/1.1 200 "), response
    [line] = [line for line in ingress.process.access_lines(1) if "/click/proxied" in line]
    assert line.startswith(f"{CLIENT_ADDRESS[0]}:{CLIENT_ADDRESS[1]} ["), line
    assert " https-proxied~ event-tracker-http/" in line
    assert line.endswith(" tls=TLSv1.3 sni=p.example.org"), line


def test_bad_request_then_close_is_logged_once(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    """A malformed request whose client closes at once (its close_notify and FIN right behind
    it) is one rejection, not one for the request and one for the end of stream after it."""
    install(cert_dir, "a.pem", pki.issue("bad.example.org"))
    ingress = start_ingress()
    tries = 20
    for _ in range(tries):
        sock = socket.create_connection(("127.0.0.1", ingress.port), timeout=TIMEOUT)
        client = BioTlsClient(sock, pki.client_context(), "bad.example.org")
        sock.sendall(client.client_hello())
        client.finish_handshake()
        client.send_and_close(b"GARBAGE\r\n\r\n")
    ingress.process.access_lines(tries)
    time.sleep(0.5)  # a second line for any of them would come within the log's flush delay
    lines = ingress.process.access_lines(tries)
    assert len(lines) == tries, lines
    assert all(parse(HTTPLOG, line)["termination_state"] == "PR--" for line in lines), lines


# --- shutdown with an idle HTTPS keep-alive connection ------------------------------------------


def test_shutdown_does_not_wait_for_an_idle_https_client(
        pki: Pki, cert_dir: Path, start_ingress: Callable[[], HttpsIngress]) -> None:
    # An idle keep-alive connection must be closed at shutdown, as on plain HTTP
    # (test_sigterm_under_keep_alive), even when its client no longer reads: a peer whose
    # network path died never answers TLS close_notify.
    install(cert_dir, "a.pem", pki.issue("idle.example.org"))
    ingress = start_ingress()
    popen = ingress.process.process
    assert popen is not None
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=TIMEOUT) as raw, \
            pki.client_context().wrap_socket(raw, server_hostname="idle.example.org") as tls, \
            tls.makefile("rb") as reader:
        tls.sendall(http_request("idle.example.org", "/click/1"))
        assert read_response(reader)[0] == 200
        ingress.process.signal(signal.SIGTERM)  # drain is 0s in this configuration
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            popen.kill()  # not the fixture's SIGINT: that would wait for the same thing
            popen.wait(5)
            pytest.fail("mta-ingress still running 5 s after SIGTERM with one idle HTTPS "
                        f"connection:\n{ingress.process.stderr()}")
