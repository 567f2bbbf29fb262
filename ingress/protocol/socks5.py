"""SOCKS version 5 (RFC 1928) with username/password authentication (RFC 1929), sans-IO.

A SOCKS5 exchange is four small messages each way, strictly in turn:

    client                                   server
    greeting (VER NMETHODS METHODS)   ->
                                      <-     method choice (VER METHOD)
    [credentials (RFC 1929)           ->
                                      <-     auth status (VER STATUS)]
    request (VER CMD RSV ATYP ADDR PORT) ->
                                      <-     reply (VER REP RSV ATYP ADDR PORT)
    ... relayed stream both ways ...

Which message comes next is the caller's state, so this module is a parser and an encoder per
message and nothing else. Every parser is a pure function of the bytes buffered so far, starting
at the message's first byte: None means "need more", ``(message, consumed)`` means the message
is ``data[:consumed]`` and what follows belongs to the next message or to the relayed stream
(a client may pipeline its request behind its greeting, and data behind its request).

Parsers are prefix-stable: checks run in the order of the bytes they read, and each one runs as
soon as its byte is buffered, so a buffer that proves the message malformed is rejected at once
(a SOCKS4 or HTTP client is turned away on its first byte), and any longer buffer gives the same
answer. Nothing but Socks5Error escapes them, whatever the bytes.

Errors in a request carry the reply code the server should send before closing (RFC 1928 §6:
"When a reply (REP value other than X'00') indicates a failure, the SOCKS server MUST terminate
the TCP connection shortly after sending the reply"); errors elsewhere carry None, since the
greeting and the credentials have their own failure answers (method X'FF', a non-zero status)
and a client has nobody to reply to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ATYP_DOMAIN",
    "ATYP_IPV4",
    "ATYP_IPV6",
    "AUTH_FAILED",
    "AUTH_OK",
    "AUTH_VERSION",
    "CMD_BIND",
    "CMD_CONNECT",
    "CMD_UDP_ASSOCIATE",
    "METHOD_NONE_ACCEPTABLE",
    "METHOD_NO_AUTH",
    "METHOD_USERPASS",
    "REP_ADDRESS_TYPE_NOT_SUPPORTED",
    "REP_COMMAND_NOT_SUPPORTED",
    "REP_CONNECTION_REFUSED",
    "REP_GENERAL_FAILURE",
    "REP_HOST_UNREACHABLE",
    "REP_NETWORK_UNREACHABLE",
    "REP_NOT_ALLOWED",
    "REP_SUCCEEDED",
    "REP_TTL_EXPIRED",
    "VERSION",
    "Credentials",
    "Greeting",
    "Reply",
    "Request",
    "Socks5Error",
    "address_type_of",
    "encode_auth_status",
    "encode_credentials",
    "encode_greeting",
    "encode_method_choice",
    "encode_reply",
    "encode_request",
    "parse_auth_status",
    "parse_credentials",
    "parse_greeting",
    "parse_method_choice",
    "parse_reply",
    "parse_request",
]

VERSION: Final = 5

#   o  X'00' NO AUTHENTICATION REQUIRED
#   o  X'02' USERNAME/PASSWORD
#   o  X'FF' NO ACCEPTABLE METHODS
METHOD_NO_AUTH: Final = 0x00
METHOD_USERPASS: Final = 0x02
METHOD_NONE_ACCEPTABLE: Final = 0xFF

#   o  CONNECT X'01'
#   o  BIND X'02'
#   o  UDP ASSOCIATE X'03'
CMD_CONNECT: Final = 1
CMD_BIND: Final = 2
CMD_UDP_ASSOCIATE: Final = 3

#   o  IP V4 address: X'01'
#   o  DOMAINNAME: X'03'
#   o  IP V6 address: X'04'
ATYP_IPV4: Final = 1
ATYP_DOMAIN: Final = 3
ATYP_IPV6: Final = 4

#   o  X'00' succeeded
#   o  X'01' general SOCKS server failure
#   o  X'02' connection not allowed by ruleset
#   o  X'03' Network unreachable
#   o  X'04' Host unreachable
#   o  X'05' Connection refused
#   o  X'06' TTL expired
#   o  X'07' Command not supported
#   o  X'08' Address type not supported
#   o  X'09' to X'FF' unassigned
REP_SUCCEEDED: Final = 0
REP_GENERAL_FAILURE: Final = 1
REP_NOT_ALLOWED: Final = 2
REP_NETWORK_UNREACHABLE: Final = 3
REP_HOST_UNREACHABLE: Final = 4
REP_CONNECTION_REFUSED: Final = 5
REP_TTL_EXPIRED: Final = 6
REP_COMMAND_NOT_SUPPORTED: Final = 7
REP_ADDRESS_TYPE_NOT_SUPPORTED: Final = 8

# RFC 1929: "The VER field contains the current version of the subnegotiation, which is X'01'.
# [...] A STATUS field of X'00' indicates success."
AUTH_VERSION: Final = 1
AUTH_OK: Final = 0
AUTH_FAILED: Final = 1

# The longest message each parser can need, so that a caller's buffer holding the relayed stream
# behind the message is never copied whole: greeting 2 + 255 methods; credentials
# 1 + (1 + 255) * 2; request and reply 4 + (1 + 255) domain + 2 port.
_MAX_GREETING: Final = 2 + 255
_MAX_CREDENTIALS: Final = 1 + 2 * (1 + 255)
_MAX_ADDRESSED: Final = 4 + 1 + 255 + 2
_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"
# The bytes a DOMAINNAME may hold: printable ASCII without the space. ``bytes.translate``
# deletes these, so anything left over is an offending byte, found in C rather than by a Python
# loop. RFC 1928 says only "a fully-qualified domain name"; a space, a control byte or an 8-bit
# byte can be no part of one that resolves, and each would end up in log lines and routing keys.
_DOMAIN_BYTES: Final = bytes(range(0x21, 0x7F))

Buffer = bytes | bytearray | memoryview


class Socks5Error(ValueError):
    """Raised for any message that must be rejected.

    ``reason`` is a short stable label for logs and metrics; str() is the message for humans.
    ``reply`` is the RFC 1928 REP code to send before closing when the error is in a request,
    else None.
    """

    reason: str
    reply: int | None

    def __init__(self, reason: str, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reply = reply

    def __reduce__(self) -> tuple[type[Socks5Error], tuple[str, str, int | None]]:
        # The default reduce replays ``self.args`` (one message) into a three-argument __init__.
        return (type(self), (self.reason, str(self), self.reply))


@dataclass(frozen=True, slots=True)
class Greeting:
    """The client's version identifier/method selection message: the methods it offers."""

    methods: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Credentials:
    """An RFC 1929 username/password request. The password stays out of repr(), and so out of
    any log line or assertion message that prints the object."""

    username: bytes
    password: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Request:
    """A SOCKS request. ``host`` is text: IPv4 dotted quad, IPv6 as ``ipaddress`` prints it, or
    the domain name as sent (not resolved, not lower-cased, even if it spells an IP address)."""

    command: int
    host: str
    port: int
    address_type: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A server's reply to a request: the REP code and BND.ADDR / BND.PORT, as in Request."""

    code: int
    host: str
    port: int
    address_type: int


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------


