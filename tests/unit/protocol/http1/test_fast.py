"""The fast path of ingress.protocol.http1 (``fast_request``, ``fast_response``) held to the
general path.

The contract: the fast path accepts a strict subset of what the general path accepts, and for
what it accepts it builds exactly the same head (every field) and body, and leaves the parser in
the same state. It must never accept what the general path refuses.

How each path is run, through the public API:

* fast: ``fast_request(data)`` / ``fast_response(data, method)`` called directly;
* general, split: ``feed(data[:1])`` then ``feed(data[1:])`` on a fresh parser: a partial first
  read leaves bytes buffered, so the fast path is never tried;
* general, whole: one ``feed(bytearray(data))``: ``feed`` only tries the fast path on ``bytes``,
  and the general path takes any bytes-like object;
* single: one ``feed(data)`` on a fresh parser, which takes the fast path when it can.

A single feed must give the general path's events, or its error with the same status and
reason, as the whole read gives them. The split read must agree on the events and on whether
there is an error, but may name another one: its first byte is checked alone, early, in another
order (b"\nGET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n" is "bare-lf" split, "control-char"
whole), which has nothing to do with the fast path.

Hypothesis generates messages from a grammar with hostile perturbations near the fast path's
edges (characters just outside its classes, framing fields, limits, line ends, pipelining); the
fixed corpus at the end keeps the fast path from silently becoming dead code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingress.process.build import is_compiled
from ingress.protocol.http1 import (
    FORWARDED_FIELDS,
    FORWARDED_PROTO_FIELDS,
    HOP_BY_HOP,
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    fast,
    fast_request,
    fast_response,
    parser,
    rules,
    serialize_request_head,
    serialize_response_head,
)
from ingress.proxy.http import forwarded_lines, forwarded_request_headers
from tests.unit.protocol.http1.test_differential import (
    HOSTS,
    OWS,
    coalesce,
    field_names,
    field_values,
    targets,
)

END = EndOfMessage()
DEFAULT = Limits()
SETTINGS = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# The fast path looks at heads of at most this many bytes (ingress.protocol.http1.fast._fast_limit);
# limits below it switch the fast path off, and heads around it are generated on purpose.
FAST_HEAD_MAX = 4096
EDGE = Limits(max_request_line=FAST_HEAD_MAX, max_header_bytes=FAST_HEAD_MAX)
LIMITS = [
    DEFAULT,
    Limits(max_headers=3),
    Limits(max_body=16),
    EDGE,
    Limits(max_request_line=FAST_HEAD_MAX - 1),
    Limits(max_header_bytes=FAST_HEAD_MAX - 1),
]


# --------------------------------------------------------------------------------------------
# Running the paths
# --------------------------------------------------------------------------------------------

Error = tuple[int, str]


@dataclass
class Outcome:
    """What a parser made of some bytes: its events, or the error it raised (status, reason)."""

    events: list[object] | None
    error: Error | None

    def same_as(self, other: Outcome) -> bool:
        """The same error, or the same events up to how the body is cut into Data events."""
        if self.error is not None or other.error is not None:
            return self.error == other.error
        assert self.events is not None
        assert other.events is not None
        return coalesce(self.events) == coalesce(other.events)


def _run(feed: Callable[[bytes], Sequence[object]], pieces: Sequence[bytes]) -> Outcome:
    events: list[object] = []
    try:
        for piece in pieces:
            events += feed(piece)
    except HttpError as exc:
        return Outcome(None, (exc.status, exc.reason))
    return Outcome(events, None)


def _eof(feed_eof: Callable[[], Sequence[object]]) -> Outcome:
    return _run(lambda _: feed_eof(), [b""])


def split_pieces(data: bytes) -> list[bytes]:
    """The general path: a first read of one byte leaves it buffered (no fast path after)."""
    return [data[:1], data[1:]]


class _NotExactlyBytes(bytes):
    """``feed`` tries the fast path on exactly ``bytes`` only (what a transport delivers)."""


def whole_general(data: bytes) -> list[bytes]:
    """The general path in one read: a ``bytes`` subclass, which the general path copies."""
    return [_NotExactlyBytes(data)]


def single(data: bytes) -> list[bytes]:
    return [data]


@dataclass
class RequestRun:
    parser: RequestParser
    outcome: Outcome


def run_requests(data: bytes, limits: Limits, pieces: Callable[[bytes], list[bytes]]) -> RequestRun:
    parser = RequestParser(limits)
    return RequestRun(parser, _run(parser.feed, pieces(data)))


@dataclass
class ResponseRun:
    parser: ResponseParser
    outcome: Outcome


def run_responses(
    method: bytes,
    data: bytes,
    limits: Limits,
    pieces: Callable[[bytes], list[bytes]],
) -> ResponseRun:
    parser = ResponseParser(limits)
    parser.expect(method)
    return ResponseRun(parser, _run(parser.feed, pieces(data)))


def assert_single_feed_agrees(one: RequestRun | ResponseRun, whole: RequestRun | ResponseRun,
                              general: RequestRun | ResponseRun, why: str) -> None:
    """A single feed is the general path on the same read (the same events or the same error),
    agrees with the general path split (the same events, or an error too: its reason may
    differ, a split read is checked early, in another order), and leaves its parser in the
    same state."""
    assert one.outcome.same_as(whole.outcome), why
    assert one.outcome.same_as(general.outcome) or (
        one.outcome.error is not None and general.outcome.error is not None
    ), why
    if general.outcome.error is None:
        assert one.parser.in_head == general.parser.in_head, why


@dataclass
class Taken:
    """Which path took a message; recorded for ``--hypothesis-show-statistics``."""

    fast: bool
    refused: bool
    raw: str = ""  # a request the fast path took: how RequestHead.raw holds its head

    def record(self) -> None:
        event("fast path" if self.fast else "general path")
        event("refused" if self.refused else "accepted")
        if self.raw:
            event(f"raw request: {self.raw}")


def _describe(data: bytes, fast: object, general: Outcome, whole: Outcome, one: Outcome) -> str:
    return (
        f"data={data!r}\nfast={fast!r}\ngeneral, split={general!r}\ngeneral, whole={whole!r}\n"
        f"single feed={one!r}"
    )


@pytest.mark.skipif(is_compiled("ingress.protocol.http1.parser"),
                    reason="calls inside a compiled module do not go through its attributes; "
                           "the pure-Python unit run (`make unit COMPILE=0`, in CI) covers this")
def test_the_general_path_runs_without_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """How these tests run the general path: the fast path only ever sees the first byte."""
    seen: list[bytes] = []

    def spy_request(data: bytes, limits: Limits = DEFAULT) -> RequestHead | None:
        seen.append(data)
        return fast_request(data, limits)

    def spy_response(
        data: bytes, method: bytes, limits: Limits = DEFAULT
    ) -> tuple[ResponseHead, bytes] | None:
        seen.append(data)
        return fast_response(data, method, limits)

    monkeypatch.setattr(parser, "fast_request", spy_request)
    monkeypatch.setattr(parser, "fast_response", spy_response)
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert run_requests(request, DEFAULT, whole_general).outcome.error is None
    assert run_responses(b"GET", response, DEFAULT, whole_general).outcome.error is None
    assert seen == []
    assert run_requests(request, DEFAULT, split_pieces).outcome.error is None
    assert run_responses(b"GET", response, DEFAULT, split_pieces).outcome.error is None
    assert seen == [b"G", b"H"]
    # and a single read is offered to it
    assert run_requests(request, DEFAULT, single).outcome.error is None
    assert run_responses(b"GET", response, DEFAULT, single).outcome.error is None
    assert seen == [b"G", b"H", request, response]


# --------------------------------------------------------------------------------------------
# Generators: a valid message, then a few hostile perturbations near the fast path's edges
# --------------------------------------------------------------------------------------------


def _random_case(draw: st.DrawFn, text: bytes) -> bytes:
    flips = draw(st.integers(0, (1 << len(text)) - 1))
    return bytes(c ^ 0x20 if flips >> i & 1 and chr(c).isalpha() else c for i, c in enumerate(text))


# printable ASCII (SP included): probes the edges of the fast path's character classes
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10).map(
    str.encode
)
# values the fast path takes: visible ASCII with SP/HTAB inside
PLAIN_VALUES = st.one_of(
    st.sampled_from(
        [
            b"*/*", b"text/html; charset=utf-8", b"gzip, deflate", b"1", b"a b", b"a\tb", b"x=1;y",
            b"", b'"etag"', b"Mon, 01 Jan 2024 00:00:00 GMT", b"~!#$%&'()*+,-./:;<=>?@[\\]^_`{|}",
        ]
    ),
    PRINTABLE.map(lambda v: v.strip(b" ")),
)  # fmt: skip
PLAIN_NAMES = st.sampled_from(
    [
        b"Accept", b"User-Agent", b"Cookie", b"Referer", b"X-Request-Id", b"Content-Type",
        b"accept-language", b"ETAG", b"Date", b"Server", b"Cache-Control", b"X",
        b"!#$%&'*+-.^`|~09azAZ",
    ]
)  # fmt: skip
# Pieces of hostile values: whitespace, list commas, CTLs, DEL, NUL, obs-text, bare CR, bare LF.
VALUE_PIECES = st.sampled_from(
    [
        b"a", b" ", b"\t", b"  ", b",", b", ", b"close", b"\x00", b"\x01", b"\x1f", b"\x7f",
        b"\x80", b"\xe9", b"\xff", b"\r", b"\n", b"\x0b", b"\x0c",
    ]
)  # fmt: skip
HOSTILE_VALUES = st.one_of(
    st.lists(VALUE_PIECES, min_size=1, max_size=4).map(b"".join),
    field_values(),  # from the differential tests: with obs-text
)
SPECIAL_VALUES: dict[bytes, list[bytes]] = {
    b"connection": [
        b"close", b"keep-alive", b"Keep-Alive, foo", b",,", b"close, close", b"CLOSE", b"",
        b" close ", b"close\t", b"upgrade", b"Upgrade, close", b"keep-alive, close", b"x y",
    ],
    b"content-length": [b"0", b"3", b"35", b"+3", b"3, 3", b"", b"0x3", b"0003", b"1" * 19],
    b"transfer-encoding": [b"chunked", b"Chunked", b"gzip, chunked", b"identity", b""],
    b"expect": [b"100-continue", b"100-Continue", b"foo", b""],
    b"upgrade": [b"websocket", b"h2c", b""],
    b"keep-alive": [b"timeout=5", b""],
    b"proxy-connection": [b"close", b"keep-alive", b"upgrade"],
    b"te": [b"trailers", b""],
    b"host": [b"a", b"b:80"],
    # fields the proxy replaces with its own (RequestHead.raw)
    b"x-forwarded-for": [b"192.0.2.1", b""],
    b"forwarded": [b"for=192.0.2.1"],
    b"x-forwarded-proto": [b"https"],
    b"x-forwarded-port": [b"443"],
}  # fmt: skip
SPECIAL_NAMES = sorted(SPECIAL_VALUES)
CONNECTION_VALUES = st.sampled_from(SPECIAL_VALUES[b"connection"])
# Names the general path refuses, or takes as ordinary fields while the fast path declines them.
ODD_NAMES = st.sampled_from(
    [
        b"Content_Length", b"content_length", b"Transfer_Encoding", b"Host_", b"_Host",
        b"Conn_ection", b"Connection_", b"X_Y", b"_", b"X Y", b"X@Y", b"", b"X\xe9", b"X/Y",
        b"Host ", b" Host", b"X\x01", b"X\x7f", b"(X)", b"X{", b'"X"', b"X=Y", b"\xe9", b"X\t",
    ]
)  # fmt: skip
VALID_HOSTS = st.one_of(
    st.sampled_from([b"a", b"127.0.0.1:30183", b"[::1]:80", b"EXAMPLE.org", b"", b"a_b.c:1"]),
    HOSTS.map(str.encode),
)
BAD_HOSTS = st.sampled_from(
    [
        b"a b", b"u@a", b"a/b", b"example.org:99999", b"a:", b":80", b"[v1.x]", b"a:8o", b"a,b",
        b"\xe9", b"a\tb", b"[::1", b"a:123456",
    ]
)  # fmt: skip
LINE_ENDS = st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r\n", b"\r\n "])


def _ows(draw: st.DrawFn) -> bytes:
    return draw(OWS)


def _plain_line(draw: st.DrawFn) -> bytes:
    return draw(PLAIN_NAMES) + b":" + _ows(draw) + draw(PLAIN_VALUES) + _ows(draw)


def _hostile_line(draw: st.DrawFn) -> bytes:
    """A field line near the fast path's edges, or a line that is no field line at all."""
    kind = draw(st.sampled_from(["special", "odd", "value", "name", "fold"]))
    if kind == "special":
        lower = draw(st.sampled_from(SPECIAL_NAMES))
        name = _random_case(draw, lower)
        value = draw(st.sampled_from(SPECIAL_VALUES[lower]))
    elif kind == "odd":
        name, value = draw(ODD_NAMES), draw(PLAIN_VALUES)
    elif kind == "value":
        name, value = draw(PLAIN_NAMES), draw(HOSTILE_VALUES | PRINTABLE)
    elif kind == "name":
        name, value = draw(field_names()), draw(PLAIN_VALUES)  # with '_' now and then
    else:
        # obs-fold, a line without a colon, an empty name
        return draw(st.sampled_from([b" folded", b"\tfolded", b" ", b"XYZ", b":", b": a"]))
    return name + b":" + _ows(draw) + value + _ows(draw)


