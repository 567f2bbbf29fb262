"""The egress SOCKS5 listener's users (RFC 1929 username/password): the ``users_file``, its
scrypt hashes, and the ``Authenticator`` that checks a client's credentials against them.

The file holds one ``user:hash`` a line; blank lines and lines starting with ``#`` are skipped,
whitespace around a line and around each of its two parts is stripped. The user name is what
comes before the first ``:`` (so a name cannot hold one), 1 to 255 bytes of UTF-8, as RFC 1929's
ULEN allows. A plain-text password is never accepted: every value must be a hash of the form

    scrypt$<log2 N>$<r>$<p>$<salt>$<key>

with the numbers in decimal and the salt and the key in standard base64 (``+/``) without its
``=`` padding, e.g. ``scrypt$15$8$1$<22 characters>$<43 characters>``, which
``mta-ingress hash-password`` prints.

Why scrypt: a stolen users file must not hand over the passwords, so each is stored as a slow,
salted hash; scrypt is memory-hard (every guess needs 128 * r * N bytes, 32 MiB at the
defaults, which is what makes GPU and ASIC guessing expensive, unlike a fast or merely
iterated hash), and ``hashlib.scrypt`` is in the standard library (OpenSSL), so it costs no
dependency, where bcrypt or argon2 would each need one.

Defaults for new hashes: log2 N = 15, r = 8, p = 1 (what Go's x/crypto/scrypt recommends for
interactive logins: tens of milliseconds), a 16-byte salt from ``secrets``, a 32-byte key.
Bounds accepted when reading (a hash outside them is refused, so a typo cannot make each login
cost seconds or gigabytes, nor a weak hash slip in): log2 N 10..20, r 1..32, p 1..16, a salt of
at least 8 bytes, a key of 16..64 bytes, and 128 * r * N at most 1 GiB (hashlib refuses scrypt
a maxmem of 2 GiB or more, which log2 N = 20 with r >= 16 would need).

scrypt keys PBKDF2-HMAC-SHA256 with the password, so, as everywhere scrypt is used, passwords
that make one HMAC key are one password: ``pw`` and ``pw\\0`` (HMAC pads its key with zeros),
a password over 64 bytes and its SHA-256. Each needs the other known already; nothing is done.

The ``Authenticator`` verifies a username and password. A check costs one scrypt run by design,
and an MTA opens many sessions with the same credentials, so credentials that passed are cached
(at most ``CACHE_SIZE``, the least recently used dropped first), keyed by an HMAC-SHA256 under a
random key made per process: the cache holds no password and no plain hash of one that could be
guessed offline. Failures are never cached (a wrong guess always pays scrypt). An unknown user
costs the same scrypt work as a known one, against a dummy hash, so that timing does not tell
which users exist. A check runs scrypt for tens of milliseconds: call it from a thread, never on
the event loop; the cache is guarded by a lock for that reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

DEFAULT_LOG2_N = 15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

LOG2_N_RANGE = range(10, 21)
R_RANGE = range(1, 33)
P_RANGE = range(1, 17)
MIN_SALT_BYTES = 8
KEY_BYTES_RANGE = range(16, 65)
# hashlib's maxmem must stay below 2**31; 1 GiB allows log2 N = 20 with r = 8.
MAX_MEMORY = 1 << 30
# RFC 1929: ULEN and PLEN are one octet each, 1 to 255.
MAX_NAME_BYTES = 255
MAX_PASSWORD_BYTES = 255

HASH_PREFIX = "scrypt$"
MAKE_ONE = "make one with `mta-ingress hash-password`"

# Decimal without leading zeros (every bound starts at 1), unpadded standard base64.
_HASH = re.compile(r"scrypt\$([1-9][0-9]{0,2})\$([1-9][0-9]{0,2})\$([1-9][0-9]{0,2})"
                   r"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


class UsersFileError(ValueError):
    """Every problem found in one users file, each as ``path:line: what is wrong``. No message
    quotes the value after a user name: on a refused line that may be a plain-text password."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Scrypt(NamedTuple):
    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    # One spelling per value: unused low bits set would give a second string for the same bytes.
    if _b64encode(data) != text:
        raise ValueError("not canonical base64")
    return data


