"""ingress.protocol.http1 held to h11, the reference parser, with hypothesis.

* Valid traffic (pipelined requests, response sequences): both parsers must see the same
  messages (method, target, version, fields, body bytes, boundaries).
* Hostile variants (one broken rule each): we must reject every one, and so in particular
  whenever h11 rejects (our strictness is a superset of h11's). h11 0.16 ACCEPTS these, which
  we reject on purpose:
      Content-Length with Transfer-Encoding (h11 uses chunked), repeated equal Content-Length
      and "1, 1" (h11 merges them), a 19-digit Content-Length (h11 allows 20), Transfer-Encoding
      on HTTP/1.0, obs-fold (h11 unfolds), bare LF line ends, CTL and DEL in field values,
      Content_Length and other '_' spellings of framing fields, a malformed Host ("u@a"), an
      absolute-form target naming another host than Host, '#' in the target, HTTP/1.2 and
      HTTP/2.0 versions, methods llhttp does not know, CONNECT, "GET *", whitespace after a
      chunk size, whitespace/CTL/bare CR in chunk extensions (h11 skips ';' to CRLF),
      obs-fold in trailers, more than 100 fields (h11 has no field count limit).
  The converse exception: an empty line (CRLF) before a request line is skipped here, as RFC
  9112 section 2.2 says a server SHOULD (and HAProxy, Apache and llhttp do); h11 refuses it.
* Any bytes, fed whole or split anywhere: the same events, or HttpError, never another
  exception.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.protocol.http1 import (
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
H11_BUFFER = 1 << 20  # h11 refuses heads over 16 KiB by default; ours allow 64 KiB


@dataclass
class Message:
    """One parsed message, in a form both parsers' output can be turned into."""

    start: tuple[object, ...]  # (method, target, version) or (status, reason, version)
    headers: list[tuple[bytes, bytes]]  # names lowercased
    body: bytes
    complete: bool