def _insert(draw: st.DrawFn, lines: list[bytes], line: bytes) -> None:
    lines.insert(draw(st.integers(0, len(lines))), line)


@dataclass
class Head:
    """A message being generated: the bytes of its parts, perturbed one by one."""

    start: bytes
    lines: list[bytes]
    prefix: bytes = b""
    tail: bytes = b""
    bad_end: tuple[int, bytes] | None = None  # (index of a line end, what replaces its CRLF)

    def head_size(self) -> int:
        return len(self.start) + sum(len(line) + 2 for line in self.lines) + 4

    def pad(self, draw: st.DrawFn) -> None:
        """Grow the head to a few bytes around FAST_HEAD_MAX with one long field."""
        missing = draw(st.integers(FAST_HEAD_MAX - 3, FAST_HEAD_MAX + 3)) - self.head_size()
        missing -= len(b"X-Pad: ") + 2
        if missing >= 0:
            self.lines.append(b"X-Pad: " + b"p" * missing)

    def build(self) -> bytes:
        lines = [self.start, *self.lines, b""]
        ends = [b"\r\n"] * len(lines)
        if self.bad_end is not None:
            index, end = self.bad_end
            ends[index % len(ends)] = end
        return self.prefix + b"".join(a + b for a, b in zip(lines, ends, strict=True)) + self.tail