def _check_version(first: int, reply: int | None) -> None:
    if first != VERSION:
        raise Socks5Error("bad-version", f"SOCKS version {first}, expected {VERSION}", reply)


#   +----+----------+----------+
#   |VER | NMETHODS | METHODS  |
#   +----+----------+----------+
#   | 1  |    1     | 1 to 255 |
#   +----+----------+----------+
def parse_greeting(data: Buffer) -> tuple[Greeting, int] | None:
    """Server side: the client's greeting. Raises Socks5Error ("bad-version", "no-methods")."""
    buf = bytes(data[:_MAX_GREETING])
    size = len(buf)
    if size == 0:
        return None
    _check_version(buf[0], None)
    if size == 1:
        return None
    count = buf[1]
    if count == 0:
        raise Socks5Error("no-methods", "greeting offers no authentication method")
    end = 2 + count
    if size < end:
        return None
    return Greeting(tuple(buf[2:end])), end


#   +----+------+----------+------+----------+
#   |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
#   +----+------+----------+------+----------+
#   | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
#   +----+------+----------+------+----------+
def parse_credentials(data: Buffer) -> tuple[Credentials, int] | None:
    """Server side: an RFC 1929 request. Raises Socks5Error ("bad-auth-version",
    "bad-credentials" for an empty username or password, which the RFC's layout excludes)."""
    buf = bytes(data[:_MAX_CREDENTIALS])
    size = len(buf)
    if size == 0:
        return None
    if buf[0] != AUTH_VERSION:
        raise Socks5Error(
            "bad-auth-version",
            f"username/password subnegotiation version {buf[0]}, expected {AUTH_VERSION}",
        )
    if size == 1:
        return None
    ulen = buf[1]
    if ulen == 0:
        raise Socks5Error("bad-credentials", "empty username")
    plen_at = 2 + ulen
    if size <= plen_at:
        return None
    plen = buf[plen_at]
    if plen == 0:
        raise Socks5Error("bad-credentials", "empty password")
    end = plen_at + 1 + plen
    if size < end:
        return None
    return Credentials(buf[2:plen_at], buf[plen_at + 1 : end]), end


