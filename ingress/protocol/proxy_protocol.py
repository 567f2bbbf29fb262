"""PROXY protocol v1 and v2 (HAProxy doc/proxy-protocol.txt), sans-IO.

The receiver side is a pure function of the bytes buffered so far: ``parse_header`` either needs
more bytes, returns the header and its length, or rejects. It is prefix-stable: once a prefix of
the stream yields an answer, every longer buffer yields the same answer, so the caller may call it
after every read without caring how TCP segmented the header.

The sender side produces exactly what HAProxy's ``send-proxy`` / ``send-proxy-v2`` put on the wire,
because the backends (Postfix, Exim, Dovecot, ...) are tested against HAProxy.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "HeaderReader",
    "ProxyHeader",
    "ProxyProtocolError",
    "crc32c",
    "encode_v1",
    "encode_v2",
    "encode_v2_local",
    "parse_header",
]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH: Final = 107

#   #define PP2_TYPE_ALPN           0x01
#   #define PP2_TYPE_AUTHORITY      0x02
#   #define PP2_TYPE_CRC32C         0x03
#   #define PP2_TYPE_NOOP           0x04
#   #define PP2_TYPE_UNIQUE_ID      0x05
#   #define PP2_TYPE_SSL            0x20
#   #define PP2_TYPE_NETNS          0x30
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30

_V1_PREFIX: Final = b"PROXY "
_V2_HEADER_LENGTH: Final = 16
_V2_MAX_BLOCK: Final = 0xFFFF
_V2_CMD_LOCAL: Final = 0x0
_V2_CMD_PROXY: Final = 0x1
# Every byte a v1 line may contain; ``bytes.translate`` deletes these so anything left over is
# an offending byte, found in C rather than by a Python loop over the line.
_V1_PRINTABLE: Final = bytes(range(0x20, 0x7F))
_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"
_TLV_HEADER: Final = struct.Struct(">BH")
_PORTS: Final = struct.Struct(">HH")

# fam byte -> (family label, address block length). The spec lists exactly these combinations
# ("In practice, the following protocol bytes are expected"); any other value "must be rejected
# as invalid by receivers".
_V2_FAMILIES: Final[dict[int, tuple[str, int]]] = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX_DGRAM", 216),
}
_V2_FAMILY_BYTE: Final = {socket.AF_INET: 0x11, socket.AF_INET6: 0x21}
_AF_NAMES: Final = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """Raised for any header that must be rejected.

    ``reason`` is a short stable label meant for metrics; ``detail`` is for humans and logs.
    """

    reason: str
    detail: str

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"invalid PROXY protocol header ({reason}): {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[ProxyProtocolError], tuple[str, str]]:
        # The default reduce replays ``self.args`` (one message) into a two-argument __init__.
        return (type(self), (self.reason, self.detail))


# One per connection: not frozen, and its __init__ written out, because a frozen dataclass's
# generated __init__ is interpreted Python that sets each field through object.__setattr__
# (about 1 us; mypyc compiles a written one, 0.13 us). Nothing changes a header once parsed.
@dataclass(slots=True, init=False)
class ProxyHeader:
    """A decoded PROXY protocol header.

    ``local`` means the receiver must use the real connection's endpoints: a v2 LOCAL command, a
    v2 PROXY command with the UNSPEC family, or a v1 ``UNKNOWN`` line.
    """

    version: int
    local: bool
    family: str
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...]

    def __init__(self, version: int, local: bool, family: str, source: Address | None,
                 destination: Address | None, tlvs: tuple[tuple[int, bytes], ...] = ()) -> None:
        self.version = version
        self.local = local
        self.family = family
        self.source = source
        self.destination = destination
        self.tlvs = tlvs

    @property
    def client_address(self) -> Address | None:
        """The relayed TCP client's (address, port), or None if the peer address applies."""
        if self.local or (self.family != "TCP4" and self.family != "TCP6"):
            return None
        return self.source


# --------------------------------------------------------------------------------------------
# CRC32C
# --------------------------------------------------------------------------------------------


def _make_crc32c_table() -> tuple[int, ...]:
    # Castagnoli polynomial 0x1EDC6F41, bit-reversed because RFC 4960 Appendix B (the reference
    # the spec cites) uses the reflected, LSB-first form.
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _make_crc32c_table()