def _mutation_count(draw: st.DrawFn) -> int:
    # a third of the messages stay valid: the fast path must take many of them
    return draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------

FAST_METHODS = [b"GET", b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]
HOSTILE_METHODS = [b"CONNECT", b"FOO", b"get", b"Get", b"PRI", b"G\xe9T", b"", b"GET\t", b"TRACE"]
HOSTILE_TARGETS = st.sampled_from(
    [
        b"/a#b", b"/#", b"/%", b"/%zz", b"/a%20b", b"/\xe9", b"/a b", b"/a\tb", b"/\x7f", b"/\x00",
        b"http://example.com/x", b"http://a/x?y", b"HTTP://A/x", b"https://a", b"http://u@a/",
        b"*", b"", b"//a", b"/?", b"/a?b#c", b'/"{}|\\^`<>', b"a", b"/\x80", b"/a\rb",
    ]
)  # fmt: skip
HOSTILE_VERSIONS = [
    b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1", b"HTTP/1.1 ",
    b"HTTP/1.1\t", b"HTTPS/1.1",
]  # fmt: skip
SECOND_REQUEST = b"GET /second HTTP/1.1\r\nHost: b\r\n\r\n"
REQUEST_MUTATIONS = [
    "method", "target", "version", "separator", "field", "field", "field", "host-bad",
    "host-none", "host-twice", "host-case", "connection", "line-end", "prefix", "tail", "pad",
    "pad-target",
]  # fmt: skip