def _check_parameters(log2_n: int, r: int, p: int) -> None:
    if log2_n not in LOG2_N_RANGE:
        raise ValueError(f"log2 N must be from 10 to 20, not {log2_n}")
    if r not in R_RANGE:
        raise ValueError(f"r must be from 1 to 32, not {r}")
    if p not in P_RANGE:
        raise ValueError(f"p must be from 1 to 16, not {p}")
    if (128 * r) << log2_n > MAX_MEMORY:
        raise ValueError(f"log2 N {log2_n} with r {r} needs more than 1 GiB (128 * r * N)")


def _decode(stored: str) -> _Scrypt:
    """The parts of a stored hash, or a ValueError saying what is wrong with it (never quoting
    it)."""
    if not stored.startswith(HASH_PREFIX):
        raise ValueError(f"is not a {HASH_PREFIX} hash")
    match = _HASH.fullmatch(stored)
    if match is None:
        raise ValueError(f"is not a {HASH_PREFIX} hash (scrypt$log2N$r$p$salt$key)")
    log2_n, r, p = int(match[1]), int(match[2]), int(match[3])
    try:
        _check_parameters(log2_n, r, p)
    except ValueError as error:
        raise ValueError(f"is refused: {error}") from None
    try:
        salt, key = _b64decode(match[4]), _b64decode(match[5])
    except ValueError:  # binascii.Error is one
        raise ValueError(f"is not a {HASH_PREFIX} hash: its salt or key is not base64") from None
    if len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"has a salt of {len(salt)} bytes; at least {MIN_SALT_BYTES} are needed")
    if len(key) not in KEY_BYTES_RANGE:
        raise ValueError(f"has a key of {len(key)} bytes; it must have 16 to 64")
    return _Scrypt(log2_n, r, p, salt, key)


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    # OpenSSL's own count of what it allocates (B and V), so any accepted hash can be computed;
    # hashlib's default maxmem (32 MiB) is just short of the defaults' needs.
    maxmem = 128 * r * p + 128 * r * ((1 << log2_n) + 2)
    return hashlib.scrypt(password, salt=salt, n=1 << log2_n, r=r, p=p, maxmem=maxmem,
                          dklen=length)


def hash_password(password: bytes, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R,
                  p: int = DEFAULT_P) -> str:
    """``scrypt$log2N$r$p$salt$key`` of the password with a fresh salt. Parameters outside the
    bounds accepted when reading raise ValueError: a hash is never made that would be refused."""
    _check_parameters(log2_n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, log2_n, r, p, KEY_BYTES)
    return f"{HASH_PREFIX}{log2_n}${r}${p}${_b64encode(salt)}${_b64encode(key)}"


def verify_password(stored: str, password: bytes) -> bool:
    """Whether the password gives the stored hash; a malformed stored hash gives False."""
    try:
        parts = _decode(stored)
    except ValueError:
        return False
    key = _scrypt(password, parts.salt, parts.log2_n, parts.r, parts.p, len(parts.key))
    return hmac.compare_digest(key, parts.key)


def user_name_problem(name: str) -> str | None:
    """What keeps ``name`` from being a user of a users file (for ``hash-password --user``), or
    None. The file's parser cannot see the first four: its lines make them impossible."""
    if name != name.strip():
        return "a user name cannot start or end with white space"
    if name.startswith("#"):
        return "a user name cannot start with '#' (the line would be a comment)"
    if ":" in name:
        return "a user name cannot hold ':' (it ends the name)"
    if "\n" in name or "\r" in name:
        return "a user name cannot hold a line break"
    if not name:
        return "empty user name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "the user name is not UTF-8"
    if size > MAX_NAME_BYTES:
        return f"the user name has {size} bytes; RFC 1929 carries at most {MAX_NAME_BYTES}"
    return None


