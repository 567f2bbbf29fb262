"""Tests for ingress.protocol.socks5 against the message layouts of RFC 1928 and RFC 1929."""

from __future__ import annotations

import ipaddress
import pickle
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.protocol.socks5 import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
    AUTH_FAILED,
    AUTH_OK,
    AUTH_VERSION,
    CMD_BIND,
    CMD_CONNECT,
    CMD_UDP_ASSOCIATE,
    METHOD_NO_AUTH,
    METHOD_NONE_ACCEPTABLE,
    METHOD_USERPASS,
    REP_ADDRESS_TYPE_NOT_SUPPORTED,
    REP_COMMAND_NOT_SUPPORTED,
    REP_CONNECTION_REFUSED,
    REP_GENERAL_FAILURE,
    REP_HOST_UNREACHABLE,
    REP_NETWORK_UNREACHABLE,
    REP_NOT_ALLOWED,
    REP_SUCCEEDED,
    REP_TTL_EXPIRED,
    VERSION,
    Credentials,
    Greeting,
    Reply,
    Request,
    Socks5Error,
    address_type_of,
    encode_auth_status,
    encode_credentials,
    encode_greeting,
    encode_method_choice,
    encode_reply,
    encode_request,
    parse_auth_status,
    parse_credentials,
    parse_greeting,
    parse_method_choice,
    parse_reply,
    parse_request,
)

Buffer = bytes | bytearray | memoryview
Parser = Callable[[Buffer], tuple[object, int] | None]
PARSERS: dict[str, Parser] = {
    "greeting": parse_greeting,
    "credentials": parse_credentials,
    "request": parse_request,
    "method-choice": parse_method_choice,
    "auth-status": parse_auth_status,
    "reply": parse_reply,
}
REASONS = frozenset({
    "bad-version", "no-methods", "bad-auth-version", "bad-credentials", "bad-command",
    "bad-address-type", "bad-reserved", "empty-domain", "bad-domain", "bad-reply",
})
LOCALHOST_V6 = bytes(15) + b"\x01"
MAPPED = bytes(10) + b"\xff\xff"

# Outcome of one parse, comparable with ==: ("none",), ("ok", message, n) or
# ("error", reason, reply).
Outcome = tuple[object, ...]


def outcome(parser: Parser, data: Buffer) -> Outcome:
    try:
        result = parser(data)
    except Socks5Error as exc:
        return ("error", exc.reason, exc.reply)
    if result is None:
        return ("none",)
    message, n = result
    return ("ok", message, n)


def check_invariants(parser: Parser, data: bytes) -> Outcome:
    """Everything every parser promises for any input; returns the whole-input outcome."""
    whole = outcome(parser, data)
    if whole[0] == "ok":
        n = whole[2]
        assert isinstance(n, int)
        assert 0 < n <= len(data)
        # Self-delimiting: what follows the message cannot change it.
        assert outcome(parser, data[:n]) == whole
    elif whole[0] == "error":
        assert whole[1] in REASONS
        # Only a server parsing a request has somebody to send a reply code to.
        if parser is parse_request:
            assert whole[2] in (REP_GENERAL_FAILURE, REP_COMMAND_NOT_SUPPORTED,
                                REP_ADDRESS_TYPE_NOT_SUPPORTED)
        else:
            assert whole[2] is None
    # The buffer type is irrelevant.
    assert outcome(parser, bytearray(data)) == whole
    assert outcome(parser, memoryview(data)) == whole
    # Fed one byte at a time, the first answer is the final answer.
    for i in range(len(data) + 1):
        partial = outcome(parser, data[:i])
        if partial != ("none",):
            assert partial == whole, f"prefix of {i} bytes: {partial} vs whole: {whole}"
            break
    else:
        assert whole == ("none",)
    return whole


def request_bytes(command: int, atyp: int, address: bytes, port: int) -> bytes:
    return bytes((5, command, 0, atyp)) + address + port.to_bytes(2, "big")


def domain(name: bytes) -> bytes:
    return bytes((len(name),)) + name


# --------------------------------------------------------------------------------------------
# Constants and types
# --------------------------------------------------------------------------------------------