def _crc32c(data: bytes | bytearray | memoryview, value: int) -> int:
    table = _CRC32C_TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``.

    ``value`` is the CRC of the preceding bytes, as with ``zlib.crc32``, so that
    ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
    """
    return _crc32c(data, value)


# --------------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------------


def _show(data: bytes | bytearray | memoryview) -> str:
    # Details end up in logs; a hostile peer must not be able to make them large.
    return repr(bytes(data[:40])) + ("..." if len(data) > 40 else "")


def parse_header(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY protocol header (v1 or v2) at the start of ``data``.

    Returns None when more bytes are needed, or ``(header, n)`` where the header occupies
    ``data[:n]`` and anything after it is payload. Raises ProxyProtocolError when ``data`` cannot
    begin a valid header, including when it starts like neither version (reason
    "not-proxy-protocol"): the spec forbids guessing whether a header is present.
    """
    head = bytes(data[:12])
    if not head:
        return None
    # Both versions are told apart by their first byte ('P' vs CR); comparing only as many
    # bytes as are buffered lets a partial header wait while garbage is rejected at once.
    if _V1_PREFIX.startswith(head[:6]):
        return _parse_v1(bytes(data[:V1_MAX_LENGTH]))
    if V2_SIGNATURE.startswith(head):
        return _parse_v2(data)
    raise ProxyProtocolError("not-proxy-protocol", f"data starts with {_show(head)}")


# "PROXY" SP ( "TCP4" | "TCP6" | "UNKNOWN" ) SP src SP dst SP sport SP dport CRLF
# where, for UNKNOWN, "the receiver must ignore anything presented before the CRLF is found".
# "If the CRLF sequence is not found in the first 107 characters, the receiver should declare
# the line invalid." "The receiver must not tolerate a single CR or LF character to end the
# line when a complete CRLF sequence is expected."
def _parse_v1(window: bytes) -> tuple[ProxyHeader, int] | None:
    # ``window`` is data[:107], which is all that can decide a v1 answer.
    end = window.find(b"\r\n")
    if end < 0:
        # No complete line yet. Reject now if a byte that can never be part of a valid line is
        # already here (bare LF, CR followed by something else, control or 8-bit bytes): the
        # spec recommends aborting "as soon as possible". A CR as the last buffered byte may
        # still be followed by LF, so it decides nothing yet.
        pending = window[:-1] if window.endswith(b"\r") else window
        if pending.translate(None, _V1_PRINTABLE):
            raise ProxyProtocolError("v1-bad-line", f"invalid byte in v1 line {_show(window)}")
        if len(window) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(
                "v1-too-long", f"no CRLF within {V1_MAX_LENGTH} bytes: {_show(window)}"
            )
        return None

    line = window[:end]
    if line.translate(None, _V1_PRINTABLE):
        raise ProxyProtocolError("v1-bad-line", f"invalid byte in v1 line {_show(line)}")
    fields = line.split(b" ")
    protocol = fields[1]
    if protocol == b"UNKNOWN":
        return ProxyHeader(1, True, "UNKNOWN", None, None), end + 2
    if protocol == b"TCP4":
        af = socket.AF_INET
    elif protocol == b"TCP6":
        af = socket.AF_INET6
    elif protocol:
        raise ProxyProtocolError("v1-bad-protocol", f"unknown v1 protocol {_show(protocol)}")
    else:
        raise ProxyProtocolError("v1-bad-line", f"empty v1 protocol field in {_show(line)}")

    # Splitting on single spaces turns every double, leading or trailing space into an empty
    # field, so "exactly one space" reduces to "exactly six non-empty fields".
    if len(fields) != 6 or not all(fields):
        raise ProxyProtocolError(
            "v1-bad-line", f"expected 'PROXY {protocol.decode()} src dst sport dport', got "
            f"{_show(line)}"
        )
    source = (_v1_address(af, fields[2]), _v1_port(fields[4]))
    destination = (_v1_address(af, fields[3]), _v1_port(fields[5]))
    return ProxyHeader(1, False, protocol.decode("ascii"), source, destination), end + 2


