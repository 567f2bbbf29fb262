"""Tests for ingress.protocol.http1: every rejection rule, framing, pipelining, limits and
serializers.

Each rejection is checked fed whole and fed one byte at a time: the first path runs the checks on
a complete head, the second the early checks on a partial one, and both must give the answer.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from typing import Any

import pytest

from ingress.protocol.http1 import (
    LAST_CHUNK,
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    chunk,
    response_has_body,
    serialize_request_head,
    serialize_response_head,
    validate_request,
    validate_response,
)

END = EndOfMessage()
DEFAULT = Limits()
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def coalesce(events: Sequence[object]) -> list[object]:
    """Merge adjacent Data events: how a body is cut into Data events is not part of the API."""
    merged: list[object] = []
    for event in events:
        if isinstance(event, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def feed_request(
    pieces: Sequence[bytes], limits: Limits = DEFAULT, eof: bool = False
) -> list[object]:
    parser = RequestParser(limits)
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    if eof:
        events += parser.feed_eof()
    return coalesce(events)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def request_error(
    pieces: Sequence[bytes], limits: Limits = DEFAULT, eof: bool = False
) -> HttpError:
    with pytest.raises(HttpError) as info:
        feed_request(pieces, limits, eof)
    return info.value


def head(events: Sequence[object], index: int = 0) -> RequestHead:
    event = events[index]
    assert isinstance(event, RequestHead)
    return event


def post(*fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    lines = [b"POST / HTTP/" + version, *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get(
    *fields: bytes, target: bytes = b"/", version: bytes = b"1.1", method: bytes = b"GET"
) -> bytes:
    lines = [method + b" " + target + b" HTTP/" + version, *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


H = b"Host: a"

# (id, request bytes, status, reason)
REQUEST_REJECTIONS = [
    # framing
    (
        "cl-and-te",
        post(H, b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        "cl-and-te",
    ),
    (
        "te-and-cl",
        post(H, b"Transfer-Encoding: chunked", b"Content-Length: 3", body=b"abc"),
        400,
        "cl-and-te",
    ),
    (
        "repeated-cl-equal",
        post(H, b"Content-Length: 3", b"Content-Length: 3", body=b"abc"),
        400,
        "repeated-content-length",
    ),
    (
        "repeated-cl-differ",
        post(H, b"Content-Length: 3", b"content-length: 4", body=b"abc"),
        400,
        "repeated-content-length",
    ),
    (
        "cl-comma-list",
        post(H, b"Content-Length: 3, 3", body=b"abc"),
        400,
        "repeated-content-length",
    ),
    ("cl-comma-bare", post(H, b"Content-Length: 3,3", body=b"abc"), 400, "repeated-content-length"),
    ("cl-plus", post(H, b"Content-Length: +3", body=b"abc"), 400, "bad-content-length"),
    ("cl-minus", post(H, b"Content-Length: -3", body=b"abc"), 400, "bad-content-length"),
    ("cl-hex", post(H, b"Content-Length: 0x3", body=b"abc"), 400, "bad-content-length"),
    ("cl-space-inside", post(H, b"Content-Length: 3 3", body=b"abc"), 400, "bad-content-length"),
    ("cl-empty", post(H, b"Content-Length: ", body=b"abc"), 400, "bad-content-length"),
    ("cl-19-digits", post(H, b"Content-Length: 1000000000000000000"), 400, "bad-content-length"),
    ("cl-unicode-digit", post(H, b"Content-Length: \xd9\xa3"), 400, "bad-content-length"),
    (
        "te-gzip-chunked",
        post(H, b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        501,
        "unknown-transfer-coding",
    ),
    (
        "te-split-gzip-chunked",
        post(H, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        501,
        "unknown-transfer-coding",
    ),
    (
        "te-chunked-gzip",
        post(H, b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"),
        400,
        "chunked-not-final",
    ),
    ("te-identity", post(H, b"Transfer-Encoding: identity", body=b"abc"), 400, "chunked-not-final"),
    ("te-empty", post(H, b"Transfer-Encoding: ", body=b"abc"), 400, "chunked-not-final"),
    (
        "te-chunked-param",
        post(H, b"Transfer-Encoding: chunked;q=1", body=b"0\r\n\r\n"),
        400,
        "chunked-not-final",
    ),
    (
        "te-chunked-twice",
        post(H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        "chunked-not-final",
    ),
    (
        "te-on-http10",
        post(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", version=b"1.0"),
        400,
        "te-on-http10",
    ),
    # raw bytes of the head
    ("obs-fold-sp", get(H, b"X: a", b" b"), 400, "obs-fold"),
    ("obs-fold-htab", get(H, b"X: a", b"\tb"), 400, "obs-fold"),
    ("space-before-first-field", get(b" Host: a"), 400, "obs-fold"),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare-lf"),
    ("bare-lf-field", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, "bare-lf"),
    ("bare-lf-blank-line", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "bare-lf"),
    ("lf-only-head", b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare-lf"),
    ("leading-bare-lf", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare-lf"),
    ("bare-cr-in-value", get(H, b"X: a\rb"), 400, "bare-cr"),
    ("bare-cr-ending-line", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, "bare-cr"),
    ("nul-in-value", get(H, b"X: a\x00b"), 400, "control-char"),
    ("ctl-in-value", get(H, b"X: a\x01b"), 400, "control-char"),
    ("del-in-value", get(H, b"X: a\x7fb"), 400, "control-char"),
    ("nul-in-name", get(H, b"X\x00Y: b"), 400, "control-char"),
    ("ctl-in-target", get(H, target=b"/a\x01b"), 400, "control-char"),
    ("nul-in-target", get(H, target=b"/a\x00b"), 400, "control-char"),
    ("htab-in-target", get(H, target=b"/a\tb"), 400, "control-char"),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "control-char"),
    # field names
    ("space-in-name", get(H, b"X Y: b"), 400, "bad-header-name"),
    ("space-before-colon", get(b"Host : a"), 400, "bad-header-name"),
    ("at-in-name", get(H, b"X@Y: b"), 400, "bad-header-name"),
    ("slash-in-name", get(H, b"X/Y: b"), 400, "bad-header-name"),
    ("empty-name", get(H, b": b"), 400, "bad-header-name"),
    ("no-colon", get(H, b"XYZ"), 400, "bad-header-name"),
    ("obs-text-in-name", get(H, b"X\xe9: b"), 400, "bad-header-name"),
    ("content_length", post(H, b"Content_Length: 3", body=b"abc"), 400, "bad-header-name"),
    ("content_length-lower", post(H, b"content_length: 3", body=b"abc"), 400, "bad-header-name"),
    (
        "transfer_encoding",
        post(H, b"Transfer_Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        "bad-header-name",
    ),
    # Host
    ("missing-host", get(), 400, "missing-host"),
    ("repeated-host", get(H, H), 400, "repeated-host"),
    ("host-with-space", get(b"Host: a b"), 400, "bad-host"),
    ("host-with-userinfo", get(b"Host: u@a"), 400, "bad-host"),
    ("host-with-slash", get(b"Host: a/b"), 400, "bad-host"),
    ("host-empty-port", get(b"Host: a:"), 400, "bad-host"),
    ("host-only-port", get(b"Host: :80"), 400, "bad-host"),
    ("host-long-port", get(b"Host: a:123456"), 400, "bad-host"),
    ("host-unclosed-ipv6", get(b"Host: [::1"), 400, "bad-host"),
    ("host-comma", get(b"Host: a,b"), 400, "bad-host"),
    ("host-percent", get(b"Host: a%2eb"), 400, "bad-host"),
    # request line
    ("http-2.0", get(H, version=b"2.0"), 505, "bad-version"),
    ("http-0.9", get(H, version=b"0.9"), 505, "bad-version"),
    ("http-1.2", get(H, version=b"1.2"), 505, "bad-version"),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "bad-version"),
    ("lowercase-http", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "bad-request-line"),
    ("version-1.10", get(H, version=b"1.10"), 400, "bad-request-line"),
    ("http-0.9-request", b"GET /\r\n\r\n", 400, "bad-request-line"),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-request-line"),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "bad-request-line"),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-request-line"),
    ("htab-separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-request-line"),
    ("method-not-token", get(H, method=b"G(T"), 400, "bad-request-line"),
    ("unknown-method", get(H, method=b"FOO"), 501, "unknown-method"),
    ("lowercase-method", get(H, method=b"get"), 501, "unknown-method"),
    ("connect", get(b"Host: a:443", method=b"CONNECT", target=b"a:443"), 501, "unsupported-method"),
    ("pri-method", get(H, method=b"PRI"), 400, "parse-error"),
    # llhttp refuses this head; our own split of its (zero) fields names the rule it breaks
    ("llhttp-refusal-named", b"PRI / HTTP/1.1\r\n\r\n", 400, "missing-host"),
    ("asterisk-with-get", get(H, target=b"*"), 400, "bad-target"),
    ("target-without-slash", get(H, target=b"a/b"), 400, "bad-target"),
    ("authority-form", get(H, target=b"a:80"), 400, "bad-target"),
    ("fragment", get(H, target=b"/a#b"), 400, "bad-target"),
    ("obs-text-in-target", get(H, target=b"/a\xe9"), 400, "bad-target"),
    ("ftp-absolute-form", get(H, target=b"ftp://a/"), 400, "bad-target"),
    ("absolute-form-userinfo", get(b"Host: b", target=b"http://u@b/"), 400, "bad-target"),
    ("absolute-form-mismatch", get(H, target=b"http://b/x"), 400, "host-mismatch"),
]


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        pytest.param(data, status, reason, id=name)
        for name, data, status, reason in REQUEST_REJECTIONS
    ],
)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_request_rejections(data: bytes, status: int, reason: str, split: str) -> None:
    pieces = [data] if split == "whole" else bytewise(data)
    error = request_error(pieces, eof=True)
    assert (error.status, error.reason) == (status, reason), error
    assert len(error.detail) < 200


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab", id="cl-body"),
        pytest.param(post(H, b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n"), id="chunked"),
        pytest.param(post(H, b"Transfer-Encoding: chunked", body=b"0\r\nX: y\r\n"), id="trailer"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n", id="head"),
        pytest.param(b"G", id="one-byte"),
    ],
)
def test_truncated_requests(data: bytes) -> None:
    error = request_error([data], eof=True)
    assert (error.status, error.reason) == (400, "truncated")


# --------------------------------------------------------------------------------------------
# Chunked bodies
# --------------------------------------------------------------------------------------------

CHUNKED = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"3 \r\nabc\r\n0\r\n\r\n", "bad-chunk", id="space-after-size"),
        pytest.param(b" 3\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="space-before-size"),
        pytest.param(b"0x3\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="0x-prefix"),
        pytest.param(b"+3\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="sign"),
        pytest.param(b"g\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="not-hex"),
        pytest.param(b"\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="empty-size"),
        pytest.param(b"1" + b"0" * 16 + b"\r\n", "bad-chunk", id="17-hex-digits"),
        pytest.param(b"3 ;a=b\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="bws-before-ext"),
        pytest.param(b"3;a = b\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="space-in-ext"),
        pytest.param(b"3;a=\x01\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="ctl-in-ext"),
        pytest.param(b'3;a="b\r\nabc\r\n0\r\n\r\n', "bad-chunk", id="unclosed-quote"),
        pytest.param(b"3;\r\nabc\r\n0\r\n\r\n", "bad-chunk", id="empty-ext-name"),
        pytest.param(b"3;a\nb\r\nabc\r\n0\r\n\r\n", "bare-lf", id="bare-lf-in-ext"),
        pytest.param(b"3\nabc\r\n0\r\n\r\n", "bare-lf", id="bare-lf-after-size"),
        pytest.param(b"3\rabc\r\n0\r\n\r\n", "bad-chunk", id="bare-cr-after-size"),
        pytest.param(b"3\r\nabcX\r\n0\r\n\r\n", "bad-chunk", id="data-longer-than-size"),
        pytest.param(b"3\r\nabc\n0\r\n\r\n", "bad-chunk", id="bare-lf-after-data"),
        pytest.param(b"3\r\nabc\r0\r\n\r\n", "bad-chunk", id="bare-cr-after-data"),
        pytest.param(b"1;" + b"a" * 5000 + b"\r\n", "bad-chunk", id="huge-extension"),
        pytest.param(b"0\r\nT: x\r\n y\r\n\r\n", "obs-fold", id="trailer-obs-fold"),
        pytest.param(b"0\r\nT: x\n\r\n", "bare-lf", id="trailer-bare-lf"),
        pytest.param(b"0\r\nT: x\ry\r\n\r\n", "bare-cr", id="trailer-bare-cr"),
        pytest.param(b"0\r\nT: \x00\r\n\r\n", "control-char", id="trailer-nul"),
        pytest.param(b"0\r\nT x: y\r\n\r\n", "bad-header-name", id="trailer-bad-name"),
        pytest.param(b"0\r\nno colon\r\n\r\n", "bad-header-name", id="trailer-no-colon"),
        pytest.param(b"0\r\n\n", "bare-lf", id="bare-lf-ending-body"),
    ],
)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_bad_chunked_bodies(body: bytes, reason: str, split: str) -> None:
    data = CHUNKED + body
    pieces = [data] if split == "whole" else bytewise(data)
    error = request_error(pieces, eof=True)
    assert (error.status, error.reason) == (400, reason)


def test_chunk_extensions_and_trailers_are_dropped() -> None:
    body = (
        b'5;name=value;flag;q="a \\" b"\r\nhello\r\n'
        b'6;ext="\xe9"\r\n world\r\n'
        b"000\r\n"
        b"Expires: never\r\nX-Checksum: abc\r\n\r\n"
    )
    events = feed_request([CHUNKED + body])
    assert isinstance(events[0], RequestHead)
    assert events[0].chunked
    assert events[0].content_length is None
    assert events[1:] == [Data(b"hello world"), END]


def test_chunked_ext_with_obs_text_in_token_position_is_refused() -> None:
    assert request_error([CHUNKED + b"5;\xe9=1\r\nhello\r\n0\r\n\r\n"]).reason == "bad-chunk"


def test_chunk_sizes_are_hex_and_may_have_leading_zeros() -> None:
    body = b"A\r\n0123456789\r\n0010\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"
    assert feed_request([CHUNKED + body])[1:] == [Data(b"0123456789" + b"x" * 16), END]


def test_trailer_section_is_bounded_by_the_head_limit() -> None:
    limits = Limits(max_header_bytes=100)
    trailer = b"0\r\n" + b"X: yyyyyyyyyyyyyyy\r\n" * 10 + b"\r\n"
    for pieces in ([CHUNKED + trailer], bytewise(CHUNKED + trailer)):
        error = request_error(pieces, limits)
        assert (error.status, error.reason) == (431, "header-too-large")
    fits = b"0\r\n" + b"X: y\r\n" * 10 + b"\r\n"
    assert feed_request([CHUNKED + fits], limits)[1:] == [END]


def test_sixteen_hex_digits_are_accepted() -> None:
    events = feed_request([CHUNKED + b"0000000000000003\r\nabc\r\n0\r\n\r\n"])
    assert events[1:] == [Data(b"abc"), END]


# --------------------------------------------------------------------------------------------
# Pipelining and splitting
# --------------------------------------------------------------------------------------------

PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    b"\r\n"  # an empty line between requests is ignored (RFC 9112 section 2.2)
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"DELETE /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    b"GET /ignored HTTP/1.1\r\nHost: a\r\n\r\n"  # after "close": never processed
)


PLAIN = RequestHead(
    method=b"GET",
    target=b"/",
    version=b"1.1",
    headers=[],
    content_length=None,
    chunked=False,
    keep_alive=True,
    expect_continue=False,
    connection_tokens=frozenset(),
    host=b"a",
)


def expected_pipeline() -> list[object]:
    def request(
        method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], **changes: Any
    ) -> RequestHead:
        return dataclasses.replace(PLAIN, method=method, target=target, headers=headers, **changes)

    return [
        request(b"GET", b"/a?x=1", [(b"Host", b"a"), (b"Accept", b"*/*")]),
        END,
        request(b"POST", b"/b", [(b"Host", b"a"), (b"Content-Length", b"5")], content_length=5),
        Data(b"hello"),
        END,
        request(b"PUT", b"/c", [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], chunked=True),
        Data(b"abc"),
        END,
        request(b"OPTIONS", b"*", [(b"Host", b"a"), (b"Content-Length", b"0")], content_length=0),
        END,
        request(
            b"HEAD",
            b"/",
            [(b"Connection", b"keep-alive")],
            version=b"1.0",
            host=None,
            connection_tokens=frozenset({b"keep-alive"}),
        ),
        END,
        request(
            b"DELETE",
            b"/d",
            [(b"Host", b"a"), (b"Connection", b"close")],
            keep_alive=False,
            connection_tokens=frozenset({b"close"}),
        ),
        END,
    ]


def test_pipelined_requests_in_one_feed() -> None:
    assert feed_request([PIPELINE], eof=True) == expected_pipeline()


def test_pipelined_requests_split_at_every_offset() -> None:
    expected = expected_pipeline()
    for offset in range(len(PIPELINE) + 1):
        pieces = [PIPELINE[:offset], PIPELINE[offset:]]
        assert feed_request(pieces, eof=True) == expected, offset


def test_pipelined_requests_byte_by_byte() -> None:
    assert feed_request(bytewise(PIPELINE), eof=True) == expected_pipeline()


def test_body_bytes_are_passed_through_without_copy_when_whole() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    payload = b"0123456789"
    events = parser.feed(payload)
    assert isinstance(events[0], Data)
    assert events[0].data is payload
    assert events[1:] == [END]


def test_leading_empty_lines_are_skipped_but_bounded() -> None:
    assert feed_request([b"\r\n\r\n\r\n" + GET])[1:] == [END]
    assert feed_request([b"\r", b"\n\r", b"\n", GET])[1:] == [END]
    error = request_error([b"\r\n" * 40], Limits(max_header_bytes=64))
    assert (error.status, error.reason) == (431, "header-too-large")


def test_bytes_after_the_last_request_are_discarded() -> None:
    # RFC 9112 section 9.6: after "close" (or HTTP/1.0 without keep-alive) the server "MUST NOT
    # process any further requests received on that connection".
    parser = RequestParser()
    assert len(parser.feed(b"GET / HTTP/1.0\r\n\r\n")) == 2
    assert parser.feed(b"\x00garbage that would be refused") == []
    assert parser.feed_eof() == []


def test_error_kills_the_parser() -> None:
    parser = RequestParser()
    with pytest.raises(HttpError) as first:
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n")
    with pytest.raises(HttpError) as again:
        parser.feed(GET)
    assert (again.value.status, again.value.reason) == (first.value.status, first.value.reason)
    with pytest.raises(HttpError):
        parser.feed_eof()


def test_feed_after_eof_is_a_programming_error() -> None:
    parser = RequestParser()
    parser.feed_eof()
    with pytest.raises(RuntimeError):
        parser.feed(GET)


def test_in_head() -> None:
    parser = RequestParser()
    assert not parser.in_head
    parser.feed(b"\r\n")
    assert not parser.in_head  # an empty line is not the start of a head
    parser.feed(b"GET / HT")
    assert parser.in_head
    parser.feed(b"TP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
    assert not parser.in_head  # in a body
    parser.feed(b"hi")
    assert not parser.in_head


# --------------------------------------------------------------------------------------------
# Request semantics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "fields", "keep_alive", "tokens"),
    [
        (b"1.1", [], True, set()),
        (b"1.1", [b"Connection: close"], False, {b"close"}),
        (b"1.1", [b"Connection: Keep-Alive"], True, {b"keep-alive"}),
        (b"1.1", [b"Connection: keep-alive, CLOSE"], False, {b"keep-alive", b"close"}),
        (b"1.1", [b"Connection: x-a", b"Connection: ,close,"], False, {b"x-a", b"close"}),
        (b"1.0", [], False, set()),
        (b"1.0", [b"Connection: keep-alive"], True, {b"keep-alive"}),
        (b"1.0", [b"Connection: te", b"Connection: Keep-Alive"], True, {b"te", b"keep-alive"}),
        (
            b"1.0",
            [b"Connection: keep-alive", b"Connection: close"],
            False,
            {b"keep-alive", b"close"},
        ),
    ],
)
def test_keep_alive(
    version: bytes, fields: list[bytes], keep_alive: bool, tokens: set[bytes]
) -> None:
    request = head(feed_request([get(H, *fields, version=version)]))
    assert request.keep_alive is keep_alive
    assert request.connection_tokens == tokens


@pytest.mark.parametrize(
    ("version", "fields", "expected"),
    [
        (b"1.1", [b"Expect: 100-continue"], True),
        (b"1.1", [b"Expect: 100-Continue"], True),
        (b"1.1", [b"Expect: foo, 100-continue"], True),
        (b"1.1", [b"Expect: 200-ok"], False),
        (b"1.1", [], False),
        # RFC 9110 section 10.1.1: "A server that receives a 100-continue expectation in an
        # HTTP/1.0 request MUST ignore that expectation."
        (b"1.0", [b"Expect: 100-continue"], False),
    ],
)
def test_expect_continue(version: bytes, fields: list[bytes], expected: bool) -> None:
    data = post(H, b"Content-Length: 2", *fields, body=b"hi", version=version)
    assert head(feed_request([data])).expect_continue is expected


def test_expect_continue_is_reported_before_the_body_arrives() -> None:
    parser = RequestParser()
    events = parser.feed(post(H, b"Content-Length: 5", b"Expect: 100-continue"))
    assert len(events) == 1
    assert head(events).expect_continue
    assert parser.feed(b"hello") == [Data(b"hello"), END]


def test_fields_keep_order_and_case_and_lose_ows() -> None:
    data = (
        b"GET / HTTP/1.1\r\nhOsT: a\r\nX-A:\t one \t\r\nx-a:two\r\n"
        b"Empty:   \r\nV: \xe9t\xe9\r\n\r\n"
    )
    request = head(feed_request([data]))
    assert request.headers == [
        (b"hOsT", b"a"),
        (b"X-A", b"one"),
        (b"x-a", b"two"),
        (b"Empty", b""),
        (b"V", b"\xe9t\xe9"),
    ]
    assert request.host == b"a"


@pytest.mark.parametrize(
    "host",
    [
        b"a",
        b"a:80",
        b"A.Example.COM",
        b"mail-1.example.com:8443",
        b"[::1]",
        b"[::1]:8080",
        b"127.0.0.1",
        b"under_score.example",
        b"",
    ],
)
def test_valid_hosts(host: bytes) -> None:
    assert head(feed_request([get(b"Host: " + host)])).host == host


def test_http10_needs_no_host() -> None:
    request = head(feed_request([get(version=b"1.0")]))
    assert request.host is None
    assert request.version == b"1.0"


def test_underscore_names_are_fine_unless_they_mimic_framing_fields() -> None:
    request = head(feed_request([get(H, b"X_Custom: 1", b"Content-Type_: x")]))
    assert request.headers[1:] == [(b"X_Custom", b"1"), (b"Content-Type_", b"x")]


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        (b"Content_Length", True),
        (b"content_length", True),
        (b"Transfer_Encoding", True),
        (b"CONNECTION", False),
        (b"conn_ection", False),
        (b"Connection_", False),
        (b"_Host", False),
        (b"Ho_st", False),
        (b"X_Forwarded_For", False),
    ],
)
def test_underscore_variants(name: bytes, refused: bool) -> None:
    data = get(H, name + b": 1")
    if refused:
        assert request_error([data]).reason == "bad-header-name"
    else:
        assert head(feed_request([data])).headers[1] == (name, b"1")


def test_absolute_form_must_agree_with_host() -> None:
    request = head(
        feed_request([get(b"Host: Example.com:80", target=b"HTTP://example.COM:80/x?q")])
    )
    assert request.target == b"HTTP://example.COM:80/x?q"
    assert request.path == b"/x"
    request = head(feed_request([get(target=b"http://example.com?q", version=b"1.0")]))
    assert request.host == b"example.com"
    assert request.path == b"/"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/a/b?c=d?e", b"/a/b"),
        (b"/a%2Fb?", b"/a%2Fb"),
        (b"/?q", b"/"),
        (b"*", b"*"),
        (b"http://h/x/y?z", b"/x/y"),
        (b"https://h", b"/"),
    ],
)
def test_path(target: bytes, path: bytes) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    host = target.partition(b"//")[2].partition(b"/")[0].partition(b"?")[0] or b"a"
    request = head(feed_request([get(b"Host: " + host, target=target, method=method)]))
    assert request.path == path


def test_content_length_of_18_digits_is_accepted() -> None:
    request = head(feed_request([post(H, b"Content-Length: 999999999999999999", body=b"abc")]))
    assert request.content_length == 999_999_999_999_999_999


def test_content_length_with_leading_zeros() -> None:
    events = feed_request([post(H, b"Content-Length: 003", body=b"abc")])
    assert head(events).content_length == 3
    assert events[1:] == [Data(b"abc"), END]


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b", chunked", b"chunked "])
def test_chunked_coding_name_is_case_insensitive(value: bytes) -> None:
    events = feed_request([post(H, b"Transfer-Encoding: " + value, body=b"0\r\n\r\n")])
    assert head(events).chunked
    assert events[1:] == [END]


def test_what_llhttp_refuses_is_refused() -> None:
    # A trailing empty list element is valid (RFC 9110 section 5.6.1.2) and passes our rules,
    # but llhttp refuses it; so do we, with llhttp's message in the detail.
    error = request_error([post(H, b"Transfer-Encoding: chunked,", body=b"0\r\n\r\n")])
    assert (error.status, error.reason) == (400, "parse-error")
    assert "Transfer-Encoding" in error.detail


def test_methods_llhttp_knows_are_accepted() -> None:
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"):
        target = b"*" if method == b"OPTIONS" else b"/"
        assert head(feed_request([get(H, method=method, target=target)])).method == method


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_request_line_limit(split: str) -> None:
    limits = Limits(max_request_line=40)

    def pieces(data: bytes) -> list[bytes]:
        return [data] if split == "whole" else bytewise(data)

    line = b"GET /" + b"a" * 26 + b" HTTP/1.1"
    assert len(line) == 40
    assert head(feed_request(pieces(line + b"\r\nHost: a\r\n\r\n"), limits)).target.startswith(
        b"/a"
    )
    error = request_error(pieces(b"GET /" + b"a" * 27 + b" HTTP/1.1\r\nHost: a\r\n\r\n"), limits)
    assert (error.status, error.reason) == (414, "request-line-too-long")


def test_request_line_limit_without_end_of_line() -> None:
    # A client that never ends its request line is refused once it passes the limit.
    error = request_error([b"GET /" + b"a" * 100], Limits(max_request_line=40))
    assert (error.status, error.reason) == (414, "request-line-too-long")


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_head_size_limit(split: str) -> None:
    base = b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n"
    limits = Limits(max_header_bytes=100)
    fits = base.replace(b"X: ", b"X: " + b"v" * (100 - len(base)))
    assert len(fits) == 100
    pieces = [fits] if split == "whole" else bytewise(fits)
    assert head(feed_request(pieces, limits)).headers[1][1] == b"v" * (100 - len(base))
    too_big = fits.replace(b"X: ", b"X: v")
    pieces = [too_big] if split == "whole" else bytewise(too_big)
    error = request_error(pieces, limits)
    assert (error.status, error.reason) == (431, "header-too-large")


def test_head_size_limit_without_end_of_head() -> None:
    error = request_error([b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100], Limits(max_header_bytes=256))
    assert (error.status, error.reason) == (431, "header-too-large")


def test_field_count_limit() -> None:
    limits = Limits(max_headers=5)
    fields = [b"X-%d: v" % i for i in range(4)]
    assert len(head(feed_request([get(H, *fields)], limits)).headers) == 5
    error = request_error([get(H, *fields, b"X-4: v")], limits)
    assert (error.status, error.reason) == (431, "too-many-headers")


def test_default_limits() -> None:
    limits = Limits()
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_headers) == (
        8192,
        65536,
        100,
    )
    assert limits.max_body is None
    assert len(head(feed_request([get(H, *[b"X-%d: v" % i for i in range(99)])])).headers) == 100
    error = request_error([get(H, *[b"X-%d: v" % i for i in range(100)])])
    assert (error.status, error.reason) == (431, "too-many-headers")


def test_body_limit_with_content_length() -> None:
    limits = Limits(max_body=5)
    assert feed_request([post(H, b"Content-Length: 5", body=b"hello")], limits)[1:] == [
        Data(b"hello"),
        END,
    ]
    error = request_error([post(H, b"Content-Length: 6")], limits)
    assert (error.status, error.reason) == (413, "body-too-large")


def test_body_limit_with_chunked() -> None:
    limits = Limits(max_body=5)
    ok = CHUNKED + b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
    assert feed_request([ok], limits)[1:] == [Data(b"hello"), END]
    parser = RequestParser(limits)
    events = parser.feed(CHUNKED + b"2\r\nhe\r\n")
    assert events[1:] == [Data(b"he")]
    with pytest.raises(HttpError) as info:
        parser.feed(b"4\r\n")  # refused at the size line, before any of its data
    assert (info.value.status, info.value.reason) == (413, "body-too-large")


# --------------------------------------------------------------------------------------------
# validate_request / validate_response without the parser
# --------------------------------------------------------------------------------------------


def test_validate_request_builds_the_head() -> None:
    request = validate_request(
        b"POST",
        b"/submit?x",
        b"HTTP/1.1",
        [(b"Host", b"mail.example.com"), (b"Content-Length", b"12"), (b"Connection", b"close")],
    )
    assert request == RequestHead(
        method=b"POST",
        target=b"/submit?x",
        version=b"1.1",
        headers=[
            (b"Host", b"mail.example.com"),
            (b"Content-Length", b"12"),
            (b"Connection", b"close"),
        ],
        content_length=12,
        chunked=False,
        keep_alive=False,
        expect_continue=False,
        connection_tokens=frozenset({b"close"}),
        host=b"mail.example.com",
    )
    assert request.path == b"/submit"


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "status", "reason"),
    [
        (b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a"), (b"X", b"a\nb")], 400, "control-char"),
        (b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a"), (b"X", b"a\x00")], 400, "control-char"),
        (b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a"), (b"X:Y", b"a")], 400, "bad-header-name"),
        (b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a"), (b"", b"a")], 400, "bad-header-name"),
        (
            b"GET",
            b"/",
            b"HTTP/1.1",
            [(b"Host", b"a"), (b"Content_Length", b"1")],
            400,
            "bad-header-name",
        ),
        (b"GET", b"/", b"HTTP/1.1", [], 400, "missing-host"),
        (b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a"), (b"host", b"a")], 400, "repeated-host"),
        (b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a b")], 400, "bad-host"),
        (b"GET", b"/ x", b"HTTP/1.1", [(b"Host", b"a")], 400, "bad-target"),
        (b"GET", b"/\x7f", b"HTTP/1.1", [(b"Host", b"a")], 400, "control-char"),
        (b"GET", b"", b"HTTP/1.1", [(b"Host", b"a")], 400, "bad-request-line"),
        (b"G T", b"/", b"HTTP/1.1", [(b"Host", b"a")], 400, "bad-request-line"),
        (b"GET", b"/", b"HTTP/2.0", [(b"Host", b"a")], 505, "bad-version"),
        (b"GET", b"/", b"1.1", [(b"Host", b"a")], 400, "bad-request-line"),
        (
            b"POST",
            b"/",
            b"HTTP/1.1",
            [(b"Host", b"a"), (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")],
            400,
            "cl-and-te",
        ),
        (b"POST", b"/", b"HTTP/1.0", [(b"Transfer-Encoding", b"chunked")], 400, "te-on-http10"),
        (
            b"POST",
            b"/",
            b"HTTP/1.1",
            [(b"Host", b"a"), (b"Transfer-Encoding", b"br, chunked")],
            501,
            "unknown-transfer-coding",
        ),
        (b"GET", b"/" + b"a" * 9000, b"HTTP/1.1", [(b"Host", b"a")], 414, "request-line-too-long"),
        (
            b"GET",
            b"/",
            b"HTTP/1.1",
            [(b"Host", b"a")] + [(b"X", b"")] * 100,
            431,
            "too-many-headers",
        ),
    ],
)
def test_validate_request_rejections(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    status: int,
    reason: str,
) -> None:
    with pytest.raises(HttpError) as info:
        validate_request(method, target, version, headers)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_validate_request_body_limit() -> None:
    headers = [(b"Host", b"a"), (b"Content-Length", b"11")]
    assert (
        validate_request(b"POST", b"/", b"HTTP/1.1", headers, Limits(max_body=11)).content_length
        == 11
    )
    with pytest.raises(HttpError) as info:
        validate_request(b"POST", b"/", b"HTTP/1.1", headers, Limits(max_body=10))
    assert (info.value.status, info.value.reason) == (413, "body-too-large")


@pytest.mark.parametrize(
    ("status", "method", "headers", "content_length", "chunked", "keep_alive", "body"),
    [
        (b"200", b"GET", [(b"Content-Length", b"5")], 5, False, True, True),
        # HEAD: the Content-Length is the GET representation's, reported for forwarding
        (b"200", b"HEAD", [(b"Content-Length", b"5")], 5, False, True, False),
        (b"200", b"HEAD", [(b"Transfer-Encoding", b"chunked")], None, True, True, False),
        (b"200", b"HEAD", [], None, False, True, False),  # not read-until-close
        (b"204", b"GET", [], None, False, True, False),
        (b"304", b"GET", [(b"Content-Length", b"5")], 5, False, True, False),
        (b"100", b"POST", [], None, False, True, False),
        (b"103", b"GET", [(b"Link", b"</s.css>; rel=preload")], None, False, True, False),
        (b"200", b"GET", [(b"Transfer-Encoding", b"chunked")], None, True, True, True),
        (b"200", b"GET", [], None, False, False, True),  # read until close
        (
            b"500",
            b"POST",
            [(b"Connection", b"close"), (b"Content-Length", b"0")],
            0,
            False,
            False,
            True,
        ),
    ],
)
def test_validate_response_framing(
    status: bytes,
    method: bytes,
    headers: list[tuple[bytes, bytes]],
    content_length: int | None,
    chunked: bool,
    keep_alive: bool,
    body: bool,
) -> None:
    response = validate_response(b"HTTP/1.1", status, b"Reason", headers, method)
    assert (response.content_length, response.chunked, response.keep_alive) == (
        content_length,
        chunked,
        keep_alive,
    )
    assert response.status == int(status)
    assert response_has_body(method, response.status) is body


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def feed_response(
    methods: Sequence[bytes], pieces: Sequence[bytes], eof: bool = False, limits: Limits = DEFAULT
) -> list[object]:
    parser = ResponseParser(limits)
    for method in methods:
        parser.expect(method)
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    if eof:
        events += parser.feed_eof()
    return coalesce(events)


def response_error(
    methods: Sequence[bytes], pieces: Sequence[bytes], eof: bool = False
) -> HttpError:
    with pytest.raises(HttpError) as info:
        feed_response(methods, pieces, eof)
    return info.value


def response(status: int, *fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    lines = [b"HTTP/%s %d Reason" % (version, status), *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


RESPONSE_REJECTIONS = [
    ("cl-and-te", response(200, b"Content-Length: 2", b"Transfer-Encoding: chunked"), "cl-and-te"),
    (
        "repeated-cl",
        response(200, b"Content-Length: 2", b"Content-Length: 2", body=b"hi"),
        "repeated-content-length",
    ),
    ("cl-list", response(200, b"Content-Length: 2, 2", body=b"hi"), "repeated-content-length"),
    ("bad-cl", response(200, b"Content-Length: 2x", body=b"hi"), "bad-content-length"),
    ("cl-19-digits", response(200, b"Content-Length: 1234567890123456789"), "bad-content-length"),
    (
        "te-gzip-chunked",
        response(200, b"Transfer-Encoding: gzip, chunked"),
        "unknown-transfer-coding",
    ),
    ("te-identity", response(200, b"Transfer-Encoding: identity"), "chunked-not-final"),
    ("te-on-http10", response(200, b"Transfer-Encoding: chunked", version=b"1.0"), "te-on-http10"),
    ("obs-fold", response(200, b"X: a", b" b", b"Content-Length: 0"), "obs-fold"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "bare-lf"),
    ("bare-cr", b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n", "bare-cr"),
    ("ctl-in-value", response(200, b"X: \x01", b"Content-Length: 0"), "control-char"),
    ("ctl-in-reason", b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", "control-char"),
    ("bad-name", response(200, b"X Y: a", b"Content-Length: 0"), "bad-header-name"),
    ("content_length", response(200, b"Content_Length: 2", body=b"hi"), "bad-header-name"),
    ("http-2.0", response(200, b"Content-Length: 0", version=b"2.0"), "bad-version"),
    ("http-1.10", b"HTTP/1.10 200 OK\r\nContent-Length: 0\r\n\r\n", "bad-status-line"),
    ("two-digit-status", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "bad-status-line"),
    ("status-099", b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n", "bad-status-line"),
    ("status-600", b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", "bad-status-line"),
    ("no-status", b"HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "bad-status-line"),
    ("leading-empty-line", b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "bad-status-line"),
    ("switching-protocols", response(101, b"Upgrade: websocket"), "unsupported-upgrade"),
    (
        "bad-chunk",
        response(200, b"Transfer-Encoding: chunked", body=b"2 \r\nhi\r\n0\r\n\r\n"),
        "bad-chunk",
    ),
    ("truncated-length", response(200, b"Content-Length: 5", body=b"hi"), "truncated"),
    (
        "truncated-chunked",
        response(200, b"Transfer-Encoding: chunked", body=b"5\r\nhi"),
        "truncated",
    ),
    ("truncated-head", b"HTTP/1.1 200 OK\r\nContent-Len", "truncated"),
    ("truncated-after-1xx", response(100), "truncated"),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [pytest.param(data, reason, id=name) for name, data, reason in RESPONSE_REJECTIONS],
)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_response_rejections(data: bytes, reason: str, split: str) -> None:
    pieces = [data] if split == "whole" else bytewise(data)
    error = response_error([b"GET"], pieces, eof=True)
    assert (error.status, error.reason) == (502, reason)


def test_unsolicited_response() -> None:
    error = response_error([], [response(200, b"Content-Length: 0")])
    assert (error.status, error.reason) == (502, "unsolicited-response")
    # one request, two responses
    error = response_error([b"GET"], [response(200, b"Content-Length: 0") * 2])
    assert (error.status, error.reason) == (502, "unsolicited-response")


def test_response_framing_follows_the_requests() -> None:
    data = (
        response(200, b"Content-Length: 100")  # HEAD: no body whatever Content-Length says
        + response(100)  # informational, then the final response
        + response(103, b"Link: </a.css>")
        + response(201, b"Transfer-Encoding: chunked", body=b"5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n")
        + response(204, b"Content-Length: 10")
        + response(304, b"Content-Length: 10", b'ETag: "x"')
        + response(200, b"Content-Length: 3", body=b"abc")
        + response(200, body=b"until the end")  # neither field: read until close
    )
    methods = [b"HEAD", b"POST", b"GET", b"GET", b"GET", b"GET"]
    expected_statuses = [200, 100, 103, 201, 204, 304, 200, 200]
    for pieces in ([data], bytewise(data), [data[:100], data[100:]]):
        events = feed_response(methods, pieces, eof=True)
        heads = [event for event in events if isinstance(event, ResponseHead)]
        assert [h.status for h in heads] == expected_statuses
        # the declared Content-Length, also where no body follows (HEAD, 204, 304)
        assert [h.content_length for h in heads] == [100, None, None, None, 10, 10, 3, None]
        assert heads[-1].keep_alive is False
        bodies = [
            event.data if isinstance(event, Data) else event
            for event in events
            if not isinstance(event, ResponseHead)
        ]
        # 1xx heads are not followed by EndOfMessage: the final response is still to come
        assert bodies == [END, b"hello", END, END, END, b"abc", END, b"until the end", END]


def test_read_until_close_ends_only_at_eof() -> None:
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.feed(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\npart one, ")
    assert isinstance(events[0], ResponseHead)
    assert events[0].keep_alive is False
    assert events[1:] == [Data(b"part one, ")]
    assert parser.feed(b"part two") == [Data(b"part two")]
    assert parser.feed_eof() == [END]


def test_response_keep_alive() -> None:
    cases = [
        (b"1.1", b"Content-Length: 0", True),
        (b"1.1", b"Connection: close\r\nContent-Length: 0", False),
        (b"1.0", b"Content-Length: 0", False),
        (b"1.0", b"Connection: keep-alive\r\nContent-Length: 0", True),
    ]
    for version, fields, keep_alive in cases:
        events = feed_response([b"GET"], [response(200, fields, version=version)])
        assert isinstance(events[0], ResponseHead)
        assert events[0].keep_alive is keep_alive, (version, fields)


def test_bytes_after_a_closing_response_are_discarded() -> None:
    parser = ResponseParser()
    parser.expect(b"GET")
    parser.expect(b"GET")
    events = parser.feed(response(200, b"Connection: close", b"Content-Length: 0") + b"junk")
    assert events[1:] == [END]
    assert parser.feed(b"more junk") == []
    assert parser.feed_eof() == []


def test_eof_between_responses_is_not_an_error() -> None:
    parser = ResponseParser()
    parser.expect(b"GET")
    assert parser.feed_eof() == []


def test_response_body_limit() -> None:
    parser = ResponseParser(Limits(max_body=4))
    parser.expect(b"GET")
    with pytest.raises(HttpError) as info:
        parser.feed(response(200, body=b"12345"))
    assert (info.value.status, info.value.reason) == (502, "body-too-large")


def test_response_fields() -> None:
    events = feed_response(
        [b"GET"], [b"HTTP/1.1 404 Not  Found \r\nX-A:  1 \r\nContent-Length: 0\r\n\r\n"]
    )
    assert events[0] == ResponseHead(
        status=404,
        reason=b"Not  Found ",
        version=b"1.1",
        headers=[(b"X-A", b"1"), (b"Content-Length", b"0")],
        content_length=0,
        chunked=False,
        keep_alive=True,
    )
    events = feed_response([b"GET"], [b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"])
    assert isinstance(events[0], ResponseHead)
    assert events[0].reason == b""


# --------------------------------------------------------------------------------------------
# Serializers and errors
# --------------------------------------------------------------------------------------------


def test_serialize_request_head() -> None:
    request = head(feed_request([b"GET /a?b HTTP/1.0\r\nHost: x\r\n\r\n"]))
    data = serialize_request_head(request, [(b"Host", b"x"), (b"X-Forwarded-For", b"192.0.2.1")])
    assert data == b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"
    assert serialize_request_head(request, []) == b"GET /a?b HTTP/1.1\r\n\r\n"


def test_serialize_response_head() -> None:
    data = serialize_response_head(200, b"OK", [(b"Content-Length", b"2"), (b"Server", b"x")])
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\n"
    assert serialize_response_head(502, b"Bad Gateway", []) == b"HTTP/1.1 502 Bad Gateway\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [[(b"X", b"a\r\nInjected: 1")], [(b"X\r\nY", b"a")], [(b"X", b"a\n")], [(b"X", b"\r")]],
)
def test_serializers_refuse_line_breaks(headers: list[tuple[bytes, bytes]]) -> None:
    request = validate_request(b"GET", b"/", b"HTTP/1.1", [(b"Host", b"a")])
    with pytest.raises(ValueError, match="CR or LF"):
        serialize_request_head(request, headers)
    with pytest.raises(ValueError, match="CR or LF"):
        serialize_response_head(200, b"OK", headers)
    with pytest.raises(ValueError, match="CR or LF"):
        serialize_response_head(200, b"OK\r\nX: y", [])
    with pytest.raises(ValueError, match="three digits"):
        serialize_response_head(20, b"OK", [])


def test_chunk() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"
    body = chunk(b"hello") + chunk(b"") + chunk(b" world") + LAST_CHUNK
    assert feed_request([CHUNKED + body])[1:] == [Data(b"hello world"), END]


def test_http_error_fields_pickle_and_bounded_detail() -> None:
    error = request_error([get(H, b"X: " + b"\x01" * 10_000)])
    assert error.status == 400
    assert error.reason == "control-char"
    assert len(error.detail) < 200
    assert str(error).startswith("400 control-char: ")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.status, clone.reason, clone.detail) == (error.status, error.reason, error.detail)
