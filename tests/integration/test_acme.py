"""The real ``mta-ingress run`` obtaining and renewing its certificate from Pebble over ACME.

Pebble (a real ACME CA) validates HTTP-01 by connecting to the ingress's ``http`` listener; it
finds it through pebble-challtestsrv, which answers 127.0.0.1 for every name. The certificate
is checked as a client would: a handshake verified against the root Pebble made at start.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.integration.acme_peers import ChallTestSrv, Pebble
from tests.integration.ingress_process import IngressProcess
from tests.integration.origin import Cluster
from tests.integration.peers import free_port
from tests.integration.tls_helpers import TIMEOUT, served_certificate

NAME = "acme.mail.test"
CERT_FILE = f"acme-{NAME}.pem"


@dataclass
class Replica:
    process: IngressProcess
    http: int
    https: int


def ingress_config(cluster: Cluster, cert_dir: Path, pebble: Pebble, http: int, https: int,
                   *, acme_extra: str = "", extra: str = "") -> str:
    disabled = "".join(f"[listeners.{name}]\nenabled = false\n" for name in (
        "smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied", "http-proxied",
        "https-proxied"))
    return (
        'preset = "greenarrow"\nworkers = 1\n[timeouts]\ndrain = "0s"\n'
        f'[tls]\ncert_dir = "{cert_dir}"\npoll_interval = "0.5s"\n'
        f'[tls.acme]\nenabled = true\ndirectory = "{pebble.directory}"\n'
        f'ca_bundle = "{pebble.ca_file}"\nemail = "postmaster@mail.test"\n'
        f'domains = ["{NAME}"]\nretry_initial = "1s"\nretry_max = "4s"\n{acme_extra}'
        f"{disabled}"
        f'[listeners.http]\nbind = ["127.0.0.1:{http}"]\n'
        f'[listeners.https]\nbind = ["127.0.0.1:{https}"]\n'
        f"{cluster.backends_toml()}{extra}"
    )


def start_replica(workdir: Path, config_text: str, http: int, https: int, *,
                  wait: bool = True) -> Replica:
    workdir.mkdir(parents=True, exist_ok=True)
    process = IngressProcess(workdir, config_text)
    process.start(wait_ready=wait)
    return Replica(process, http, https)


def verifying_context(root_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=root_pem.decode())
    return context


def wait_for_verified(replica: Replica, root_pem: bytes, timeout: float,
                      not_serial: int | None = None) -> x509.Certificate:
    """The first certificate for NAME that verifies against Pebble's root (and is not
    ``not_serial``), waiting for it."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            leaf = served_certificate(replica.https, NAME, verifying_context(root_pem))
        except (ssl.SSLError, OSError) as error:
            last = error
        else:
            if leaf.serial_number != not_serial:
                return leaf
            last = f"still serial {not_serial}"
        time.sleep(0.2)
    raise AssertionError(f"no verified certificate for {NAME} within {timeout}s: {last!r}\n"
                         f"ingress stderr:\n{replica.process.stderr()}")


def http_get(port: int, path: str, host: str = NAME) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_obtains_serves_and_renews_a_short_lived_certificate(
        tmp_path: Path, cluster: Cluster) -> None:
    http, https = free_port(), free_port()
    cert_dir = tmp_path / "certs"
    # 12 s certificates: renewal is due when a third (4 s) is left.
    with ChallTestSrv(tmp_path) as dns, Pebble(tmp_path, dns, http, validity_seconds=12) as ca:
        replica = start_replica(tmp_path / "a", ingress_config(cluster, cert_dir, ca, http, https),
                                http, https)
        try:
            root = ca.root_pem()
            first = wait_for_verified(replica, root, timeout=20)
            assert NAME in first.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            assert (cert_dir / CERT_FILE).stat().st_mode & 0o777 == 0o600
            second = wait_for_verified(replica, root, timeout=20,
                                       not_serial=first.serial_number)
            assert second.not_valid_after_utc > first.not_valid_after_utc
            # Pebble's validations were answered by the ingress, not sent to the TLS service.
            lines = replica.process.access_lines(2)
            answered = [line for line in lines if "end=acme-challenge" in line]
            assert len(answered) >= 2, lines
            assert all("/.well-known/acme-challenge/" not in request.target
                       for request in cluster.tls.requests)
            # Challenge files are removed once the order is done.
            assert list((cert_dir / ".acme" / "challenges").iterdir()) == []
            stderr = replica.process.stderr()
            assert stderr.count('msg="certificate obtained"') >= 2, stderr
        finally:
            replica.process.stop()


