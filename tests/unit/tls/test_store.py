"""The certificate directory (tls.store): HAProxy's file rules, parsing, and live reloading.

Which certificate a context serves is checked by a real TLS handshake in memory (two
ssl.SSLObject pumping bytes into each other), never by looking into the store's internals.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tls import groups, selfsigned
from tls.store import (
    MAX_FILE_BYTES,
    CertificateError,
    CertificateStore,
    ReloadReport,
    candidate_files,
    file_signature,
    load_certificate_file,
    parse_certificate_file,
)

DAY = 24 * 3600.0


# --- certificates -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def chain_of(cert: trustme.LeafCert) -> bytes:
    return b"".join(pem.bytes() for pem in cert.cert_chain_pems)


def key_of(cert: trustme.LeafCert) -> bytes:
    return cert.private_key_pem.bytes()


def one_file(cert: trustme.LeafCert) -> bytes:
    """The directory's one-file format: chain then key."""
    return chain_of(cert) + key_of(cert)


def leaf_der(cert: trustme.LeafCert) -> bytes:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER)


def pem_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)


def build_certificate(*, san: list[str] | None, cn: str | None, days: float = 90,
                      key_type: str = "ecdsa") -> bytes:
    """A self-signed certificate and its key, for shapes trustme does not make (no SAN, no
    names at all, an expiry a few days out)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in san]), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


# --- files ------------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes) -> None:
    # A new inode each time, as Kubernetes' volume updates do, so that the store's signature
    # (size, mtime, inode) changes even when size and mtime happen to be equal.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# --- handshakes -------------------------------------------------------------------------------

def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext,
              server_name: str | None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Client and server objects after a completed in-memory handshake."""
    return complete(*connect(server_context, client_context, server_name))


Connection = tuple[ssl.SSLObject, ssl.SSLObject, tuple[ssl.MemoryBIO, ...]]


