"""The certificate store: a directory of PEM files, served by SNI, reloaded while running.

Theory of operation
-------------------
The directory follows HAProxy's ``crt <dir>`` rules, so that the volume GreenArrow's TLS pod
writes works unchanged: every regular file, in alphabetical order, except names starting with
``.`` and names ending in ``.key``, ``.issuer``, ``.ocsp`` or ``.sctl``. A file holds a
certificate, its chain and (unless ``<file>.key`` exists beside it) its private key. A file's
names are its DNS subject alternative names and its common name.

``reload()`` compares each candidate file's metadata (size, mtime, inode, and those of its
``.key``) with what was loaded; only changed files are read again. A changed file is parsed
completely (every certificate of the chain, the key, the key against the certificate, and
OpenSSL's own load) before it replaces the version in service; one that fails (half-written,
unreadable, mismatched) is logged and the last good version of that file stays. A file that
disappears leaves service. Then the name index and one ``ssl.SSLContext`` per distinct set of
files are rebuilt and swapped in with one assignment: a handshake in progress finishes with
what it started with, and established connections are never touched.

Every TLS listener uses one *front* context, made once (in the supervisor, before the workers
fork). Its ``sni_callback`` picks the context for the client's server name and assigns it to the
connection; OpenSSL calls it for every ClientHello, with or without SNI. Session tickets are
encrypted with the front context's key (OpenSSL takes ticket keys from the context a
connection started with), so every worker can resume every other worker's sessions.

Switching a connection to another context costs OpenSSL about 10 us of CPU per handshake (it
copies the context's certificate configuration), so the front context also holds the default
certificates itself: a handshake that ends up with the default (no SNI, an unknown name, or a
name of the default file) keeps the front context. Two cases still switch:

* A connection copies the front's certificates when it is made, before its ClientHello, so one
  made before the default changed holds the old default. For one handshake timeout after the
  front's copy changes, every handshake switches; a connection older than that has finished
  its handshake or been dropped by then.
* A context cannot drop a key type: once the default no longer has a key type the front holds,
  the front's copy would serve a certificate that left the directory, so from then on every
  handshake switches.

When a name has both an ECDSA and an RSA certificate, both go into its context; the server
prefers ECDSA when the client offers it (the front context has OpenSSL's server-preference
option and an ECDSA-first cipher and signature order).
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
import ssl
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tls import groups, sni

log = logging.getLogger("mta_ingress.tls")

SKIPPED_SUFFIXES = (".key", ".issuer", ".ocsp", ".sctl")
EXPIRY_WARNING = datetime.timedelta(days=14)
EXPIRY_WARNING_EVERY = 24 * 3600.0
MAX_FILE_BYTES = 1 << 20  # a chain and a key are a few KiB; anything near this is not one

# Mozilla's "intermediate" configuration (version 5.7): TLS 1.2 and 1.3; for TLS 1.2 these
# ECDHE suites, ECDSA first. The DHE suites of that list are left out: they need DH parameters,
# and every client of a mail cluster's tracking links speaks ECDHE. TLS 1.3 suites are
# OpenSSL's defaults, which are the list's.
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))

_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----\r?\n?",
                      re.DOTALL)


class CertificateError(Exception):
    """A certificate file that cannot be served; the message says why."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """One loaded file of the directory."""

    file: str
    names: tuple[str, ...]  # normalised, wildcards as "*.example.org"
    key_type: str  # "ecdsa", "rsa" or "other"
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str
    pem: bytes  # chain then key, as OpenSSL loads it
    signature: tuple[int, ...]


def candidate_files(directory: Path) -> list[str]:
    """The certificate files of ``directory`` by HAProxy's ``crt <dir>`` rules, in order."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith(SKIPPED_SUFFIXES):
            continue
        try:
            if not entry.is_file():  # follows symlinks, as Kubernetes secret volumes use them
                continue
        except OSError:
            continue
        names.append(name)
    return sorted(names)


def file_signature(directory: Path, name: str) -> tuple[int, ...]:
    """What tells that a file (or its ``.key``) changed: size, mtime and inode of both."""
    parts: list[int] = []
    for path in (directory / name, directory / f"{name}.key"):
        try:
            info = path.stat()
        except FileNotFoundError:
            parts += (-1, -1, -1)
            continue
        parts += (info.st_size, info.st_mtime_ns, info.st_ino)
    return tuple(parts)


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CertificateError(f"{path.name}: not a regular file")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise CertificateError(f"{path.name}: larger than {MAX_FILE_BYTES} bytes")
    return data