#   +----+-----+-------+------+----------+----------+
#   |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
#   +----+-----+-------+------+----------+----------+
#   | 1  |  1  | X'00' |  1   | Variable |    2     |
#   +----+-----+-------+------+----------+----------+
def parse_request(data: Buffer) -> tuple[Request, int] | None:
    """Server side: the client's request. Raises Socks5Error whose ``reply`` is the REP code to
    answer with: 7 for an unknown command, 8 for an unknown address type, 1 otherwise."""
    buf = bytes(data[:_MAX_ADDRESSED])
    size = len(buf)
    if size == 0:
        return None
    _check_version(buf[0], REP_GENERAL_FAILURE)
    if size == 1:
        return None
    command = buf[1]
    if command < CMD_CONNECT or command > CMD_UDP_ASSOCIATE:
        raise Socks5Error("bad-command", f"unknown command {command}", REP_COMMAND_NOT_SUPPORTED)
    if size == 2:
        return None
    _check_reserved(buf[2], REP_GENERAL_FAILURE)
    address = _parse_address(buf, REP_ADDRESS_TYPE_NOT_SUPPORTED, REP_GENERAL_FAILURE)
    if address is None:
        return None
    address_type, host, port, end = address
    return Request(command, host, port, address_type), end


#   +----+-----+-------+------+----------+----------+
#   |VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
#   +----+-----+-------+------+----------+----------+
#   | 1  |  1  | X'00' |  1   | Variable |    2     |
#   +----+-----+-------+------+----------+----------+
def parse_reply(data: Buffer) -> tuple[Reply, int] | None:
    """Client side: the server's reply. Raises Socks5Error ("bad-reply" for a REP code outside
    the RFC's 0..8, as well as the address errors of parse_request), always with reply None."""
    buf = bytes(data[:_MAX_ADDRESSED])
    size = len(buf)
    if size == 0:
        return None
    _check_version(buf[0], None)
    if size == 1:
        return None
    code = buf[1]
    # X'09' to X'FF' are unassigned: a server sending one is not speaking RFC 1928, and telling
    # success from failure by "non-zero" would guess at what it meant.
    if code > REP_ADDRESS_TYPE_NOT_SUPPORTED:
        raise Socks5Error("bad-reply", f"unassigned reply code {code}")
    if size == 2:
        return None
    _check_reserved(buf[2], None)
    address = _parse_address(buf, None, None)
    if address is None:
        return None
    address_type, host, port, end = address
    return Reply(code, host, port, address_type), end


def _check_reserved(rsv: int, reply: int | None) -> None:
    # "Fields marked RESERVED (RSV) must be set to X'00'."
    if rsv != 0:
        raise Socks5Error("bad-reserved", f"reserved byte is {rsv:#04x}, must be 0", reply)