def _v1_address(af: socket.AddressFamily, field: bytes) -> str:
    # "IPv4 addresses must be indicated as a series of exactly 4 integers in the range
    # [0..255] inclusive written in decimal representation separated by exactly one dot
    # [...]. Heading zeroes are not permitted". inet_ntop prints exactly that form, so a round
    # trip that changes the text means the text was not in it, whatever the libc's inet_pton
    # tolerates. IPv6 text may legitimately take many forms; it is normalised to inet_ntop's.
    text = field.decode("ascii")
    try:
        packed = socket.inet_pton(af, text)
    except (OSError, ValueError):
        raise ProxyProtocolError(
            "v1-bad-address", f"{_show(field)} is not a valid {_AF_NAMES[af]} address"
        ) from None
    canonical = socket.inet_ntop(af, packed)
    if af == socket.AF_INET and canonical != text:
        raise ProxyProtocolError("v1-bad-address", f"{_show(field)} is not a canonical IPv4")
    return canonical



def _v1_port(field: bytes) -> int:
    # "a decimal integer in the range [0..65535] inclusive. Heading zeroes are not permitted"
    # bytes.isdigit() is ASCII-only, so no sign, space, underscore or Unicode digit gets in.
    if (
        not field.isdigit()
        or len(field) > 5
        or (field[0] == 0x30 and len(field) > 1)
        or int(field) > 0xFFFF
    ):
        raise ProxyProtocolError("v1-bad-port", f"{_show(field)} is not a valid port")
    return int(field)