def connect(server_context: ssl.SSLContext, client_context: ssl.SSLContext,
            server_name: str | None) -> Connection:
    """Client and server objects, the handshake not begun (a listener makes its object when it
    accepts, before the ClientHello arrives), and their BIOs."""
    bios = tuple(ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(bios[0], bios[1], server_hostname=server_name)
    server = server_context.wrap_bio(bios[2], bios[3], server_side=True)
    return client, server, bios


def complete(client: ssl.SSLObject, server: ssl.SSLObject, bios: tuple[ssl.MemoryBIO, ...]
             ) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    client_in, client_out, server_in, server_out = bios
    done = {client: False, server: False}
    for _ in range(10):
        for side in (client, server):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return client, server
    raise AssertionError("the handshake did not complete")


def client_for(ca: trustme.CA, *, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = check_hostname
    return context


def unverified_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served(store: CertificateStore, client: ssl.SSLContext, server_name: str | None) -> bytes:
    """The DER certificate a client gets through the listeners' front context."""
    peer, _ = handshake(store.front, client, server_name)
    der = peer.getpeercert(binary_form=True)
    assert der is not None
    return der


def subject_alt_names(peer: ssl.SSLObject) -> set[str]:
    certificate = peer.getpeercert()
    assert certificate
    entries = cast("tuple[tuple[str, str], ...]", certificate.get("subjectAltName", ()))
    return {value for kind, value in entries if kind == "DNS"}


# --- stores -----------------------------------------------------------------------------------

class SelfSigned:
    """The store's fallback certificate source, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.pem = selfsigned.generate(("fallback.invalid",))

    def __call__(self) -> bytes:
        self.calls += 1
        return self.pem


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., CertificateStore]:
    def make(directory: Path | None = None, *, default_file: str | None = None,
             self_signed: Callable[[], bytes] | None = None,
             clock: Callable[[], float] | None = None,
             monotonic: Callable[[], float] | None = None) -> CertificateStore:
        extra: dict[str, Callable[[], float]] = {}
        if clock is not None:
            extra["clock"] = clock
        if monotonic is not None:
            extra["monotonic"] = monotonic
        return CertificateStore(directory or tmp_path, default_file=default_file,
                                self_signed=self_signed or SelfSigned(), handshake_timeout=10.0,
                                **extra)
    return make


# --- candidate_files --------------------------------------------------------------------------

def test_candidate_files_skip_rules_and_order(tmp_path: Path) -> None:
    for name in ("b.pem", "a.pem", "A.pem", "10.pem", "9.pem", "notes.txt", "x.pem",
                 ".hidden.pem", ".x.pem.tmp", "x.pem.key", "x.pem.issuer", "x.pem.ocsp",
                 "x.pem.sctl", "key"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.pem").write_bytes(b"")
    (tmp_path / "dir.pem").mkdir()
    # Kubernetes secret volumes are symlinks into a hidden ..data directory: they count.
    (tmp_path / "linked.pem").symlink_to(tmp_path / "a.pem")
    (tmp_path / "dangling.pem").symlink_to(tmp_path / "nowhere.pem")
    assert candidate_files(tmp_path) == [
        "10.pem", "9.pem", "A.pem", "a.pem", "b.pem", "key", "linked.pem", "notes.txt", "x.pem"]


def test_candidate_files_of_a_missing_directory(tmp_path: Path) -> None:
    assert candidate_files(tmp_path / "missing") == []


def test_file_signature_follows_the_file_and_its_key(tmp_path: Path) -> None:
    assert file_signature(tmp_path, "a.pem") == (-1,) * 6
    (tmp_path / "a.pem").write_bytes(b"one")
    first = file_signature(tmp_path, "a.pem")
    assert first[0] == 3
    assert first[3:] == (-1, -1, -1)
    assert file_signature(tmp_path, "a.pem") == first
    write_atomic(tmp_path / "a.pem", b"two")  # same size, new inode
    second = file_signature(tmp_path, "a.pem")
    assert second != first
    (tmp_path / "a.pem.key").write_bytes(b"key")
    assert file_signature(tmp_path, "a.pem")[3] == 3


# --- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_one_file_with_chain_and_key(tmp_path: Path, ca: trustme.CA,
                                     key_type: trustme.KeyType) -> None:
    cert = ca.issue_cert("a.example.org", "*.a.example.org", key_type=key_type)
    (tmp_path / "a.pem").write_bytes(one_file(cert))
    loaded = load_certificate_file(tmp_path, "a.pem")
    assert loaded.file == "a.pem"
    assert loaded.names == ("a.example.org", "*.a.example.org")
    assert loaded.key_type == ("rsa" if key_type is trustme.KeyType.RSA else "ecdsa")
    assert loaded.signature == file_signature(tmp_path, "a.pem")
    assert pem_der(loaded.pem) == leaf_der(cert)


def test_key_beside_the_file(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(chain_of(cert))
    (tmp_path / "a.pem.key").write_bytes(key_of(cert))
    loaded = load_certificate_file(tmp_path, "a.pem")
    assert loaded.names == ("a.example.org",)
    assert key_of(cert) in loaded.pem


def test_a_key_inside_the_file_wins_over_the_key_file(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("a.example.org")
    other = ca.issue_cert("b.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(cert))
    (tmp_path / "a.pem.key").write_bytes(key_of(other))  # would not match: must be ignored
    loaded = load_certificate_file(tmp_path, "a.pem")
    assert key_of(cert) in loaded.pem
    assert key_of(other) not in loaded.pem


def test_a_key_before_the_chain(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(key_of(cert) + chain_of(cert))
    assert load_certificate_file(tmp_path, "a.pem").names == ("a.example.org",)


def test_missing_key_names_the_file(tmp_path: Path, ca: trustme.CA) -> None:
    (tmp_path / "a.pem").write_bytes(chain_of(ca.issue_cert("a.example.org")))
    with pytest.raises(CertificateError, match=r"^a\.pem: .*no a\.pem\.key"):
        load_certificate_file(tmp_path, "a.pem")


def test_key_file_without_a_key(tmp_path: Path, ca: trustme.CA) -> None:
    (tmp_path / "a.pem").write_bytes(chain_of(ca.issue_cert("a.example.org")))
    (tmp_path / "a.pem.key").write_bytes(b"not a key\n")
    with pytest.raises(CertificateError, match=r"^a\.pem\.key: no private key"):
        load_certificate_file(tmp_path, "a.pem")


@pytest.mark.parametrize("beside", [False, True], ids=["in-file", "key-file"])
def test_mismatched_key(tmp_path: Path, ca: trustme.CA, beside: bool) -> None:
    cert = ca.issue_cert("a.example.org")
    other = ca.issue_cert("a.example.org")
    if beside:
        (tmp_path / "a.pem").write_bytes(chain_of(cert))
        (tmp_path / "a.pem.key").write_bytes(key_of(other))
    else:
        (tmp_path / "a.pem").write_bytes(chain_of(cert) + key_of(other))
    with pytest.raises(CertificateError, match=r"^a\.pem: the private key does not match"):
        load_certificate_file(tmp_path, "a.pem")


def test_unreadable_private_key(ca: trustme.CA) -> None:
    cert = ca.issue_cert("a.example.org")
    bogus = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(CertificateError, match=r"^a\.pem: unreadable private key"):
        parse_certificate_file("a.pem", chain_of(cert) + bogus, None)


def _cuts(data: bytes) -> list[bytes]:
    """``data`` cut at a few points: inside the certificate, at its end, inside the key."""
    certificate_end = data.index(b"-----END CERTIFICATE-----")
    key_start = data.index(b"PRIVATE KEY-----")
    return [data[:1], data[:40], data[: certificate_end // 2], data[:certificate_end],
            data[: key_start + 40], data[:-40]]


def test_garbage_and_half_written_files(ca: trustme.CA) -> None:
    good = one_file(ca.issue_cert("a.example.org"))
    for data in [b"", b"garbage\n", b"\x00" * 100, *_cuts(good)]:
        with pytest.raises(CertificateError, match=r"^a\.pem"):
            parse_certificate_file("a.pem", data, None)


def test_chain_cut_inside_the_intermediate(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.create_child_ca().issue_cert("a.example.org")
    chain = chain_of(cert)
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    leaf_length = len(cert.cert_chain_pems[0].bytes())
    (tmp_path / "a.pem").write_bytes(chain[: leaf_length + 200])  # half the intermediate
    (tmp_path / "a.pem.key").write_bytes(key_of(cert))
    with pytest.raises(CertificateError):
        load_certificate_file(tmp_path, "a.pem")


def test_oversized_file(tmp_path: Path) -> None:
    (tmp_path / "big.pem").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(CertificateError, match=r"^big\.pem: larger than"):
        load_certificate_file(tmp_path, "big.pem")


def test_names_from_san_then_cn_lowercased_without_repeats() -> None:
    pem = build_certificate(
        san=["WWW.Example.org", "example.org.", "*.Example.ORG", "www.example.org"],
        cn="Example.ORG")
    loaded = parse_certificate_file("a.pem", pem, None)
    assert loaded.names == ("www.example.org", "example.org", "*.example.org")


def test_names_from_a_cn_only_certificate() -> None:
    loaded = parse_certificate_file("a.pem", build_certificate(san=None, cn="Mail.Example.ORG."),
                                    None)
    assert loaded.names == ("mail.example.org",)


def test_names_cn_after_san() -> None:
    loaded = parse_certificate_file(
        "a.pem", build_certificate(san=["b.example.org"], cn="A.example.org"), None)
    assert loaded.names == ("b.example.org", "a.example.org")


def test_a_certificate_without_names() -> None:
    with pytest.raises(CertificateError, match=r"^a\.pem: .*no DNS name"):
        parse_certificate_file("a.pem", build_certificate(san=None, cn=None), None)


# --- CertificateStore: serving by SNI ---------------------------------------------------------

def test_sni_picks_the_file(tmp_path: Path, ca: trustme.CA,
                            make_store: Callable[..., CertificateStore]) -> None:
    a = ca.issue_cert("a.example.org", "www.a.example.org")
    b = ca.issue_cert("*.b.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    (tmp_path / "b.pem").write_bytes(one_file(b))
    store = make_store()
    report = store.reload()
    assert report.loaded == ["a.pem", "b.pem"]
    assert report.failed == []
    assert report.changed

    client = client_for(ca)
    peer, server = handshake(store.front, client, "www.a.example.org")
    assert subject_alt_names(peer) == {"a.example.org", "www.a.example.org"}
    assert server.requested_server_name == "www.a.example.org"  # type: ignore[attr-defined]
    peer, _ = handshake(store.front, client, "x.b.example.org")
    assert subject_alt_names(peer) == {"*.b.example.org"}

    # Unknown names and no SNI get the default: the first file alphabetically.
    loose = client_for(ca, check_hostname=False)
    assert served(store, loose, "b.example.org") == leaf_der(a)
    assert served(store, loose, "nothing.example") == leaf_der(a)
    assert served(store, loose, None) == leaf_der(a)
    assert store.default_file == "a.pem"

    # One context per file, whichever of its names is asked for.
    assert store.context_for_name("A.Example.Org.") is store.context_for_name("www.a.example.org")
    assert store.context_for_name("x.b.example.org") is not store.context_for_name("a.example.org")


def test_context_for_name_loads_on_first_use(tmp_path: Path, ca: trustme.CA,
                                             make_store: Callable[..., CertificateStore]) -> None:
    a = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    store = make_store()
    peer, _ = handshake(store.context_for_name("a.example.org"), client_for(ca), "a.example.org")
    assert peer.getpeercert(binary_form=True) == leaf_der(a)
    assert set(store.certificates) == {"a.pem"}


@pytest.mark.parametrize(("configured", "expected"), [
    (None, "a.pem"),
    ("b.pem", "b.pem"),
    ("c.pem", "c.pem"),
    ("missing.pem", "a.pem"),
    ("broken.pem", "a.pem"),  # present but not loadable
])
def test_default_file(tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore],
                      configured: str | None, expected: str) -> None:
    certs = {name: ca.issue_cert(f"{name[0]}.example.org") for name in ("a.pem", "b.pem", "c.pem")}
    for name, cert in certs.items():
        (tmp_path / name).write_bytes(one_file(cert))
    (tmp_path / "broken.pem").write_bytes(b"garbage\n")
    store = make_store(default_file=configured)
    store.reload()
    assert store.default_file == expected
    loose = client_for(ca, check_hostname=False)
    assert served(store, loose, None) == leaf_der(certs[expected])
    assert served(store, loose, "unknown.example") == leaf_der(certs[expected])


def test_default_moves_when_the_default_file_goes(tmp_path: Path, ca: trustme.CA,
                                                  make_store: Callable[..., CertificateStore]
                                                  ) -> None:
    a, b = ca.issue_cert("a.example.org"), ca.issue_cert("b.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    (tmp_path / "b.pem").write_bytes(one_file(b))
    store = make_store(default_file="b.pem")
    store.reload()
    assert store.default_file == "b.pem"
    (tmp_path / "b.pem").unlink()
    report = store.poll()
    assert report is not None
    assert report.removed == ["b.pem"]
    assert store.default_file == "a.pem"
    assert served(store, client_for(ca, check_hostname=False), None) == leaf_der(a)
    # ... and comes back with it.
    (tmp_path / "b.pem").write_bytes(one_file(b))
    assert store.poll() is not None
    assert store.default_file == "b.pem"


def test_default_file_is_served_when_another_file_has_the_same_names(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    old = ca.issue_cert("a.example.org", organization_name="old")
    new = ca.issue_cert("a.example.org", organization_name="new")
    (tmp_path / "a-old.pem").write_bytes(one_file(old))
    (tmp_path / "b-new.pem").write_bytes(one_file(new))
    store = make_store(default_file="b-new.pem")
    store.reload()
    assert store.default_file == "b-new.pem"
    assert served(store, client_for(ca, check_hostname=False), None) == leaf_der(new)


@pytest.mark.parametrize("missing", [False, True], ids=["empty", "missing"])
def test_no_certificate_serves_a_self_signed_one(tmp_path: Path, ca: trustme.CA,
                                                 make_store: Callable[..., CertificateStore],
                                                 missing: bool) -> None:
    directory = tmp_path / "certs"
    if not missing:
        directory.mkdir()
        (directory / ".hidden.pem").write_bytes(one_file(ca.issue_cert("a.example.org")))
    fallback = SelfSigned()
    store = make_store(directory, self_signed=fallback)
    report = store.reload()
    assert report.changed
    assert report.loaded == report.failed == report.removed == []
    assert fallback.calls == 1
    assert store.default_file == "(self-signed)"
    assert served(store, unverified_client(), None) == pem_der(fallback.pem)
    assert served(store, unverified_client(), "a.example.org") == pem_der(fallback.pem)
    assert store.poll() is None

    # The first certificate to arrive replaces it.
    directory.mkdir(exist_ok=True)
    a = ca.issue_cert("a.example.org")
    (directory / "a.pem").write_bytes(one_file(a))
    arrived = store.poll()
    assert arrived is not None
    assert arrived.loaded == ["a.pem"]
    assert store.default_file == "a.pem"
    assert served(store, unverified_client(), None) == leaf_der(a)


# --- CertificateStore: reloading --------------------------------------------------------------

def test_a_half_written_replacement_keeps_the_last_good_version(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    old = ca.issue_cert("a.example.org")
    new = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(old))
    store = make_store()
    store.reload()
    client = client_for(ca)
    assert served(store, client, "a.example.org") == leaf_der(old)

    good = one_file(new)
    write_atomic(tmp_path / "a.pem", good[: len(good) // 2])
    report = store.poll()
    assert report is not None
    assert report.loaded == report.removed == []
    assert len(report.failed) == 1
    assert report.failed[0].startswith("a.pem: ")
    assert "last good version stays in service" in report.failed[0]
    assert served(store, client, "a.example.org") == leaf_der(old)
    assert store.default_file == "a.pem"
    # A failure is not retried until the file changes again.
    assert store.poll() is None
    assert store.reload() == ReloadReport()

    write_atomic(tmp_path / "a.pem", good)
    report = store.poll()
    assert report is not None
    assert report.loaded == ["a.pem"]
    assert report.failed == []
    assert served(store, client, "a.example.org") == leaf_der(new)


def test_a_new_file_that_fails_is_reported_and_not_served(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    a = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    (tmp_path / "b.pem").write_bytes(chain_of(ca.issue_cert("b.example.org")))  # no key
    store = make_store()
    report = store.reload()
    assert report.loaded == ["a.pem"]
    assert len(report.failed) == 1
    assert report.failed[0].startswith("b.pem: ")
    assert "last good version" not in report.failed[0]
    assert set(store.certificates) == {"a.pem"}
    assert served(store, client_for(ca, check_hostname=False), "b.example.org") == leaf_der(a)


def test_removing_a_file_removes_it_from_service(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    a, b = ca.issue_cert("a.example.org"), ca.issue_cert("b.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    (tmp_path / "b.pem").write_bytes(one_file(b))
    store = make_store()
    store.reload()
    assert served(store, client_for(ca), "b.example.org") == leaf_der(b)
    (tmp_path / "b.pem").unlink()
    report = store.poll()
    assert report is not None
    assert report.removed == ["b.pem"]
    assert report.loaded == report.failed == []
    assert set(store.certificates) == {"a.pem"}
    assert served(store, client_for(ca, check_hostname=False), "b.example.org") == leaf_der(a)


def test_poll_reloads_only_on_change(tmp_path: Path, ca: trustme.CA,
                                     make_store: Callable[..., CertificateStore]) -> None:
    a = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(chain_of(a))
    (tmp_path / "a.pem.key").write_bytes(key_of(a))
    store = make_store()
    report = store.poll()  # the first look loads
    assert report is not None
    assert report.loaded == ["a.pem"]
    assert store.poll() is None
    assert store.poll() is None

    # A touched key file counts as a change of its certificate file.
    info = (tmp_path / "a.pem.key").stat()
    os.utime(tmp_path / "a.pem.key", ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    report = store.poll()
    assert report is not None
    assert report.loaded == ["a.pem"]
    assert store.poll() is None

    # Files the rules skip are no change.
    (tmp_path / ".a.pem.tmp").write_bytes(b"x")
    (tmp_path / "a.pem.ocsp").write_bytes(b"x")
    assert store.poll() is None

    (tmp_path / "b.pem").write_bytes(one_file(ca.issue_cert("b.example.org")))
    report = store.poll()
    assert report is not None
    assert report.loaded == ["b.pem"]
    assert store.poll() is None


# --- CertificateStore: ECDSA and RSA for one name ---------------------------------------------

def test_ecdsa_and_rsa_for_the_same_name(tmp_path: Path, ca: trustme.CA,
                                         make_store: Callable[..., CertificateStore]) -> None:
    ecdsa = ca.issue_cert("dual.example.org", key_type=trustme.KeyType.ECDSA)
    rsa_cert = ca.issue_cert("dual.example.org", key_type=trustme.KeyType.RSA)
    (tmp_path / "dual-ecdsa.pem").write_bytes(one_file(ecdsa))
    (tmp_path / "dual-rsa.pem").write_bytes(one_file(rsa_cert))
    store = make_store()
    store.reload()

    rsa_only = client_for(ca)
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    default = client_for(ca)
    for server_name in ("dual.example.org", None):
        if server_name is None:
            rsa_only.check_hostname = default.check_hostname = False
        assert served(store, rsa_only, server_name) == leaf_der(rsa_cert)
        assert served(store, default, server_name) == leaf_der(ecdsa)
    # A TLS 1.2 client that offers both gets ECDSA: the server's preference.
    both = client_for(ca)
    both.maximum_version = ssl.TLSVersion.TLSv1_2
    both.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert served(store, both, "dual.example.org") == leaf_der(ecdsa)


# --- CertificateStore: the front context's own copy of the default -------------------------

class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def peer_der(connection: tuple[ssl.SSLObject, ssl.SSLObject]) -> bytes:
    der = connection[0].getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_front_context_serves_the_default_itself_once_trusted(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    a, b = ca.issue_cert("a.example.org"), ca.issue_cert("b.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    (tmp_path / "b.pem").write_bytes(one_file(b))
    monotonic = Monotonic()
    store = make_store(monotonic=monotonic)
    store.reload()
    loose = client_for(ca, check_hostname=False)
    # within a handshake timeout of loading it, the front's copy is not relied on...
    _, server_side = handshake(store.front, loose, "a.example.org")
    assert server_side.context is not store.front
    monotonic.now += 9.9
    _, server_side = handshake(store.front, loose, "a.example.org")
    assert server_side.context is not store.front
    monotonic.now += 0.1
    for server_name, expected in (("a.example.org", a), (None, a), ("unknown.example", a),
                                  ("b.example.org", b)):
        client_side, server_side = handshake(store.front, loose, server_name)
        assert client_side.getpeercert(binary_form=True) == leaf_der(expected)
        # the default keeps the front context; another name switches to its own
        assert (server_side.context is store.front) == (expected is a)


def test_a_connection_made_before_the_default_changed_gets_the_new_one(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    old, new = ca.issue_cert("a.example.org"), ca.issue_cert("a.example.org")
    write_atomic(tmp_path / "a.pem", one_file(old))
    monotonic = Monotonic()
    store = make_store(monotonic=monotonic)
    store.reload()
    monotonic.now += 10.0
    loose = client_for(ca, check_hostname=False)
    early = connect(store.front, loose, None)  # holds the front's copy of the old one
    write_atomic(tmp_path / "a.pem", one_file(new))
    assert store.poll() is not None
    assert peer_der(complete(*early)) == leaf_der(new)
    monotonic.now += 9.9
    assert peer_der(handshake(store.front, loose, None)) == leaf_der(new)
    monotonic.now += 0.1
    client_side, server_side = handshake(store.front, loose, None)
    assert client_side.getpeercert(binary_form=True) == leaf_der(new)
    assert server_side.context is store.front  # trusted again, holding the new one


def test_the_front_copy_of_a_first_load_made_before_serving_is_trusted_at_once(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore]) -> None:
    a = ca.issue_cert("a.example.org")
    (tmp_path / "a.pem").write_bytes(one_file(a))
    store = make_store(monotonic=Monotonic())
    store.reload()
    store.trust_front_copy()
    client_side, server_side = handshake(store.front, client_for(ca), "a.example.org")
    assert client_side.getpeercert(binary_form=True) == leaf_der(a)
    assert server_side.context is store.front


@pytest.mark.parametrize("before", ["dual", "self-signed"])
def test_a_key_type_the_default_lost_is_never_served_from_the_front(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore],
        before: str) -> None:
    rsa_cert = ca.issue_cert("a.example.org", key_type=trustme.KeyType.RSA)
    if before == "dual":
        ecdsa = ca.issue_cert("a.example.org", key_type=trustme.KeyType.ECDSA)
        (tmp_path / "a-ecdsa.pem").write_bytes(one_file(ecdsa))
        (tmp_path / "a-rsa.pem").write_bytes(one_file(rsa_cert))
    monotonic = Monotonic()
    store = make_store(monotonic=monotonic)  # self-signed: an ECDSA certificate
    store.reload()
    monotonic.now += 10.0
    if before == "dual":
        (tmp_path / "a-ecdsa.pem").unlink()
    else:
        (tmp_path / "a-rsa.pem").write_bytes(one_file(rsa_cert))
    assert store.poll() is not None
    # the front still holds an ECDSA certificate, which this client would prefer
    loose = client_for(ca, check_hostname=False)
    for _ in range(2):
        client_side, server_side = handshake(store.front, loose, None)
        assert client_side.getpeercert(binary_form=True) == leaf_der(rsa_cert)
        assert server_side.context is not store.front
        monotonic.now += 100.0


# --- CertificateStore: expiry warnings --------------------------------------------------------

def test_warn_expiring_logs_once_a_day(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                       make_store: Callable[..., CertificateStore]) -> None:
    (tmp_path / "soon.pem").write_bytes(build_certificate(san=["soon.example.org"], cn=None,
                                                          days=3))
    (tmp_path / "later.pem").write_bytes(build_certificate(san=["later.example.org"], cn=None,
                                                           days=30))
    clock = Clock()
    store = make_store(clock=clock)

    def warnings() -> list[str]:
        return [record.getMessage() for record in caplog.records
                if record.name == "mta_ingress.tls" and "expires soon" in record.getMessage()]

    with caplog.at_level(logging.WARNING, logger="mta_ingress.tls"):
        store.reload()
        assert len(warnings()) == 1
        assert "file=soon.pem" in warnings()[0]
        assert "names=soon.example.org" in warnings()[0]
        store.warn_expiring()
        assert store.poll() is None  # polling checks expiry too
        assert len(warnings()) == 1
        clock.now += DAY - 60
        store.warn_expiring()
        assert len(warnings()) == 1
        clock.now += 60
        store.warn_expiring()
        assert len(warnings()) == 2
        assert all("later.pem" not in message for message in warnings())


# --- key-exchange groups ------------------------------------------------------------------------

def client_offering(ca: trustme.CA, offered: str) -> ssl.SSLContext:
    context = client_for(ca)
    assert groups.set_groups(context, offered)
    return context


@pytest.mark.parametrize("offered", ["X25519", "prime256v1", "secp384r1"])
def test_intermediate_groups_are_accepted(tmp_path: Path, ca: trustme.CA,
                                          make_store: Callable[..., CertificateStore],
                                          offered: str) -> None:
    (tmp_path / "a.pem").write_bytes(one_file(ca.issue_cert("a.example.org")))
    store = make_store()
    store.reload()
    peer, _ = handshake(store.front, client_offering(ca, offered), "a.example.org")
    assert peer.version() == "TLSv1.3"


@pytest.mark.parametrize("offered", ["X448", "secp521r1", "ffdhe2048"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_groups_outside_the_intermediate_list_are_refused(
        tmp_path: Path, ca: trustme.CA, make_store: Callable[..., CertificateStore],
        offered: str, version: ssl.TLSVersion) -> None:
    (tmp_path / "a.pem").write_bytes(one_file(ca.issue_cert("a.example.org")))
    store = make_store()
    store.reload()
    client = client_offering(ca, offered)
    client.maximum_version = version
    with pytest.raises(ssl.SSLError):
        handshake(store.front, client, "a.example.org")


def test_set_groups_refuses_an_unknown_group() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert not groups.set_groups(context, "X25519:no-such-group")