def _parse_address(
    buf: bytes, atyp_reply: int | None, other_reply: int | None
) -> tuple[int, str, int, int] | None:
    """ATYP, ADDR and PORT from offset 3 of a request or reply: (type, host, port, end)."""
    size = len(buf)
    if size < 4:
        return None
    address_type = buf[3]
    if address_type == ATYP_IPV4:
        end = 4 + 4 + 2
        if size < end:
            return None
        host = socket.inet_ntop(socket.AF_INET, buf[4:8])
    elif address_type == ATYP_IPV6:
        end = 4 + 16 + 2
        if size < end:
            return None
        host = _ipv6_text(buf[4:20])
    elif address_type == ATYP_DOMAIN:
        # "the first octet of the address field contains the number of octets of name that
        # follow, there is no terminating NUL octet."
        if size < 5:
            return None
        length = buf[4]
        if length == 0:
            raise Socks5Error("empty-domain", "domain name of length 0", other_reply)
        # Checked before the name is complete, so that a bad byte is rejected on arrival.
        name = buf[5 : 5 + length]
        offending = name.translate(None, _DOMAIN_BYTES)
        if offending:
            # The byte and its place, not the name: a hostile name has no business in a log.
            raise Socks5Error(
                "bad-domain",
                f"domain name byte {name.index(offending[0])} is {offending[0]:#04x}, "
                "outside printable ASCII",
                other_reply,
            )
        end = 5 + length + 2
        if size < end:
            return None
        host = name.decode("ascii")
    else:
        raise Socks5Error(
            "bad-address-type", f"unknown address type {address_type}", atyp_reply
        )
    port = (buf[end - 2] << 8) | buf[end - 1]
    return address_type, host, port, end


def _ipv6_text(packed: bytes) -> str:
    # inet_ntop and ipaddress agree on RFC 5952 compression (longest run of two or more zero
    # groups, the first one on a tie), but libc writes ::a.b.c.d and ::ffff:a.b.c.d where
    # ipaddress writes hex groups (before Python 3.13, dotted for the mapped form after). Those
    # few addresses, and only those, have a dot in libc's text and go the slow way.
    text = socket.inet_ntop(socket.AF_INET6, packed)
    if "." in text:
        return str(ipaddress.IPv6Address(packed))
    return text


#   +----+--------+
#   |VER | METHOD |
#   +----+--------+
#   | 1  |   1    |
#   +----+--------+
def parse_method_choice(data: Buffer) -> tuple[int, int] | None:
    """Client side: the method the server chose (METHOD_NONE_ACCEPTABLE included; the caller
    decides). Raises Socks5Error ("bad-version")."""
    if len(data) == 0:
        return None
    _check_version(data[0], None)
    if len(data) == 1:
        return None
    return data[1], 2


#   +----+--------+
#   |VER | STATUS |
#   +----+--------+
#   | 1  |   1    |
#   +----+--------+
def parse_auth_status(data: Buffer) -> tuple[bool, int] | None:
    """Client side: the RFC 1929 answer, True for success. Raises Socks5Error
    ("bad-auth-version")."""
    if len(data) == 0:
        return None
    first = data[0]
    if first != AUTH_VERSION:
        raise Socks5Error(
            "bad-auth-version",
            f"username/password status version {first}, expected {AUTH_VERSION}",
        )
    if len(data) == 1:
        return None
    # "A STATUS field of X'00' indicates success. If the server returns a `failure' (STATUS
    # value other than X'00') status, it MUST close the connection."
    return data[1] == AUTH_OK, 2


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


