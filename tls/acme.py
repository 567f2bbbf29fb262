"""Certificates without a TLS pod: ACME (RFC 8555) with HTTP-01, on the shared certificate volume.

Theory of operation
-------------------
One certificate covers every name of ``tls.acme.domains`` (the first is its common name). It is
written to ``<cert_dir>/acme-<first name>.pem`` in the one-file format the certificate store
reads (chain, then key), atomically: a dot-file in the same directory, fsync, rename, fsync of
the directory. Every worker's store poll then picks it up; nothing else is signalled.

Everything the replicas share lives on the volume, under ``<cert_dir>/.acme/`` (a dot-name the
store skips):

- ``account.key``: the ACME account key, made once by whichever replica needs it first (written
  aside and *linked* into place, which fails if another replica got there first; the loser then
  uses the winner's key).
- ``challenges/<token>``: the key authorization of each pending HTTP-01 challenge. The CA's
  validation request may reach any replica; each answers from this directory.
- ``leases/<name>.lease``: who is ordering this certificate, until when. Advisory locks are
  unreliable on NFS and EFS, so a lease is a file with an owner and an expiry: taken when absent
  or expired, written atomically, then read back after ``LEASE_SETTLE`` seconds; the replica
  whose owner string is there holds it (two replicas that took an expired lease at the same
  moment both read back the same last writer). A lease outlives the deadline of any order;
  the holder removes it when done, and a crashed holder's lease simply expires.

Only worker 0 of each replica runs the manager. It sleeps until the certificate is due for
renewal (the ACME Renewal Information time when the CA offers one, else when a third of the
lifetime remains), checks that DNS points at this cluster (``expected_addresses``: otherwise the
CA's validation would fail and count against its rate limits), takes the lease, checks again
that no other replica renewed meanwhile, and orders. The ``acme`` package is synchronous: each
call runs in a thread under a deadline. A failure is logged and retried after a delay that
doubles from ``retry_initial`` up to ``retry_max``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tls.settings import AcmeConfig

log = logging.getLogger("mta_ingress.acme")

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DIRECTORY_ALIASES = {"production": LETS_ENCRYPT, "staging": LETS_ENCRYPT_STAGING}

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
# RFC 8555 8.3: a token is base64url without padding; bounded so a path cannot be abused.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
STATE_DIR = ".acme"
LEASE_TTL = 600.0  # longer than any order may take (ORDER_DEADLINE and its margin)
LEASE_SETTLE = 1.0
ORDER_DEADLINE = 300.0  # an order, from new-order to the certificate, must finish in this
NETWORK_TIMEOUT = 30  # per HTTP request to the CA
RECHECK_EVERY = 3600.0  # a sleeping manager still looks at the files this often


# --- pure decisions ----------------------------------------------------------------------------

def certificate_file_name(domains: Sequence[str]) -> str:
    return f"acme-{domains[0]}.pem"


def renewal_time(not_before: datetime.datetime, not_after: datetime.datetime,
                 suggested: datetime.datetime | None = None) -> datetime.datetime:
    """When to renew: the CA's suggestion (ACME Renewal Information) if it gave one, else when
    a third of the lifetime remains (what Let's Encrypt recommends for its 90-day certificates)."""
    if suggested is not None:
        return min(suggested, not_after)
    return not_after - (not_after - not_before) / 3


def retry_delay(failures: int, initial: float, maximum: float) -> float:
    """Growing backoff: ``initial`` after the first failure, doubling, at most ``maximum``."""
    if failures <= 0:
        return 0.0
    return float(min(maximum, initial * 2 ** min(failures - 1, 32)))


def preflight_ok(addresses: Iterable[str], expected: Iterable[str]) -> bool:
    """True when DNS already sends the names' traffic here (some expected address is among the
    resolved ones); with no expected addresses configured, nothing is required."""
    wanted = set(expected)
    return not wanted or bool(wanted & set(addresses))


def covers(names: Iterable[str], domains: Iterable[str]) -> bool:
    have = {name.lower() for name in names}
    return all(domain.lower() in have for domain in domains)


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    expires: float  # seconds since the epoch: replicas compare it, so wall-clock time

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": self.expires}).encode() + b"\n"


def parse_lease(data: bytes) -> Lease | None:
    """A lease file's contents, or None when they are not a lease (half-written, foreign)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    owner, expires = body.get("owner"), body.get("expires")
    if not isinstance(owner, str) or not owner:
        return None
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    if expires != expires or expires in (float("inf"), float("-inf")):  # NaN, infinities
        return None
    return Lease(owner, float(expires))


def challenge_token(path: bytes) -> str | None:
    """The token of an HTTP-01 validation request's path, or None if it is not one."""
    if not path.startswith(CHALLENGE_PREFIX):
        return None
    try:
        token = path[len(CHALLENGE_PREFIX):].decode("ascii")
    except UnicodeDecodeError:
        return None
    return token if _TOKEN.fullmatch(token) else None


# --- files on the shared volume ----------------------------------------------------------------

def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never part."""
    temporary = _temporary_beside(path)
    _write_synced(temporary, data, mode)
    os.replace(temporary, path)
    _sync_directory(path.parent)


def _temporary_beside(path: Path) -> Path:
    # A dot-name (the store skips it) unique to this writer: replicas share the directory,
    # and threads of one process may write at once.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChallengeDirectory:
    """Pending HTTP-01 answers, shared by the replicas through the certificate volume."""

    def __init__(self, cert_dir: Path) -> None:
        self.path = cert_dir / STATE_DIR / "challenges"

    def publish(self, token: str, key_authorization: str) -> None:
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"not an ACME token: {token!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / token, key_authorization.encode("ascii"), 0o644)

    def withdraw(self, token: str) -> None:
        if _TOKEN.fullmatch(token):
            with contextlib.suppress(FileNotFoundError):
                (self.path / token).unlink()

    def answer(self, request_path: bytes) -> bytes | None:
        """The body for a validation request, or None to let the request go its normal way."""
        token = challenge_token(request_path.partition(b"?")[0])
        if token is None:
            return None
        try:
            with open(self.path / token, "rb") as file:
                return file.read(1024)
        except OSError:
            return None


class LeaseFile:
    """``leases/<name>.lease``: at most one replica orders a certificate at a time."""

    def __init__(self, cert_dir: Path, name: str, owner: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = cert_dir / STATE_DIR / "leases" / f"{name}.lease"
        self.owner = owner
        self._clock = clock

    def holder(self) -> Lease | None:
        try:
            lease = parse_lease(self.path.read_bytes())
        except OSError:
            return None
        if lease is None or lease.expires <= self._clock():
            return None
        return lease

    def claim(self, ttl: float = LEASE_TTL) -> bool:
        """Write our lease unless another replica holds a live one; confirm() decides."""
        current = self.holder()
        if current is not None and current.owner != self.owner:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, Lease(self.owner, self._clock() + ttl).encode(), 0o644)
        return True

    def confirm(self) -> bool:
        current = self.holder()
        return current is not None and current.owner == self.owner

    def release(self) -> None:
        if self.confirm():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def account_key(cert_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The account key every replica shares; made by the first replica that needs one."""
    path = cert_dir / STATE_DIR / "account.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        temporary = _temporary_beside(path)
        _write_synced(temporary, _private_pem(key), 0o600)
        try:
            os.link(temporary, path)  # fails if another replica's key is already there
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        _sync_directory(path.parent)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: the account key must be an EC key")
    return loaded


def new_certificate_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True, slots=True)
class Held:
    """The certificate this manager keeps, as found in the directory."""

    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str
    chain_pem: bytes