@st.composite
def hostile_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(FAST_METHODS))
    target = draw(
        targets() | PRINTABLE.map(lambda t: b"/" + t.replace(b" ", b"").replace(b"#", b""))
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    separators = [b" ", b" "]
    lines = [_plain_line(draw) for _ in range(draw(st.integers(0, 4)))]
    if version == b"HTTP/1.1" or draw(st.booleans()):
        _insert(draw, lines, b"Host:" + _ows(draw) + draw(VALID_HOSTS) + _ows(draw))
    if draw(st.integers(0, 3)) == 0:
        _insert(draw, lines, b"Connection: " + draw(CONNECTION_VALUES))
    message = Head(b"", lines)
    pad = False  # grow the head to around FAST_HEAD_MAX, once it is complete
    for _ in range(_mutation_count(draw)):
        mutation = draw(st.sampled_from(REQUEST_MUTATIONS))
        if mutation == "method":
            method = draw(st.sampled_from(HOSTILE_METHODS))
        elif mutation == "target":
            target = draw(HOSTILE_TARGETS | PRINTABLE.map(lambda t: b"/" + t))
        elif mutation == "version":
            version = draw(st.sampled_from(HOSTILE_VERSIONS))
        elif mutation == "separator":
            separators[draw(st.integers(0, 1))] = draw(st.sampled_from([b"  ", b"\t", b""]))
        elif mutation == "field":
            _insert(draw, lines, _hostile_line(draw))
        elif mutation == "host-bad":
            lines[:] = [line for line in lines if not line.lower().startswith(b"host:")]
            _insert(draw, lines, b"Host: " + draw(BAD_HOSTS))
        elif mutation == "host-none":
            lines[:] = [line for line in lines if not line.lower().startswith(b"host:")]
        elif mutation == "host-twice":
            _insert(draw, lines, b"Host: " + draw(VALID_HOSTS))
        elif mutation == "host-case":
            _insert(draw, lines, _random_case(draw, b"host") + b": " + draw(VALID_HOSTS))
        elif mutation == "connection":
            _insert(draw, lines, _random_case(draw, b"connection") + b":" + draw(CONNECTION_VALUES))
        elif mutation == "line-end":
            message.bad_end = (draw(st.integers(0, 10)), draw(LINE_ENDS))
        elif mutation == "prefix":
            message.prefix = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\r"]))
        elif mutation == "tail":
            message.tail = draw(
                st.sampled_from([SECOND_REQUEST, b"\r\n", b"GET / HT", b"x"])
                | st.binary(min_size=1, max_size=8)
            )
        elif mutation == "pad":
            pad = True
        else:  # a request line around FAST_HEAD_MAX
            target = b"/" + b"p" * draw(st.integers(FAST_HEAD_MAX - 30, FAST_HEAD_MAX + 3))
    message.start = method + separators[0] + target + separators[1] + version
    if pad:
        message.pad(draw)
    return message.build()


# what a client may send next on the same connection
NEXT_REQUESTS = st.sampled_from(
    [
        b"GET /next HTTP/1.1\r\nHost: b\r\n\r\n",
        b"POST /n HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi",
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /x HT",
        b"\r\n",
        b"",
    ]
)


def assert_what_follows_agrees(one: RequestRun | ResponseRun,
                               general: RequestRun | ResponseRun, next_data: bytes, why: str,
                               follow: object) -> Outcome:
    """After the message, ``next_data`` and then the end of input read the same on the parser
    that took the single read as on the general path's (a dead parser raises its error again);
    returns the single-read parser's outcome for ``next_data``."""
    after_general = _run(general.parser.feed, [next_data])
    after_one = _run(one.parser.feed, [next_data])
    if general.outcome.error is None:
        assert after_one.same_as(after_general), (why, follow, after_general, after_one)
    else:
        assert after_one == one.outcome, (why, follow, after_one)
    eof_general = _eof(general.parser.feed_eof)
    eof_one = _eof(one.parser.feed_eof)
    if general.outcome.error is None:
        assert eof_one.same_as(eof_general), (why, follow, eof_general, eof_one)
    return after_one


def check_request(data: bytes, limits: Limits, follow: bytes) -> Taken:
    """The fast path against the general path, for one read of ``data`` and what follows."""
    fast = fast_request(data, limits)
    general = run_requests(data, limits, split_pieces)
    whole = run_requests(data, limits, whole_general)
    one = run_requests(data, limits, single)

    why = _describe(data, fast, general.outcome, whole.outcome, one.outcome)
    if general.outcome.error is not None or whole.outcome.error is not None:
        # never accept what the general path refuses
        assert fast is None, why
    raw = ""
    if fast is not None:
        # the very same head, and nothing else in the read
        assert general.outcome.events == [fast, END], why
        assert whole.outcome.events == [fast, END], why
        assert one.outcome.events == [fast, END], why
        raw = assert_raw_request_is_forwardable(data, fast, why)
    assert_single_feed_agrees(one, whole, general, why)

    # what comes next reads the same
    assert_what_follows_agrees(one, general, follow, why, follow)
    return Taken(fast is not None, general.outcome.error is not None, raw)


_PLAIN_CONNECTION_TOKENS = {b"close", b"keep-alive"}
# What the proxy appends for a client (HttpSession): X-Forwarded-For alone, or with the
# X-Forwarded-Proto and -Port of a listener with forwarded_proto.
FORWARDING = [("192.0.2.7", None), ("2001:db8::7", (b"https", b"443"))]


def _backend_reading(request: bytes) -> RequestHead:
    """The request head a backend reads from what the proxy sends it."""
    head, end = RequestParser().feed(request)
    assert end == END, request
    assert isinstance(head, RequestHead), request
    return head


def assert_raw_request_is_forwardable(data: bytes, head: RequestHead, why: str) -> str:
    """``raw`` is set exactly for an HTTP/1.1 head without hop-by-hop or forwarding fields but
    one Connection field, spelled so and naming only "close" or "keep-alive"; it is the head's
    bytes as received without that field's line, and with the proxy's forwarding fields
    appended a backend reads it as it reads the proxy's re-serialisation of the head, in both
    forwarded_for modes. Returns which of these it is, for the statistics."""
    lines = data[:-4].split(b"\r\n")[1:]
    names = [n.lower() for n, _ in head.headers]
    connection_lines = [line for line in lines if line.lower().startswith(b"connection:")]
    plain = (
        head.version == b"1.1"
        and all(n not in HOP_BY_HOP or n == b"connection" for n in names)
        and not set(names) & (FORWARDED_FIELDS | FORWARDED_PROTO_FIELDS)
        and (not connection_lines or (
            len(connection_lines) == 1 and connection_lines[0].startswith(b"Connection:")
            and head.connection_tokens <= _PLAIN_CONNECTION_TOKENS))
    )
    assert bool(head.raw) == plain, why
    if not head.raw:
        return "none"
    kept = [data[: data.index(b"\r\n")], *(line for line in lines if line not in connection_lines)]
    assert head.raw == b"\r\n".join(kept) + b"\r\n\r\n", why
    for client_ip, proto_port in FORWARDING:
        as_it_came = _backend_reading(head.raw[:-2] + forwarded_lines(client_ip, proto_port))
        for mode in ("append", "replace"):
            serialised = serialize_request_head(
                head, forwarded_request_headers(head, client_ip, mode, proto_port))
            assert as_it_came == _backend_reading(serialised), (why, mode, proto_port)
    return "without its Connection line" if connection_lines else "whole"


@SETTINGS
@given(hostile_requests(), st.sampled_from(LIMITS), NEXT_REQUESTS)
def test_fast_request_is_a_subset_of_the_general_path(
    data: bytes, limits: Limits, follow: bytes
) -> None:
    check_request(data, limits, follow).record()


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------

FAST_STATUSES = [b"200", b"200", b"200", b"201", b"204", b"302", b"304", b"404", b"500", b"599"]
HOSTILE_STATUSES = [
    b"100", b"101", b"103", b"199", b"600", b"099", b"20", b"2000", b"20a", b"+20", b" 200", b"",
]  # fmt: skip
FAST_REASONS = st.sampled_from([b"OK", b"Not Found", b"", b"No Content", b"a  b", b"OK "])
HOSTILE_REASONS = st.one_of(
    st.sampled_from(
        [b" OK", b"a\tb", b"\tx", b"a\x01b", b"\x7f", b"\xe9", b"a\x00", b" ", b"\t", b"\xc3\x89"]
    ),
    PRINTABLE,
)
RESPONSE_MUTATIONS = [
    "version", "status", "reason", "no-sp", "sp", "field", "field", "field", "length-more",
    "length-less", "length-literal", "length-none", "length-repeated", "chunked", "connection",
    "line-end", "body-none", "body-extra", "second", "continue", "pad", "hop-by-hop",
]  # fmt: skip
# hop-by-hop fields a response may carry besides its framing and Connection: a head with one is
# still taken by the fast path, but is not one to forward as it came (ResponseHead.raw)
OTHER_HOP_BY_HOP = sorted(
    HOP_BY_HOP - {b"connection", b"content-length", b"transfer-encoding"})


@st.composite
def hostile_responses(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(request method, response bytes)."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from(FAST_STATUSES))
    reason = draw(FAST_REASONS)
    status_line_end = b" " + reason
    body = draw(st.binary(max_size=40))
    lines = [_plain_line(draw) for _ in range(draw(st.integers(0, 4)))]
    name = _random_case(draw, b"content-length")
    length_line = name + b":" + _ows(draw) + b"%d" % len(body) + _ows(draw)
    if draw(st.integers(0, 3)) == 0:
        _insert(draw, lines, b"Connection: " + draw(CONNECTION_VALUES))
    message = Head(b"", lines)
    pad = False  # grow the head to around FAST_HEAD_MAX, once it is complete
    for _ in range(_mutation_count(draw)):
        mutation = draw(st.sampled_from(RESPONSE_MUTATIONS))
        if mutation == "version":
            version = draw(st.sampled_from(HOSTILE_VERSIONS))
        elif mutation == "status":
            status = draw(st.sampled_from(HOSTILE_STATUSES))
        elif mutation == "reason":
            status_line_end = b" " + draw(HOSTILE_REASONS)
        elif mutation == "no-sp":
            status_line_end = b""
        elif mutation == "sp":
            status_line_end = b" "
        elif mutation == "field":
            _insert(draw, lines, _hostile_line(draw))
        elif mutation == "length-more":  # a body shorter than declared
            length_line = name + b": %d" % (len(body) + draw(st.integers(1, 3)))
        elif mutation == "length-less" and body:  # a body longer than declared
            length_line = name + b": %d" % (len(body) - 1)
        elif mutation == "length-literal":
            length_line = name + b": " + draw(st.sampled_from(SPECIAL_VALUES[b"content-length"]))
        elif mutation == "length-none":
            length_line = b""
        elif mutation == "length-repeated":
            _insert(draw, lines, b"content-length: %d" % (len(body) + draw(st.integers(0, 1))))
        elif mutation == "chunked":
            length_line = b"Transfer-Encoding: chunked"
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        elif mutation == "connection":
            _insert(draw, lines, _random_case(draw, b"connection") + b":" + draw(CONNECTION_VALUES))
        elif mutation == "line-end":
            message.bad_end = (draw(st.integers(0, 10)), draw(LINE_ENDS))
        elif mutation == "body-none":
            body = b""
        elif mutation == "body-extra":
            body += draw(st.binary(min_size=1, max_size=8))
        elif mutation == "second":
            message.tail = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        elif mutation == "continue":
            message.prefix = b"HTTP/1.1 100 Continue\r\n\r\n"
        elif mutation == "pad":
            pad = True
        elif mutation == "hop-by-hop":
            name_ = _random_case(draw, draw(st.sampled_from(OTHER_HOP_BY_HOP)))
            _insert(draw, lines, name_ + b":" + _ows(draw) + draw(PLAIN_VALUES))
    if length_line:
        _insert(draw, lines, length_line)
    if not (method != b"HEAD" and status not in (b"204", b"304")) and draw(st.booleans()):
        body = b""  # usually nothing follows a head that has no body
    message.start = version + b" " + status + status_line_end
    if pad:
        message.pad(draw)
    message.tail = body + message.tail
    return method, message.build()


# what the backend may send next, with the method of the request it answers
NEXT_RESPONSES = st.sampled_from(
    [
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 200 OK\r\n\r\nuntil close"),
        (b"GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"),
        (b"GET", b"junk\r\n\r\n"),
        (b"GET", b""),
    ]
)


def check_response(
    method: bytes, data: bytes, limits: Limits, follow: tuple[bytes, bytes]
) -> Taken:
    """The fast path against the general path, for one read of ``data`` and what follows."""
    fast = fast_response(data, method, limits)
    general = run_responses(method, data, limits, split_pieces)
    whole = run_responses(method, data, limits, whole_general)
    one = run_responses(method, data, limits, single)

    why = f"method={method!r}\n" + _describe(
        data, fast, general.outcome, whole.outcome, one.outcome
    )
    if general.outcome.error is not None or whole.outcome.error is not None:
        assert fast is None, why
    if fast is not None:
        head, body = fast
        for events in (general.outcome.events, whole.outcome.events):
            # the very same head, then Data events holding the body, then the end
            assert events is not None, why
            assert len(events) >= 2, why
            assert events[0] == head, why
            assert events[-1] == END, why
            middle = events[1:-1]
            assert all(isinstance(e, Data) for e in middle), why
            assert b"".join(e.data for e in middle if isinstance(e, Data)) == body, why
        assert one.outcome.events == ([head, Data(body), END] if body else [head, END]), why
        assert_raw_head_is_forwardable(method, data, head, body, why)
    assert_single_feed_agrees(one, whole, general, why)

    # the same state afterwards: after keep-alive the next response is read, after close it is
    # discarded
    next_method, next_data = follow
    general.parser.expect(next_method)
    one.parser.expect(next_method)
    after_one = assert_what_follows_agrees(one, general, next_data, why, follow)
    if fast is not None and not fast[0].keep_alive:
        assert after_one.events == [], (why, follow, after_one)
    return Taken(fast is not None, general.outcome.error is not None)


def proxy_serialisation(head: ResponseHead) -> bytes:
    """The head as the proxy re-serialises it for a keep-alive HTTP/1.1 client
    (HttpSession._client_response_head): hop-by-hop fields dropped, the framing appended."""
    fields = [(n, v) for n, v in head.headers if n.lower() not in HOP_BY_HOP]
    if head.content_length is not None:
        fields.append((b"Content-Length", b"%d" % head.content_length))
    return serialize_response_head(head.status, head.reason, fields)


def _reading(method: bytes, head_bytes: bytes) -> tuple[object, ...]:
    """What a client reads from a response head: status, reason, framing, whether the
    connection stays, and its fields as a multiset (the framing one by its value)."""
    parser = ResponseParser()
    parser.expect(method)
    events = parser.feed(head_bytes)
    read = events[0]
    assert isinstance(read, ResponseHead), events
    fields = sorted((n.lower(), v) for n, v in read.headers if n.lower() != b"content-length")
    return (read.status, read.reason, read.content_length, read.chunked, read.keep_alive, fields)


def assert_raw_head_is_forwardable(method: bytes, data: bytes, head: ResponseHead, body: bytes,
                                   why: str) -> None:
    """``raw`` is set exactly for an HTTP/1.1 head without hop-by-hop fields but its
    Content-Length and one Connection field, spelled so and naming only "close" or
    "keep-alive" (nginx's "Connection: keep-alive"); it is the head's bytes as received without
    that field's line, and reads as the proxy's re-serialisation of the head does."""
    head_bytes = data[:len(data) - len(body)]
    lines = head_bytes[:-4].split(b"\r\n")[1:]
    names = [n.lower() for n, _ in head.headers]
    connection_lines = [line for line in lines if line.lower().startswith(b"connection:")]
    tokens = {token.strip().lower() for line in connection_lines
              for token in line.split(b":", 1)[1].split(b",") if token.strip()}
    plain = (
        head.version == b"1.1"
        and all(n not in HOP_BY_HOP or n in (b"content-length", b"connection") for n in names)
        and (not connection_lines or (
            len(connection_lines) == 1 and connection_lines[0].startswith(b"Connection:")
            and tokens <= _PLAIN_CONNECTION_TOKENS))
    )
    assert bool(head.raw) == plain, why
    if head.raw:
        kept = [head_bytes[: head_bytes.index(b"\r\n")],
                *(line for line in lines if line not in connection_lines)]
        assert head.raw == b"\r\n".join(kept) + b"\r\n\r\n", why
        assert _reading(method, head.raw) == _reading(method, proxy_serialisation(head)), why


@SETTINGS
@given(hostile_responses(), st.sampled_from(LIMITS), NEXT_RESPONSES)
def test_fast_response_is_a_subset_of_the_general_path(
    message: tuple[bytes, bytes], limits: Limits, follow: tuple[bytes, bytes]
) -> None:
    method, data = message
    check_response(method, data, limits, follow).record()


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------

THREE_FIELDS = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: x\r\n\r\n"
THREE_FIELD_RESPONSE = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n"


def _error(outcome: Outcome) -> Error:
    assert outcome.error is not None, outcome
    return outcome.error


def test_too_many_fields_are_not_taken() -> None:
    limits = Limits(max_headers=2)
    assert fast_request(THREE_FIELDS, limits) is None
    assert _error(run_requests(THREE_FIELDS, limits, split_pieces).outcome) == (
        431,
        "too-many-headers",
    )
    assert _error(run_requests(THREE_FIELDS, limits, single).outcome) == (431, "too-many-headers")
    assert fast_response(THREE_FIELD_RESPONSE, b"GET", limits) is None
    assert _error(run_responses(b"GET", THREE_FIELD_RESPONSE, limits, single).outcome) == (
        502,
        "too-many-headers",
    )
    # and at the limit they are
    assert fast_request(THREE_FIELDS, Limits(max_headers=3)) is not None
    assert fast_response(THREE_FIELD_RESPONSE, b"GET", Limits(max_headers=3)) is not None


def test_a_body_over_max_body_is_not_taken() -> None:
    limits = Limits(max_body=10)
    eleven = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11
    assert fast_response(eleven, b"GET", limits) is None
    assert _error(run_responses(b"GET", eleven, limits, single).outcome) == (502, "body-too-large")
    # a response to HEAD declares the length of a body it does not carry; it is still refused
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"
    assert fast_response(head, b"HEAD", limits) is None
    assert _error(run_responses(b"HEAD", head, limits, single).outcome) == (502, "body-too-large")
    ten = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10
    assert fast_response(ten, b"GET", limits) is not None


@pytest.mark.parametrize(
    "limits",
    [
        Limits(max_request_line=FAST_HEAD_MAX - 1),
        Limits(max_header_bytes=FAST_HEAD_MAX - 1),
        Limits(max_request_line=100, max_header_bytes=200),
    ],
)
def test_limits_below_the_fast_head_size_switch_the_fast_path_off(limits: Limits) -> None:
    for data in FAST_REQUESTS.values():
        assert fast_request(data, limits) is None
        outcome = run_requests(data, limits, single).outcome
        assert outcome.same_as(run_requests(data, limits, split_pieces).outcome)
    for method, data in FAST_RESPONSES.values():
        assert fast_response(data, method, limits) is None
        outcome = run_responses(method, data, limits, single).outcome
        assert outcome.same_as(run_responses(method, data, limits, split_pieces).outcome)


def _request_of_size(size: int) -> bytes:
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def _response_of_size(size: int) -> bytes:
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\nok"


@pytest.mark.parametrize("size", [FAST_HEAD_MAX - 1, FAST_HEAD_MAX, FAST_HEAD_MAX + 1])
def test_heads_at_the_edge_of_the_limits(size: int) -> None:
    request = _request_of_size(size)
    response = _response_of_size(size)
    assert len(request) == size
    assert len(response) == size + 2
    taken = size <= FAST_HEAD_MAX
    # limits exactly at the fast path's size: what is over them is refused, never taken
    assert (fast_request(request, EDGE) is not None) is taken
    assert (fast_response(response, b"GET", EDGE) is not None) is taken
    refused_request = run_requests(request, EDGE, split_pieces).outcome.error
    refused_response = run_responses(b"GET", response, EDGE, split_pieces).outcome.error
    if taken:
        assert (refused_request, refused_response) == (None, None)
    else:
        assert refused_request == (431, "header-too-large")
        assert refused_response == (502, "header-too-large")
    # with the default limits a longer head is not refused; the general path reads it
    check_request(request, DEFAULT, b"")
    check_response(b"GET", response, DEFAULT, (b"GET", b""))
    check_request(request, EDGE, b"")
    check_response(b"GET", response, EDGE, (b"GET", b""))


# --------------------------------------------------------------------------------------------
# Coverage: what the fast path must take, and what it must leave to the general path
# --------------------------------------------------------------------------------------------

BROWSER = (
    b"GET /track/open?id=8f3a2c&u=1234 HTTP/1.1\r\n"
    b"Host: links.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://mail.example.org/inbox\r\n"
    b"Cookie: session=abc123; theme=dark; _ga=GA1.2.3\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Priority: u=0, i\r\n"
    b"\r\n"
)
FAST_REQUESTS = {
    "wrk": b"GET /click/abc?x=1 HTTP/1.1\r\nHost: 127.0.0.1:30183\r\n\r\n",
    "curl": (
        b"GET /o/abc.gif HTTP/1.1\r\nHost: links.example.com\r\nUser-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\n\r\n"
    ),
    "browser": BROWSER,
    "http10-no-host": b"GET /index.html HTTP/1.0\r\nUser-Agent: probe\r\n\r\n",
    "http10-keep-alive": b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n",
    "head": b"HEAD /health HTTP/1.1\r\nHost: example.com\r\nUser-Agent: kube-probe/1.30\r\n\r\n",
    "close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
}
FAST_RESPONSES = {
    "200": (
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 35\r\n\r\n"
        b"<html><body>clicked</body></html>\r\n",
    ),
    "204": (b"GET", b"HTTP/1.1 204 No Content\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"),
    "head": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: 43\r\n\r\n"),
    "404-close": (
        b"GET",
        b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 9\r\n\r\nnot found",
    ),
    "304": (b"GET", b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\n\r\n'),
    "http10": (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "keep-alive-field": (
        b"GET", b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"),
    "spaced": (b"GET", b"HTTP/1.1 200 OK\r\nX-A:\t1 \r\ncontent-length:  002\r\n\r\nok"),
    "nginx": (b"GET", b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok"),
}
# the head each of them is forwarded with, before the proxy's own Connection field
# (ResponseHead.raw): as it came, without its Connection line, or re-serialised (b"")
RESPONSES_FORWARDED_AS = {
    **{name: FAST_RESPONSES[name][1][:-len(body)] if body else FAST_RESPONSES[name][1]
       for name, body in (("200", b"<html><body>clicked</body></html>\r\n"), ("204", b""),
                          ("head", b""), ("304", b""), ("spaced", b"ok"))},
    "404-close": b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n",
    "http10": b"", "keep-alive-field": b"",
    "nginx": b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/plain\r\n"
             b"Content-Length: 2\r\n\r\n",
}


# the request head each of them is forwarded as, before the proxy's own fields (RequestHead.raw)
REQUESTS_FORWARDED_AS = {
    "wrk": FAST_REQUESTS["wrk"], "curl": FAST_REQUESTS["curl"],
    "browser": BROWSER.replace(b"Connection: keep-alive\r\n", b""),
    "http10-no-host": b"", "http10-keep-alive": b"", "head": FAST_REQUESTS["head"],
    "close": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", list(FAST_REQUESTS))
def test_common_requests_take_the_fast_path(name: str) -> None:
    data = FAST_REQUESTS[name]
    head = fast_request(data)
    assert head is not None
    assert head.raw == REQUESTS_FORWARDED_AS[name]
    assert RequestParser().feed(data) == [head, END]
    check_request(data, DEFAULT, FAST_REQUESTS["wrk"])


def test_what_the_fast_path_builds() -> None:
    head = fast_request(FAST_REQUESTS["wrk"])
    assert head == RequestHead(
        method=b"GET",
        target=b"/click/abc?x=1",
        version=b"1.1",
        headers=[(b"Host", b"127.0.0.1:30183")],
        content_length=None,
        chunked=False,
        keep_alive=True,
        expect_continue=False,
        connection_tokens=frozenset(),
        host=b"127.0.0.1:30183",
    )
    head = fast_request(FAST_REQUESTS["http10-keep-alive"])
    assert head is not None
    assert (head.keep_alive, head.connection_tokens) == (True, frozenset([b"keep-alive"]))
    _method, data = FAST_RESPONSES["404-close"]
    taken = fast_response(data, b"GET")
    assert taken == (
        ResponseHead(
            status=404,
            reason=b"Not Found",
            version=b"1.1",
            headers=[(b"Connection", b"close"), (b"Content-Length", b"9")],
            content_length=9,
            chunked=False,
            keep_alive=False,
        ),
        b"not found",
    )


@pytest.mark.parametrize("name", list(FAST_RESPONSES))
def test_common_responses_take_the_fast_path(name: str) -> None:
    method, data = FAST_RESPONSES[name]
    taken = fast_response(data, method)
    assert taken is not None
    head, body = taken
    assert head.raw == RESPONSES_FORWARDED_AS[name]
    parser = ResponseParser()
    parser.expect(method)
    assert parser.feed(data) == ([head, Data(body), END] if body else [head, END])
    check_response(method, data, DEFAULT, FAST_RESPONSES["200"])


GENERAL_REQUESTS = {
    "post-with-body": (
        b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
        b"\r\nhello"
    ),
    "post-content-length-0": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked-no-body-yet": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    "expect": (b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
    "expect-without-body": b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    "underscore-name": b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    "absolute-form": b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipelined": FAST_REQUESTS["wrk"] + FAST_REQUESTS["curl"],
    "leading-empty-line": b"\r\n" + FAST_REQUESTS["wrk"],
    "obs-text-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\n\r\n",
    "trailing-crlf": FAST_REQUESTS["wrk"] + b"\r\n",
}


@pytest.mark.parametrize("data", list(GENERAL_REQUESTS.values()), ids=list(GENERAL_REQUESTS))
def test_requests_left_to_the_general_path(data: bytes) -> None:
    assert fast_request(data) is None
    # the general path accepts every one of them
    outcome = run_requests(data, DEFAULT, single).outcome
    assert outcome.error is None
    assert isinstance((outcome.events or [None])[0], RequestHead)
    check_request(data, DEFAULT, b"")


def test_a_request_split_across_reads_is_left_to_the_general_path() -> None:
    data = FAST_REQUESTS["curl"]
    for cut in range(1, len(data)):
        assert fast_request(data[:cut]) is None
        parser = RequestParser()
        assert parser.feed(data[:cut]) == []
        # once bytes are buffered the rest is not given to the fast path alone
        assert parser.feed(data[cut:]) == [fast_request(data), END]


GENERAL_RESPONSES = {
    "chunked": (
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ),
    "until-close": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"),
    "continue-then-final": (
        b"POST",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    "body-incomplete": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"),
    "obs-text-reason": (b"GET", b"HTTP/1.1 200 \xc3\x89t\xc3\xa9\r\nContent-Length: 0\r\n\r\n"),
    "no-sp-after-status": (b"GET", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"),
}


@pytest.mark.parametrize(
    ("method", "data"), list(GENERAL_RESPONSES.values()), ids=list(GENERAL_RESPONSES)
)
def test_responses_left_to_the_general_path(method: bytes, data: bytes) -> None:
    assert fast_response(data, method) is None
    outcome = run_responses(method, data, DEFAULT, single).outcome
    assert outcome.error is None
    assert isinstance((outcome.events or [None])[0], ResponseHead)
    check_response(method, data, DEFAULT, (b"GET", b""))


def test_bytes_after_a_response_are_never_taken() -> None:
    method, data = FAST_RESPONSES["200"]
    for extra in (b"x", b"\r\n", FAST_RESPONSES["http10"][1]):
        assert fast_response(data + extra, method) is None
        check_response(method, data + extra, DEFAULT, (b"GET", b""))
    # one request, so a whole second response answers nothing
    outcome = run_responses(method, data + FAST_RESPONSES["http10"][1], DEFAULT, single).outcome
    assert outcome.error == (502, "unsolicited-response")


def test_a_response_split_across_reads_is_left_to_the_general_path() -> None:
    method, data = FAST_RESPONSES["200"]
    taken = fast_response(data, method)
    assert taken is not None
    for cut in range(1, len(data)):
        assert fast_response(data[:cut], method) is None
        parser = ResponseParser()
        parser.expect(method)
        events = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert coalesce(events) == [taken[0], Data(taken[1]), END]


# --------------------------------------------------------------------------------------------
# Byte-level mutations of messages the fast path takes
# --------------------------------------------------------------------------------------------

# bytes at the edges of the fast path's classes, and the ones that structure a head
EDGE_BYTES = st.sampled_from(
    [
        b"\x00", b"\x01", b"\t", b"\n", b"\x0b", b"\r", b"\x1f", b" ", b"!", b'"', b"#", b"%",
        b",", b"/", b":", b";", b"?", b"@", b"[", b"\\", b"]", b"_", b"`", b"{", b"~", b"\x7f",
        b"\x80", b"\xe9", b"\xff", b"\r\n", b"\r\n ", b"\r\n\r\n", b"a", b"A", b"0", b"9",
    ]
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to three bytes replaced, inserted or deleted."""
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "delete":
            data = data[:index] + data[index + 1 :]
        else:
            piece = draw(EDGE_BYTES)
            data = data[:index] + piece + data[index + (kind == "replace") :]
    return data


@SETTINGS
@given(st.sampled_from(sorted(FAST_REQUESTS)), st.sampled_from(LIMITS), st.data())
def test_mutated_fast_requests(name: str, limits: Limits, data: st.DataObject) -> None:
    message = data.draw(mutated(FAST_REQUESTS[name]))
    check_request(message, limits, b"GET /next HTTP/1.1\r\nHost: b\r\n\r\n").record()


@SETTINGS
@given(st.sampled_from(sorted(FAST_RESPONSES)), st.sampled_from(LIMITS), st.data())
def test_mutated_fast_responses(name: str, limits: Limits, data: st.DataObject) -> None:
    method, original = FAST_RESPONSES[name]
    message = data.draw(mutated(original))
    follow = (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    check_response(method, message, limits, follow).record()


# --------------------------------------------------------------------------------------------
# take_whole: the fast path of feed, alone (what the proxy calls first on every read)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAST_REQUESTS))
def test_take_whole_request_is_what_feed_takes(name: str) -> None:
    data = FAST_REQUESTS[name]
    fed, taken = RequestParser(), RequestParser()
    head = taken.take_whole(data)
    assert head is not None
    assert fed.feed(data) == [head, END]
    follow = FAST_REQUESTS["wrk"]
    assert taken.feed(follow) == fed.feed(follow)  # the same state after it


@pytest.mark.parametrize("name", list(GENERAL_REQUESTS))
def test_take_whole_request_reads_nothing_it_does_not_take(name: str) -> None:
    data = GENERAL_REQUESTS[name]
    fed, taken = RequestParser(), RequestParser()
    assert taken.take_whole(data) is None
    assert taken.feed(data, try_whole=False) == fed.feed(data)


@pytest.mark.parametrize("name", list(FAST_RESPONSES))
def test_take_whole_response_is_what_feed_takes(name: str) -> None:
    method, data = FAST_RESPONSES[name]
    fed, taken = ResponseParser(), ResponseParser()
    fed.expect(method)
    taken.expect(method)
    whole = taken.take_whole(data)
    assert whole is not None
    head, body = whole
    assert fed.feed(data) == ([head, Data(body), END] if body else [head, END])
    follow_method, follow = FAST_RESPONSES["200"]
    fed.expect(follow_method)
    taken.expect(follow_method)
    assert taken.feed(follow) == fed.feed(follow)  # [] for both after a closing response


@pytest.mark.parametrize(("method", "data"), list(GENERAL_RESPONSES.values()),
                         ids=list(GENERAL_RESPONSES))
def test_take_whole_response_reads_nothing_it_does_not_take(method: bytes, data: bytes) -> None:
    fed, taken = ResponseParser(), ResponseParser()
    fed.expect(method)
    taken.expect(method)
    assert taken.take_whole(data) is None
    assert taken.feed(data, try_whole=False) == fed.feed(data)


# --------------------------------------------------------------------------------------------
# The fast path remembers the last Host it accepted and the last status line it matched
# --------------------------------------------------------------------------------------------


def test_a_remembered_host_does_not_admit_another() -> None:
    good = b"GET / HTTP/1.1\r\nHost: a.example.org\r\n\r\n"
    for _ in range(2):
        head = fast_request(good)
        assert head is not None
        assert head.host == b"a.example.org"
    for bad_host in (b"a.example.org x", b"a.example.org:", b"a.example.org/", b"u@a.example.org"):
        assert fast_request(b"GET / HTTP/1.1\r\nHost: " + bad_host + b"\r\n\r\n") is None
    assert fast_request(good) is not None
    # the general path's check of a target's authority is the same function: an empty one is
    # never taken for the one remembered
    assert not rules.valid_host(b"")
    empty_authority = b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"
    assert run_requests(empty_authority, DEFAULT, single).outcome.error == (400, "bad-target")


@pytest.mark.parametrize("other", [
    b"HTTP/1.1 200 OKAY\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 201 OK\r\n", b"HTTP/1.1 200 \r\n",
])
def test_a_remembered_status_line_does_not_stand_for_another(other: bytes) -> None:
    usual = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    for _ in range(2):
        taken = fast_response(usual, b"GET")
        assert taken is not None
        assert (taken[0].status, taken[0].reason, taken[0].version) == (200, b"OK", b"1.1")
    data = other + b"Content-Length: 2\r\n\r\nok"
    taken = fast_response(data, b"GET")
    parser = ResponseParser()
    parser.expect(b"GET")
    general = parser.feed(bytes(data), try_whole=False)
    assert taken is not None
    assert [taken[0], Data(taken[1]), END] == general


@pytest.mark.parametrize("other", [
    b"Accept: */* x\x01", b"Accept : */*", b"Accept_: */*", b"Accept: */*\r", b"accept: */*",
    b"Accept:*/*",
])
def test_a_remembered_field_line_does_not_stand_for_another(other: bytes) -> None:
    usual = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    for _ in range(2):
        head = fast_request(usual)
        assert head is not None
        assert head.headers == [(b"Host", b"a"), (b"Accept", b"*/*")]
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + other + b"\r\n\r\n"
    general = run_requests(data, DEFAULT, whole_general).outcome
    fast = fast_request(data)
    if general.error is not None:
        assert fast is None
    elif fast is not None:
        assert general.events == [fast, END]


def test_the_remembered_field_lines_stay_bounded() -> None:
    remembered = fast._MATCHED_LINES
    long_value = b"v" * fast._MATCHED_LINE_BYTES
    for number in range(2 * fast._MATCHED_LINES_MAX + 3):
        assert fast_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % number) is not None
        assert len(remembered) <= fast._MATCHED_LINES_MAX
    head = fast_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + long_value + b"\r\n\r\n")
    assert head is not None
    assert head.headers[1] == (b"X-Long", long_value)
    assert b"X-Long: " + long_value not in remembered  # longer than the lines kept
    assert b"X-N: %d" % (2 * fast._MATCHED_LINES_MAX + 2) in remembered