# struct proxy_hdr_v2 {
#     uint8_t sig[12];  /* hex 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A */
#     uint8_t ver_cmd;  /* protocol version and command */
#     uint8_t fam;      /* protocol family and address */
#     uint16_t len;     /* number of following bytes part of the header */
# };
# "the length of the protocol header in bytes is always exactly 16 + this value."
def _parse_v2(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    # Checks run in the order of the bytes they need, so a partial header is rejected by the
    # same check, with the same reason, as the complete one would be.
    size = len(data)
    if size <= 12:
        return None
    ver_cmd = data[12]
    # "The highest four bits contains the version. [...] the receiver must only accept this
    # value." / command: "other values [...] Receivers must drop connections presenting
    # unexpected values here."
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("v2-bad-version", f"version nibble {ver_cmd >> 4:#x}")
    command = ver_cmd & 0x0F
    if command not in (_V2_CMD_LOCAL, _V2_CMD_PROXY):
        raise ProxyProtocolError("v2-bad-command", f"command nibble {command:#x}")
    if size == 13:
        return None
    fam = data[13]
    family = _V2_FAMILIES.get(fam)
    # LOCAL: "discard the protocol block including the family which is ignored", so an
    # unknown family only matters for PROXY.
    if family is None and command == _V2_CMD_PROXY:
        raise ProxyProtocolError("v2-bad-family", f"family/transport byte {fam:#04x}")
    if size < _V2_HEADER_LENGTH:
        return None
    length = (data[14] << 8) | data[15]
    if command == _V2_CMD_PROXY and family is not None and length < family[1]:
        raise ProxyProtocolError(
            "v2-short-address",
            f"{family[0]} needs a {family[1]}-byte address block, length is {length}",
        )
    total = _V2_HEADER_LENGTH + length
    if size < total:
        return None
    block = bytes(data[:total])

    # An unknown family got this far only under LOCAL.
    if command == _V2_CMD_LOCAL or family is None:
        return _v2_local(block, family), total
    label, address_length = family
    tlvs = _parse_tlvs(block, _V2_HEADER_LENGTH + address_length)
    if address_length == 0:
        # AF_UNSPEC: "The receiver should ignore address information."
        return ProxyHeader(2, True, label, None, None, tlvs), total
    if address_length == 216:
        # AF_UNIX paths are not network endpoints; the relay has no use for them.
        return ProxyHeader(2, False, label, None, None, tlvs), total
    if address_length == 12:
        af, width = socket.AF_INET, 4
    else:
        af, width = socket.AF_INET6, 16
    base = _V2_HEADER_LENGTH
    sport, dport = _PORTS.unpack_from(block, base + 2 * width)
    source = (socket.inet_ntop(af, block[base : base + width]), sport)
    destination = (socket.inet_ntop(af, block[base + width : base + 2 * width]), dport)
    return ProxyHeader(2, False, label, source, destination, tlvs), total


def _v2_local(block: bytes, family: tuple[str, int] | None) -> ProxyHeader:
    # LOCAL: "The receiver must accept this connection as valid and must use the real
    # connection endpoints and discard the protocol block including the family". TLVs are
    # still offered when they decode cleanly (a health check may carry a NOOP or a unique id),
    # but nothing in the block may cause a rejection, not even a bad checksum.
    if family is None:
        return ProxyHeader(2, True, "UNSPEC", None, None)
    label, address_length = family
    tlvs: tuple[tuple[int, bytes], ...] = ()
    if len(block) >= _V2_HEADER_LENGTH + address_length:
        try:
            tlvs = _parse_tlvs(block, _V2_HEADER_LENGTH + address_length)
        except ProxyProtocolError:
            tlvs = ()
    return ProxyHeader(2, True, label, None, None, tlvs)


# struct pp2_tlv {
#     uint8_t type;
#     uint8_t length_hi;
#     uint8_t length_lo;
#     uint8_t value[0];
# };
def _parse_tlvs(block: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    end = len(block)
    if offset == end:
        return ()
    tlvs: list[tuple[int, bytes]] = []
    checksum_at = -1
    while offset < end:
        if offset + 3 > end:
            raise ProxyProtocolError(
                "v2-tlv-overrun", f"{end - offset} trailing bytes cannot hold a TLV header"
            )
        tlv_type, tlv_length = _TLV_HEADER.unpack_from(block, offset)
        start = offset + 3
        stop = start + tlv_length
        if stop > end:
            raise ProxyProtocolError(
                "v2-tlv-overrun",
                f"TLV {tlv_type:#04x} of length {tlv_length} runs {stop - end} bytes past the "
                "header",
            )
        if tlv_type == PP2_TYPE_CRC32C:
            # "a 32-bit number storing the CRC32c checksum". Two checksums cannot both cover a
            # header that contains the other, so a second one is as invalid as a bad one.
            if tlv_length != 4:
                raise ProxyProtocolError("v2-bad-crc32c", f"CRC32C TLV of length {tlv_length}")
            if checksum_at >= 0:
                raise ProxyProtocolError("v2-bad-crc32c", "more than one CRC32C TLV")
            checksum_at = start
        tlvs.append((tlv_type, block[start:stop]))
        offset = stop
    if checksum_at >= 0:
        _verify_crc32c(block, checksum_at)
    return tuple(tlvs)


def _verify_crc32c(block: bytes, at: int) -> None:
    # "replace the 32 bits of the checksum field in the received PROXY header with all '0's
    # and calculate a CRC32c checksum value of the whole PROXY header." The value is in
    # network byte order like every other multi-byte field (and as HAProxy writes it).
    received = int.from_bytes(block[at : at + 4], "big")
    computed = _crc32c(block[:at], 0)
    computed = _crc32c(b"\x00\x00\x00\x00", computed)
    computed = _crc32c(block[at + 4 :], computed)
    if computed != received:
        raise ProxyProtocolError(
            "v2-bad-crc32c", f"header CRC32C is {computed:#010x}, TLV says {received:#010x}"
        )


# --------------------------------------------------------------------------------------------
# Sender
# --------------------------------------------------------------------------------------------


def _pack_host(host: str) -> tuple[socket.AddressFamily, bytes]:
    """(AF_INET, 4 bytes) or (AF_INET6, 16 bytes); IPv4-mapped IPv6 comes back as AF_INET."""
    if not isinstance(host, str):
        raise ValueError(f"not an IP address: {host!r}")
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    # getpeername() reports link-local peers as "fe80::1%eth0"; HAProxy formats the address
    # without its scope (inet_ntop of sin6_addr), and the scope means nothing to the backend.
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        raise ValueError(f"not an IP address: {host!r}") from None
    if packed.startswith(_V4_MAPPED_PREFIX):
        return socket.AF_INET, packed[12:]
    return socket.AF_INET6, packed


def _check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"not a TCP port: {port!r}")
    return port


def _pack_pair(
    source: Address, destination: Address
) -> tuple[socket.AddressFamily, bytes, bytes, int, int]:
    """Apply the family rules: both IPv4 -> AF_INET, otherwise AF_INET6 with IPv4 mapped."""
    sport = _check_port(source[1])
    dport = _check_port(destination[1])
    src_af, src = _pack_host(source[0])
    dst_af, dst = _pack_host(destination[0])
    if src_af == dst_af == socket.AF_INET:
        return socket.AF_INET, src, dst, sport, dport
    # A v1 line or v2 block carries a single family, so an IPv4 endpoint talking to an IPv6
    # one can only be expressed in the IPv6 family, as the socket layer itself would.
    if src_af == socket.AF_INET:
        src = _V4_MAPPED_PREFIX + src
    if dst_af == socket.AF_INET:
        dst = _V4_MAPPED_PREFIX + dst
    return socket.AF_INET6, src, dst, sport, dport


def encode_v1(source: Address, destination: Address) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n``, byte for byte as HAProxy sends it.

    Raises ValueError for a non-IP address or a port outside 0..65535: "UNKNOWN" is never
    emitted because some receivers (Postfix) refuse it.
    """
    af, src, dst, sport, dport = _pack_pair(source, destination)
    protocol = "TCP4" if af == socket.AF_INET else "TCP6"
    line = (
        f"PROXY {protocol} {socket.inet_ntop(af, src)} {socket.inet_ntop(af, dst)} "
        f"{sport} {dport}\r\n"
    )
    return line.encode("ascii")


def encode_v2(
    source: Address,
    destination: Address,
    *,
    tlvs: Sequence[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """A v2 PROXY header for a TCP connection, with ``tlvs`` after the addresses in order.

    With ``crc32c`` a PP2_TYPE_CRC32C TLV is appended last, holding the checksum of the final
    header. ``tlvs`` must not contain one itself. Raises ValueError on bad input.
    """
    af, src, dst, sport, dport = _pack_pair(source, destination)
    body = bytearray(src)
    body += dst
    body += _PORTS.pack(sport, dport)
    for tlv_type, value in tlvs:
        if not isinstance(tlv_type, int) or not 0 <= tlv_type <= 0xFF:
            raise ValueError(f"TLV type must be 0..255, got {tlv_type!r}")
        if tlv_type == PP2_TYPE_CRC32C:
            raise ValueError("pass crc32c=True instead of a PP2_TYPE_CRC32C TLV")
        if len(value) > 0xFFFF:
            raise ValueError(f"TLV {tlv_type:#04x} value is {len(value)} bytes, max 65535")
        body += _TLV_HEADER.pack(tlv_type, len(value))
        body += value
    if crc32c:
        body += _TLV_HEADER.pack(PP2_TYPE_CRC32C, 4)
        body += b"\x00\x00\x00\x00"
    if len(body) > _V2_MAX_BLOCK:
        raise ValueError(f"v2 header block is {len(body)} bytes, max {_V2_MAX_BLOCK}")
    header = bytearray(V2_SIGNATURE)
    header += bytes((0x20 | _V2_CMD_PROXY, _V2_FAMILY_BYTE[af]))
    header += len(body).to_bytes(2, "big")
    header += body
    if crc32c:
        header[-4:] = _crc32c(header, 0).to_bytes(4, "big")
    return bytes(header)


def encode_v2_local() -> bytes:
    """A v2 LOCAL header (health checks): UNSPEC family, no address block, no TLVs."""
    return V2_SIGNATURE + bytes((0x20 | _V2_CMD_LOCAL, 0x00, 0x00, 0x00))


class HeaderReader:
    """Collects a connection's first bytes until ``parse_header`` decides about them: the one
    piece of buffering every receiver of an inbound header needs."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """None: more bytes needed. Else the header and the payload bytes that followed it.
        Raises ProxyProtocolError."""
        # the usual case, a header whole in the first read: parsed where it is, no copy
        buffered: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            buffered = self._buffer
        parsed = parse_header(buffered)
        if parsed is None:
            if buffered is data:
                self._buffer += data
            return None
        header, length = parsed
        payload = bytes(buffered[length:])
        self._buffer = bytearray()
        return header, payload