def parse_users(text: str, source: str) -> dict[bytes, str]:
    """The users file's text -> {user name as UTF-8 bytes: stored hash}; UsersFileError with
    every problem, each ``source:line: what is wrong``."""
    users: dict[bytes, str] = {}
    first_line: dict[bytes, int] = {}
    problems: list[str] = []
    # split("\n"), not splitlines(): that also breaks at \f, \v, \x1c and U+2028, and the line
    # numbers would no longer be an editor's.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        user, colon, stored = line.partition(":")
        if not colon:
            # The line itself is not quoted: it may be a password.
            problems.append(f"{where}: not user:hash (no ':'); {MAKE_ONE} --user NAME")
            continue
        user, stored = user.strip(), stored.strip()
        found: list[str] = []
        name = b""
        problem = user_name_problem(user)
        if problem is not None:
            found.append(problem)
        else:
            name = user.encode("utf-8")
            if name in first_line:
                found.append(f"user {user!r} is listed twice (first on line "
                             f"{first_line[name]})")
            else:
                first_line[name] = number
        try:
            _decode(stored)
        except ValueError as error:
            whose = f"the hash of user {user!r}" if problem is None else "the hash"
            found.append(f"{whose} {error}; {MAKE_ONE}")
        problems += [f"{where}: {text}" for text in found]
        if not found:
            users[name] = stored
    if problems:
        raise UsersFileError(problems)
    return users


def load_users(path: str) -> dict[bytes, str]:
    """The users file at ``path``, parsed; UsersFileError if it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise UsersFileError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise UsersFileError([f"{path}: not UTF-8 (byte {error.start})"]) from None
    return parse_users(text, path)


class Authenticator:
    """Checks RFC 1929 credentials against a users table (the module docstring says how and
    why). ``replace`` swaps the table, on SIGHUP."""

    CACHE_SIZE = 1024

    def __init__(self, users: Mapping[bytes, str]) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        # Bumped by replace(): a check that began on the old table must not cache its success
        # after the cache was cleared.
        self._generation = 0
        self._users, self._dummy = self._prepare(users)

    @property
    def users(self) -> Mapping[bytes, str]:
        """The table, read-only: changing it behind the cache's back would keep old successes."""
        return self._users

    @staticmethod
    def _prepare(users: Mapping[bytes, str]) -> tuple[Mapping[bytes, str], str]:
        # The dummy takes the parameters most users' hashes have, so an unknown user costs what
        # a known one does; scrypt's cost hangs on N, r and p, not on the salt or key length.
        parameters: Counter[tuple[int, int, int]] = Counter()
        for stored in users.values():
            try:
                parts = _decode(stored)
            except ValueError:
                continue
            parameters[parts.log2_n, parts.r, parts.p] += 1
        log2_n, r, p = (parameters.most_common(1)[0][0] if parameters
                        else (DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P))
        dummy = hash_password(secrets.token_bytes(16), log2_n=log2_n, r=r, p=p)
        return MappingProxyType(dict(users)), dummy

    def _tag(self, username: bytes, password: bytes) -> bytes:
        # The name's length first: with only a b"\0" between them, ("a\0b", "c") and ("a", "b\0c")
        # would share a tag, and RFC 1929 allows a NUL in either.
        message = len(username).to_bytes(8, "big") + username + b"\0" + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check(self, username: bytes, password: bytes) -> bool:
        """Whether the user exists and the password is theirs. Runs scrypt unless the same
        credentials passed recently: call it from a thread."""
        tag = self._tag(username, password)
        with self._lock:
            if tag in self._verified:
                self._verified.move_to_end(tag)
                return True
            users, dummy, generation = self._users, self._dummy, self._generation
        stored = users.get(username)
        if stored is None:
            verify_password(dummy, password)
            return False
        if not verify_password(stored, password):
            return False
        with self._lock:
            if generation == self._generation:
                self._verified[tag] = None
                self._verified.move_to_end(tag)
                while len(self._verified) > self.CACHE_SIZE:
                    self._verified.popitem(last=False)
        return True

    def replace(self, users: Mapping[bytes, str]) -> None:
        """Use ``users`` from now on and forget every cached success."""
        table, dummy = self._prepare(users)
        with self._lock:
            self._users, self._dummy = table, dummy
            self._generation += 1
            self._verified.clear()