def test_constants_match_the_rfcs() -> None:
    assert VERSION == 5
    assert (METHOD_NO_AUTH, METHOD_USERPASS, METHOD_NONE_ACCEPTABLE) == (0x00, 0x02, 0xFF)
    assert (CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE) == (1, 2, 3)
    assert (ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6) == (1, 3, 4)
    assert tuple(range(9)) == (
        REP_SUCCEEDED,
        REP_GENERAL_FAILURE,
        REP_NOT_ALLOWED,
        REP_NETWORK_UNREACHABLE,
        REP_HOST_UNREACHABLE,
        REP_CONNECTION_REFUSED,
        REP_TTL_EXPIRED,
        REP_COMMAND_NOT_SUPPORTED,
        REP_ADDRESS_TYPE_NOT_SUPPORTED,
    )
    assert (AUTH_VERSION, AUTH_OK, AUTH_FAILED) == (1, 0, 1)


def test_error_carries_reason_message_and_reply() -> None:
    with pytest.raises(Socks5Error) as info:
        parse_request(b"\x05\x09")
    exc = info.value
    assert isinstance(exc, ValueError)
    assert (exc.reason, exc.reply) == ("bad-command", REP_COMMAND_NOT_SUPPORTED)
    assert "9" in str(exc)
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.reason, clone.reply, str(clone)) == (exc.reason, exc.reply, str(exc))

    plain = Socks5Error("bad-version", "a message")
    assert (plain.reason, plain.reply, str(plain)) == ("bad-version", None, "a message")


def test_error_message_is_bounded() -> None:
    with pytest.raises(Socks5Error) as info:
        parse_request(b"\x05\x01\x00\x03\xff" + b"\x00" * 255)
    assert info.value.reason == "bad-domain"
    assert len(str(info.value)) < 200


def test_credentials_repr_hides_the_password() -> None:
    credentials = Credentials(b"alice", b"hunter2")
    assert "alice" in repr(credentials)
    assert "hunter2" not in repr(credentials)
    assert credentials == Credentials(b"alice", b"hunter2")
    assert credentials != Credentials(b"alice", b"hunter3")


def test_messages_are_frozen() -> None:
    request = Request(CMD_CONNECT, "127.0.0.1", 25, ATYP_IPV4)
    with pytest.raises(AttributeError):
        request.port = 26  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Known vectors, both ways
# --------------------------------------------------------------------------------------------

