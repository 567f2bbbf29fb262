"""Tests for ingress.protocol.proxy_protocol against HAProxy's doc/proxy-protocol.txt."""

from __future__ import annotations

import ipaddress
import pickle
import socket
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.protocol.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    HeaderReader,
    ProxyHeader,
    ProxyProtocolError,
    crc32c,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_header,
)

SIG = V2_SIGNATURE
MAX_V6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
MAPPED = bytes(10) + b"\xff\xff"

# Outcome of one parse, comparable with ==: ("none",), ("ok", header, n) or ("error", reason).
Outcome = tuple[object, ...]


def outcome(data: bytes | bytearray | memoryview) -> Outcome:
    try:
        result = parse_header(data)
    except ProxyProtocolError as exc:
        return ("error", exc.reason)
    if result is None:
        return ("none",)
    header, n = result
    return ("ok", header, n)


def check_invariants(data: bytes) -> Outcome:
    """Everything parse_header promises for any input; returns the whole-input outcome."""
    whole = outcome(data)
    if whole[0] == "ok":
        header, n = whole[1], whole[2]
        assert isinstance(header, ProxyHeader)
        assert isinstance(n, int)
        assert 0 < n <= len(data)
        # The header is self-delimiting: what follows it cannot change it.
        assert outcome(data[:n]) == whole
        assert header.version in (1, 2)
        if header.local:
            assert header.client_address is None
    # The buffer type is irrelevant.
    assert outcome(bytearray(data)) == whole
    assert outcome(memoryview(data)) == whole
    # Fed one byte at a time, the first answer is the final answer.
    for i in range(1, len(data) + 1):
        partial = outcome(data[:i])
        if partial != ("none",):
            assert partial == whole, f"prefix of {i} bytes: {partial} vs whole: {whole}"
            break
    else:
        assert whole == ("none",)
    return whole


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + bytes((ver_cmd, fam)) + len(body).to_bytes(2, "big") + body


def tlv(tlv_type: int, value: bytes) -> bytes:
    return bytes((tlv_type,)) + len(value).to_bytes(2, "big") + value