def _lower_names(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # h11 lowercases names, and the value of Transfer-Encoding.
    out = []
    for name, value in headers:
        lower = name.lower()
        out.append((lower, value.lower() if lower == b"transfer-encoding" else value))
    return out


def _ours(events: Sequence[object]) -> list[Message]:
    messages: list[Message] = []
    for event in events:
        if isinstance(event, RequestHead):
            start: tuple[object, ...] = (event.method, event.target, event.version)
            messages.append(Message(start, _lower_names(event.headers), b"", False))
        elif isinstance(event, ResponseHead):
            start = (event.status, event.reason, event.version)
            # 1xx heads are complete messages by themselves
            messages.append(Message(start, _lower_names(event.headers), b"", event.status < 200))
        elif isinstance(event, Data):
            messages[-1].body += event.data
        else:
            assert isinstance(event, EndOfMessage)
            messages[-1].complete = True
    return messages


def parse_requests(pieces: Sequence[bytes]) -> list[object]:
    parser = RequestParser()
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + list(parser.feed_eof())


def parse_responses(methods: Sequence[bytes], pieces: Sequence[bytes]) -> list[object]:
    parser = ResponseParser()
    for method in methods:
        parser.expect(method)
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + list(parser.feed_eof())


def _answer(conn: h11.Connection) -> bool:
    """Answer the request h11 is paused on; True if the connection can take another."""
    # not 2xx: a 2xx answer to CONNECT would switch h11 to tunnelling
    conn.send(h11.Response(status_code=404, headers=[("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
        return False
    conn.start_next_cycle()
    return True


def h11_requests(data: bytes) -> list[Message]:
    """What h11, as a server, reads from ``data``; raises h11.RemoteProtocolError."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_BUFFER)
    conn.receive_data(data)
    conn.receive_data(b"")
    messages: list[Message] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            start = (event.method, event.target, event.http_version)
            messages.append(Message(start, _lower_names(event.headers.raw_items()), b"", False))
        elif isinstance(event, h11.Data):
            messages[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            messages[-1].complete = True
        elif event is h11.PAUSED and conn.our_state is h11.SEND_RESPONSE:
            if not _answer(conn):
                return messages
        else:  # NEED_DATA, ConnectionClosed, PAUSED at the end
            return messages


def h11_responses(methods: Sequence[bytes], data: bytes) -> list[Message]:
    """What h11, as a client that sent ``methods`` one after the other, reads from ``data``."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=H11_BUFFER)
    pending = list(methods)

    def send_next() -> None:
        conn.send(h11.Request(method=pending.pop(0), target="/", headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())

    send_next()
    conn.receive_data(data)
    eof = False
    messages: list[Message] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse | h11.Response):
            start = (event.status_code, event.reason, event.http_version)
            complete = isinstance(event, h11.InformationalResponse)
            messages.append(Message(start, _lower_names(event.headers.raw_items()), b"", complete))
        elif isinstance(event, h11.Data):
            messages[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            messages[-1].complete = True
            if conn.their_state is h11.DONE and conn.our_state is h11.DONE and pending:
                conn.start_next_cycle()
                send_next()
        elif event is h11.NEED_DATA and not eof:
            conn.receive_data(b"")
            eof = True
        else:
            return messages


# --------------------------------------------------------------------------------------------
# Generators of valid messages
# --------------------------------------------------------------------------------------------

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# Fields with a meaning to either parser are generated on purpose, never at random.
SPECIAL = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"}
UNRESERVED = string.ascii_letters + string.digits + "-._~"
PCHAR = UNRESERVED + "!$&'()*+,;=:@"


def _random_case(draw: st.DrawFn, text: str) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if f else c for c, f in zip(text, flips, strict=True)).encode()


@st.composite
def field_names(draw: st.DrawFn) -> bytes:
    name = draw(
        st.sampled_from(["Accept", "User-Agent", "Cookie", "X-Request-Id", "Content-Type", "ETag"])
        | st.text(TCHAR, min_size=1, max_size=12)
    )
    if name.lower() in SPECIAL or name.lower().replace("_", "-") in SPECIAL:
        name = "X-" + name
    return _random_case(draw, name)


# field-vchar (VCHAR and obs-text) with single SP/HTAB runs inside, never at the ends
FIELD_VCHAR = st.sampled_from([bytes([b]) for b in [*range(0x21, 0x7F), 0x80, 0xA0, 0xE9, 0xFF]])


@st.composite
def field_values(draw: st.DrawFn) -> bytes:
    words = draw(st.lists(st.lists(FIELD_VCHAR, min_size=1, max_size=8).map(b"".join), max_size=4))
    separators = draw(
        st.lists(st.sampled_from([b" ", b"\t", b"  "]), min_size=len(words), max_size=len(words))
    )
    value = b"".join(w + s for w, s in zip(words, separators, strict=True)).rstrip(b" \t")
    return value


OWS = st.sampled_from([b"", b" ", b"\t", b"  "])


@st.composite
def field_lines(draw: st.DrawFn, max_size: int = 8) -> list[tuple[bytes, bytes, bytes]]:
    """(name, value, raw line) triples; the raw line has random OWS around the value."""
    count = draw(st.integers(0, max_size))
    lines = []
    for _ in range(count):
        name, value = draw(field_names()), draw(field_values())
        lines.append((name, value, name + b":" + draw(OWS) + value + draw(OWS)))
    return lines


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    segments = draw(st.lists(st.text(PCHAR, max_size=8), max_size=4))
    target = "/" + "/".join(segments)
    if draw(st.booleans()):
        target += "?" + draw(st.text(PCHAR + "/?", max_size=16))
    return target.encode()


HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?(:[0-9]{1,5})?", fullmatch=True)


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in random chunks, with extensions and trailers that must be dropped."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = []
    for piece in pieces:
        if not piece:
            continue
        size = b"%x" % len(piece)
        if draw(st.booleans()):
            size = size.upper() if draw(st.booleans()) else b"00" + size
        ext = draw(st.sampled_from([b"", b";a", b";name=value", b';q="quoted \\" str"', b";a;b=1"]))
        out.append(size + ext + b"\r\n" + piece + b"\r\n")
    out.append(draw(st.sampled_from([b"0", b"000", b"0;end=1"])) + b"\r\n")
    for _name, _value, line in draw(field_lines(max_size=2)):
        out.append(line + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


@st.composite
def requests(draw: st.DrawFn, last: bool) -> bytes:
    """One valid request; only the last of a pipeline may end the connection."""
    method = draw(st.sampled_from(METHODS)).encode()
    version = b"1.0" if last and draw(st.integers(0, 4)) == 0 else b"1.1"
    target = draw(targets())
    if method == b"OPTIONS" and draw(st.booleans()):
        target = b"*"
    lines = [line for _, _, line in draw(field_lines())]
    if version == b"1.1" or draw(st.booleans()):
        host = draw(HOSTS).encode()
        lines.insert(draw(st.integers(0, len(lines))), _random_case(draw, "Host") + b": " + host)
    if last and version == b"1.1" and draw(st.booleans()):
        lines.append(_random_case(draw, "Connection") + b": close")
    body_bytes = draw(st.binary(max_size=64))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "chunked" and version == b"1.0":
        framing = "length"
    body = b""
    if framing == "length":
        lines.append(_random_case(draw, "Content-Length") + b": %d" % len(body_bytes))
        body = body_bytes
    elif framing == "chunked":
        lines.append(
            _random_case(draw, "Transfer-Encoding") + b": " + _random_case(draw, "chunked")
        )
        body = draw(chunked_body(body_bytes))
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


@st.composite
def pipelines(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 4))
    return b"".join(draw(requests(last=i == count - 1)) for i in range(count))


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def coalesce(events: Sequence[object]) -> list[object]:
    merged: list[object] = []
    for event in events:
        if isinstance(event, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].data + event.data)
        elif not (isinstance(event, Data) and not event.data):
            merged.append(event)
    return merged


@SETTINGS
@given(st.data())
def test_valid_pipelines_read_like_h11(data: st.DataObject) -> None:
    stream = data.draw(pipelines())
    ours = parse_requests([stream])
    assert _ours(ours) == h11_requests(stream)
    assert all(m.complete for m in _ours(ours))
    # however TCP cut the bytes, the same events
    assert coalesce(parse_requests(data.draw(splits(stream)))) == coalesce(ours)


@SETTINGS
@given(st.data())
def test_keep_alive_agrees_with_h11_for_http11(data: st.DataObject) -> None:
    stream = data.draw(requests(last=True))
    head = parse_requests([stream])[0]
    assert isinstance(head, RequestHead)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_BUFFER)
    conn.receive_data(stream)
    while not isinstance(conn.next_event(), h11.EndOfMessage):
        pass
    h11_keeps = conn.their_state is h11.DONE
    # h11 never keeps an HTTP/1.0 connection alive; "Connection: keep-alive" makes us do so.
    if head.version == b"1.1" or b"keep-alive" not in head.connection_tokens:
        assert head.keep_alive is h11_keeps


@st.composite
def responses(draw: st.DrawFn, method: bytes, last: bool) -> bytes:
    out = b""
    if method == b"POST" and draw(st.booleans()):
        out += b"HTTP/1.1 100 Continue\r\n\r\n"
    if draw(st.integers(0, 5)) == 0:
        out += b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    status = draw(st.sampled_from([200, 201, 204, 302, 304, 404, 500, 503]))
    reason = draw(st.sampled_from([b"OK", b"Not Found", b"", b"Some  reason\twith tab"]))
    version = b"1.0" if last and draw(st.integers(0, 3)) == 0 else b"1.1"
    lines = [line for _, _, line in draw(field_lines())]
    body_bytes = draw(st.binary(max_size=64))
    no_body = method == b"HEAD" or status in (204, 304)
    framings = ["length", "chunked"] if version == b"1.1" else ["length"]
    if last and status != 304:
        framings.append("close")
    framing = draw(st.sampled_from(framings))
    body = b""
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body_bytes))
        body = b"" if no_body else body_bytes
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = b"" if no_body else draw(chunked_body(body_bytes))
    elif not no_body:
        body = body_bytes
    start = b"HTTP/%s %d %s\r\n" % (version, status, reason)
    if not reason and draw(st.booleans()):
        start = b"HTTP/%s %d\r\n" % (version, status)
    return start + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


@SETTINGS
@given(st.data())
def test_valid_responses_read_like_h11(data: st.DataObject) -> None:
    methods = data.draw(
        st.lists(st.sampled_from([b"GET", b"HEAD", b"POST"]), min_size=1, max_size=3)
    )
    stream = b"".join(
        data.draw(responses(method, last=i == len(methods) - 1)) for i, method in enumerate(methods)
    )
    ours = parse_responses(methods, [stream])
    assert _ours(ours) == h11_responses(methods, stream)
    assert coalesce(parse_responses(methods, data.draw(splits(stream)))) == coalesce(ours)


# --------------------------------------------------------------------------------------------
# Hostile variants
# --------------------------------------------------------------------------------------------

BASE_FIELDS = [b"Host: example.com", b"Accept: */*"]


def _request(
    fields: Sequence[bytes], body: bytes = b"", line: bytes = b"POST /p HTTP/1.1"
) -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


CHUNKED = [*BASE_FIELDS, b"Transfer-Encoding: chunked"]

# name -> builder of a request that breaks exactly that rule
HOSTILE: dict[str, Callable[[bytes], bytes]] = {
    "cl-and-te": lambda b: _request([*CHUNKED, b"Content-Length: %d" % len(b)], b"0\r\n\r\n"),
    "repeated-cl": lambda b: _request(
        [*BASE_FIELDS, b"Content-Length: %d" % len(b), b"content-length: %d" % len(b)], b
    ),
    "cl-list": lambda b: _request([*BASE_FIELDS, b"Content-Length: %d, %d" % (len(b), len(b))], b),
    "cl-signed": lambda b: _request([*BASE_FIELDS, b"Content-Length: +%d" % len(b)], b),
    "cl-19-digits": lambda b: _request([*BASE_FIELDS, b"Content-Length: %019d" % len(b)], b),
    "te-gzip-chunked": lambda b: _request([*BASE_FIELDS, b"Transfer-Encoding: gzip, chunked"]),
    "te-chunked-gzip": lambda b: _request([*BASE_FIELDS, b"Transfer-Encoding: chunked, gzip"]),
    "te-identity": lambda b: _request([*BASE_FIELDS, b"Transfer-Encoding: identity"], b),
    "te-http10": lambda b: _request(CHUNKED, b"0\r\n\r\n", b"POST / HTTP/1.0"),
    "obs-fold": lambda b: _request([*BASE_FIELDS, b"X: a", b" " + b[:5].hex().encode()]),
    "obs-fold-tab": lambda b: _request([b"X: a", b"\tb", *BASE_FIELDS]),
    "bare-lf": lambda b: _request(BASE_FIELDS).replace(b"\r\n", b"\n", 1),
    "lf-only": lambda b: _request(BASE_FIELDS).replace(b"\r\n", b"\n"),
    "bare-cr": lambda b: _request([*BASE_FIELDS, b"X: a\rb"]),
    "ctl-in-value": lambda b: _request([*BASE_FIELDS, b"X: a" + bytes([1 + b[0] % 8 if b else 1])]),
    "del-in-value": lambda b: _request([*BASE_FIELDS, b"X: \x7f"]),
    "nul-in-value": lambda b: _request([*BASE_FIELDS, b"X: \x00"]),
    "ctl-in-target": lambda b: _request(BASE_FIELDS, line=b"GET /\x01 HTTP/1.1"),
    "fragment": lambda b: _request(BASE_FIELDS, line=b"GET /a#b HTTP/1.1"),
    "bad-name": lambda b: _request([*BASE_FIELDS, b"X Y: a"]),
    "underscore-cl": lambda b: _request([*BASE_FIELDS, b"Content_Length: %d" % len(b)], b),
    "underscore-te": lambda b: _request([*BASE_FIELDS, b"transfer_encoding: chunked"]),
    "missing-host": lambda b: _request([b"Accept: */*"]),
    "repeated-host": lambda b: _request([*BASE_FIELDS, b"Host: example.com"]),
    "bad-host": lambda b: _request([b"Host: user@example.com"]),
    "host-mismatch": lambda b: _request(BASE_FIELDS, line=b"GET http://other/ HTTP/1.1"),
    "http-2.0": lambda b: _request(BASE_FIELDS, line=b"GET / HTTP/2.0"),
    "http-1.2": lambda b: _request(BASE_FIELDS, line=b"GET / HTTP/1.2"),
    "h2-preface": lambda b: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "double-space": lambda b: _request(BASE_FIELDS, line=b"GET  / HTTP/1.1"),
    "unknown-method": lambda b: _request(BASE_FIELDS, line=b"BREW / HTTP/1.1"),
    "connect": lambda b: _request([b"Host: a:443"], line=b"CONNECT a:443 HTTP/1.1"),
    "asterisk-get": lambda b: _request(BASE_FIELDS, line=b"GET * HTTP/1.1"),
    "chunk-size-space": lambda b: _request(CHUNKED, b"1 \r\nx\r\n0\r\n\r\n"),
    "chunk-ext-space": lambda b: _request(CHUNKED, b"1;a b\r\nx\r\n0\r\n\r\n"),
    "chunk-ext-ctl": lambda b: _request(CHUNKED, b"1;a=\x01\r\nx\r\n0\r\n\r\n"),
    "chunk-ext-bare-cr": lambda b: _request(CHUNKED, b"1;a\rb\r\nx\r\n0\r\n\r\n"),
    "chunk-overrun": lambda b: _request(CHUNKED, b"1\r\nxy\r\n0\r\n\r\n"),
    "chunk-bare-lf": lambda b: _request(CHUNKED, b"1\nx\r\n0\r\n\r\n"),
    "trailer-obs-fold": lambda b: _request(CHUNKED, b"0\r\nT: a\r\n b\r\n\r\n"),
    "too-many-headers": lambda b: _request([*BASE_FIELDS, *[b"X: y"] * 100]),
}


def h11_rejects(data: bytes) -> bool:
    try:
        h11_requests(data)
    except h11.RemoteProtocolError:
        return True
    return False


@SETTINGS
@given(
    st.sampled_from(sorted(HOSTILE)),
    st.binary(max_size=16),
    st.lists(requests(last=False), max_size=2),
    st.data(),
)
def test_hostile_variants_are_rejected(
    rule: str, payload: bytes, before: list[bytes], data: st.DataObject
) -> None:
    # valid requests first, so the broken one is also found in the middle of a pipeline
    stream = b"".join(before) + HOSTILE[rule](payload)
    pieces = data.draw(splits(stream))
    with pytest.raises(HttpError):
        parse_requests(pieces)
    # implied by the above, but it is the property that matters: we are stricter than h11
    if h11_rejects(stream):
        with pytest.raises(HttpError):
            parse_requests([stream])


def test_the_hostile_list_is_a_superset_of_what_h11_rejects() -> None:
    h11_accepts = {rule for rule, build in HOSTILE.items() if not h11_rejects(build(b""))}
    assert h11_accepts == {
        "cl-and-te", "repeated-cl", "cl-list", "cl-19-digits", "te-http10", "obs-fold",
        "obs-fold-tab", "bare-lf", "lf-only", "ctl-in-value", "del-in-value", "fragment",
        "underscore-cl", "underscore-te", "bad-host", "host-mismatch", "http-2.0", "http-1.2",
        "unknown-method", "connect", "asterisk-get", "chunk-size-space", "chunk-ext-space",
        "chunk-ext-ctl", "chunk-ext-bare-cr", "trailer-obs-fold", "too-many-headers",
    }  # fmt: skip


def test_empty_line_before_a_request_is_the_one_thing_h11_refuses_and_we_accept() -> None:
    stream = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert h11_rejects(stream)
    assert len(parse_requests([stream])) == 2


# --------------------------------------------------------------------------------------------
# Any bytes: events or HttpError, whole or split
# --------------------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b"GET ", b"POST ", b"HEAD ", b"/", b"/a?b", b"*", b" HTTP/1.1", b" HTTP/1.0", b"HTTP/1.1 ",
        b"200 OK", b"100 Continue", b"204 ", b"\r\n", b"\r", b"\n", b"\r\n\r\n", b" ", b"\t",
        b":", b"Host: a", b"Content-Length: ", b"Transfer-Encoding: chunked", b"Connection: close",
        b"0", b"3", b"5", b"a", b"ff", b";x=y", b"0\r\n\r\n", b"\x00", b"\x7f", b"\xe9", b"_",
        b"Expect: 100-continue", b"Content_Length: 1", b",",
    ]
)  # fmt: skip
JUNK = st.lists(FRAGMENTS | st.binary(max_size=3), max_size=40).map(b"".join)
SMALL = Limits(max_request_line=64, max_header_bytes=256, max_headers=8, max_body=32)