# (parser, the bytes on the wire, what they parse to, the encoder call that makes them)
VECTORS = [
    pytest.param(
        "greeting", b"\x05\x01\x00", Greeting((0,)), lambda: encode_greeting([METHOD_NO_AUTH]),
        id="greeting-no-auth",
    ),
    pytest.param(
        "greeting", b"\x05\x02\x00\x02", Greeting((0, 2)),
        lambda: encode_greeting((METHOD_NO_AUTH, METHOD_USERPASS)), id="greeting-two",
    ),
    pytest.param(
        "greeting", b"\x05\xff" + bytes(range(255)), Greeting(tuple(range(255))),
        lambda: encode_greeting(range(255)), id="greeting-255-methods",
    ),
    pytest.param(
        "credentials", b"\x01\x05alice\x07hunter2", Credentials(b"alice", b"hunter2"),
        lambda: encode_credentials(b"alice", b"hunter2"), id="credentials",
    ),
    pytest.param(
        "credentials", b"\x01\x01\x00\x01\xff", Credentials(b"\x00", b"\xff"),
        lambda: encode_credentials(b"\x00", b"\xff"), id="credentials-binary",
    ),
    pytest.param(
        "credentials", b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255,
        Credentials(b"u" * 255, b"p" * 255),
        lambda: encode_credentials(b"u" * 255, b"p" * 255), id="credentials-longest",
    ),
    pytest.param(
        "request", b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x19",
        Request(CMD_CONNECT, "127.0.0.1", 25, ATYP_IPV4),
        lambda: encode_request(CMD_CONNECT, "127.0.0.1", 25), id="connect-ipv4",
    ),
    pytest.param(
        "request", b"\x05\x02\x00\x01\x7f\x00\x00\x07\x00\x00",
        Request(CMD_BIND, "127.0.0.7", 0, ATYP_IPV4),
        lambda: encode_request(CMD_BIND, "127.0.0.7", 0), id="bind-ipv4",
    ),
    pytest.param(
        "request", b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
        Request(CMD_UDP_ASSOCIATE, "0.0.0.0", 0, ATYP_IPV4),
        lambda: encode_request(CMD_UDP_ASSOCIATE, "0.0.0.0", 0), id="udp-associate",
    ),
    pytest.param(
        "request", b"\x05\x01\x00\x04" + LOCALHOST_V6 + b"\x01\xd1",
        Request(CMD_CONNECT, "::1", 465, ATYP_IPV6),
        lambda: encode_request(CMD_CONNECT, "::1", 465), id="connect-ipv6-loopback",
    ),
    pytest.param(
        "request", request_bytes(1, 4, bytes.fromhex("20010db8000000000000000000000019"), 587),
        Request(CMD_CONNECT, "2001:db8::19", 587, ATYP_IPV6),
        lambda: encode_request(CMD_CONNECT, "2001:DB8:0:0::19", 587), id="connect-ipv6",
    ),
    pytest.param(
        "request", b"\x05\x01\x00\x03\x0emx.example.org\x00\x19",
        Request(CMD_CONNECT, "mx.example.org", 25, ATYP_DOMAIN),
        lambda: encode_request(CMD_CONNECT, "mx.example.org", 25), id="connect-domain",
    ),
    pytest.param(
        "request", request_bytes(1, 3, domain(b"a" * 255), 0xFFFF),
        Request(CMD_CONNECT, "a" * 255, 0xFFFF, ATYP_DOMAIN),
        lambda: encode_request(CMD_CONNECT, "a" * 255, 0xFFFF), id="connect-longest-domain",
    ),
    pytest.param(
        "request", request_bytes(1, 3, domain(b"~!Mx.Example.ORG."), 25),
        Request(CMD_CONNECT, "~!Mx.Example.ORG.", 25, ATYP_DOMAIN),
        lambda: encode_request(CMD_CONNECT, "~!Mx.Example.ORG.", 25), id="domain-as-sent",
    ),
    pytest.param(
        "method-choice", b"\x05\x00", METHOD_NO_AUTH,
        lambda: encode_method_choice(METHOD_NO_AUTH), id="choice-no-auth",
    ),
    pytest.param(
        "method-choice", b"\x05\x02", METHOD_USERPASS,
        lambda: encode_method_choice(METHOD_USERPASS), id="choice-userpass",
    ),
    pytest.param(
        "method-choice", b"\x05\xff", METHOD_NONE_ACCEPTABLE,
        lambda: encode_method_choice(METHOD_NONE_ACCEPTABLE), id="choice-none-acceptable",
    ),
    pytest.param("auth-status", b"\x01\x00", True, lambda: encode_auth_status(True), id="auth-ok"),
    pytest.param(
        "auth-status", b"\x01\x01", False, lambda: encode_auth_status(False), id="auth-failed",
    ),
    pytest.param(
        "reply", b"\x05\x00\x00\x01\xc0\x00\x02\x01\x10\x92",
        Reply(REP_SUCCEEDED, "192.0.2.1", 4242, ATYP_IPV4),
        lambda: encode_reply(REP_SUCCEEDED, ("192.0.2.1", 4242)), id="reply-success-ipv4",
    ),
    pytest.param(
        "reply", b"\x05\x00\x00\x04" + LOCALHOST_V6 + b"\x10\x92",
        Reply(REP_SUCCEEDED, "::1", 4242, ATYP_IPV6),
        lambda: encode_reply(REP_SUCCEEDED, ("::1", 4242)), id="reply-success-ipv6",
    ),
    pytest.param(
        "reply", b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00",
        Reply(REP_CONNECTION_REFUSED, "0.0.0.0", 0, ATYP_IPV4),
        lambda: encode_reply(REP_CONNECTION_REFUSED), id="reply-refused-no-address",
    ),
    pytest.param(
        "reply", b"\x05\x00\x00\x01\xc0\x00\x02\x01\x10\x92",
        Reply(REP_SUCCEEDED, "192.0.2.1", 4242, ATYP_IPV4),
        lambda: encode_reply(REP_SUCCEEDED, ("::ffff:192.0.2.1", 4242)), id="reply-v4-mapped",
    ),
    pytest.param(
        "reply", b"\x05\x00\x00\x04\xfe\x80" + bytes(13) + b"\x01\x10\x92",
        Reply(REP_SUCCEEDED, "fe80::1", 4242, ATYP_IPV6),
        lambda: encode_reply(REP_SUCCEEDED, ("fe80::1%eth0", 4242)), id="reply-scope-dropped",
    ),
    pytest.param(
        "reply", b"\x05\x00\x00\x03\x0bexample.org\x00\x50",
        Reply(REP_SUCCEEDED, "example.org", 80, ATYP_DOMAIN),
        lambda: encode_reply(REP_SUCCEEDED, ("example.org", 80)), id="reply-domain",
    ),
]