def test_two_replicas_sharing_the_volume_place_one_order(tmp_path: Path,
                                                         cluster: Cluster) -> None:
    cert_dir = tmp_path / "certs"
    http_a, https_a, http_b, https_b = free_port(), free_port(), free_port(), free_port()
    # Pebble validates on replica A's port only: when B holds the lease, A must answer B's
    # challenge from the shared directory.
    with ChallTestSrv(tmp_path) as dns, Pebble(tmp_path, dns, http_a) as ca:
        replicas = [
            start_replica(tmp_path / "a", ingress_config(cluster, cert_dir, ca, http_a, https_a),
                          http_a, https_a, wait=False),
            start_replica(tmp_path / "b", ingress_config(cluster, cert_dir, ca, http_b, https_b),
                          http_b, https_b, wait=False),
        ]
        try:
            for replica in replicas:
                replica.process.wait_for_stderr('msg="ready"')
            root = ca.root_pem()
            served = [wait_for_verified(replica, root, timeout=20) for replica in replicas]
            assert served[0].serial_number == served[1].serial_number
            time.sleep(2)  # a second order, if there were one, would have been placed by now
            assert ca.orders() == 1, ca.log()
            ordering = sum(r.process.stderr().count('msg="ordering a certificate"')
                           for r in replicas)
            assert ordering == 1, [r.process.stderr() for r in replicas]
        finally:
            for replica in replicas:
                replica.process.stop()


def test_preflight_mismatch_blocks_the_order_until_dns_points_here(
        tmp_path: Path, cluster: Cluster) -> None:
    http, https = free_port(), free_port()
    with ChallTestSrv(tmp_path) as dns, Pebble(tmp_path, dns, http) as ca:
        # Loopback both: Pebble must never be sent anywhere else, even by a wrong record.
        dns.set_a(NAME, ["127.0.0.3"])
        replica = start_replica(tmp_path / "a", ingress_config(
            cluster, tmp_path / "certs", ca, http, https,
            acme_extra='expected_addresses = ["127.0.0.1"]\n',
            extra=f'[dns]\nnameservers = ["127.0.0.1:{dns.dns_port}"]\n'), http, https)
        try:
            replica.process.wait_for_stderr('msg="not ordering: DNS does not point here yet"')
            assert "resolved=127.0.0.3 expected=127.0.0.1" in replica.process.stderr()
            time.sleep(2)
            assert ca.orders() == 0, ca.log()
            dns.set_a(NAME, ["127.0.0.1"])
            wait_for_verified(replica, ca.root_pem(), timeout=20)
            assert ca.orders() == 1
        finally:
            replica.process.stop()


def test_unknown_challenge_token_goes_to_the_tls_service(tmp_path: Path,
                                                         cluster: Cluster) -> None:
    http, https = free_port(), free_port()
    with ChallTestSrv(tmp_path) as dns, Pebble(tmp_path, dns, free_port()) as ca:
        replica = start_replica(tmp_path / "a", ingress_config(
            cluster, tmp_path / "certs", ca, http, https), http, https)
        try:
            response = http_get(http, "/.well-known/acme-challenge/not-ours")
            assert response.startswith(b"HTTP/1.1 200"), response
            [received] = cluster.tls.wait_for_requests(1)
            assert received.target == "/.well-known/acme-challenge/not-ours"
        finally:
            replica.process.stop()


def test_certs_status_lists_names_files_issuers_and_renewal(tmp_path: Path,
                                                             cluster: Cluster) -> None:
    http, https = free_port(), free_port()
    cert_dir = tmp_path / "certs"
    with ChallTestSrv(tmp_path) as dns, Pebble(tmp_path, dns, http) as ca:
        replica = start_replica(tmp_path / "a", ingress_config(cluster, cert_dir, ca, http, https),
                                http, https)
        try:
            wait_for_verified(replica, ca.root_pem(), timeout=20)
        finally:
            replica.process.stop()
        result = subprocess.run(
            [sys.executable, "-m", "ingress", "certs", "status", "--config",
             str(replica.process.config_path)], capture_output=True, text=True, timeout=30,
            check=False)
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if CERT_FILE in line]
    assert NAME in row, result.stdout
    assert "Pebble Intermediate" in row, result.stdout
    assert "acme" in row, row  # managed by the ingress: it has a renewal time