def _key_type(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    return "other"


def certificate_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """DNS subject alternative names then the common name, normalised, without repeats."""
    names: list[str] = []
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names += extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            names.append(attribute.value)
    result: list[str] = []
    for name in names:
        normal = sni.normalize(name)
        if normal is not None and normal not in result:
            result.append(normal)
    return tuple(result)


def parse_certificate_file(name: str, data: bytes, key_data: bytes | None,
                           signature: tuple[int, ...] = ()) -> Certificate:
    """Check one file's contents completely; raise CertificateError with the reason."""
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateError(f"{name}: no readable certificate ({error})") from None
    # The PEM reader skips a block without its END line: a file cut inside an intermediate
    # would load as the leaf alone and break clients that need the intermediate.
    if data.count(b"-----BEGIN CERTIFICATE-----") != len(chain):
        raise CertificateError(f"{name}: a certificate of the chain is incomplete or unreadable")
    key_match = _PEM_KEY.search(data)
    if key_match is not None:
        key_pem = key_match.group(0)
    elif key_data is not None:
        key_match = _PEM_KEY.search(key_data)
        if key_match is None:
            raise CertificateError(f"{name}.key: no private key in it")
        key_pem = key_match.group(0)
    else:
        raise CertificateError(f"{name}: no private key in the file and no {name}.key beside it")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{name}: unreadable private key ({error})") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise CertificateError(f"{name}: the private key does not match the certificate")
    names = certificate_names(leaf)
    if not names:
        raise CertificateError(f"{name}: the certificate has no DNS name and no common name")
    certificates = b"".join(certificate.public_bytes(serialization.Encoding.PEM)
                            for certificate in chain)
    loaded = Certificate(
        file=name, names=names, key_type=_key_type(leaf.public_key()),
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
        issuer=leaf.issuer.rfc4514_string(),
        pem=certificates + key_pem + (b"" if key_pem.endswith(b"\n") else b"\n"),
        signature=signature)
    # OpenSSL's own verdict, so that nothing it would refuse reaches a listener.
    context_for([loaded])
    return loaded


def load_certificate_file(directory: Path, name: str) -> Certificate:
    signature = file_signature(directory, name)
    try:
        data = _read(directory / name)
        key_path = directory / f"{name}.key"
        key_data = _read(key_path) if key_path.exists() else None
    except OSError as error:
        raise CertificateError(f"{name}: cannot read: {error.strerror or error}") from None
    return parse_certificate_file(name, data, key_data, signature)


class SniConnection(Protocol):
    """What the SNI callback is given: the listeners' ``ingress.proxy.tls_transport`` connection
    (the owner of the OpenSSL object), or an ``ssl.SSLObject`` or ``ssl.SSLSocket``, which take the
    new attribute too."""

    context: ssl.SSLContext
    requested_server_name: str | None


def base_context() -> ssl.SSLContext:
    """A server context with the listener settings: TLS 1.2-1.3, intermediate ciphers, ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    # Python sets OP_CIPHER_SERVER_PREFERENCE, OP_NO_COMPRESSION and single-use ECDH keys on
    # every new context; asserted here because the ECDSA preference depends on the first.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    if not groups.set_groups(context):
        _warn_groups_unrestricted()
    return context


@functools.cache
def _warn_groups_unrestricted() -> None:
    log.warning("msg=\"key-exchange groups left at OpenSSL's defaults: this Python's ssl "
                "could not be given the intermediate list\" groups=%s",
                groups.INTERMEDIATE_GROUPS)


def _load_pem(context: ssl.SSLContext, pem: bytes) -> None:
    # OpenSSL loads chains from files only; an anonymous memory file holds exactly the bytes
    # that were checked (the directory's copy may change in between).
    fd = os.memfd_create("mta-ingress-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    except ssl.SSLError as error:
        raise CertificateError(f"OpenSSL refuses it: {error.reason or error}") from None
    finally:
        os.close(fd)


def context_for(certificates: Iterable[Certificate]) -> ssl.SSLContext:
    """A context serving ``certificates`` (at most one per key type: ECDSA first)."""
    context = base_context()
    for certificate in _loading_order(certificates):
        _load_pem(context, certificate.pem)
    return context


def _loading_order(certificates: Iterable[Certificate]) -> list[Certificate]:
    return sorted(certificates, key=lambda c: c.key_type != "ecdsa")


@dataclass(frozen=True, slots=True)
class _Index:
    by_name: dict[str, ssl.SSLContext]
    default: ssl.SSLContext
    default_file: str  # "(self-signed)" when the directory has none
    # what ``default`` was made of, in the order it was loaded: (key type, PEM) each
    default_pems: tuple[tuple[str, bytes], ...]


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)  # new or changed files now in service
    failed: list[str] = field(default_factory=list)  # messages; last good versions kept
    removed: list[str] = field(default_factory=list)
    changed: bool = False


class CertificateStore:
    def __init__(self, directory: Path, *, default_file: str | None,
                 self_signed: Callable[[], bytes], clock: Callable[[], float] = time.time,
                 handshake_timeout: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``handshake_timeout``: the listeners' TLS handshake timeout (see the module's
        docstring on the front context)."""
        self.directory = directory
        self._default_file = default_file
        self._self_signed = self_signed
        self._clock = clock
        self._certificates: dict[str, Certificate] = {}
        self._attempted: dict[str, tuple[int, ...]] = {}  # signature last tried, good or not
        self._warned: dict[str, float] = {}
        self._index: _Index | None = None
        self.front = base_context()
        # typeshed types the argument as ssl.SSLObject; ours is any SniConnection
        self.front.sni_callback = self._choose  # type: ignore[assignment]
        # The index context whose certificates the front context holds (see the module's
        # docstring), or None: every handshake switches. And the key types loaded into the
        # front so far, which a context never drops.
        self._front_serves: ssl.SSLContext | None = None
        self._front_key_types: frozenset[str] = frozenset()
        self._front_pems: tuple[tuple[str, bytes], ...] = ()
        self._front_trusted_from = 0.0  # a monotonic time
        self._handshake_timeout = handshake_timeout
        self._monotonic = monotonic

    # --- serving ------------------------------------------------------------------------------

    def context_for_name(self, server_name: str | None) -> ssl.SSLContext:
        index = self._current()
        return sni.select(index.by_name, server_name, index.default)

    def trust_front_copy(self) -> None:
        """Rely on the front context's copy of the default at once rather than one handshake
        timeout from now: only right after the first load, before any listener has made a
        connection from the front context (the supervisor's load, before it forks), when no
        connection can hold an older copy."""
        if self._front_serves is not None:
            self._front_trusted_from = self._monotonic()

    def _choose(self, connection: SniConnection, server_name: str | None,
                _context: ssl.SSLContext) -> None:
        context = self.context_for_name(server_name)
        if context is not self._front_serves or self._monotonic() < self._front_trusted_from:
            connection.context = context
        connection.requested_server_name = server_name  # read back by the access log

    def _current(self) -> _Index:
        if self._index is None:
            self.reload()
        assert self._index is not None
        return self._index

    @property
    def loaded(self) -> bool:
        """Whether a set of certificates (or the self-signed fallback) is in service."""
        return self._index is not None

    @property
    def certificates(self) -> dict[str, Certificate]:
        return dict(self._certificates)

    @property
    def default_file(self) -> str:
        return self._current().default_file

    # --- loading ------------------------------------------------------------------------------

    def reload(self) -> ReloadReport:
        report = ReloadReport()
        files = candidate_files(self.directory)
        present = set(files)
        for name in list(self._certificates):
            if name not in present:
                del self._certificates[name]
                report.removed.append(name)
        for name in list(self._attempted):
            if name not in present:
                del self._attempted[name]
        for name in files:
            signature = file_signature(self.directory, name)
            if self._attempted.get(name) == signature:
                continue
            self._attempted[name] = signature
            try:
                certificate = load_certificate_file(self.directory, name)
            except CertificateError as error:
                kept = " (the last good version stays in service)" \
                    if name in self._certificates else ""
                report.failed.append(f"{error}{kept}")
                continue
            self._certificates[name] = certificate
            report.loaded.append(name)
        report.changed = bool(report.loaded or report.removed) or self._index is None
        if report.changed:
            self._index = self._build_index()
            self._mirror_default(self._index)
        for message in report.failed:
            log.warning("msg=\"certificate not loaded\" reason=%r", message)
        if report.loaded or report.removed:
            log.info("msg=\"certificates loaded\" dir=%s loaded=%s removed=%s default=%s "
                     "in_service=%d", self.directory, ",".join(report.loaded) or "-",
                     ",".join(report.removed) or "-", self._index.default_file
                     if self._index else "-", len(self._certificates))
        self.warn_expiring()
        return report

    def poll(self) -> ReloadReport | None:
        """Reload if any file's metadata changed since the last look; cheap otherwise."""
        files = candidate_files(self.directory)
        if set(files) == set(self._attempted) and all(
                self._attempted[name] == file_signature(self.directory, name) for name in files):
            self.warn_expiring()
            return None
        return self.reload()

    def _build_index(self) -> _Index:
        groups: dict[str, list[Certificate]] = {}
        for name in sorted(self._certificates):
            certificate = self._certificates[name]
            for dns_name in certificate.names:
                groups.setdefault(dns_name, []).append(certificate)
        contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        by_name: dict[str, ssl.SSLContext] = {}
        for dns_name, certificates in groups.items():
            chosen = _one_per_key_type(certificates)
            key = tuple(c.file for c in chosen)
            if key not in contexts:
                contexts[key] = context_for(chosen)
            by_name[dns_name] = contexts[key]
        if not self._certificates:
            log.warning("msg=\"no certificate in the directory: serving a self-signed one\" "
                        "dir=%s", self.directory)
            context = base_context()
            pem = self._self_signed()
            _load_pem(context, pem)
            return _Index(by_name, context, "(self-signed)",
                          ((parse_certificate_file("(self-signed)", pem, None).key_type, pem),))
        default_name = self._default_file if self._default_file in self._certificates \
            else sorted(self._certificates)[0]
        default = self._certificates[default_name]
        # the configured default first: another file with the same names (a renewal under a
        # new file name) must not take its place
        chosen = _one_per_key_type([default, *(c for c in self._certificates.values()
                                               if c.names == default.names)])
        key = tuple(c.file for c in chosen)
        return _Index(by_name, contexts.get(key) or context_for(chosen), default_name,
                      tuple((c.key_type, c.pem) for c in _loading_order(chosen)))

    def _mirror_default(self, index: _Index) -> None:
        """Load the default's certificates into the front context, when that leaves nothing
        else in it; otherwise stop relying on the front's copy for good."""
        if index.default_pems == self._front_pems:
            # the same certificates, a new index (_front_pems is empty unless they serve)
            self._front_serves = index.default
            return
        self._front_serves = None
        self._front_pems = ()
        key_types = frozenset(key_type for key_type, _ in index.default_pems)
        if not self._front_key_types <= key_types:
            # (a key type of an earlier default is gone, and the front still holds it)
            return
        self._front_key_types = self._front_key_types | key_types
        try:
            for _, pem in index.default_pems:
                _load_pem(self.front, pem)
        except CertificateError as error:
            # Checked before it got here, so this is not expected; the front's copy is then
            # not trusted, and switching keeps serving what the index says.
            log.warning("msg=\"default certificate not loaded into the front context\" "
                        "reason=%r", str(error))
            return
        self._front_pems = index.default_pems
        self._front_serves = index.default
        self._front_trusted_from = self._monotonic() + self._handshake_timeout

    def warn_expiring(self) -> None:
        now = self._clock()
        for name, certificate in self._certificates.items():
            left = certificate.not_after.timestamp() - now
            if left > EXPIRY_WARNING.total_seconds():
                continue
            if now - self._warned.get(name, -EXPIRY_WARNING_EVERY) < EXPIRY_WARNING_EVERY:
                continue
            self._warned[name] = now
            log.warning("msg=\"certificate expires soon\" file=%s names=%s not_after=%s "
                        "days_left=%.1f", name, ",".join(certificate.names),
                        certificate.not_after.isoformat(), left / 86400)


def _one_per_key_type(certificates: list[Certificate]) -> list[Certificate]:
    chosen: dict[str, Certificate] = {}
    for certificate in certificates:
        chosen.setdefault(certificate.key_type, certificate)
    return list(chosen.values())