def read_held(path: Path) -> Held | None:
    """The leaf of the managed file, or None when it is absent or unreadable (renew then)."""
    try:
        data = path.read_bytes()
        chain = x509.load_pem_x509_certificates(data)
    except (OSError, ValueError):
        return None
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return Held(names, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                leaf.issuer.rfc4514_string(), chain_pem)


# --- the CA, through the synchronous acme package ----------------------------------------------

class AcmeError(Exception):
    """An order could not be completed; the message says where it stopped."""


class AcmeClient:
    """One account at one CA. Every method blocks: call them from a thread."""

    def __init__(self, settings: AcmeConfig, key: ec.EllipticCurvePrivateKey) -> None:
        from acme import client, errors, messages
        from josepy.jwa import ES256
        from josepy.jwk import JWKEC

        self._messages = messages
        self._key = JWKEC(key=key)
        network = client.ClientNetwork(self._key, alg=ES256,
                                       user_agent="mta-ingress", timeout=NETWORK_TIMEOUT)
        if settings.ca_bundle:
            # requests takes a CA file path where acme's signature says bool.
            network.verify_ssl = settings.ca_bundle  # type: ignore[assignment]
        directory = client.ClientV2.get_directory(settings.directory, network)
        self._client = client.ClientV2(directory, network)
        registration = messages.NewRegistration.from_data(
            email=settings.email, terms_of_service_agreed=True)
        try:
            self._client.new_account(registration)
        except errors.ConflictError as existing:
            # The shared key already has an account: use it.
            self._client.net.account = self._client.query_registration(
                messages.RegistrationResource(uri=str(existing.location), body=registration))

    def order(self, domains: Sequence[str], key_pem: bytes, challenges: ChallengeDirectory,
              deadline: float) -> bytes:
        """Order a certificate for ``domains`` with HTTP-01; its full chain in PEM."""
        from acme import challenges as acme_challenges
        from acme import crypto_util

        order = self._client.new_order(crypto_util.make_csr(key_pem, list(domains)))
        published: list[str] = []
        try:
            for authorization in order.authorizations:
                if authorization.body.status == self._messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation
                http01 = next((c for c in authorization.body.challenges
                               if isinstance(c.chall, acme_challenges.HTTP01)), None)
                if http01 is None:
                    raise AcmeError(f"{authorization.body.identifier.value}: the CA offers no "
                                    f"HTTP-01 challenge")
                response, validation = http01.response_and_validation(self._key)
                token = http01.chall.encode("token")
                challenges.publish(token, validation)
                published.append(token)
                self._client.answer_challenge(http01, response)
            finished = self._client.poll_and_finalize(
                order, deadline=datetime.datetime.fromtimestamp(deadline))
        finally:
            for token in published:
                challenges.withdraw(token)
        if not finished.fullchain_pem:
            raise AcmeError("the CA finalized the order without a certificate")
        return finished.fullchain_pem.encode("ascii")

    def suggested_renewal(self, chain_pem: bytes) -> datetime.datetime | None:
        """The CA's ACME Renewal Information time, when it offers ARI."""
        from acme import errors

        try:
            suggested, _ = self._client.renewal_time(chain_pem)
        except errors.ARIError as error:
            log.warning("msg=\"renewal information unavailable\" error=%r", str(error))
            return None
        if suggested is not None and suggested.tzinfo is None:
            suggested = suggested.astimezone(datetime.UTC)
        return suggested


