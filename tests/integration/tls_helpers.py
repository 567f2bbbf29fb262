"""Certificates and TLS clients for the HTTPS integration tests.

Certificates come from a trustme test CA with an intermediate, so that a listener which forgot
to send the chain fails verification against the root alone. Clients only ever connect to
127.0.0.1 and pass the server name explicitly: no test resolves a real DNS name.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Each step of a TLS client is bounded by this; a hung listener must fail the test, not hang it.
TIMEOUT = 5.0


@dataclass(frozen=True)
class Leaf:
    """A leaf certificate as the directory stores it: the chain (leaf first) and the key."""

    chain_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def one_file(self) -> bytes:
        return self.chain_pem + self.key_pem


class Pki:
    """A root CA (the only thing clients trust) and an intermediate that signs the leaves."""

    def __init__(self, directory: Path) -> None:
        self.root = trustme.CA(organization_name="mta-ingress test root")
        self.intermediate = self.root.create_child_ca()
        self.ca_file = directory / "test-ca.pem"
        self.root.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, *names: str, key_type: str = "ecdsa", days: int = 90) -> Leaf:
        now = datetime.datetime.now(datetime.UTC)
        # 90 days: sslyze's Mozilla check refuses leaves that live longer than 366 days.
        leaf = self.intermediate.issue_cert(
            *names, common_name=names[0],
            key_type=trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA,
            not_before=now - datetime.timedelta(hours=1),
            not_after=now + datetime.timedelta(days=days))
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return Leaf(chain, leaf.private_key_pem.bytes(), x509.load_pem_x509_certificate(chain))

    def issue_webpki(self, name: str, days: int = 90) -> Leaf:
        """An ECDSA leaf shaped like a public CA's: a CN-only subject, a non-critical SAN,
        serverAuth only. trustme marks its SAN critical beside a non-empty subject, which
        RFC 5280 4.2.1.6 forbids and strict verifiers (sslyze's, from cryptography) refuse."""
        issuer = x509.load_pem_x509_certificate(self.intermediate.cert_pem.bytes())
        issuer_key = serialization.load_pem_private_key(
            self.intermediate.private_key_pem.bytes(), password=None)
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer_ski.value), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) \
            + self.intermediate.cert_pem.bytes()
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return Leaf(chain, key_pem, certificate)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def write_atomically(path: Path, data: bytes) -> None:
    """Write as GreenArrow's TLS pod and ACME clients do: a dotfile (which the store skips),
    then a rename, so that a reader sees the old file or the new one and never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def install(cert_dir: Path, file_name: str, leaf: Leaf, *, key_beside: bool = False) -> None:
    """Put ``leaf`` into the directory in one-file form, or with its key in ``<file>.key``."""
    if key_beside:
        # the key first: a certificate file without its key would be refused when polled
        write_atomically(cert_dir / f"{file_name}.key", leaf.key_pem)
        write_atomically(cert_dir / file_name, leaf.chain_pem)
    else:
        write_atomically(cert_dir / file_name, leaf.one_file)


def served_certificate(port: int, server_name: str | None,
                       context: ssl.SSLContext | None = None) -> x509.Certificate:
    """The leaf a handshake with ``server_name`` (None: no SNI) gets. Without ``context``
    nothing is verified: the point is to see which certificate answers."""
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for_serial(port: int, server_name: str | None, serial: int, timeout: float,
                    context: ssl.SSLContext | None = None) -> float:
    """Seconds until a new handshake gets the certificate with ``serial``; raises on timeout."""
    started = time.monotonic()
    seen: set[int] = set()
    while True:
        found = served_certificate(port, server_name, context).serial_number
        if found == serial:
            return time.monotonic() - started
        seen.add(found)
        if time.monotonic() - started > timeout:
            raise AssertionError(f"serial {serial} not served within {timeout}s; saw {seen}")
        time.sleep(0.05)


def s_client(openssl: str, port: int, server_name: str | None, *args: str,
             timeout: float = 10.0) -> str:
    """``openssl s_client`` output (stdout and stderr) for one handshake; stdin is empty, so
    it closes the connection once the handshake is done."""
    sni = ["-servername", server_name] if server_name is not None else ["-noservername"]
    result = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", *sni, *args],
                            input=b"", capture_output=True, timeout=timeout, check=False)
    return (result.stdout + result.stderr).decode(errors="replace") \
        + f"\n(exit status {result.returncode})"


# --- PROXY protocol headers, written by hand so that tests choose every byte ------------------

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
            .encode())


def proxy_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    client, server = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if client.version == 4 else 0x21  # AF_INET or AF_INET6, STREAM
    addresses = client.packed + server.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


# --- HTTP/1.1 over whatever carries it ---------------------------------------------------------


def http_request(host: str, path: str, *, close: bool = False) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def read_response(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body (what the echo origin sends), from a buffered
    reader, so that the next response of a keep-alive connection stays in the stream."""
    status_line = reader.readline(65536)
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return status, headers, body


class BioTlsClient:
    """A TLS client driven through memory BIOs over a plain socket, so that the test decides
    which bytes leave in which send: e.g. a PROXY header and the ClientHello in one segment,
    which ``ssl.wrap_socket`` cannot be made to do."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_hostname: str | None) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing,
                                    server_hostname=server_hostname)

    def client_hello(self) -> bytes:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self._outgoing.read()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self._incoming.write(data)

    def finish_handshake(self) -> None:
        """Call once the ClientHello from client_hello() has been sent."""
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.sock.sendall(self._outgoing.read())
                self._fill()
                continue
            self.sock.sendall(self._outgoing.read())
            return

    def send_and_close(self, request: bytes) -> None:
        """Send ``request``, its close_notify and the FIN together: a client that writes and
        leaves at once, the server reading all three in one go."""
        self.tls.write(request)
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the server's close_notify is not awaited
        self.sock.sendall(self._outgoing.read())
        self.sock.close()

    def exchange_until_close(self, request: bytes) -> bytes:
        """Send ``request`` and read everything until the server closes."""
        self.tls.write(request)
        self.sock.sendall(self._outgoing.read())
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    self._fill()
                except ConnectionError:
                    return received
                continue
            except ssl.SSLZeroReturnError:
                return received
            if not chunk:
                return received
            received += chunk