def _check_byte(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise ValueError(f"{what} must be 0..255, got {value!r}")
    return value


def _pack_host(host: str) -> tuple[int, bytes]:
    """(ATYP, ADDR field): an IP literal packed, IPv4-mapped IPv6 as IPv4, else a domain."""
    try:
        return ATYP_IPV4, socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    # getsockname() reports link-local addresses as "fe80::1%eth0"; the scope has no meaning
    # on the other side and no place in the message.
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        pass
    else:
        if packed.startswith(_V4_MAPPED_PREFIX):
            return ATYP_IPV4, packed[12:]
        return ATYP_IPV6, packed
    # A name that needs IDNA is the caller's to convert (``host.encode("idna")``): which IDNA
    # flavour applies is a policy, not part of this protocol.
    if not host.isascii():
        raise ValueError(f"domain name must be ASCII: {host[:40]!r}")
    name = host.encode("ascii")
    if not name:
        raise ValueError("empty host")
    if len(name) > 255:
        raise ValueError(f"domain name is {len(name)} bytes, max 255")
    if name.translate(None, _DOMAIN_BYTES):
        raise ValueError(f"domain name must be printable ASCII without spaces: {host[:40]!r}")
    return ATYP_DOMAIN, bytes((len(name),)) + name


def _pack_address(host: str, port: int) -> bytes:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"not a TCP port: {port!r}")
    if not isinstance(host, str):
        raise ValueError(f"host must be text, got {host!r}")
    address_type, packed = _pack_host(host)
    return bytes((address_type,)) + packed + port.to_bytes(2, "big")


def address_type_of(host: str) -> int:
    """The ATYP the encoders send ``host`` with: ATYP_IPV4 for an IPv4 literal or an
    IPv4-mapped IPv6 one, ATYP_IPV6 for another IPv6 literal, else ATYP_DOMAIN (valid or not)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    else:
        return ATYP_IPV4
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return ATYP_DOMAIN
    return ATYP_IPV4 if packed.startswith(_V4_MAPPED_PREFIX) else ATYP_IPV6


def encode_greeting(methods: Sequence[int]) -> bytes:
    """Client side: offer ``methods`` (1 to 255 of them, in the client's order of preference)."""
    if not 1 <= len(methods) <= 255:
        raise ValueError(f"a greeting offers 1 to 255 methods, got {len(methods)}")
    for method in methods:
        _check_byte(method, "method")
    return bytes((VERSION, len(methods))) + bytes(methods)


def encode_credentials(username: bytes, password: bytes) -> bytes:
    """Client side: an RFC 1929 request. Each field must be 1 to 255 bytes."""
    for value, what in ((username, "username"), (password, "password")):
        if not 1 <= len(value) <= 255:
            raise ValueError(f"{what} must be 1 to 255 bytes, got {len(value)}")
    return (
        bytes((AUTH_VERSION, len(username))) + bytes(username) + bytes((len(password),))
        + bytes(password)
    )


def encode_request(command: int, host: str, port: int) -> bytes:
    """Client side: a request for ``host`` (IPv4 or IPv6 literal, else a domain name of at most
    255 printable ASCII bytes) and ``port``. Raises ValueError on bad input."""
    if not isinstance(command, int) or not CMD_CONNECT <= command <= CMD_UDP_ASSOCIATE:
        raise ValueError(f"command must be 1..3, got {command!r}")
    return bytes((VERSION, command, 0)) + _pack_address(host, port)


def encode_method_choice(method: int) -> bytes:
    """Server side: the chosen method, or METHOD_NONE_ACCEPTABLE (then close)."""
    return bytes((VERSION, _check_byte(method, "method")))


def encode_auth_status(ok: bool) -> bytes:
    """Server side: the RFC 1929 answer (on failure the server "MUST close the connection")."""
    return bytes((AUTH_VERSION, AUTH_OK if ok else AUTH_FAILED))


def encode_reply(code: int, address: tuple[str, int] | None = None) -> bytes:
    """Server side: a reply with BND.ADDR / BND.PORT ``address``, encoded as encode_request
    encodes hosts. None sends 0.0.0.0 port 0, as servers do on failure where no address exists.
    Raises ValueError on bad input."""
    if not isinstance(code, int) or not REP_SUCCEEDED <= code <= REP_ADDRESS_TYPE_NOT_SUPPORTED:
        raise ValueError(f"reply code must be 0..8, got {code!r}")
    if address is None:
        return bytes((VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0))
    return bytes((VERSION, code, 0)) + _pack_address(address[0], address[1])