@pytest.mark.parametrize(("kind", "wire", "expected", "encode"), VECTORS)
def test_known_vector(
    kind: str, wire: bytes, expected: object, encode: Callable[[], bytes]
) -> None:
    assert encode() == wire
    parser = PARSERS[kind]
    assert parser(wire) == (expected, len(wire))
    check_invariants(parser, wire)


@pytest.mark.parametrize(("kind", "wire", "expected", "encode"), VECTORS)
@pytest.mark.parametrize(
    "after",
    [b"\x05", b"EHLO client.example\r\n", b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x19", bytes(600)],
    ids=["one-byte", "smtp", "another-request", "600-zeros"],
)
def test_bytes_after_the_message_are_not_consumed(
    kind: str, wire: bytes, expected: object, encode: Callable[[], bytes], after: bytes
) -> None:
    parser = PARSERS[kind]
    assert parser(wire + after) == (expected, len(wire))
    check_invariants(parser, wire + after)


@pytest.mark.parametrize(("kind", "wire", "expected", "encode"), VECTORS)
def test_every_proper_prefix_needs_more(
    kind: str, wire: bytes, expected: object, encode: Callable[[], bytes]
) -> None:
    parser = PARSERS[kind]
    for i in range(len(wire)):
        assert parser(wire[:i]) is None, i
        assert parser(memoryview(wire)[:i]) is None, i


def test_auth_status_any_nonzero_is_failure() -> None:
    # RFC 1929: "STATUS value other than X'00'" is a failure.
    for status in range(1, 256):
        assert parse_auth_status(bytes((1, status))) == (False, 2)


@pytest.mark.parametrize("code", range(9))
@pytest.mark.parametrize(
    ("address", "host", "atyp"),
    [
        pytest.param(None, "0.0.0.0", ATYP_IPV4, id="none"),
        pytest.param(("198.51.100.7", 1080), "198.51.100.7", ATYP_IPV4, id="ipv4"),
        pytest.param(("2001:db8::7", 1080), "2001:db8::7", ATYP_IPV6, id="ipv6"),
        pytest.param(("::ffff:198.51.100.7", 1080), "198.51.100.7", ATYP_IPV4, id="v4-mapped"),
    ],
)
def test_reply_round_trip_for_every_code(
    code: int, address: tuple[str, int] | None, host: str, atyp: int
) -> None:
    wire = encode_reply(code, address)
    port = 0 if address is None else address[1]
    assert wire[:4] == bytes((5, code, 0, atyp))
    assert parse_reply(wire) == (Reply(code, host, port, atyp), len(wire))
    check_invariants(parse_reply, wire)


def test_a_pipelined_client_exchange_parses_in_sequence() -> None:
    # A client may send its greeting, credentials, request and first data in one segment.
    stream = (
        encode_greeting([METHOD_USERPASS])
        + encode_credentials(b"relay", b"s3cret")
        + encode_request(CMD_CONNECT, "mx.example.org", 25)
        + b"EHLO client.example\r\n"
    )
    view = memoryview(stream)
    greeting = parse_greeting(view)
    assert greeting == (Greeting((METHOD_USERPASS,)), 3)
    view = view[greeting[1]:]
    credentials = parse_credentials(view)
    assert credentials == (Credentials(b"relay", b"s3cret"), 14)
    view = view[credentials[1]:]
    request = parse_request(view)
    assert request == (Request(CMD_CONNECT, "mx.example.org", 25, ATYP_DOMAIN), 21)
    assert bytes(view[request[1]:]) == b"EHLO client.example\r\n"


def test_a_large_buffer_is_not_a_problem() -> None:
    wire = encode_request(CMD_CONNECT, "192.0.2.1", 25)
    assert parse_request(wire + bytes(10_000_000)) == (
        Request(CMD_CONNECT, "192.0.2.1", 25, ATYP_IPV4), len(wire)
    )


@pytest.mark.parametrize(
    ("packed", "text"),
    [
        pytest.param(bytes(16), "::", id="unspecified"),
        pytest.param(LOCALHOST_V6, "::1", id="loopback"),
        pytest.param(bytes(12) + b"\x01\x02\x03\x04", "::102:304", id="v4-compatible"),
        # "::ffff:c000:201" before Python 3.13, "::ffff:192.0.2.1" from 3.13 on.
        pytest.param(MAPPED + b"\xc0\x00\x02\x01",
                     str(ipaddress.IPv6Address("::ffff:192.0.2.1")), id="v4-mapped"),
        pytest.param(bytes(10) + b"\xff\xfe\x01\x02\x03\x04", "::fffe:102:304", id="near-mapped"),
        pytest.param(bytes.fromhex("00010000000100000000000000000001"), "1:0:1::1",
                     id="longest-run"),
        pytest.param(bytes.fromhex("00010000000000010000000000010001"), "1::1:0:0:1:1",
                     id="first-of-equal-runs"),
        pytest.param(bytes.fromhex("00010002000300040005000600070000"), "1:2:3:4:5:6:7:0",
                     id="single-zero-not-compressed"),
        pytest.param(bytes.fromhex("ABCD" * 8), "abcd:abcd:abcd:abcd:abcd:abcd:abcd:abcd",
                     id="lower-case"),
    ],
)
def test_ipv6_text_is_what_ipaddress_prints(packed: bytes, text: str) -> None:
    assert text == str(ipaddress.IPv6Address(packed))
    assert parse_request(request_bytes(1, 4, packed, 25)) == (
        Request(CMD_CONNECT, text, 25, ATYP_IPV6), 22
    )


@pytest.mark.parametrize(
    ("host", "atyp"),
    [
        ("192.0.2.1", ATYP_IPV4),
        ("0.0.0.0", ATYP_IPV4),
        ("::ffff:192.0.2.1", ATYP_IPV4),
        ("::", ATYP_IPV6),
        ("2001:db8::1", ATYP_IPV6),
        ("fe80::1%eth0", ATYP_IPV6),
        ("::102:304", ATYP_IPV6),
        ("mx.example.org", ATYP_DOMAIN),
        ("localhost", ATYP_DOMAIN),
        # Not IP literals as inet_pton reads them: sent as names, as a resolver would see them.
        ("01.2.3.4", ATYP_DOMAIN),
        ("1.2.3", ATYP_DOMAIN),
        ("[::1]", ATYP_DOMAIN),
        ("192.0.2.1%eth0", ATYP_DOMAIN),
    ],
)
def test_address_type_of(host: str, atyp: int) -> None:
    assert address_type_of(host) == atyp
    wire = encode_request(CMD_CONNECT, host, 25)
    assert wire[3] == atyp
    result = parse_request(wire)
    assert result is not None
    assert result[0].address_type == atyp


# --------------------------------------------------------------------------------------------
# Rejected messages
# --------------------------------------------------------------------------------------------

# (parser, the shortest prefix that proves the message malformed, reason, reply)
REJECTS = [
    pytest.param("greeting", b"\x04", "bad-version", None, id="greeting-socks4"),
    pytest.param("greeting", b"G", "bad-version", None, id="greeting-http"),
    pytest.param("greeting", b"\x00", "bad-version", None, id="greeting-zero"),
    pytest.param("greeting", b"\x05\x00", "no-methods", None, id="greeting-no-methods"),
    pytest.param("credentials", b"\x05", "bad-auth-version", None, id="credentials-ver-5"),
    pytest.param("credentials", b"\x00", "bad-auth-version", None, id="credentials-ver-0"),
    pytest.param("credentials", b"\x01\x00", "bad-credentials", None, id="empty-username"),
    pytest.param("credentials", b"\x01\x05alice\x00", "bad-credentials", None,
                 id="empty-password"),
    pytest.param("request", b"\x04", "bad-version", REP_GENERAL_FAILURE, id="request-socks4"),
    pytest.param("request", b"\x01", "bad-version", REP_GENERAL_FAILURE, id="request-ver-1"),
    pytest.param("request", b"\x05\x00", "bad-command", REP_COMMAND_NOT_SUPPORTED,
                 id="command-0"),
    pytest.param("request", b"\x05\x04", "bad-command", REP_COMMAND_NOT_SUPPORTED,
                 id="command-4"),
    pytest.param("request", b"\x05\xff", "bad-command", REP_COMMAND_NOT_SUPPORTED,
                 id="command-255"),
    pytest.param("request", b"\x05\x01\x01", "bad-reserved", REP_GENERAL_FAILURE,
                 id="request-rsv-1"),
    pytest.param("request", b"\x05\x01\xff", "bad-reserved", REP_GENERAL_FAILURE,
                 id="request-rsv-255"),
    pytest.param("request", b"\x05\x01\x00\x00", "bad-address-type",
                 REP_ADDRESS_TYPE_NOT_SUPPORTED, id="atyp-0"),
    pytest.param("request", b"\x05\x01\x00\x02", "bad-address-type",
                 REP_ADDRESS_TYPE_NOT_SUPPORTED, id="atyp-2"),
    pytest.param("request", b"\x05\x01\x00\x05", "bad-address-type",
                 REP_ADDRESS_TYPE_NOT_SUPPORTED, id="atyp-5"),
    pytest.param("request", b"\x05\x01\x00\xff", "bad-address-type",
                 REP_ADDRESS_TYPE_NOT_SUPPORTED, id="atyp-255"),
    pytest.param("request", b"\x05\x01\x00\x03\x00", "empty-domain", REP_GENERAL_FAILURE,
                 id="empty-domain"),
    pytest.param("request", b"\x05\x01\x00\x03\x0bb\xc3", "bad-domain", REP_GENERAL_FAILURE,
                 id="domain-utf8"),
    pytest.param("request", b"\x05\x01\x00\x03\x0bmx.\x00", "bad-domain", REP_GENERAL_FAILURE,
                 id="domain-nul"),
    pytest.param("request", b"\x05\x01\x00\x03\x0bmx\r", "bad-domain", REP_GENERAL_FAILURE,
                 id="domain-cr"),
    pytest.param("request", b"\x05\x01\x00\x03\x0bmx ", "bad-domain", REP_GENERAL_FAILURE,
                 id="domain-space"),
    pytest.param("request", b"\x05\x01\x00\x03\x0bmx\x7f", "bad-domain", REP_GENERAL_FAILURE,
                 id="domain-del"),
    pytest.param("request", b"\x05\x01\x00\x03\x01\xff", "bad-domain", REP_GENERAL_FAILURE,
                 id="domain-8bit"),
    pytest.param("method-choice", b"\x04", "bad-version", None, id="choice-socks4"),
    pytest.param("method-choice", b"\x01", "bad-version", None, id="choice-ver-1"),
    pytest.param("auth-status", b"\x05", "bad-auth-version", None, id="auth-status-ver-5"),
    pytest.param("auth-status", b"\x00", "bad-auth-version", None, id="auth-status-ver-0"),
    pytest.param("reply", b"\x04", "bad-version", None, id="reply-socks4"),
    pytest.param("reply", b"\x00", "bad-version", None, id="reply-socks4-answer"),
    pytest.param("reply", b"\x05\x09", "bad-reply", None, id="reply-code-9"),
    pytest.param("reply", b"\x05\x5a", "bad-reply", None, id="reply-socks4-granted"),
    pytest.param("reply", b"\x05\xff", "bad-reply", None, id="reply-code-255"),
    pytest.param("reply", b"\x05\x00\x01", "bad-reserved", None, id="reply-rsv"),
    pytest.param("reply", b"\x05\x00\x00\x02", "bad-address-type", None, id="reply-atyp"),
    pytest.param("reply", b"\x05\x00\x00\x03\x00", "empty-domain", None, id="reply-empty-domain"),
    pytest.param("reply", b"\x05\x00\x00\x03\x04a\xe9", "bad-domain", None,
                 id="reply-bad-domain"),
]


@pytest.mark.parametrize(("kind", "prefix", "reason", "reply"), REJECTS)
def test_rejected_at_the_earliest_byte(
    kind: str, prefix: bytes, reason: str, reply: int | None
) -> None:
    parser = PARSERS[kind]
    # One byte less is not yet proof of anything.
    assert parser(prefix[:-1]) is None
    for data in (prefix, prefix + bytes(300), prefix + b"\x05\x01\x00\x01\x7f\x00\x00\x01"):
        with pytest.raises(Socks5Error) as info:
            parser(data)
        assert (info.value.reason, info.value.reply) == (reason, reply)
    check_invariants(parser, prefix + b"mx.example.org\x00\x19")


def test_earliest_error_wins_over_later_ones() -> None:
    # Bad version, command, RSV and ATYP at once: the first byte decides, as when fed slowly.
    with pytest.raises(Socks5Error) as info:
        parse_request(b"\x04\x09\x01\x07")
    assert info.value.reason == "bad-version"
    with pytest.raises(Socks5Error) as info:
        parse_request(b"\x05\x09\x01\x07")
    assert info.value.reason == "bad-command"
    with pytest.raises(Socks5Error) as info:
        parse_request(b"\x05\x01\x01\x07")
    assert info.value.reason == "bad-reserved"


def test_an_incomplete_address_is_not_an_error() -> None:
    # A domain whose length byte promises more than has arrived only needs more bytes.
    assert parse_request(b"\x05\x01\x00\x03\xff" + b"a" * 254) is None
    assert parse_request(b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00") is None
    assert parse_request(b"\x05\x01\x00\x04" + bytes(17)) is None


# --------------------------------------------------------------------------------------------
# Encoders refusing what the parsers would reject
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: encode_greeting([]), id="greeting-empty"),
        pytest.param(lambda: encode_greeting([0] * 256), id="greeting-256-methods"),
        pytest.param(lambda: encode_greeting([256]), id="greeting-method-256"),
        pytest.param(lambda: encode_greeting([-1]), id="greeting-method-negative"),
        pytest.param(lambda: encode_credentials(b"", b"pw"), id="credentials-empty-user"),
        pytest.param(lambda: encode_credentials(b"user", b""), id="credentials-empty-password"),
        pytest.param(lambda: encode_credentials(b"u" * 256, b"pw"), id="credentials-long-user"),
        pytest.param(lambda: encode_credentials(b"u", b"p" * 256), id="credentials-long-pw"),
        pytest.param(lambda: encode_request(0, "192.0.2.1", 25), id="request-command-0"),
        pytest.param(lambda: encode_request(4, "192.0.2.1", 25), id="request-command-4"),
        pytest.param(lambda: encode_request(1, "192.0.2.1", -1), id="request-port-negative"),
        pytest.param(lambda: encode_request(1, "192.0.2.1", 65536), id="request-port-65536"),
        pytest.param(lambda: encode_request(1, "", 25), id="request-empty-host"),
        pytest.param(lambda: encode_request(1, "a" * 256, 25), id="request-domain-256"),
        pytest.param(lambda: encode_request(1, "bücher.example", 25), id="request-non-ascii"),
        pytest.param(lambda: encode_request(1, "mx example", 25), id="request-space"),
        pytest.param(lambda: encode_request(1, "mx\r\n.example", 25), id="request-crlf"),
        pytest.param(lambda: encode_request(1, "mx\x00", 25), id="request-nul"),
        pytest.param(lambda: encode_method_choice(256), id="choice-256"),
        pytest.param(lambda: encode_method_choice(-1), id="choice-negative"),
        pytest.param(lambda: encode_reply(9), id="reply-code-9"),
        pytest.param(lambda: encode_reply(-1), id="reply-code-negative"),
        pytest.param(lambda: encode_reply(0, ("192.0.2.1", 65536)), id="reply-port"),
        pytest.param(lambda: encode_reply(0, ("", 1)), id="reply-empty-host"),
    ],
)
def test_encoders_reject_bad_input(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError; messages are free text
        call()


# --------------------------------------------------------------------------------------------
# Property-based: round trips
# --------------------------------------------------------------------------------------------

ports = st.integers(min_value=0, max_value=0xFFFF)
ipv4_packed = st.binary(min_size=4, max_size=4)
ipv6_packed = st.one_of(
    st.binary(min_size=16, max_size=16),
    # Where libc and ipaddress format differently, and where zero runs get compressed.
    ipv4_packed.map(lambda b: bytes(12) + b),
    ipv4_packed.map(lambda b: MAPPED + b),
    st.lists(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\xff\xff"]), min_size=8, max_size=8)
    .map(b"".join),
)
HEXISH = frozenset("0123456789abcdefABCDEF.:")
domains = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
).filter(lambda name: not HEXISH.issuperset(name.partition("%")[0]))
commands = st.sampled_from([CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE])
trailers = st.binary(max_size=20)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[str, str, int]:
    """(host as the caller writes it, host as parsed back, ATYP), computed with ipaddress."""
    kind = draw(st.sampled_from(["ipv4", "ipv6", "domain"]))
    if kind == "ipv4":
        text = str(ipaddress.IPv4Address(draw(ipv4_packed)))
        return text, text, ATYP_IPV4
    if kind == "ipv6":
        address = ipaddress.IPv6Address(draw(ipv6_packed))
        if address.ipv4_mapped is not None:
            return str(address), str(address.ipv4_mapped), ATYP_IPV4
        written = draw(st.sampled_from([str(address), address.exploded, address.exploded.upper()]))
        return written, str(address), ATYP_IPV6
    name = draw(domains)
    return name, name, ATYP_DOMAIN


@given(st.lists(st.integers(min_value=0, max_value=255), min_size=1, max_size=255), trailers)
@settings(max_examples=200, deadline=None)
def test_greeting_round_trip(methods: list[int], after: bytes) -> None:
    wire = encode_greeting(methods)
    assert len(wire) == 2 + len(methods)
    assert parse_greeting(wire + after) == (Greeting(tuple(methods)), len(wire))
    check_invariants(parse_greeting, wire + after)


@given(st.binary(min_size=1, max_size=255), st.binary(min_size=1, max_size=255), trailers)
@settings(max_examples=200, deadline=None)
def test_credentials_round_trip(username: bytes, password: bytes, after: bytes) -> None:
    wire = encode_credentials(username, password)
    assert parse_credentials(wire + after) == (Credentials(username, password), len(wire))
    check_invariants(parse_credentials, wire + after)


@given(commands, hosts(), ports, trailers)
@settings(max_examples=200, deadline=None)
def test_request_round_trip(
    command: int, host: tuple[str, str, int], port: int, after: bytes
) -> None:
    written, parsed, atyp = host
    assert address_type_of(written) == atyp
    wire = encode_request(command, written, port)
    assert parse_request(wire + after) == (Request(command, parsed, port, atyp), len(wire))
    check_invariants(parse_request, wire + after)


@given(st.integers(min_value=0, max_value=8), hosts(), ports, trailers)
@settings(max_examples=200, deadline=None)
def test_reply_round_trip(code: int, host: tuple[str, str, int], port: int, after: bytes) -> None:
    written, parsed, atyp = host
    wire = encode_reply(code, (written, port))
    assert parse_reply(wire + after) == (Reply(code, parsed, port, atyp), len(wire))
    check_invariants(parse_reply, wire + after)


@given(st.integers(min_value=0, max_value=255), st.booleans(), trailers)
@settings(max_examples=100, deadline=None)
def test_method_choice_and_auth_status_round_trip(method: int, ok: bool, after: bytes) -> None:
    assert parse_method_choice(encode_method_choice(method) + after) == (method, 2)
    assert parse_auth_status(encode_auth_status(ok) + after) == (ok, 2)


@given(ipv6_packed, ports)
@settings(max_examples=200, deadline=None)
def test_ipv6_text_always_matches_ipaddress(packed: bytes, port: int) -> None:
    result = parse_reply(b"\x05\x00\x00\x04" + packed + port.to_bytes(2, "big"))
    assert result is not None
    assert result[0].host == str(ipaddress.IPv6Address(packed))


# --------------------------------------------------------------------------------------------
# Property-based: robustness and prefix stability on arbitrary input
# --------------------------------------------------------------------------------------------

valid_messages = st.one_of(
    st.builds(encode_greeting, st.lists(st.integers(0, 255), min_size=1, max_size=10)),
    st.builds(encode_credentials, st.binary(min_size=1, max_size=20),
              st.binary(min_size=1, max_size=20)),
    st.builds(lambda c, h, p: encode_request(c, h[0], p), commands, hosts(), ports),
    st.builds(lambda c, h, p: encode_reply(c, (h[0], p)), st.integers(0, 8), hosts(), ports),
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_messages))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not data:
            break
        index = draw(st.integers(min_value=0, max_value=len(data) - 1))
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if kind == "set":
            data[index] = draw(st.sampled_from([0x00, 0x01, 0x03, 0x04, 0x05, 0x20, 0x80, 0xFF]))
        elif kind == "insert":
            data.insert(index, draw(st.integers(min_value=0, max_value=255)))
        elif kind == "delete":
            del data[index]
        else:
            del data[index:]
    return bytes(data) + draw(trailers)


arbitrary_inputs = st.one_of(
    st.binary(max_size=300),
    # Past the version byte, where arbitrary bytes rarely get.
    st.binary(max_size=300).map(lambda b: b"\x05" + b),
    st.binary(max_size=300).map(lambda b: b"\x01" + b),
    st.binary(max_size=300).map(lambda b: b"\x05\x01\x00" + b),
    st.binary(max_size=300).map(lambda b: b"\x05\x00\x00" + b),
    st.binary(max_size=300).map(lambda b: b"\x05\x01\x00\x03" + b),
    valid_messages,
    mutated_messages(),
)


@given(arbitrary_inputs)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("kind", PARSERS)
def test_arbitrary_input_never_crashes_and_is_prefix_stable(kind: str, data: bytes) -> None:
    check_invariants(PARSERS[kind], data)