# --- DNS preflight -----------------------------------------------------------------------------

async def resolve_addresses(name: str, nameservers: Sequence[tuple[str, int]],
                            lifetime: float) -> set[str]:
    """Every A and AAAA address of ``name``, CNAMEs followed, through the resolver DNS discovery
    uses. A name that does not exist has none; a failed look-up raises (and is retried)."""
    from routing.discovery import Failed, lookup_addresses, make_resolver

    found: set[str] = set()
    for answer in await lookup_addresses(make_resolver(nameservers, lifetime), name):
        if isinstance(answer, Failed):
            if answer.problem == "nxdomain":
                continue
            raise AcmeError(f"DNS look-up of {name} failed: {answer.problem} {answer.detail}")
        found.update(answer.values)
    return found


# --- the manager -------------------------------------------------------------------------------

Connect = Callable[[AcmeConfig], AcmeClient]


class AcmeManager:
    """Keeps ``<cert_dir>/acme-<name>.pem`` current; runs in worker 0 of every replica."""

    def __init__(self, settings: AcmeConfig, cert_dir: Path, *,
                 nameservers: Sequence[tuple[str, int]] = (), dns_timeout: float = 5.0,
                 connect: Connect | None = None,
                 on_order: Callable[[str], None] = lambda outcome: None) -> None:
        self.settings = settings
        self.cert_dir = cert_dir
        self.file = cert_dir / certificate_file_name(settings.domains)
        self.challenges = ChallengeDirectory(cert_dir)
        self.owner = f"{socket.gethostname()}/{os.getpid()}"
        self.lease = LeaseFile(cert_dir, settings.domains[0], self.owner)
        self._nameservers = tuple(nameservers)
        self._dns_timeout = dns_timeout
        self._connect = connect or self._default_connect
        self._on_order = on_order  # "obtained" or "failed": for the metrics
        self._client: AcmeClient | None = None
        self.failures = 0

    def _default_connect(self, settings: AcmeConfig) -> AcmeClient:
        return AcmeClient(settings, account_key(self.cert_dir))

    async def run_forever(self) -> None:
        while True:
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # anything from the CA, the volume or DNS: retry later
                self.failures += 1
                delay = retry_delay(self.failures, self.settings.retry_initial,
                                    self.settings.retry_max)
                log.warning("msg=\"certificate order failed\" names=%s error=%r failures=%d "
                            "retry_in_s=%.0f", ",".join(self.settings.domains),
                            str(error) or type(error).__name__, self.failures, delay)
            await asyncio.sleep(delay)

    def held(self) -> Held | None:
        """The managed certificate, if it is there and covers every configured name."""
        held = read_held(self.file)
        if held is None or not covers(held.names, self.settings.domains):
            return None
        return held

    async def step(self) -> float:
        """One look at the certificate; orders if due. Seconds until the next look."""
        now = datetime.datetime.now(datetime.UTC)
        held = self.held()
        if held is not None:
            when = renewal_time(held.not_before, held.not_after)
            if now < when:  # not due by the lifetime: the CA may still ask for it earlier
                when = renewal_time(held.not_before, held.not_after,
                                    await self._suggested_renewal(held))
            if now < when:
                self.failures = 0
                return max(1.0, min(RECHECK_EVERY, (when - now).total_seconds()))
        for domain in self.settings.domains if self.settings.expected_addresses else ():
            addresses = await resolve_addresses(domain, self._nameservers, self._dns_timeout)
            if not preflight_ok(addresses, self.settings.expected_addresses):
                self.failures += 1
                delay = retry_delay(self.failures, self.settings.retry_initial,
                                    self.settings.retry_max)
                log.warning("msg=\"not ordering: DNS does not point here yet\" name=%s "
                            "resolved=%s expected=%s retry_in_s=%.0f", domain,
                            ",".join(sorted(addresses)) or "-",
                            ",".join(self.settings.expected_addresses), delay)
                return delay
        if not await self._take_lease():
            holder = self.lease.holder()
            log.info("msg=\"another replica is ordering\" names=%s holder=%s",
                     ",".join(self.settings.domains), holder.owner if holder else "-")
            return max(LEASE_SETTLE * 5, self.settings.retry_initial / 4)
        try:
            # Another replica may have finished an order while we waited for the lease.
            held = self.held()
            if held is not None and datetime.datetime.now(datetime.UTC) < renewal_time(
                    held.not_before, held.not_after):
                return 1.0
            try:
                await self._order()
            except Exception:
                self._on_order("failed")
                raise
            self._on_order("obtained")
        finally:
            await self._blocking(self.lease.release)
        self.failures = 0
        return 1.0

    async def _suggested_renewal(self, held: Held) -> datetime.datetime | None:
        """The CA's renewal time for ``held``; None when it offers none or cannot be reached
        (a certificate that is still good must not wait on the CA)."""
        try:
            if self._client is None:
                self._client = await self._blocking(self._connect, self.settings)
            suggested: datetime.datetime | None = await self._blocking(
                self._client.suggested_renewal, held.chain_pem)
        except Exception as error:  # the CA unreachable: the default schedule still holds
            log.info("msg=\"renewal information unavailable\" error=%r",
                     str(error) or type(error).__name__)
            return None
        return suggested

    async def _take_lease(self) -> bool:
        if not await self._blocking(self.lease.claim):
            return False
        await asyncio.sleep(LEASE_SETTLE)
        return bool(await self._blocking(self.lease.confirm))

    async def _order(self) -> None:
        names = ",".join(self.settings.domains)
        if self._client is None:
            self._client = await self._blocking(self._connect, self.settings)
        key = new_certificate_key(self.settings.key_type)
        key_pem = _private_pem(key)
        log.info("msg=\"ordering a certificate\" names=%s directory=%s", names,
                 self.settings.directory)
        started = time.monotonic()
        deadline = time.time() + ORDER_DEADLINE
        client = self._client
        chain = await self._blocking(client.order, self.settings.domains, key_pem,
                                     self.challenges, deadline, limit=ORDER_DEADLINE + 30)
        await self._blocking(write_atomic, self.file, chain + key_pem, 0o600)
        held = read_held(self.file)
        log.info("msg=\"certificate obtained\" names=%s file=%s not_after=%s took_s=%.1f",
                 names, self.file.name, held.not_after.isoformat() if held else "?",
                 time.monotonic() - started)

    async def _blocking(self, function: Callable[..., Any], *args: Any,
                        limit: float = NETWORK_TIMEOUT * 2) -> Any:
        """``function(*args)`` in a thread. Past ``limit`` the wait ends with TimeoutError; the
        thread itself ends at the latest when its HTTP request times out."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(limit):
            return await loop.run_in_executor(None, function, *args)