def crc32c_bitwise(data: bytes) -> int:
    """Independent bit-at-a-time CRC32C (RFC 4960 Appendix B) to check the table version."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def with_crc(header_without_crc_tlv: bytes) -> bytes:
    """Append a CRC32C TLV (fixing the length field) computed by the independent CRC."""
    body = header_without_crc_tlv[16:] + tlv(PP2_TYPE_CRC32C, bytes(4))
    zeroed = header_without_crc_tlv[:14] + len(body).to_bytes(2, "big") + body
    return zeroed[:-4] + crc32c_bitwise(zeroed).to_bytes(4, "big")


IPV4_TCP_BODY = bytes.fromhex("c0a80001 c0a8000b dc04 01bb")
IPV6_TCP_BODY = bytes.fromhex(
    "20010db8000000000000000000000001 20010db8000000000000000000000002 04d2 0019"
)
V2_TCP4 = v2(0x21, 0x11, IPV4_TCP_BODY)
V2_TCP6 = v2(0x21, 0x21, IPV6_TCP_BODY)
V2_TCP6_CRC = with_crc(v2(0x21, 0x21, IPV6_TCP_BODY + tlv(PP2_TYPE_UNIQUE_ID, b"abc")))


# --------------------------------------------------------------------------------------------
# Constants and types
# --------------------------------------------------------------------------------------------


def test_constants_match_spec() -> None:
    assert bytes.fromhex("0D0A0D0A000D0A515549540A") == V2_SIGNATURE
    assert V1_MAX_LENGTH == 107
    assert (
        PP2_TYPE_ALPN,
        PP2_TYPE_AUTHORITY,
        PP2_TYPE_CRC32C,
        PP2_TYPE_NOOP,
        PP2_TYPE_UNIQUE_ID,
        PP2_TYPE_SSL,
        PP2_TYPE_NETNS,
    ) == (0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30)


def test_error_carries_reason_and_detail() -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse_header(b"EHLO example.org\r\n")
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.reason == "not-proxy-protocol"
    assert "EHLO" in str(exc)
    assert exc.reason in str(exc)
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.reason, clone.detail, str(clone)) == (exc.reason, exc.detail, str(exc))


def test_error_detail_is_bounded() -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse_header(b"X" * 100_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            ProxyHeader(1, False, "TCP4", ("192.0.2.1", 1), ("192.0.2.2", 25)),
            ("192.0.2.1", 1),
            id="v1-tcp4",
        ),
        pytest.param(
            ProxyHeader(2, False, "TCP6", ("2001:db8::1", 1), ("2001:db8::2", 25)),
            ("2001:db8::1", 1),
            id="v2-tcp6",
        ),
        pytest.param(
            ProxyHeader(2, False, "UDP4", ("192.0.2.1", 1), ("192.0.2.2", 53)), None, id="udp"
        ),
        pytest.param(ProxyHeader(2, False, "UNIX", None, None), None, id="unix"),
        pytest.param(ProxyHeader(2, True, "UNSPEC", None, None), None, id="local"),
        pytest.param(ProxyHeader(1, True, "UNKNOWN", None, None), None, id="v1-unknown"),
        pytest.param(
            ProxyHeader(2, True, "TCP4", ("192.0.2.1", 1), ("192.0.2.2", 25)),
            None,
            id="local-flag-wins",
        ),
    ],
)
def test_client_address(header: ProxyHeader, expected: tuple[str, int] | None) -> None:
    assert header.client_address == expected


# --------------------------------------------------------------------------------------------
# Accepted headers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            ProxyHeader(1, False, "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
            id="spec-example",
        ),
        pytest.param(
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
            ProxyHeader(
                1, False, "TCP4", ("255.255.255.255", 65535), ("255.255.255.255", 65535)
            ),
            id="longest-tcp4",
        ),
        pytest.param(
            f"PROXY TCP6 {MAX_V6} {MAX_V6} 65535 65535\r\n".encode(),
            ProxyHeader(1, False, "TCP6", (MAX_V6, 65535), (MAX_V6, 65535)),
            id="longest-tcp6",
        ),
        pytest.param(
            b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
            ProxyHeader(1, False, "TCP4", ("0.0.0.0", 0), ("0.0.0.0", 0)),
            id="zeros",
        ),
        pytest.param(
            b"PROXY TCP6 2001:DB8:0:0::1 ::1 1234 25\r\n",
            ProxyHeader(1, False, "TCP6", ("2001:db8::1", 1234), ("::1", 25)),
            id="tcp6-normalised",
        ),
        pytest.param(
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1234 25\r\n",
            ProxyHeader(1, False, "TCP6", ("::ffff:192.0.2.1", 1234), ("2001:db8::2", 25)),
            id="tcp6-v4-mapped",
        ),
        pytest.param(
            b"PROXY UNKNOWN\r\n",
            ProxyHeader(1, True, "UNKNOWN", None, None),
            id="unknown-short",
        ),
        pytest.param(
            f"PROXY UNKNOWN {MAX_V6} {MAX_V6} 65535 65535\r\n".encode(),
            ProxyHeader(1, True, "UNKNOWN", None, None),
            id="unknown-worst-case-107",
        ),
        pytest.param(
            b"PROXY UNKNOWN  anything: at all 01.2.3.4 99999\r\n",
            ProxyHeader(1, True, "UNKNOWN", None, None),
            id="unknown-rest-ignored",
        ),
        pytest.param(
            V2_TCP4,
            ProxyHeader(2, False, "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
            id="v2-tcp4",
        ),
        pytest.param(
            V2_TCP6,
            ProxyHeader(2, False, "TCP6", ("2001:db8::1", 1234), ("2001:db8::2", 25)),
            id="v2-tcp6",
        ),
        pytest.param(
            v2(0x21, 0x12, IPV4_TCP_BODY),
            ProxyHeader(2, False, "UDP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
            id="v2-udp4",
        ),
        pytest.param(
            v2(0x21, 0x22, IPV6_TCP_BODY),
            ProxyHeader(2, False, "UDP6", ("2001:db8::1", 1234), ("2001:db8::2", 25)),
            id="v2-udp6",
        ),
        pytest.param(
            v2(0x21, 0x31, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")),
            ProxyHeader(2, False, "UNIX", None, None),
            id="v2-unix",
        ),
        pytest.param(
            v2(0x21, 0x32, bytes(216) + tlv(PP2_TYPE_NOOP, b"")),
            ProxyHeader(2, False, "UNIX_DGRAM", None, None, ((PP2_TYPE_NOOP, b""),)),
            id="v2-unix-dgram-tlv",
        ),
        pytest.param(
            v2(0x21, 0x00, b""),
            ProxyHeader(2, True, "UNSPEC", None, None),
            id="v2-proxy-unspec",
        ),
        pytest.param(
            v2(
                0x21,
                0x11,
                IPV4_TCP_BODY
                + tlv(PP2_TYPE_ALPN, b"smtp")
                + tlv(PP2_TYPE_AUTHORITY, b"mx.example.org")
                + tlv(PP2_TYPE_NOOP, bytes(3))
                + tlv(0xE0, b""),
            ),
            ProxyHeader(
                2,
                False,
                "TCP4",
                ("192.168.0.1", 56324),
                ("192.168.0.11", 443),
                (
                    (PP2_TYPE_ALPN, b"smtp"),
                    (PP2_TYPE_AUTHORITY, b"mx.example.org"),
                    (PP2_TYPE_NOOP, bytes(3)),
                    (0xE0, b""),
                ),
            ),
            id="v2-tlvs-in-order",
        ),
        pytest.param(
            V2_TCP6_CRC,
            ProxyHeader(
                2,
                False,
                "TCP6",
                ("2001:db8::1", 1234),
                ("2001:db8::2", 25),
                ((PP2_TYPE_UNIQUE_ID, b"abc"), (PP2_TYPE_CRC32C, V2_TCP6_CRC[-4:])),
            ),
            id="v2-crc32c-valid",
        ),
    ],
)
def test_accepts(data: bytes, expected: ProxyHeader) -> None:
    result = parse_header(data)
    assert result is not None
    header, n = result
    assert header == expected
    assert n == len(data)
    check_invariants(data)


@pytest.mark.parametrize(
    ("data", "family", "tlvs"),
    [
        pytest.param(v2(0x20, 0x00, b""), "UNSPEC", (), id="canonical"),
        pytest.param(v2(0x20, 0x11, IPV4_TCP_BODY), "TCP4", (), id="tcp4-addresses"),
        pytest.param(v2(0x20, 0x21, bytes(range(36))), "TCP6", (), id="tcp6-addresses"),
        pytest.param(v2(0x20, 0x00, b"\xff" * 300), "UNSPEC", (), id="unspec-garbage"),
        pytest.param(v2(0x20, 0xFF, b"anything"), "UNSPEC", (), id="unknown-family"),
        pytest.param(v2(0x20, 0x11, b"\x01\x02"), "TCP4", (), id="short-address"),
        pytest.param(
            v2(0x20, 0x11, IPV4_TCP_BODY + b"\x04\x00\x09"), "TCP4", (), id="tlv-overrun"
        ),
        pytest.param(
            v2(0x20, 0x00, tlv(PP2_TYPE_CRC32C, b"\0\0\0\1")), "UNSPEC", (), id="bad-crc32c"
        ),
        pytest.param(
            v2(0x20, 0x00, tlv(PP2_TYPE_UNIQUE_ID, b"hc-1")),
            "UNSPEC",
            ((PP2_TYPE_UNIQUE_ID, b"hc-1"),),
            id="valid-tlv-exposed",
        ),
    ],
)
def test_v2_local_is_always_accepted(
    data: bytes, family: str, tlvs: tuple[tuple[int, bytes], ...]
) -> None:
    # Spec: "The receiver must accept this connection as valid and must use the real
    # connection endpoints and discard the protocol block including the family".
    assert parse_header(data) == (ProxyHeader(2, True, family, None, None, tlvs), len(data))
    check_invariants(data)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\r\n", id="v1"),
        pytest.param(b"PROXY UNKNOWN\r\n", id="v1-unknown"),
        pytest.param(V2_TCP4, id="v2-tcp4"),
        pytest.param(V2_TCP6, id="v2-tcp6"),
        pytest.param(encode_v2_local(), id="v2-local"),
    ],
)
@pytest.mark.parametrize(
    "payload",
    [b"EHLO client.example\r\n", b"\r\n", b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n", SIG],
)
def test_payload_is_not_consumed(header: bytes, payload: bytes) -> None:
    result = parse_header(header + payload)
    assert result is not None
    assert result[1] == len(header)
    assert result == parse_header(header)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 65535\r\n", id="v1"),
        pytest.param(with_crc(v2(0x21, 0x11, IPV4_TCP_BODY + tlv(1, b"h2"))), id="v2"),
        pytest.param(v2(0x20, 0x00, b"\xff" * 20), id="v2-local"),
    ],
)
def test_every_strict_prefix_needs_more(header: bytes) -> None:
    assert parse_header(b"") is None
    for i in range(len(header)):
        assert parse_header(header[:i]) is None, i
    assert parse_header(header) == parse_header(bytearray(header))


def test_v1_length_limit_is_exact() -> None:
    prefix = b"PROXY UNKNOWN "
    assert parse_header(prefix.ljust(V1_MAX_LENGTH - 1, b"a")) is None
    # 107 bytes and still no CRLF: decided now, without waiting for more.
    with pytest.raises(ProxyProtocolError) as info:
        parse_header(prefix.ljust(V1_MAX_LENGTH, b"a"))
    assert info.value.reason == "v1-too-long"
    exact = prefix.ljust(V1_MAX_LENGTH - 2, b"a") + b"\r\n"
    assert parse_header(exact) == (ProxyHeader(1, True, "UNKNOWN", None, None), V1_MAX_LENGTH)


# --------------------------------------------------------------------------------------------
# Rejected headers
# --------------------------------------------------------------------------------------------

V1_OK = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 25"

REJECTS = [
    # v1 addresses
    ("v1-octet-leading-zero", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-octet-leading-zero-dst", b"PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", "v1-bad-address"),
    ("v1-octet-double-zero", b"PROXY TCP4 1.2.00.4 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-octet-256", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-five-octets", b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-hostname", b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-tcp4-with-ipv6", b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-tcp4-with-mapped", b"PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-address"),
    ("v1-tcp6-with-ipv4", b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1-bad-address"),
    ("v1-tcp6-two-double-colons", b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "v1-bad-address"),
    ("v1-tcp6-too-many-groups", b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "v1-bad-address"),
    ("v1-tcp6-zone", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1-bad-address"),
    ("v1-tcp6-brackets", b"PROXY TCP6 [::1] ::1 1 2\r\n", "v1-bad-address"),
    # v1 ports
    ("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 25\r\n", "v1-bad-port"),
    ("v1-port-double-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "v1-bad-port"),
    ("v1-port-65536", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n", "v1-bad-port"),
    ("v1-port-99999", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "v1-bad-port"),
    ("v1-port-six-digits", b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 25\r\n", "v1-bad-port"),
    ("v1-port-plus", b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 25\r\n", "v1-bad-port"),
    ("v1-port-minus", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 25\r\n", "v1-bad-port"),
    ("v1-port-hex", b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 25\r\n", "v1-bad-port"),
    ("v1-port-underscore", b"PROXY TCP4 1.2.3.4 5.6.7.8 6_5 25\r\n", "v1-bad-port"),
    # v1 line structure
    ("v1-bare-lf", V1_OK + b"\n", "v1-bad-line"),
    ("v1-bare-lf-then-crlf", b"PROXY TCP4 192.0.2.1\n 192.0.2.2 1234 25\r\n", "v1-bad-line"),
    ("v1-cr-without-lf", V1_OK + b"\rEHLO", "v1-bad-line"),
    ("v1-cr-inside-line", b"PROXY TCP4 192.0.2.1\r 192.0.2.2 1234 25\r\n", "v1-bad-line"),
    ("v1-cr-cr-lf", V1_OK + b"\r\r\n", "v1-bad-line"),
    ("v1-lf-cr", V1_OK + b"\n\r", "v1-bad-line"),
    ("v1-too-long", b"PROXY UNKNOWN " + b"f" * 93, "v1-too-long"),
    ("v1-crlf-at-108", b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "v1-too-long"),
    ("v1-cr-at-107", b"PROXY UNKNOWN " + b"f" * 92 + b"\r", "v1-too-long"),
    ("v1-double-space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1-bad-line"),
    ("v1-double-space-after-proxy", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-line"),
    ("v1-double-space-before-port", b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "v1-bad-line"),
    ("v1-trailing-space", V1_OK + b" \r\n", "v1-bad-line"),
    ("v1-tab", b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-line"),
    ("v1-nul", b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "v1-bad-line"),
    ("v1-8bit", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "v1-bad-line"),
    ("v1-missing-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1-bad-line"),
    ("v1-missing-all", b"PROXY TCP4\r\n", "v1-bad-line"),
    ("v1-missing-protocol", b"PROXY \r\n", "v1-bad-line"),
    ("v1-extra-field", V1_OK + b" 3\r\n", "v1-bad-line"),
    ("v1-lowercase-proxy", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not-proxy-protocol"),
    ("v1-no-space-after-proxy", b"PROXY\r\n", "not-proxy-protocol"),
    ("v1-lowercase-protocol", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-protocol"),
    ("v1-udp4", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-protocol"),
    ("v1-unknown-suffixed", b"PROXY UNKNOWNX\r\n", "v1-bad-protocol"),
    ("v1-tcp4-suffixed", b"PROXY TCP44 1.2.3.4 5.6.7.8 1 2\r\n", "v1-bad-protocol"),
    # v2 fixed header
    ("v2-version-1", v2(0x11, 0x11, IPV4_TCP_BODY), "v2-bad-version"),
    ("v2-version-3", v2(0x31, 0x11, IPV4_TCP_BODY), "v2-bad-version"),
    ("v2-version-0-local", v2(0x00, 0x00, b""), "v2-bad-version"),
    ("v2-command-2", v2(0x22, 0x11, IPV4_TCP_BODY), "v2-bad-command"),
    ("v2-command-f", v2(0x2F, 0x00, b""), "v2-bad-command"),
    ("v2-family-0x13", v2(0x21, 0x13, IPV4_TCP_BODY), "v2-bad-family"),
    ("v2-family-0x41", v2(0x21, 0x41, IPV4_TCP_BODY), "v2-bad-family"),
    ("v2-family-0x10", v2(0x21, 0x10, IPV4_TCP_BODY), "v2-bad-family"),
    ("v2-family-0x01", v2(0x21, 0x01, b""), "v2-bad-family"),
    ("v2-tcp4-length-11", v2(0x21, 0x11, IPV4_TCP_BODY[:11]), "v2-short-address"),
    ("v2-udp4-length-0", v2(0x21, 0x12, b""), "v2-short-address"),
    ("v2-tcp6-length-35", v2(0x21, 0x21, IPV6_TCP_BODY[:35]), "v2-short-address"),
    ("v2-tcp6-length-12", v2(0x21, 0x21, IPV4_TCP_BODY), "v2-short-address"),
    ("v2-unix-length-215", v2(0x21, 0x31, bytes(215)), "v2-short-address"),
    # v2 TLVs
    (
        "v2-tlv-overrun",
        v2(0x21, 0x11, IPV4_TCP_BODY + b"\x01\x00\x05abcd"),
        "v2-tlv-overrun",
    ),
    (
        "v2-tlv-overrun-after-good-tlv",
        v2(0x21, 0x11, IPV4_TCP_BODY + tlv(1, b"h2") + b"\x02\x01\x00"),
        "v2-tlv-overrun",
    ),
    ("v2-tlv-half-header", v2(0x21, 0x11, IPV4_TCP_BODY + b"\x04\x00"), "v2-tlv-overrun"),
    ("v2-tlv-one-byte", v2(0x21, 0x11, IPV4_TCP_BODY + b"\x04"), "v2-tlv-overrun"),
    (
        "v2-unspec-tlv-overrun",
        v2(0x21, 0x00, b"\x05\x00\x10abc"),
        "v2-tlv-overrun",
    ),
    (
        "v2-bad-crc32c",
        v2(0x21, 0x11, IPV4_TCP_BODY + tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")),
        "v2-bad-crc32c",
    ),
    (
        "v2-crc32c-little-endian",
        (lambda h: h[:-4] + h[-4:][::-1])(with_crc(V2_TCP4)),
        "v2-bad-crc32c",
    ),
    (
        "v2-crc32c-covers-payload-bytes",
        (lambda h: h[:20] + bytes((h[20] ^ 1,)) + h[21:])(with_crc(V2_TCP4)),
        "v2-bad-crc32c",
    ),
    (
        "v2-crc32c-length-3",
        v2(0x21, 0x11, IPV4_TCP_BODY + tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00")),
        "v2-bad-crc32c",
    ),
    (
        "v2-crc32c-length-5",
        v2(0x21, 0x11, IPV4_TCP_BODY + tlv(PP2_TYPE_CRC32C, bytes(5))),
        "v2-bad-crc32c",
    ),
    (
        "v2-crc32c-twice",
        with_crc(v2(0x21, 0x11, IPV4_TCP_BODY + tlv(PP2_TYPE_CRC32C, bytes(4)))),
        "v2-bad-crc32c",
    ),
    # Not PROXY protocol at all
    ("smtp-ehlo", b"EHLO x\r\n", "not-proxy-protocol"),
    ("smtp-helo", b"HELO x\r\n", "not-proxy-protocol"),
    ("http-get", b"GET / HTTP/1.1\r\n", "not-proxy-protocol"),
    ("http-get-partial", b"GET / HTTP/1.1", "not-proxy-protocol"),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not-proxy-protocol"),
    ("crlf-then-smtp", b"\r\nEHLO x\r\n", "not-proxy-protocol"),
    ("signature-broken-late", SIG[:11] + b"\r" + bytes(8), "not-proxy-protocol"),
    ("prox-then-other", b"PROXX TCP4", "not-proxy-protocol"),
    ("single-byte", b"E", "not-proxy-protocol"),
    ("nul-byte", b"\x00", "not-proxy-protocol"),
]


@pytest.mark.parametrize(
    ("data", "reason"), [pytest.param(data, reason, id=name) for name, data, reason in REJECTS]
)
def test_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse_header(data)
    assert info.value.reason == reason
    # Fed byte by byte, the connection is rejected with the same reason, and with trailing
    # bytes too: a reject never depends on what follows.
    assert check_invariants(data) == ("error", reason)
    assert outcome(data + b"\r\n" + bytes(300)) == ("error", reason)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"EHLO", "not-proxy-protocol", id="smtp-before-any-line-end"),
        pytest.param(b"PROXY TCP4 1.2.3.4\n", "v1-bad-line", id="bare-lf"),
        pytest.param(b"PROXY TCP4 1.2.3.4\rX", "v1-bad-line", id="cr-then-other"),
        pytest.param(b"PROXY \x00", "v1-bad-line", id="nul"),
        pytest.param(SIG + b"\x10", "v2-bad-version", id="v2-version"),
        pytest.param(SIG + b"\x23", "v2-bad-command", id="v2-command"),
        pytest.param(SIG + b"\x21\x99", "v2-bad-family", id="v2-family"),
        pytest.param(SIG + b"\x21\x21\x00\x10", "v2-short-address", id="v2-short-address"),
    ],
)
def test_rejects_without_waiting_for_more(data: bytes, reason: str) -> None:
    # The spec recommends aborting "as soon as possible": no need to wait for a CRLF or for
    # the rest of a v2 block once the verdict cannot change.
    with pytest.raises(ProxyProtocolError) as info:
        parse_header(data)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "data",
    [b"P", b"PROXY", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", SIG[:1], SIG, SIG + b"\x21\x11\x00"],
)
def test_partial_headers_need_more(data: bytes) -> None:
    assert parse_header(data) is None


# --------------------------------------------------------------------------------------------
# CRC32C
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", 0x00000000, id="empty"),
        pytest.param(b"123456789", 0xE3069283, id="check-value"),
        # RFC 3720 (iSCSI) Appendix B.4 test vectors.
        pytest.param(bytes(32), 0x8A9136AA, id="zeros"),
        pytest.param(b"\xff" * 32, 0x62A8AB43, id="ones"),
        pytest.param(bytes(range(32)), 0x46DD794E, id="incrementing"),
        pytest.param(bytes(range(31, -1, -1)), 0x113FDB5C, id="decrementing"),
    ],
)
def test_crc32c_known_answers(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected
    assert crc32c(bytearray(data)) == expected
    assert crc32c(memoryview(data)) == expected


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_crc32c_matches_bitwise_and_chains(first: bytes, second: bytes) -> None:
    assert crc32c(first + second) == crc32c_bitwise(first + second)
    assert crc32c(second, crc32c(first)) == crc32c(first + second)


# --------------------------------------------------------------------------------------------
# Sender
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "expected"),
    [
        pytest.param(
            ("192.0.2.1", 56324),
            ("198.51.100.7", 25),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n",
            id="tcp4",
        ),
        pytest.param(
            ("2001:db8::1", 1234),
            ("2001:db8::2", 25),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 25\r\n",
            id="tcp6",
        ),
        pytest.param(
            ("2001:0DB8:0000:0000:0000:0000:0000:0001", 1234),
            ("::1", 25),
            b"PROXY TCP6 2001:db8::1 ::1 1234 25\r\n",
            id="tcp6-inet-ntop-form",
        ),
        pytest.param(
            ("::ffff:192.0.2.1", 1234),
            ("::ffff:198.51.100.7", 25),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1234 25\r\n",
            id="both-mapped-unmapped",
        ),
        pytest.param(
            ("::ffff:192.0.2.1", 1234),
            ("198.51.100.7", 25),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1234 25\r\n",
            id="one-mapped-one-ipv4",
        ),
        pytest.param(
            ("192.0.2.1", 1234),
            ("2001:db8::2", 25),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1234 25\r\n",
            id="mixed-source-ipv4",
        ),
        pytest.param(
            ("2001:db8::1", 1234),
            ("::ffff:192.0.2.2", 25),
            b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.2 1234 25\r\n",
            id="mixed-destination-mapped",
        ),
        pytest.param(
            ("fe80::1%eth0", 1234),
            ("fe80::2", 25),
            b"PROXY TCP6 fe80::1 fe80::2 1234 25\r\n",
            id="ipv6-scope-dropped",
        ),
        pytest.param(
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            id="extremes",
        ),
    ],
)
def test_encode_v1_exact_bytes(
    source: tuple[str, int], destination: tuple[str, int], expected: bytes
) -> None:
    line = encode_v1(source, destination)
    assert line == expected
    result = parse_header(line)
    assert result is not None
    assert result[1] == len(line)


def test_encode_v2_exact_bytes() -> None:
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == V2_TCP4
    assert encode_v2(("2001:db8::1", 1234), ("2001:db8::2", 25)) == V2_TCP6
    assert (
        encode_v2(("::ffff:192.168.0.1", 56324), ("192.168.0.11", 443)) == V2_TCP4
    ), "IPv4-mapped is sent as TCP4"
    assert encode_v2(("192.0.2.1", 1), ("2001:db8::2", 2)) == v2(
        0x21,
        0x21,
        MAPPED
        + bytes((192, 0, 2, 1))
        + bytes.fromhex("20010db8000000000000000000000002 0001 0002"),
    )
    tlvs = [(PP2_TYPE_AUTHORITY, b"mx.example.org"), (PP2_TYPE_NOOP, b"")]
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), tlvs=tlvs) == v2(
        0x21, 0x11, IPV4_TCP_BODY + tlv(PP2_TYPE_AUTHORITY, b"mx.example.org") + tlv(4, b"")
    )
    assert encode_v2(
        ("192.168.0.1", 56324), ("192.168.0.11", 443), tlvs=tlvs, crc32c=True
    ) == with_crc(
        v2(0x21, 0x11, IPV4_TCP_BODY + tlv(PP2_TYPE_AUTHORITY, b"mx.example.org") + tlv(4, b""))
    )


def test_encode_v2_local_exact_bytes() -> None:
    assert encode_v2_local() == SIG + b"\x20\x00\x00\x00"
    assert parse_header(encode_v2_local()) == (ProxyHeader(2, True, "UNSPEC", None, None), 16)


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        pytest.param(("example.org", 1), ("192.0.2.1", 2), id="hostname"),
        pytest.param(("", 1), ("192.0.2.1", 2), id="empty"),
        pytest.param(("192.0.2.1", 1), ("1.2.3", 2), id="short-ipv4"),
        pytest.param(("192.0.2.1", 1), ("192.0.2.256", 2), id="octet-256"),
        pytest.param(("192.0.2.1%eth0", 1), ("192.0.2.2", 2), id="ipv4-with-scope"),
        pytest.param(("/run/sock", 1), ("192.0.2.2", 2), id="unix-path"),
        pytest.param(("192.0.2.1", -1), ("192.0.2.2", 2), id="port-negative"),
        pytest.param(("192.0.2.1", 1), ("192.0.2.2", 65536), id="port-65536"),
    ],
)
@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
def test_encode_rejects_bad_endpoints(
    encode: Callable[[tuple[str, int], tuple[str, int]], bytes],
    source: tuple[str, int],
    destination: tuple[str, int],
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError; messages are free text
        encode(source, destination)


@pytest.mark.parametrize(
    "tlvs",
    [
        pytest.param([(PP2_TYPE_CRC32C, bytes(4))], id="caller-crc32c"),
        pytest.param([(256, b"")], id="type-256"),
        pytest.param([(-1, b"")], id="type-negative"),
        pytest.param([(PP2_TYPE_NOOP, bytes(65536))], id="value-too-long"),
        pytest.param([(PP2_TYPE_NOOP, bytes(65000)), (PP2_TYPE_NOOP, bytes(600))], id="total"),
    ],
)
def test_encode_v2_rejects_bad_tlvs(tlvs: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError; messages are free text
        encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=tlvs)


def test_encode_v2_largest_block() -> None:
    value = bytes(0xFFFF - 12 - 3)
    header = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[(PP2_TYPE_NOOP, value)])
    assert len(header) == 16 + 0xFFFF
    result = parse_header(header)
    assert result is not None
    assert result[0].tlvs == ((PP2_TYPE_NOOP, value),)


# --------------------------------------------------------------------------------------------
# Property-based: round trips
# --------------------------------------------------------------------------------------------


def ntop4(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, packed)


def ntop6(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, packed)


ipv4_hosts = st.binary(min_size=4, max_size=4).map(ntop4)
ipv6_hosts = st.binary(min_size=16, max_size=16).map(ntop6)
mapped_hosts = st.binary(min_size=4, max_size=4).map(lambda b: ntop6(MAPPED + b))
hosts = st.one_of(ipv4_hosts, ipv6_hosts, mapped_hosts, st.sampled_from(["::", "::1", "0.0.0.0"]))
ports = st.integers(min_value=0, max_value=65535)
endpoints = st.tuples(hosts, ports)
tlv_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=255).filter(lambda t: t != PP2_TYPE_CRC32C),
        st.binary(max_size=40),
    ),
    max_size=5,
)


def expected_after_mapping(
    source: tuple[str, int], destination: tuple[str, int]
) -> tuple[str, tuple[str, int], tuple[str, int]]:
    """The mapping rules, computed with the ipaddress module rather than the code under test."""

    def unmap(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    src, dst = unmap(source[0]), unmap(destination[0])
    if src.version == dst.version == 4:
        return "TCP4", (str(src), source[1]), (str(dst), destination[1])

    def as_v6_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if isinstance(address, ipaddress.IPv4Address):
            return ntop6(MAPPED + address.packed)
        return ntop6(address.packed)

    return "TCP6", (as_v6_text(src), source[1]), (as_v6_text(dst), destination[1])


@given(endpoints, endpoints, st.binary(max_size=20))
@settings(max_examples=300, deadline=None)
def test_v1_round_trip(
    source: tuple[str, int], destination: tuple[str, int], payload: bytes
) -> None:
    family, src, dst = expected_after_mapping(source, destination)
    line = encode_v1(source, destination)
    # Byte-identical to HAProxy's "PROXY %s %s %s %u %u\r\n" with inet_ntop addresses.
    assert line == f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()
    assert len(line) <= V1_MAX_LENGTH
    assert parse_header(line + payload) == (
        ProxyHeader(1, False, family, src, dst),
        len(line),
    )
    check_invariants(line)


@given(endpoints, endpoints, tlv_lists, st.booleans(), st.binary(max_size=20))
@settings(max_examples=300, deadline=None)
def test_v2_round_trip(
    source: tuple[str, int],
    destination: tuple[str, int],
    tlvs: list[tuple[int, bytes]],
    with_checksum: bool,
    payload: bytes,
) -> None:
    family, src, dst = expected_after_mapping(source, destination)
    header = encode_v2(source, destination, tlvs=tlvs, crc32c=with_checksum)
    result = parse_header(header + payload)
    assert result is not None
    parsed, n = result
    assert n == len(header)
    assert (parsed.version, parsed.local, parsed.family) == (2, False, family)
    assert (parsed.source, parsed.destination) == (src, dst)
    assert parsed.client_address == src
    assert ipaddress.ip_address(parsed.source[0] if parsed.source else "") == ipaddress.ip_address(
        src[0]
    )
    if with_checksum:
        assert parsed.tlvs[:-1] == tuple(tlvs)
        assert parsed.tlvs[-1][0] == PP2_TYPE_CRC32C
        assert len(parsed.tlvs[-1][1]) == 4
    else:
        assert parsed.tlvs == tuple(tlvs)
    check_invariants(header)


# --------------------------------------------------------------------------------------------
# Property-based: robustness and prefix stability on arbitrary input
# --------------------------------------------------------------------------------------------

valid_headers = st.one_of(
    st.builds(encode_v1, endpoints, endpoints),
    st.builds(
        lambda s, d, t, c: encode_v2(s, d, tlvs=t, crc32c=c),
        endpoints,
        endpoints,
        tlv_lists,
        st.booleans(),
    ),
    st.just(encode_v2_local()),
    st.sampled_from(
        [
            b"PROXY UNKNOWN\r\n",
            f"PROXY UNKNOWN {MAX_V6} {MAX_V6} 65535 65535\r\n".encode(),
            v2(0x21, 0x31, bytes(216) + tlv(1, b"x")),
            v2(0x20, 0x11, IPV4_TCP_BODY + tlv(5, b"id")),
            v2(0x21, 0x00, tlv(4, b"")),
        ]
    ),
)


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_headers))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        index = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if kind == "flip":
            data[index] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set":
            data[index] = draw(st.sampled_from([0x00, 0x0A, 0x0D, 0x20, 0x30, 0x3A, 0xFF]))
        elif kind == "insert":
            data.insert(index, draw(st.integers(min_value=0, max_value=255)))
        elif kind == "delete":
            del data[index]
        else:
            del data[index:]
    return bytes(data) + draw(st.binary(max_size=10))


v2_fixed_headers = st.builds(
    lambda ver_cmd, fam, length, rest: SIG + bytes((ver_cmd, fam)) + length + rest,
    st.sampled_from([0x20, 0x21, 0x22, 0x11]),
    st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13]),
    st.binary(min_size=2, max_size=2).map(lambda b: bytes((0, b[1] % 64))),
    st.binary(max_size=80),
)
v1_like_lines = st.builds(
    lambda words, end: b"PROXY " + b" ".join(words) + end,
    st.lists(
        st.one_of(
            st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"", b"0", b"65535", b"::1"]),
            ipv4_hosts.map(str.encode),
            st.text("0123456789.:abcdef", max_size=12).map(str.encode),
        ),
        max_size=7,
    ),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\nEHLO"]),
)
v1_address_texts = st.one_of(
    hosts,
    st.sampled_from(["01.2.3.4", "1.2.3", "256.0.0.1", "1::2::3", "::ffff:1.2.3.4", "fe80::1%1"]),
).map(str.encode)
v1_port_texts = st.one_of(
    st.integers(min_value=0, max_value=99999).map(str),
    st.sampled_from(["080", "00", "+1", "-1", "0x1", "", "65536"]),
).map(str.encode)
v1_tcp_lines = st.builds(
    lambda protocol, src, dst, sport, dport, sep, end: (
        b"PROXY " + protocol + b" " + sep.join([src, dst, sport, dport]) + end
    ),
    st.sampled_from([b"TCP4", b"TCP6"]),
    v1_address_texts,
    v1_address_texts,
    v1_port_texts,
    v1_port_texts,
    st.sampled_from([b" ", b" ", b" ", b"  "]),
    st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b" \r\n", b"\r\nQUIT\r\n"]),
)
v1_long_lines = st.builds(
    lambda body, end: b"PROXY UNKNOWN " + body.encode() + end,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=85, max_size=100),
    st.sampled_from([b"", b"\r", b"\r\n"]),
)

arbitrary_inputs = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: b"PROXY " + b),
    st.binary(max_size=200).map(lambda b: SIG + b),
    v2_fixed_headers,
    v1_like_lines,
    v1_tcp_lines,
    v1_long_lines,
    mutated_headers(),
)


@given(arbitrary_inputs)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_input_never_crashes_and_is_prefix_stable(data: bytes) -> None:
    check_invariants(data)


def test_header_reader_buffers_until_decided_and_returns_the_payload() -> None:
    reader = HeaderReader()
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 4000 25\r\n"
    assert reader.feed(line[:10]) is None
    decided = reader.feed(line[10:] + b"EHLO x\r\n")
    assert decided is not None
    header, payload = decided
    assert header.client_address == ("192.0.2.1", 4000)
    assert payload == b"EHLO x\r\n"
    with pytest.raises(ProxyProtocolError):
        HeaderReader().feed(b"EHLO x\r\n")