def _outcome(run: Callable[[], list[object]]) -> tuple[str, object]:
    try:
        return ("events", coalesce(run()))
    except HttpError as exc:
        error = exc
    assert 400 <= error.status <= 505
    assert error.reason
    assert len(error.detail) < 300
    return ("error", error.status)


def _requests(pieces: Sequence[bytes], limits: Limits) -> list[object]:
    parser = RequestParser(limits)
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + list(parser.feed_eof())


def _responses(pieces: Sequence[bytes], limits: Limits) -> list[object]:
    parser = ResponseParser(limits)
    for method in (b"GET", b"HEAD", b"POST"):
        parser.expect(method)
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + list(parser.feed_eof())


@settings(max_examples=300, deadline=None)
@given(JUNK, st.data(), st.sampled_from([Limits(), SMALL]))
def test_any_bytes_give_events_or_http_error(
    blob: bytes, data: st.DataObject, limits: Limits
) -> None:
    for parse in (_requests, _responses):
        whole = _outcome(lambda: parse([blob], limits))  # noqa: B023 (called at once)
        split = _outcome(lambda: parse(data.draw(splits(blob)), limits))  # noqa: B023
        bytewise = _outcome(lambda: parse([blob[i : i + 1] for i in range(len(blob))], limits))  # noqa: B023
        # An error found by a later feed loses nothing: the events before it were delivered
        # by earlier feeds; so only compare events when the whole feed succeeded.
        if whole[0] == "events":
            assert split == whole
            assert bytewise == whole
        else:
            assert split[0] == bytewise[0] == "error"
