"""HTTP/1.1 message parsing for the proxy's per-request path (RFC 9112), sans-IO.

Theory of operation
-------------------
A request smuggling hole opens wherever two parsers on the path disagree about where a message
ends. This module is therefore the strictest parser on the path: whatever it accepts, llhttp
(httptools), h11 and Apache all read the same way; everything ambiguous is an ``HttpError``
whose ``status`` is the answer to send (4xx for requests, 502 for responses) and whose
``reason`` is a stable label for logs and metrics.

Framing is decided here, not in llhttp. llhttp reports no byte offsets through httptools, cannot
be told that a response answers HEAD and cannot be told that the peer closed (no
``llhttp_finish``), so it cannot say where a message ends in a stream of pipelined bytes. The
parsers below own that decision:

* Head: bytes are kept (and only these: a body is never copied into the head buffer) until the
  blank line, found with ``bytes.find``. The complete head is checked as raw bytes with C-speed
  ``count``/``find``/``translate`` (control characters, bare CR, bare LF, obs-fold, sizes), its
  start line is split here, and llhttp tokenizes the field lines: it is fed exactly one head, so
  it can never run ahead into a body or the next message. The pure ``validate_request`` /
  ``validate_response`` then apply the field rules and decide the framing.
* Body: counted here (Content-Length), decoded here (chunked, a small state machine whose lines
  are found with ``bytes.find``), or read until the connection closes (responses only).
* If llhttp rejects a head that passed the raw checks, the field lines are split here instead so
  that the validators can name the precise reason; if they find nothing, the answer is
  "parse-error" with llhttp's message. Either way, what llhttp refuses is refused.

A parser is a small state machine: HEAD (buffering an incomplete head) -> BODY (length,
chunked or until close) -> HEAD again for the next pipelined message, or DONE after a message
that ends the connection ("Connection: close", HTTP/1.0 without keep-alive, read-until-close):
RFC 9112 section 9.6 forbids processing further requests, so later bytes are discarded. Any
error makes the parser dead: every later ``feed`` raises the same error again.

What llhttp 9 (httptools 0.9.0) enforces by itself, found by feeding it each case in its default
(strict) mode; the last column is what this module reports, which it does whatever llhttp does:

    rule                                      llhttp alone                 reason here
    ----------------------------------------  ---------------------------  ---------------------
    Content-Length with Transfer-Encoding     rejects                      cl-and-te
    Content-Length twice (equal values)       rejects                      repeated-content-length
    Content-Length "3, 3"                     rejects                      repeated-content-length
    Content-Length "+3", "0x3", ""            rejects                      bad-content-length
    Content-Length of 19 digits               ACCEPTS (limit is 2**64)     bad-content-length
    Transfer-Encoding: gzip, chunked          ACCEPTS (decodes chunked)    unknown-transfer-coding
    Transfer-Encoding: chunked, gzip          rejects                      chunked-not-final
    Transfer-Encoding: identity               rejects                      chunked-not-final
    Transfer-Encoding on HTTP/1.0             ACCEPTS (decodes chunked)    te-on-http10
    obs-fold (SP or HTAB)                     rejects                      obs-fold
    bare LF ending a field line               rejects                      bare-lf
    bare LF before the request line           ACCEPTS (skips it)           bare-lf
    bare CR                                   rejects                      bare-cr
    NUL, CTL or DEL in a field value          rejects                      control-char
    CTL or DEL in a response reason phrase    ACCEPTS                      control-char
    CTL, DEL or HTAB in the request-target    rejects                      control-char
    obs-text in the request-target            rejects                      bad-target
    '#' in the request-target                 ACCEPTS                      bad-target
    non-token field name, space before ':'    rejects                      bad-header-name
    Content_Length, Transfer_Encoding, ...    ACCEPTS as other fields      bad-header-name
    HTTP/1.1 without Host                     ACCEPTS                      missing-host
    Host twice                                ACCEPTS                      repeated-host
    Host "a b", "u@a", "a/b"                  ACCEPTS                      bad-host
    version HTTP/2.0 or HTTP/0.9              ACCEPTS                      bad-version (505)
    version HTTP/1.2 or HTTP/3.0              rejects                      bad-version (505)
    "PRI * HTTP/2.0" preface                  rejects (pauses)             bad-version (505)
    two spaces in the request line            ACCEPTS                      bad-request-line
    unknown method (FOO), lowercase (get)     rejects                      unknown-method (501)
    CONNECT                                   ACCEPTS (as an upgrade)      unsupported-method
    status code 099 or 999                    ACCEPTS                      bad-status-line
    chunk size with SP, bad hex, > 2**64      rejects                      bad-chunk
    whitespace or CTL in a chunk extension    rejects                      bad-chunk
    bare LF in a chunk line or trailer        rejects                      bare-lf
    request line, head size, field count      no limits                    414 / 431
    body size                                 no limit                     413

The fast path. A message that arrives whole in one read and needs none of the above (a
request without a body, a response framed by Content-Length, only printable ASCII, no '_' in a
name, no Transfer-Encoding or Expect, well inside the limits) is checked and split by regular
expressions instead, one for its start line and one per field line, whose results for the
usual lines are remembered (``fast_request``, ``fast_response``, section "The fast path"):
they accept a subset of what the general path accepts and build the same head; anything else
falls through to the general path, so every rejection above is still the general path's.
``take_whole`` is that path alone, for a caller that handles a whole message itself without
events (the proxy does, on every read): it takes what ``feed`` would take there, or nothing.
tests/unit/test_http1_fast.py holds the two paths to that with hypothesis. A response head
the fast path takes also keeps its bytes (``ResponseHead.raw``) when a proxy could forward them
unchanged: HTTP/1.1 and no hop-by-hop field but one Content-Length; the same test checks that a
client reads those bytes as it reads the proxy's re-serialisation of the head. A request head
keeps them (``RequestHead.raw``, without a Connection field of only "close" or "keep-alive")
when it is HTTP/1.1 with no other hop-by-hop field and no X-Forwarded-* or Forwarded field; the
test checks that, with the proxy's forwarding fields appended, a backend reads them as it
reads the re-serialisation.

Cost of a request on the general path: one ``find`` for the blank line; one ``translate``,
three ``count`` and two ``find`` over the head; one ``split`` of the request line; one llhttp
call with a Python callback per field line; for all names at once one ``join``, ``translate``,
``lower`` and ``split``; one dict lookup per field; one regular expression per request (Host).
No regular expression runs per field.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Final, cast

import httptools

__all__ = [
    "FORWARDED_FIELDS",
    "FORWARDED_PROTO_FIELDS",
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "Data",
    "EndOfMessage",
    "HttpError",
    "Limits",
    "RequestHead",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "chunk",
    "fast_request",
    "fast_response",
    "response_has_body",
    "serialize_request_head",
    "serialize_response_head",
    "validate_request",
    "validate_response",
]

LAST_CHUNK: Final = b"0\r\n\r\n"

# --------------------------------------------------------------------------------------------
# Character classes (RFC 9110 section 5.6.2, RFC 5234 appendix B.1), as ``bytes.translate``
# deletion tables: ``x.translate(None, ALLOWED)`` is empty exactly when every byte of ``x`` is
# allowed, and runs in C.
# --------------------------------------------------------------------------------------------

_ALPHA_DIGIT: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|"
#         / "~" / DIGIT / ALPHA
_TCHAR: Final = _ALPHA_DIGIT + b"!#$%&'*+-.^_`|~"
_TCHAR_SP: Final = _TCHAR + b" "
#   VCHAR = %x21-7E ; obs-text = %x80-FF
_VCHAR: Final = bytes(range(0x21, 0x7F))
_OBS_TEXT: Final = bytes(range(0x80, 0x100))
#   field-value = *field-content ; field-content = field-vchar [ 1*( SP / HTAB / field-vchar )
#   field-vchar ] ; field-vchar = VCHAR / obs-text
#   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
_FIELD_BYTES: Final = _VCHAR + _OBS_TEXT + b" \t"
# Every byte that may appear anywhere in a head; CR and LF are then checked to pair up.
_HEAD_BYTES: Final = _FIELD_BYTES + b"\r\n"
_DIGITS: Final = b"0123456789"
_HEXDIG: Final = b"0123456789ABCDEFabcdef"

# Names that decide framing or routing. A field whose name turns into one of these when '_' is
# read as '-' is refused: servers behind CGI-style gateways (and some WSGI/PHP stacks) fold
# both to HTTP_CONTENT_LENGTH, so "Content_Length" would frame the body for them but not for us.
_GUARDED_NAMES: Final = frozenset((b"content-length", b"transfer-encoding", b"host", b"connection"))

# RFC 9110 section 7.6.1: fields that concern one connection, never forwarded by a proxy; plus
# the framing fields, which the proxy recomputes from what it parsed.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"transfer-encoding", b"content-length", b"proxy-authenticate", b"proxy-authorization",
})

# Fields a proxy replaces with its own (HttpContext's listener settings say which ones):
# the client's address, and the scheme and port it connected to.
FORWARDED_FIELDS: Final = frozenset({b"x-forwarded-for", b"forwarded"})
FORWARDED_PROTO_FIELDS: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-port"})

# Fields the rules look at, by lowercased name: one dict lookup per field instead of a chain of
# comparisons.
_CONTENT_LENGTH: Final = 0
_TRANSFER_ENCODING: Final = 1
_HOST: Final = 2
_CONNECTION: Final = 3
_EXPECT: Final = 4
_OTHER_HOP_BY_HOP: Final = 5  # a hop-by-hop field that is none of the above (fast path)
_FORWARDING: Final = 6  # one of FORWARDED_FIELDS or FORWARDED_PROTO_FIELDS (fast path)
_SPECIAL_FIELDS: Final = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
}

#   Host = uri-host [ ":" port ]                      (RFC 9110 section 7.2)
#   uri-host = IP-literal / IPv4address / reg-name    (RFC 3986 section 3.2.2)
#   IP-literal = "[" ( IPv6address / IPvFuture ) "]"
#   port = *DIGIT
# Narrower than RFC 3986 on purpose: reg-name is limited to DNS letters, digits, '-', '.' and
# '_' (no sub-delims, no pct-encoding), an IP-literal to the characters of an IPv6 address
# (IPvFuture is refused) and the port, when its ':' is there, to 1 to 5 digits. The Host value
# picks the route here and the virtual host in Apache; every byte beyond a DNS name is a chance
# for the two to read it differently.
_HOST_RE: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")

# The last Host value _valid_host accepted: the requests of a keep-alive connection, and most
# connections of a cluster, carry the same one, and comparing it costs a fraction of the
# regular expression. None until one is accepted (b"" is not a valid Host).
_last_valid_host: bytes | None = None


def _valid_host(host: bytes) -> bool:
    """``uri-host [ ":" port ]`` (_HOST_RE), for a Host value or a target's authority."""
    global _last_valid_host
    if host == _last_valid_host:
        return True
    if _HOST_RE.fullmatch(host) is None:
        return False
    _last_valid_host = host
    return True


#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token
#   chunk-ext-val  = token / quoted-string
#   quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext         = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair    = "\" ( HTAB / SP / VCHAR / obs-text )
# Without the BWS: a sender "MUST NOT generate" it and llhttp refuses it, so no honest client
# sends it, and whitespace around a chunk size is a known smuggling ingredient.
_CHUNK_EXT_RE: Final = re.compile(
    rb"(?:;[-!#$%&'*+.^_`|~0-9A-Za-z]+"
    rb"(?:=(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+"
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
)
# A chunk-size line ("1f;name=value" CRLF) longer than this is refused: the extension is dropped
# anyway, and an unbounded line would be an unbounded buffer.
_MAX_CHUNK_LINE: Final = 4096
# 16 hex digits hold any 64-bit size, which no body reaches; a longer size (even with leading
# zeros) is refused rather than handed to int() unbounded.
_MAX_CHUNK_SIZE_DIGITS: Final = 16
# 18 decimal digits stay below 2**63 (so no peer's signed 64-bit parse can overflow) and still
# allow an exabyte.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18
# Methods that skip the token check (they are tokens); anything else is checked.
_COMMON_METHODS: Final = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
)
# bytes shown of offending input in ``HttpError.detail``
_EXCERPT: Final = 60

_BARE_LF_RE: Final = re.compile(rb"(?<!\r)\n")
_BARE_CR_RE: Final = re.compile(rb"\r(?!\n)")


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


class HttpError(Exception):
    """A message that must be refused; it carries its answer.

    ``status`` is the status code to answer with (400, 408, 413, 414, 431, 501, 505 for requests;
    502 for anything wrong with a backend's response); ``reason`` is a short stable label for
    metrics and logs; ``detail`` is for humans and quotes at most ~60 bytes of input, escaped.
    """

    status: int
    reason: str
    detail: str

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[HttpError], tuple[int, str, str]]:
        # The default reduce replays ``self.args`` (one message) into a three-argument __init__.
        return (type(self), (self.status, self.reason, self.detail))


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits; exceeding one is an HttpError with the status RFC 9110/6585 assign to it."""

    # Request line without its CRLF. At least Apache's LimitRequestLine (8190), so nothing
    # Apache would take is refused here; nginx's default buffer for it is 8 KiB too.
    max_request_line: int = 8192
    # The whole head, start line to blank line. Behind the HAProxy this replaces, heads were
    # already bounded by its default tune.bufsize (16 KiB); 64 KiB leaves room for large
    # cookies while bounding what one connection can make us buffer.
    max_header_bytes: int = 65536
    # Header fields per head: Apache's LimitRequestFields default, so Apache never sees more.
    max_headers: int = 100
    # Body bytes (declared Content-Length or chunked total); None means no limit here.
    max_body: int | None = None


# The heads are built once per message: their __init__ is written out (init=False) so that the
# compiled build makes it a native constructor; the one dataclass generates at run time is
# interpreted Python, about 0.5 us a call. Equality and repr still come from dataclass.
@dataclass(slots=True, init=False)
class RequestHead:
    """A validated request head. ``headers`` keep their order and case; values have no OWS."""

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    connection_tokens: frozenset[bytes]
    host: bytes | None
    # The head's bytes as received, blank line included, minus its Connection field line, when
    # a proxy may forward them with only its own X-Forwarded-* fields appended: set by the fast
    # path for an HTTP/1.1 request without any other hop-by-hop field, any X-Forwarded-* or
    # Forwarded field, or a Connection field naming anything but "close" or "keep-alive" (the
    # re-serialisation would drop or rewrite all of those). Empty otherwise. Not part of the
    # head's value: both paths build equal heads.
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __init__(self, method: bytes, target: bytes, version: bytes,
                 headers: list[tuple[bytes, bytes]], content_length: int | None, chunked: bool,
                 keep_alive: bool, expect_continue: bool, connection_tokens: frozenset[bytes],
                 host: bytes | None, raw: bytes = b"") -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.connection_tokens = connection_tokens
        self.host = host
        self.raw = raw

    @property
    def path(self) -> bytes:
        """The target's bytes before '?', not decoded.

        For an absolute-form target ("http://host/a?b") this is the path after the authority
        ("/a", or "/" when empty), which is what Apache serves: routing on the whole target
        would let "GET http://host/blocked" slip past a rule for "/blocked".
        """
        target = self.target
        if target[:1] != b"/" and target != b"*":
            rest = target.partition(b"//")[2]
            slash = rest.find(b"/")
            query = rest.find(b"?")
            if slash < 0 or 0 <= query < slash:
                return b"/"
            target = rest[slash:]
        return target.partition(b"?")[0]


@dataclass(slots=True, init=False)
class ResponseHead:
    """A validated response head.

    ``content_length`` and ``chunked`` are what the head declares (validated: never both, a
    single Content-Length, only "chunked"). Whether a body follows is RFC 9112 section 6.3's
    rule 1: never for a response to HEAD or with status 1xx, 204 or 304, whatever the head
    declares (a HEAD response's Content-Length is that of the GET representation, to be
    forwarded as such). Otherwise the body is chunked, else ``content_length`` bytes, else it
    runs until the backend closes the connection and ``keep_alive`` is False. The parser's
    events follow that rule; ``response_has_body`` states it.
    """

    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    # The head's bytes as received, blank line included, when a proxy may forward them as they
    # are: set by the fast path for an HTTP/1.1 head whose only hop-by-hop field is a single
    # Content-Length (so there is nothing to remove and the framing stays as declared). Empty
    # otherwise. Not part of the head's value: both paths build equal heads.
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __init__(self, status: int, reason: bytes, version: bytes,
                 headers: list[tuple[bytes, bytes]], content_length: int | None, chunked: bool,
                 keep_alive: bool, raw: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.raw = raw


@dataclass(slots=True, init=False)
class Data:
    """Body bytes, de-chunked. A body may arrive as any number of these."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The message is complete. Trailers of chunked bodies are dropped, never reported."""


_END: Final = EndOfMessage()
_DEFAULT_LIMITS: Final = Limits()

RequestEvent = RequestHead | Data | EndOfMessage
ResponseEvent = ResponseHead | Data | EndOfMessage
_Event = RequestHead | ResponseHead | Data | EndOfMessage


# --------------------------------------------------------------------------------------------
# Validation of parsed fields (pure)
# --------------------------------------------------------------------------------------------


def _show(data: bytes | bytearray) -> str:
    # Details end up in logs; a hostile peer must not be able to make them large.
    return repr(bytes(data[:_EXCERPT])) + ("..." if len(data) > _EXCERPT else "")


def _around(data: bytes, index: int) -> str:
    """An excerpt of ``data`` centred on ``index``."""
    start = max(0, index - _EXCERPT // 2)
    return ("..." if start else "") + _show(data[start:])


# What the field rules shared by requests and responses found: (content_length, chunked,
# connection_tokens, host, host_count, expect_continue). A tuple: this is on every request.
_Framing = tuple[int | None, bool, frozenset[bytes], bytes | None, int, bool]
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()


def _check_fields(
    headers: list[tuple[bytes, bytes]],
    http11: bool,
    status: int,
    limits: Limits,
    values_checked: bool = False,
) -> _Framing:
    """Apply the field rules common to requests and responses; ``status`` is the error status.

    ``values_checked`` skips the per-value byte check when the raw head was already checked.
    """
    if len(headers) > limits.max_headers:
        too_many = 431 if status == 400 else status
        raise HttpError(
            too_many, "too-many-headers", f"{len(headers)} fields, limit {limits.max_headers}"
        )
    #   field-name = token
    # All names at once: joined by SP, one translate finds any byte that is neither a tchar nor
    # SP, and splitting on SP gives the names back (lowercased) unless one contained a SP.
    names = [name for name, _ in headers]
    joined = b" ".join(names)
    lowers = joined.lower().split(b" ") if names else []
    if joined.translate(None, _TCHAR_SP) or len(lowers) != len(names) or b"" in names:
        bad = next(name for name in names if not name or name.translate(None, _TCHAR))
        raise HttpError(status, "bad-header-name", f"field name {_show(bad)}")
    if not values_checked:
        #   field-value = *field-content  (no CTL but HTAB, no CR, no LF, no NUL)
        for name, value in headers:
            if value.translate(None, _FIELD_BYTES):
                raise HttpError(
                    status, "control-char", f"in the value of {_show(name)}: {_show(value)}"
                )
    if b"_" in joined:
        for lower, name in zip(lowers, names, strict=True):
            if lower.replace(b"_", b"-") in _GUARDED_NAMES and b"_" in lower:
                raise HttpError(
                    status, "bad-header-name", f"{_show(name)} would be read as a framing field"
                )

    content_length: bytes | None = None
    transfer_encoding: list[bytes] = []
    connection: set[bytes] = set()
    host: bytes | None = None
    host_count = 0
    expect_continue = False
    special = _SPECIAL_FIELDS.get
    for lower, (_, value) in zip(lowers, headers, strict=True):
        kind = special(lower)
        if kind is None:
            continue
        if kind == _CONTENT_LENGTH:
            if content_length is not None:
                raise HttpError(
                    status, "repeated-content-length", f"second Content-Length {_show(value)}"
                )
            content_length = value
        elif kind == _TRANSFER_ENCODING:
            transfer_encoding.append(value)
        elif kind == _HOST:
            host_count += 1
            host = value
        elif kind == _CONNECTION:
            _add_connection_tokens(connection, value)
        else:
            #   Expect = #expectation ; expectation = token [ "=" ( token / quoted-string ) ...
            # (RFC 9110 section 10.1.1) and only "100-continue" is defined.
            if b"100-continue" in (item.strip(b" \t") for item in value.lower().split(b",")):
                expect_continue = True

    length: int | None = None
    if content_length is not None:
        # A list ("5, 5") is a repetition folded into one line; RFC 9110 section 8.6 lets a
        # recipient accept identical values, which is exactly the leniency smuggling uses.
        if b"," in content_length:
            raise HttpError(
                status, "repeated-content-length", f"Content-Length {_show(content_length)}"
            )
        if not _valid_content_length(content_length):
            raise HttpError(status, "bad-content-length", f"Content-Length {_show(content_length)}")
        length = int(content_length)

    chunked = False
    if transfer_encoding:
        if content_length is not None:
            # RFC 9112 section 6.1: "A server MAY reject a request that contains both
            # Content-Length and Transfer-Encoding or process such a request in accordance with
            # the Transfer-Encoding alone"; section 6.3: such a message "might indicate an
            # attempt to perform request smuggling [...] and ought to be handled as an error".
            # Some parser downstream may still believe the Content-Length.
            raise HttpError(
                status, "cl-and-te", "both Content-Length and Transfer-Encoding are present"
            )
        if not http11:
            # RFC 9112 section 6.1: "A server or client that receives an HTTP/1.0 message
            # containing a Transfer-Encoding header field MUST treat the message as if the
            # framing is faulty".
            raise HttpError(status, "te-on-http10", "Transfer-Encoding in an HTTP/1.0 message")
        _check_transfer_coding(transfer_encoding, status)
        chunked = True

    if length is not None and limits.max_body is not None and length > limits.max_body:
        raise HttpError(
            413 if status == 400 else status,
            "body-too-large",
            f"Content-Length {length} exceeds {limits.max_body}",
        )
    tokens = frozenset(connection) if connection else _NO_TOKENS
    return length, chunked, tokens, host, host_count, expect_continue


def _valid_content_length(value: bytes) -> bool:
    """``Content-Length = 1*DIGIT``, within _MAX_CONTENT_LENGTH_DIGITS. bytes.isdigit takes
    ASCII digits only and is False when empty."""
    return value.isdigit() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS


def _add_connection_tokens(tokens: set[bytes], value: bytes) -> None:
    #   Connection = #connection-option ; connection-option = token
    for token in value.lower().split(b","):
        token = token.strip(b" \t")
        if token:
            tokens.add(token)


def _keeps_alive(http11: bool, tokens: frozenset[bytes]) -> bool:
    if http11:
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


def _check_transfer_coding(values: list[bytes], status: int) -> None:
    """Accept exactly one ``chunked`` as the only coding; raise otherwise.

    Transfer-Encoding = #transfer-coding (RFC 9112 section 6.1); repeated fields form one list,
    and empty list elements are ignored (RFC 9110 section 5.6.1.2).
    """
    codings = [item.strip(b" \t").lower() for value in values for item in value.split(b",")]
    codings = [coding for coding in codings if coding]
    joined = b", ".join(values)
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        # RFC 9112 section 6.3: "If a Transfer-Encoding header field is present in a request
        # and the chunked transfer coding is not the final encoding, the message body length
        # cannot be determined reliably; the server MUST respond with the 400 (Bad Request)
        # status code and then close the connection." The length is as undeterminable whether
        # the other coding is known or not ("identity", "gzip"), so this comes before 501.
        # Chunked twice: "A sender MUST NOT apply the chunked transfer coding more than once to
        # a message body" (section 6.1).
        raise HttpError(status, "chunked-not-final", f"Transfer-Encoding {_show(joined)}")
    if len(codings) > 1:
        # The framing is clear (chunked is last) but another coding is applied under it. RFC
        # 9112 section 6.1: "A server that receives a request message with a transfer coding it
        # does not understand SHOULD respond with 501 (Not Implemented)." Backends are not
        # asked to decode codings the proxy does not forward unchanged.
        raise HttpError(
            501 if status == 400 else status,
            "unknown-transfer-coding",
            f"Transfer-Encoding {_show(joined)}",
        )


def _http_version(version: bytes, status: int) -> bytes:
    """``b"1.0"`` or ``b"1.1"`` from an HTTP-version token, or raise."""
    #   HTTP-version = HTTP-name "/" DIGIT "." DIGIT ; HTTP-name = %s"HTTP"
    if version == b"HTTP/1.1":
        return b"1.1"
    if version == b"HTTP/1.0":
        return b"1.0"
    if (
        len(version) == 8
        and version.startswith(b"HTTP/")
        and version[5] in _DIGITS
        and version[6] == 0x2E
        and version[7] in _DIGITS
    ):
        return_status = 505 if status == 400 else status
        raise HttpError(return_status, "bad-version", f"unsupported version {_show(version)}")
    reason = "bad-request-line" if status == 400 else "bad-status-line"
    raise HttpError(status, reason, f"not an HTTP version: {_show(version)}")


def _check_request_line(method: bytes, target: bytes, version: bytes, limits: Limits) -> bytes:
    """Check ``method SP request-target SP HTTP-version``; returns the version as b"1.x"."""
    #   request-line = method SP request-target SP HTTP-version
    if len(method) + len(target) + len(version) + 2 > limits.max_request_line:
        raise HttpError(
            414,
            "request-line-too-long",
            f"{len(method) + len(target) + len(version) + 2} bytes, limit "
            f"{limits.max_request_line}",
        )
    if method not in _COMMON_METHODS:
        #   method = token
        if not method or method.translate(None, _TCHAR):
            raise HttpError(400, "bad-request-line", f"method {_show(method)}")
        if method == b"CONNECT":
            # authority-form targets open tunnels; a reverse proxy in front of a web server
            # has nothing to tunnel to. RFC 9110 section 9.1: 501 for a method not implemented.
            raise HttpError(501, "unsupported-method", "CONNECT is not supported")
    http_version = _http_version(version, 400)
    #   request-target = origin-form / absolute-form / authority-form / asterisk-form
    if not target:
        raise HttpError(400, "bad-request-line", "empty request-target")
    bad = target.translate(None, _VCHAR)
    if bad:
        # CTLs (HTAB included) are "control-char"; SP and obs-text are merely not URI bytes.
        reason = "control-char" if bad.translate(None, _OBS_TEXT + b" ") else "bad-target"
        raise HttpError(400, reason, f"in request-target {_show(target)}")
    if target[0] == 0x2F:  # "/"
        #   origin-form = absolute-path [ "?" query ]
        # The request-target grammar has no fragment (clients do not send it), and servers
        # disagree on whether a '#' ends the path, so it is refused.
        if b"#" in target:
            raise HttpError(400, "bad-target", f"fragment in request-target {_show(target)}")
        return http_version
    if target == b"*":
        #   asterisk-form = "*" ; "only used for a server-wide OPTIONS request"
        if method != b"OPTIONS":
            raise HttpError(400, "bad-target", f"'*' is only for OPTIONS, not {_show(method)}")
        return http_version
    #   absolute-form = absolute-URI   (its authority is checked against Host in _request_head)
    scheme = target[:8].lower()
    if not (scheme.startswith(b"http://") or scheme == b"https://"):
        raise HttpError(400, "bad-target", f"request-target {_show(target)}")
    if b"#" in target:
        raise HttpError(400, "bad-target", f"fragment in request-target {_show(target)}")
    return http_version


def _authority(target: bytes) -> bytes:
    """The authority of an absolute-form target (already known to start with http(s)://)."""
    rest = target.partition(b"//")[2]
    end = len(rest)
    for stop in (b"/", b"?"):
        index = rest.find(stop)
        if 0 <= index < end:
            end = index
    return rest[:end]


def validate_request(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    limits: Limits = _DEFAULT_LIMITS,
) -> RequestHead:
    """Apply every request rule that can be seen in parsed fields; raise HttpError or return.

    ``method``, ``target`` and ``version`` are the three request-line tokens as received
    (``version`` is the whole token, b"HTTP/1.1"); ``headers`` are (name, value) pairs with OWS
    removed from the values. Rules that only raw bytes show (bare CR/LF, obs-fold, the size of
    the head) are the parser's; this function enforces the rest, and ``max_headers``,
    ``max_request_line`` and ``max_body`` (for a declared length).
    """
    http_version = _check_request_line(method, target, version, limits)
    return _request_head(method, target, http_version, headers, limits)


def _request_head(
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: list[tuple[bytes, bytes]],
    limits: Limits,
    values_checked: bool = False,
) -> RequestHead:
    http11 = http_version == b"1.1"
    content_length, chunked, tokens, host, host_count, expect_continue = _check_fields(
        headers, http11, 400, limits, values_checked
    )
    # RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    # HTTP/1.1 request message that lacks a Host header field and to any request message that
    # contains more than one Host header field line or a Host header field with an invalid
    # field value."
    if host_count > 1:
        raise HttpError(400, "repeated-host", "more than one Host field")
    if host is None:
        if http11:
            raise HttpError(400, "missing-host", "HTTP/1.1 request without Host")
    elif host and not _valid_host(host):
        # An empty Host is what RFC 9112 section 3.2 tells a client to send when the target
        # URI has no authority; it routes nowhere in particular but is not malformed.
        raise HttpError(400, "bad-host", f"Host {_show(host)}")
    if target[0] != 0x2F and target != b"*":
        # RFC 9112 section 3.2.2: an origin server "MUST ignore the received Host header field
        # (if any) and instead use the host information of the request-target". We route by
        # Host, so the two must agree or the route and Apache's virtual host could differ.
        authority = _authority(target)
        if not _valid_host(authority):
            raise HttpError(400, "bad-target", f"authority in request-target {_show(target)}")
        if host is None:
            host = authority
        elif host.lower() != authority.lower():
            raise HttpError(
                400, "host-mismatch", f"Host {_show(host)} but request-target {_show(target)}"
            )
    keep_alive = _keeps_alive(http11, tokens)
    return RequestHead(
        method=method,
        target=target,
        version=http_version,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        # RFC 9110 section 10.1.1: "A server that receives a 100-continue expectation in an
        # HTTP/1.0 request MUST ignore that expectation."
        expect_continue=expect_continue and http11,
        connection_tokens=tokens,
        host=host,
    )


def response_has_body(request_method: bytes, status: int) -> bool:
    """Whether a response with ``status`` to a ``request_method`` request carries a body.

    RFC 9112 section 6.3, 1.: "Any response to a HEAD request and any response with a 1xx
    (Informational), 204 (No Content), or 304 (Not Modified) status code is always terminated
    by the first empty line after the header fields [...] and thus cannot contain a message
    body". (2., a 2xx answer to CONNECT, cannot happen: CONNECT is refused.)
    """
    return not (request_method == b"HEAD" or status < 200 or status == 204 or status == 304)


def _status_code(status: bytes) -> int:
    #   status-code = 3DIGIT ; with the classes RFC 9110 section 15 defines (1xx to 5xx)
    if len(status) != 3 or status.translate(None, _DIGITS) or not b"100" <= status <= b"599":
        raise HttpError(502, "bad-status-line", f"status code {_show(status)}")
    return int(status)


def validate_response(
    version: bytes,
    status: bytes,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_method: bytes,
    limits: Limits = _DEFAULT_LIMITS,
) -> ResponseHead:
    """Apply the response rules to parsed fields and decide the framing (RFC 9112 section 6.3).

    ``version``, ``status`` and ``reason`` are the status-line tokens as received (b"HTTP/1.1",
    b"200", b"OK"); ``request_method`` is the method of the request this answers. Every error
    is a 502: the backend is at fault, not the client.
    """
    http_version = _http_version(version, 502)
    code = _status_code(status)
    return _response_head(http_version, code, reason, headers, request_method, limits)


def _response_head(
    http_version: bytes,
    code: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_method: bytes,
    limits: Limits,
    values_checked: bool = False,
) -> ResponseHead:
    #   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
    if reason.translate(None, _FIELD_BYTES):
        raise HttpError(502, "control-char", f"in reason phrase {_show(reason)}")
    if code == 101:
        # The proxy never forwards Upgrade, so a switch of protocols is not something it asked
        # for and not something it could relay.
        raise HttpError(502, "unsupported-upgrade", "101 Switching Protocols")
    http11 = http_version == b"1.1"
    content_length, chunked, tokens, _, _, _ = _check_fields(
        headers, http11, 502, limits, values_checked
    )
    keep_alive = _keeps_alive(http11, tokens)
    if not chunked and content_length is None and response_has_body(request_method, code):
        # RFC 9112 section 6.3, 7.: the body runs until the server closes the connection
        keep_alive = False
    return ResponseHead(
        status=code,
        reason=reason,
        version=http_version,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
    )


# --------------------------------------------------------------------------------------------
# Raw head checks
# --------------------------------------------------------------------------------------------


def _check_raw_head(head: bytes, status: int, limits: Limits) -> int:
    """Checks only the raw bytes can show; returns the number of field lines.

    ``head`` runs from its first byte to CRLF CRLF.
    """
    if len(head) > limits.max_header_bytes:
        raise HttpError(
            431 if status == 400 else status,
            "header-too-large",
            f"head of {len(head)} bytes, limit {limits.max_header_bytes}",
        )
    bad = head.translate(None, _HEAD_BYTES)
    if bad:
        raise HttpError(status, "control-char", f"in head: {_around(head, head.find(bad[:1]))}")
    crlf = head.count(b"\r\n")
    # RFC 9112 section 2.2: "A sender MUST NOT generate a bare CR [...]. A recipient of such a
    # bare CR MUST consider that element to be invalid or replace each bare CR with SP". And
    # LF alone as a line terminator is tolerated by many recipients, so is refused here: the
    # recipients that do not tolerate it would see a different message.
    if head.count(b"\r") != crlf:
        match = _BARE_CR_RE.search(head)
        raise HttpError(
            status, "bare-cr", f"in head: {_around(head, match.start() if match else 0)}"
        )
    if head.count(b"\n") != crlf:
        match = _BARE_LF_RE.search(head)
        raise HttpError(
            status, "bare-lf", f"in head: {_around(head, match.start() if match else 0)}"
        )
    # RFC 9112 section 5.2: "A server that receives an obs-fold in a request message [...] MUST
    # either reject the message by sending a 400 (Bad Request) [...] or replace each received
    # obs-fold with one or more SP octets"; a proxy that replaced it would forward a different
    # field than Apache would read, so it is refused (and in responses too).
    #   obs-fold = OWS CRLF RWS
    fold = head.find(b"\r\n ")
    if fold < 0:
        fold = head.find(b"\r\n\t")
    if fold >= 0:
        raise HttpError(status, "obs-fold", f"continuation line: {_around(head, fold + 2)}")
    # start line + one CRLF per field + the blank line
    fields = crlf - 2
    if fields > limits.max_headers:
        raise HttpError(
            431 if status == 400 else status,
            "too-many-headers",
            f"{fields} fields, limit {limits.max_headers}",
        )
    return fields


def _split_fields(head: bytes, line_end: int, status: int) -> list[tuple[bytes, bytes]]:
    """Field lines of ``head`` as (name, value) pairs, the way RFC 9112 section 5 reads them.

    Used only when llhttp refused a head, to name the rule it broke.
    """
    #   field-line = field-name ":" OWS field-value OWS
    fields: list[tuple[bytes, bytes]] = []
    # each field line ends with CRLF, then comes the blank line's CRLF
    for line in head[line_end + 2 : -2].split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise HttpError(status, "bad-header-name", f"field line without ':': {_show(line)}")
        fields.append((name, value.strip(b" \t")))
    return fields


# --------------------------------------------------------------------------------------------
# The fast path: one common message in one read
# --------------------------------------------------------------------------------------------
#
# Nearly every message on the proxy's path is small, arrives in one read and uses no feature
# that needs the general machinery: a GET without a body from a click or an open, a response
# with a Content-Length. For those, regular expressions (C code) check the start line and each
# field line and split them, replacing the head buffer, the raw checks, the llhttp call with
# its Python callback per field and most of _check_fields. They accept a strict subset of what
# the general path accepts and build the very same head: anything they do not take (a body to
# frame, a '_' or a byte outside printable ASCII, an absolute-form target, a Content-Length on
# a request, Transfer-Encoding, Expect, a limit approached, a split or pipelined read, ...)
# goes to the general path, which then accepts it or names what is wrong.
# tests/unit/test_http1_fast.py holds the two paths to that with hypothesis.

# A field line without its CRLF: a token name without '_' (so no name can be read as a framing
# field by a CGI gateway), ':', OWS, a value of printable ASCII, SP and HTAB starting and ending
# with a visible character, OWS. Group 1 is the name, group 2 the value without its OWS, which
# is what llhttp hands over (minus its trailing OWS, removed by _Fields). No class holds CR or
# LF, so a line with a bare one does not match.
_FAST_FIELD_RE: Final = re.compile(
    rb"([!#$%&'*+\-.^`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?)[ \t]*"
)
# The request line: one of these methods, SP, an origin-form target ('/' then VCHAR but '#'),
# SP, HTTP/1.1 or HTTP/1.0. Checked with a split and a byte-class deletion (C code at a byte
# or two a nanosecond) rather than a regular expression, which would walk the target at about
# 13 ns a byte.
_FAST_METHODS: Final = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS",
                                  b"PATCH"))
_FAST_TARGET_BYTES: Final = b"!\"" + bytes(range(0x24, 0x7F))
_FAST_MINOR_VERSIONS: Final = {b"HTTP/1.1": b"1", b"HTTP/1.0": b"0"}
# status 200 to 599 (1xx and 101 have rules of their own); the reason as _response_head allows,
# without obs-text
_FAST_STATUS_LINE_RE: Final = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\t\x20-\x7e]*)\r\n")
# The fast path only looks at heads this short, well inside the default request-line and head
# limits, which the configuration does not change; under smaller Limits (tests make them) it
# takes nothing, see _fast_limit. max_headers and max_body are checked.
_FAST_HEAD_MAX: Final = 4096
# What a field's lowercased name means to the fast path: _HOST and _CONNECTION are read,
# _CONTENT_LENGTH only in a response, _OTHER_HOP_BY_HOP and _FORWARDING only decide whether the
# head's bytes may be forwarded as they came (``raw``), -1 sends the message to the general path.
_FAST_REQUEST_FIELDS: Final = {
    b"host": _HOST, b"connection": _CONNECTION,
    b"content-length": -1, b"transfer-encoding": -1, b"expect": -1,
    **{name: _OTHER_HOP_BY_HOP for name in HOP_BY_HOP
       if name not in (b"connection", b"content-length", b"transfer-encoding")},
    **{name: _FORWARDING for name in FORWARDED_FIELDS | FORWARDED_PROTO_FIELDS},
}
# A request's own Connection field, as most clients spell it, which ``raw`` leaves out when
# it holds no more than these tokens (the proxy's serialisation drops it in any case).
_CONNECTION_LINE: Final = b"\r\nConnection:"
_PLAIN_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive"})
_FAST_RESPONSE_FIELDS: Final = {
    b"connection": _CONNECTION, b"content-length": _CONTENT_LENGTH, b"transfer-encoding": -1,
    # the other hop-by-hop fields: allowed, but the head is then not forwarded as it came
    **{name: _OTHER_HOP_BY_HOP for name in HOP_BY_HOP
       if name not in (b"connection", b"content-length", b"transfer-encoding")},
}


def _fast_limit(limits: Limits) -> int:
    """The longest head the fast path may take under ``limits`` (0: none)."""
    if limits.max_request_line < _FAST_HEAD_MAX or limits.max_header_bytes < _FAST_HEAD_MAX:
        return 0
    return _FAST_HEAD_MAX


# Field lines _fast_fields has matched, with their (name, value): most lines of a cluster's
# messages repeat (a client's Host, User-Agent and Accept lines, a backend's Content-Type and
# Server lines), and a dict lookup costs a fraction of the regular expression, which the
# regular-expression engine runs at about 13 ns a byte. Only short lines are kept, and the
# dict is emptied when full, so it stays under about half a MiB whatever the traffic; the
# entry for a line is what matching that very line gives, so no line can admit another.
_MATCHED_LINES: Final[dict[bytes, tuple[bytes, bytes]]] = {}
_MATCHED_LINES_MAX: Final = 1024
_MATCHED_LINE_BYTES: Final = 128


def _fast_fields(data: bytes, start: int, end: int, limits: Limits
                 ) -> list[tuple[bytes, bytes]] | None:
    """The field lines of ``data[start:end]`` (each ending with CRLF), or None when one of them
    is not a fast-path field line or there are more than ``max_headers``."""
    if start == end:
        return []
    lines = data[start:end - 2].split(b"\r\n")
    if len(lines) > limits.max_headers:
        return None
    headers: list[tuple[bytes, bytes]] = []
    matched = _MATCHED_LINES
    for line in lines:
        field = matched.get(line)
        if field is None:
            match = _FAST_FIELD_RE.fullmatch(line)
            if match is None:
                return None
            field = (match.group(1), match.group(2))
            if len(line) <= _MATCHED_LINE_BYTES:
                if len(matched) >= _MATCHED_LINES_MAX:
                    matched.clear()
                matched[line] = field
        headers.append(field)
    return headers


# The last status line _fast_status_line matched, and its parts: a backend starts most of its
# responses with the same one ("HTTP/1.1 200 OK").
_last_status_line = b""
_last_status_parts = (b"", b"", b"")


def _fast_status_line(data: bytes) -> tuple[int, bytes, bytes, bytes] | None:
    """(end, minor version, status, reason) of the status line ``data`` starts with, when the
    fast path takes it."""
    global _last_status_line, _last_status_parts
    if _last_status_line and data.startswith(_last_status_line):
        minor, status, reason = _last_status_parts
        return len(_last_status_line), minor, status, reason
    match = _FAST_STATUS_LINE_RE.match(data)
    if match is None:
        return None
    minor, status, reason = match.group(1, 2, 3)
    end = match.end()
    _last_status_line = data[:end]
    _last_status_parts = (minor, status, reason)
    return end, minor, status, reason


# The tokens of the usual Connection values, as _add_connection_tokens reads them.
_USUAL_CONNECTION_TOKENS: Final = {
    value: frozenset({value.lower()})
    for value in (b"close", b"keep-alive", b"Close", b"Keep-Alive")
}


def _fast_connection_tokens(headers: list[tuple[bytes, bytes]], last_value: bytes,
                            lines: int) -> frozenset[bytes]:
    """The tokens of the Connection fields among ``headers``: ``lines`` of them, the last one
    holding ``last_value``. A single usual value is looked up instead of read."""
    if lines == 0:
        return _NO_TOKENS
    if lines == 1:
        usual = _USUAL_CONNECTION_TOKENS.get(last_value)
        if usual is not None:
            return usual
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            _add_connection_tokens(tokens, value)
    return frozenset(tokens) if tokens else _NO_TOKENS


def fast_request(data: bytes, limits: Limits = _DEFAULT_LIMITS) -> RequestHead | None:
    """The head of ``data`` when ``data`` is exactly one request without a body that the general
    parser would accept, built as it would build it; None for anything else (the general
    parser then decides)."""
    if len(data) > _fast_limit(limits) or not data.endswith(b"\r\n\r\n"):
        return None
    line_end = data.find(b"\r\n")
    parts = data[:line_end].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    minor = _FAST_MINOR_VERSIONS.get(version)
    if (minor is None or method not in _FAST_METHODS or not target.startswith(b"/")
            or target.translate(None, _FAST_TARGET_BYTES)):
        return None
    headers = _fast_fields(data, line_end + 2, len(data) - 2, limits)
    if headers is None:
        return None
    host: bytes | None = None
    host_count = 0
    connection = b""  # the value of the last Connection field
    connection_lines = 0
    forwardable = True
    kinds = _FAST_REQUEST_FIELDS.get
    for name, value in headers:
        kind = kinds(name.lower())
        if kind is None:
            continue
        if kind == _HOST:
            host = value
            host_count += 1
        elif kind == _CONNECTION:
            connection = value
            connection_lines += 1
        elif kind in (_OTHER_HOP_BY_HOP, _FORWARDING):
            forwardable = False
        else:
            return None
    http11 = minor == b"1"
    if host_count > 1 or (host is None and http11) or (host and not _valid_host(host)):
        return None
    tokens = _fast_connection_tokens(headers, connection, connection_lines)
    raw = b""
    if http11 and forwardable:
        if connection_lines == 0:
            raw = data
        elif connection_lines == 1 and tokens <= _PLAIN_CONNECTION_TOKENS:
            # No value holds a CR or LF, so this can only be the start of the field's line.
            line = data.find(_CONNECTION_LINE)
            if line >= 0:
                raw = data[:line] + data[data.index(b"\r\n", line + 2):]
    return RequestHead(
        method=method,
        target=target,
        version=b"1.1" if http11 else b"1.0",
        headers=headers,
        content_length=None,
        chunked=False,
        keep_alive=_keeps_alive(http11, tokens),
        expect_continue=False,
        connection_tokens=tokens,
        host=host,
        raw=raw,
    )


def fast_response(
    data: bytes, request_method: bytes, limits: Limits = _DEFAULT_LIMITS
) -> tuple[ResponseHead, bytes] | None:
    """(head, body) when ``data`` is exactly one whole final response to a
    ``request_method`` request, framed by its Content-Length or bodiless, that the general
    parser would accept, built as it would build it; None for anything else."""
    blank = data.find(b"\r\n\r\n", 0, _fast_limit(limits))
    if blank < 0:
        return None
    line = _fast_status_line(data)
    if line is None:
        return None
    line_end, minor, status, reason = line
    headers = _fast_fields(data, line_end, blank + 2, limits)
    if headers is None:
        return None
    content_length: bytes | None = None
    connection = b""  # the value of the last Connection field
    connection_lines = 0
    hop_by_hop = False
    kinds = _FAST_RESPONSE_FIELDS.get
    for name, value in headers:
        kind = kinds(name.lower())
        if kind is None:
            continue
        if kind == _CONTENT_LENGTH:
            if content_length is not None:
                return None
            content_length = value
        elif kind == _CONNECTION:
            connection = value
            connection_lines += 1
        elif kind == _OTHER_HOP_BY_HOP:
            hop_by_hop = True
        else:
            return None
    length: int | None = None
    if content_length is not None:
        if not _valid_content_length(content_length):
            return None
        length = int(content_length)
        if limits.max_body is not None and length > limits.max_body:
            return None
    code = int(status)
    body = data[blank + 4:]
    if response_has_body(request_method, code):
        if length is None or len(body) != length:
            return None
    elif body:
        return None
    http11 = minor == b"1"
    tokens = _fast_connection_tokens(headers, connection, connection_lines)
    head = ResponseHead(
        status=code,
        reason=reason,
        version=b"1.1" if http11 else b"1.0",
        headers=headers,
        content_length=length,
        chunked=False,
        keep_alive=_keeps_alive(http11, tokens),
        raw=data[:blank + 4] if http11 and not connection_lines and not hop_by_hop else b"",
    )
    return head, body


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------


class _Fields:
    """The httptools callback target: collects the field lines of one head."""

    __slots__ = ("complete", "headers")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the leading OWS of a value but keeps the trailing one.
        self.headers.append((name, value.rstrip(b" \t")))

    def on_message_complete(self) -> None:
        self.complete = True


def _llhttp_reason(exc: httptools.HttpParserError, status: int) -> tuple[int, str]:
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return (501, "unknown-method") if status == 400 else (status, "parse-error")
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return status, "bad-target"
    if isinstance(exc, httptools.HttpParserInvalidStatusError):
        return status, "bad-status-line"
    return status, "parse-error"


# parser states
_HEAD: Final = 0  # reading a head (possibly nothing buffered yet)
_LENGTH: Final = 1  # Content-Length body
_CHUNKED: Final = 2  # chunked body, see _Chunked
_UNTIL_CLOSE: Final = 3  # response body delimited by the connection's end
_DONE: Final = 4  # the connection's last message is complete; later bytes are discarded
_CLOSED: Final = 5  # feed_eof was called

# _Chunked states
_SIZE_LINE: Final = 0
_CHUNK_DATA: Final = 1
_CHUNK_CRLF: Final = 2
_TRAILER: Final = 3


class _Chunked:
    """The chunked transfer coding (RFC 9112 section 7.1), decoded from a byte stream.

        chunked-body   = *chunk last-chunk trailer-section CRLF
        chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
        chunk-size     = 1*HEXDIG
        last-chunk     = 1*("0") [ chunk-ext ] CRLF
        trailer-section = *( field-line CRLF )

    Extensions are checked and dropped; trailer fields are checked and dropped (a recipient
    that removes the chunked coding may discard them, RFC 9112 section 7.1.2; nothing here
    uses them).
    """

    __slots__ = (
        "_crlf",
        "_limits",
        "_line",
        "_remaining",
        "_state",
        "_status",
        "_total",
        "_trailer",
        "finished",
    )

    def __init__(self, limits: Limits, status: int) -> None:
        self.finished = False
        self._limits = limits
        self._status = status
        self._state = _SIZE_LINE
        self._line = bytearray()
        self._remaining = 0
        self._total = 0
        self._crlf = 0  # bytes of the CRLF after chunk-data seen so far
        self._trailer = 0  # bytes of trailer section seen so far

    def _take_line(self, data: bytes, pos: int, trailer: bool) -> tuple[bytes | None, int]:
        """The next CRLF-terminated line (with its CRLF) from the pending bytes and data[pos:].

        Returns (None, len(data)) when the line is not complete yet. A chunk-size line may not
        exceed _MAX_CHUNK_LINE, the trailer section not max_header_bytes.
        """
        limit = self._limits.max_header_bytes - self._trailer if trailer else _MAX_CHUNK_LINE
        room = limit - len(self._line)
        end = data.find(b"\n", pos, pos + room)
        if end < 0:
            if len(data) - pos >= room:
                raise self._too_long(trailer)
            self._line += data[pos:]
            return None, len(data)
        if self._line:
            self._line += data[pos : end + 1]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = data[pos : end + 1]
        if not line.endswith(b"\r\n"):
            raise self._error("bare-lf", f"line ends with a bare LF: {_show(line)}")
        return line, end + 1

    def _error(self, reason: str, detail: str) -> HttpError:
        return HttpError(self._status, reason, detail)

    def feed(self, data: bytes, pos: int, events: list[_Event]) -> int:
        """Consume from data[pos:]; returns where the body ended (``finished``) or len(data)."""
        size = len(data)
        while pos < size:
            state = self._state
            if state == _CHUNK_DATA:
                take = min(self._remaining, size - pos)
                events.append(Data(data[pos : pos + take]))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                # chunk-data CRLF: exactly these two bytes, possibly split across reads.
                while self._crlf < 2 and pos < size:
                    if data[pos] != b"\r\n"[self._crlf]:
                        raise self._error(
                            "bad-chunk", f"chunk data not followed by CRLF: {_around(data, pos)}"
                        )
                    self._crlf += 1
                    pos += 1
                if self._crlf == 2:
                    self._crlf = 0
                    self._state = _SIZE_LINE
            elif state == _SIZE_LINE:
                line, pos = self._take_line(data, pos, False)
                if line is not None:
                    self._size_line(line)
            else:
                line, pos = self._take_line(data, pos, True)
                if line is not None:
                    if line == b"\r\n":
                        self.finished = True
                        return pos
                    self._trailer += len(line)
                    self._trailer_line(line)
        return pos

    def _too_long(self, trailer: bool) -> HttpError:
        if not trailer:
            return self._error("bad-chunk", f"chunk-size line over {_MAX_CHUNK_LINE} bytes")
        limit = self._limits.max_header_bytes
        status = 431 if self._status == 400 else self._status
        return HttpError(status, "header-too-large", f"trailer section over {limit} bytes")

    def _size_line(self, line: bytes) -> None:
        body = line[:-2]
        size, semicolon, _ = body.partition(b";")
        if (
            not size
            or len(size) > _MAX_CHUNK_SIZE_DIGITS
            or size.translate(None, _HEXDIG)
            or (semicolon and not _CHUNK_EXT_RE.fullmatch(body, len(size)))
        ):
            raise self._error("bad-chunk", f"chunk-size line {_show(body)}")
        length = int(size, 16)
        if not length:
            self._state = _TRAILER
            return
        self._total += length
        max_body = self._limits.max_body
        if max_body is not None and self._total > max_body:
            raise HttpError(
                413 if self._status == 400 else self._status,
                "body-too-large",
                f"chunked body exceeds {max_body} bytes",
            )
        self._remaining = length
        self._state = _CHUNK_DATA

    def _trailer_line(self, line: bytes) -> None:
        #   field-line = field-name ":" OWS field-value OWS
        content = line[:-2]
        if content.translate(None, _FIELD_BYTES):
            kind = "bare-cr" if b"\r" in content else "control-char"
            raise self._error(kind, f"in trailer field {_show(content)}")
        if content[:1] in (b" ", b"\t"):
            raise self._error("obs-fold", f"continuation line in trailer: {_show(content)}")
        name, colon, _ = content.partition(b":")
        if not colon or not name or name.translate(None, _TCHAR):
            raise self._error("bad-header-name", f"trailer field {_show(content)}")


class _Parser(ABC):
    """What RequestParser and ResponseParser share: the head buffer and body framing."""

    _STATUS = 400  # the status of errors; responses use 502
    _SKIPS_EMPTY_LINES = False  # requests only: RFC 9112 section 2.2

    def __init__(self, limits: Limits = _DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._state = _HEAD
        self._buf = bytearray()  # bytes of the incomplete head, never body bytes
        self._skipped = 0  # empty lines before the current head (requests only)
        self._remaining = 0  # body bytes still to come (_LENGTH)
        self._received = 0  # body bytes so far (_UNTIL_CLOSE)
        # A new one for each chunked body. Like llhttp's parser (made on the general path's
        # first use), made only when needed: a session's parser is made per connection, and
        # most connections only ever see the fast path.
        self._chunked: _Chunked | None = None
        self._line_seen = False  # the buffered head's start line is known to be complete
        self._keep_alive = True
        self._error: HttpError | None = None
        self._fields = _Fields()
        # llhttp's parser of the field lines, made on first use (_parse_fields) and dropped
        # when it holds state of a message it did not see the end of
        self._llhttp: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None

    @property
    def in_head(self) -> bool:
        """True while bytes of an incomplete head are buffered (the 408 decision)."""
        return self._state == _HEAD and bool(self._buf)

    def _fail(self, error: HttpError) -> HttpError:
        self._error = error
        return error

    def _feed(self, data: bytes, events: list[_Event]) -> None:
        if self._error is not None:
            error = self._error
            raise HttpError(error.status, error.reason, error.detail)
        if self._state == _CLOSED:
            raise RuntimeError("feed() after feed_eof()")
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            self._run(data, events)
        except HttpError as exc:
            self._error = exc
            raise

    def _run(self, data: bytes, events: list[_Event]) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state == _HEAD:
                if self._SKIPS_EMPTY_LINES and data[pos] in b"\r\n":
                    pos = self._skip_lines(data, pos)
                    if pos == size:
                        return
                end = self._find_head(data, pos)
                if end < 0:
                    return
                if self._buf:
                    head = bytes(self._buf) + data[pos:end]
                    self._buf.clear()
                    self._line_seen = False
                else:
                    head = data[pos:end]
                pos = end
                self._on_head(head, events)
            elif state == _LENGTH:
                take = min(self._remaining, size - pos)
                events.append(Data(data[pos : pos + take] if take < size else data))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_message(events)
            elif state == _CHUNKED:
                chunked = self._chunked
                assert chunked is not None  # made with the _CHUNKED state
                pos = chunked.feed(data, pos, events)
                if chunked.finished:
                    self._end_message(events)
            elif state == _UNTIL_CLOSE:
                self._received += size - pos
                max_body = self._limits.max_body
                if max_body is not None and self._received > max_body:
                    raise HttpError(
                        self._STATUS, "body-too-large", f"body exceeds {max_body} bytes"
                    )
                events.append(Data(data[pos:] if pos else data))
                return
            else:  # _DONE: RFC 9112 section 9.6, "MUST NOT process any further requests"
                return

    def _find_head(self, data: bytes, pos: int) -> int:
        """Index in ``data`` just past the head's CRLF CRLF, or -1 after buffering data[pos:]."""
        buf = self._buf
        limits = self._limits
        room = limits.max_header_bytes - len(buf) - self._skipped
        if buf:
            # the blank line may straddle what is buffered and what arrived
            tail = bytes(buf[-3:])
            joint = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if joint >= 0:
                return pos + joint + 4 - len(tail)
        end = data.find(b"\r\n\r\n", pos, pos + room)
        if end >= 0:
            return end + 4
        if len(data) - pos >= room:
            raise HttpError(
                431 if self._STATUS == 400 else self._STATUS,
                "header-too-large",
                f"no end of head within {limits.max_header_bytes} bytes",
            )
        self._check_partial(data, pos)
        buf += data[pos:]
        return -1

    def _skip_lines(self, data: bytes, pos: int) -> int:
        """Skip empty lines before a request line; returns the new position in ``data``.

        RFC 9112 section 2.2: "a server that is expecting to receive and parse a request-line
        SHOULD ignore at least one empty line (CRLF) received prior to the request-line" (as
        HAProxy, Apache and llhttp do). They count against the next head's size limit.
        """
        buf = self._buf
        if buf == b"\r" and data[pos] == 0x0A:
            buf.clear()
            pos += 1
            self._skipped += 2
        if not buf:
            while data.startswith(b"\r\n", pos):
                pos += 2
                self._skipped += 2
            if self._skipped > self._limits.max_header_bytes:
                raise HttpError(
                    431, "header-too-large", f"{self._skipped} bytes of empty lines before a head"
                )
        return pos

    def _check_partial(self, data: bytes, pos: int) -> None:
        """Refuse an incomplete head early when what arrived can never be part of a valid one.

        Without this a client that ends lines with a bare LF, or speaks TLS to a plain port,
        would wait for the 408 timeout instead of getting its 400 now. Only the new bytes are
        scanned, so a head trickling in byte by byte costs linear time.
        """
        new = data[pos:]
        buf = self._buf
        bad = new.translate(None, _HEAD_BYTES)
        if bad:
            raise HttpError(
                self._STATUS, "control-char", f"in head: {_around(new, new.find(bad[:1]))}"
            )
        after_cr = buf.endswith(b"\r")
        joined = 1 if after_cr and new[:1] == b"\n" else 0
        if new.count(b"\n") > new.count(b"\r\n") + joined:
            raise HttpError(self._STATUS, "bare-lf", f"in head: {_show(bytes(buf[-30:]) + new)}")
        if (after_cr and not joined) or (
            new.count(b"\r") > new.count(b"\r\n") + new.endswith(b"\r")
        ):
            raise HttpError(self._STATUS, "bare-cr", f"in head: {_show(bytes(buf[-30:]) + new)}")
        limit = self._start_line_limit()
        if limit is not None and not self._line_seen and len(buf) + len(new) > limit + 1:
            # Once the start line is known to be complete and short enough, this is never
            # scanned again; until then it cannot exceed the limit plus a pending CR.
            line_end = (buf + new).find(b"\r\n")
            if line_end < 0 or line_end > limit:
                raise HttpError(
                    414,
                    "request-line-too-long",
                    f"request line longer than {limit} bytes: {_show(bytes(buf[:_EXCERPT]))}",
                )
            self._line_seen = True

    def _end_message(self, events: list[_Event]) -> None:
        events.append(_END)
        self._state = _HEAD if self._keep_alive else _DONE
        self._message_done()

    def _start_body(
        self,
        content_length: int | None,
        chunked: bool,
        events: list[_Event],
    ) -> None:
        if chunked:
            self._chunked = _Chunked(self._limits, self._STATUS)
            self._state = _CHUNKED
        elif content_length is None:
            self._received = 0
            self._state = _UNTIL_CLOSE
        elif content_length:
            self._remaining = content_length
            self._state = _LENGTH
        else:
            self._end_message(events)

    def _parse_fields(
        self, head: bytes
    ) -> tuple[list[tuple[bytes, bytes]], bool, httptools.HttpParserError | None]:
        """Tokenize the field lines with llhttp: (fields, reusable parser, llhttp's error)."""
        parser = self._llhttp
        if parser is None:
            parser = self._llhttp = self._new_llhttp()
        fields = self._fields
        fields.headers = []
        fields.complete = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            # CONNECT (refused earlier) or an Upgrade field: llhttp stops after the head, which
            # is all it was given; the proxy does not forward Upgrade.
            return fields.headers, False, None
        except httptools.HttpParserError as exc:
            return fields.headers, False, exc
        return fields.headers, fields.complete, None

    # subclass hooks
    def _start_line_limit(self) -> int | None:
        return None

    @abstractmethod
    def _on_head(self, head: bytes, events: list[_Event]) -> None:
        """Turn one complete head into its events (request or response specific)."""

    @abstractmethod
    def _new_llhttp(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        """llhttp's parser for this side, reporting to ``self._fields``."""

    def _message_done(self) -> None:
        """A hook only the response parser needs (it tracks which request it answers)."""
        return


class RequestParser(_Parser):
    """Sans-IO request parser: ``feed(bytes)`` returns the events the bytes complete.

    Events come in order, for as many pipelined requests as the bytes hold: a RequestHead, its
    body as Data events (none if empty), then EndOfMessage. Raises HttpError; after an error the
    parser is dead and raises it again. An error discards the events of the same ``feed`` call.
    """

    _STATUS = 400
    _SKIPS_EMPTY_LINES = True

    def _new_llhttp(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self._fields)

    def take_whole(self, data: bytes) -> RequestHead | None:
        """The fast path of ``feed`` alone: the head of the bodiless request ``data`` is
        exactly, with the parser past it as ``feed`` leaves it; None, having read nothing, for
        anything else (``feed(data, try_whole=False)`` then)."""
        if (self._state == _HEAD and not self._buf and not self._skipped
                and self._error is None and type(data) is bytes):
            head = fast_request(data, self._limits)
            if head is not None:
                self._keep_alive = head.keep_alive
                if not head.keep_alive:
                    self._state = _DONE
                return head
        return None

    def feed(self, data: bytes, *, try_whole: bool = True) -> list[RequestEvent]:
        if try_whole:
            head = self.take_whole(data)
            if head is not None:
                return [head, _END]
        events: list[_Event] = []
        self._feed(data, events)
        return cast("list[RequestEvent]", events)

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed its side: [] between requests, HttpError(400, "truncated") in one."""
        if self._error is not None:
            error = self._error
            raise HttpError(error.status, error.reason, error.detail)
        state = self._state
        self._state = _CLOSED
        if state in (_LENGTH, _CHUNKED) or (state == _HEAD and self._buf):
            self._error = HttpError(400, "truncated", "connection closed inside a request")
            raise self._error
        return []

    @property
    def in_head(self) -> bool:
        """True while bytes of an incomplete head are buffered (the 408 decision)."""
        return self._state == _HEAD and bool(self._buf) and self._buf != b"\r"

    def _start_line_limit(self) -> int | None:
        return self._limits.max_request_line

    def _on_head(self, head: bytes, events: list[_Event]) -> None:
        limits = self._limits
        if len(head) + self._skipped > limits.max_header_bytes:
            raise HttpError(
                431,
                "header-too-large",
                f"head of {len(head) + self._skipped} bytes, limit {limits.max_header_bytes}",
            )
        self._skipped = 0
        fields = _check_raw_head(head, 400, limits)
        line_end = head.find(b"\r\n")
        if line_end > limits.max_request_line:
            raise HttpError(
                414,
                "request-line-too-long",
                f"{line_end} bytes, limit {limits.max_request_line}: {_show(head)}",
            )
        #   request-line = method SP request-target SP HTTP-version
        # Exactly single spaces: llhttp accepts "GET  / HTTP/1.1", others may not.
        parts = head[:line_end].split(b" ")
        if len(parts) != 3:
            raise HttpError(400, "bad-request-line", f"request line {_show(head[:line_end])}")
        method, target, version = parts
        http_version = _check_request_line(method, target, version, limits)
        headers, reusable, failure = self._parse_fields(head)
        if failure is not None:
            headers = _split_fields(head, line_end, 400)
            _request_head(method, target, http_version, headers, limits, True)
            status, reason = _llhttp_reason(failure, 400)
            raise HttpError(status, reason, f"llhttp: {failure}; {_show(head[:line_end])}")
        if len(headers) != fields:
            raise HttpError(400, "parse-error", "llhttp saw a different number of fields")
        # values_checked: _check_raw_head saw every byte of the head
        request = _request_head(method, target, http_version, headers, limits, True)
        if not reusable or request.content_length or request.chunked:
            # llhttp was fed the head only; if it expects a body it holds state we discard.
            self._llhttp = None
        self._keep_alive = request.keep_alive
        events.append(request)
        # RFC 9112 section 6.3: a request with neither field has no body (7. is for responses).
        self._start_body(request.content_length or 0, request.chunked, events)


class ResponseParser(_Parser):
    """Sans-IO response parser for one backend connection.

    Call ``expect(method)`` once per request sent, in order: the method decides whether the
    response has a body (HEAD) and a response that answers nothing is an error. ``feed`` returns
    ResponseHead, Data and EndOfMessage events; a 1xx head is an event of its own, not followed
    by EndOfMessage. Every error is HttpError(502, ...).
    """

    _STATUS = 502

    def __init__(self, limits: Limits = _DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._methods: deque[bytes] = deque()
        self._informational = False  # a 1xx arrived; the final response is still to come

    def _new_llhttp(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self._fields)

    def expect(self, method: bytes) -> None:
        """Register a request sent on this connection (pipelined requests in order)."""
        self._methods.append(method)

    def take_whole(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        """The fast path of ``feed`` alone: (head, body) of the whole response ``data`` is
        exactly, with the parser past it as ``feed`` leaves it; None, having read nothing, for
        anything else (``feed(data, try_whole=False)`` then)."""
        if (self._methods and self._state == _HEAD and not self._buf and not self._informational
                and self._error is None and type(data) is bytes):
            whole = fast_response(data, self._methods[0], self._limits)
            if whole is not None:
                keep_alive = whole[0].keep_alive
                self._keep_alive = keep_alive
                self._state = _HEAD if keep_alive else _DONE
                self._methods.popleft()
                return whole
        return None

    def feed(self, data: bytes, *, try_whole: bool = True) -> list[ResponseEvent]:
        if try_whole:
            whole = self.take_whole(data)
            if whole is not None:
                head, body = whole
                return [head, Data(body), _END] if body else [head, _END]
        events: list[_Event] = []
        if data and not self._methods and self._state == _HEAD and self._error is None:
            raise self._fail(
                HttpError(502, "unsolicited-response", f"bytes with no request: {_show(data)}")
            )
        self._feed(data, events)
        return cast("list[ResponseEvent]", events)

    def feed_eof(self) -> list[ResponseEvent]:
        """The backend closed: ends a read-until-close body; 502 "truncated" inside a message.

        Between responses it returns []; whether a request was left unanswered (a keep-alive
        connection the backend closed first) is for the caller to know.
        """
        if self._error is not None:
            error = self._error
            raise HttpError(error.status, error.reason, error.detail)
        state = self._state
        self._state = _CLOSED
        if state == _UNTIL_CLOSE:
            self._message_done()
            return [_END]
        if state in (_LENGTH, _CHUNKED) or (state == _HEAD and (self._buf or self._informational)):
            self._error = HttpError(502, "truncated", "connection closed inside a response")
            raise self._error
        return []

    def _on_head(self, head: bytes, events: list[_Event]) -> None:
        if not self._methods:
            raise HttpError(502, "unsolicited-response", f"response with no request: {_show(head)}")
        limits = self._limits
        fields = _check_raw_head(head, 502, limits)
        line_end = head.find(b"\r\n")
        #   status-line = HTTP-version SP status-code SP [ reason-phrase ]
        # The SP before an empty reason is often missing in practice; h11 and llhttp allow that.
        parts = head[:line_end].split(b" ", 2)
        if len(parts) < 2:
            raise HttpError(502, "bad-status-line", f"status line {_show(head[:line_end])}")
        version, status = parts[0], parts[1]
        reason = parts[2] if len(parts) == 3 else b""
        http_version = _http_version(version, 502)
        code = _status_code(status)
        method = self._methods[0]
        headers, reusable, failure = self._parse_fields(head)
        if failure is not None:
            headers = _split_fields(head, line_end, 502)
            _response_head(http_version, code, reason, headers, method, limits, True)
            raise HttpError(502, _llhttp_reason(failure, 502)[1], f"llhttp: {failure}")
        if len(headers) != fields:
            raise HttpError(502, "parse-error", "llhttp saw a different number of fields")
        response = _response_head(http_version, code, reason, headers, method, limits, True)
        if not reusable or response.content_length or response.chunked or code < 200:
            # (for HEAD, 204 and 304 llhttp may still expect the body the head declares)
            self._llhttp = None
        events.append(response)
        if code < 200:
            self._informational = True
            return
        self._informational = False
        self._keep_alive = response.keep_alive
        if response_has_body(method, code):
            self._start_body(response.content_length, response.chunked, events)
        else:
            self._end_message(events)

    def _message_done(self) -> None:
        self._methods.popleft()


# --------------------------------------------------------------------------------------------
# Serializers
# --------------------------------------------------------------------------------------------


def _field_block(start_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [start_line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    block = b"".join(parts)
    # A CR or LF inside a name or value would start a line the caller did not write; one count
    # over the result finds it without a loop over the fields.
    lines = len(headers) + 2
    if block.count(b"\n") != lines or block.count(b"\r") != lines:
        raise ValueError(f"CR or LF inside a start line, name or value: {_show(block)}")
    return block


def serialize_request_head(head: RequestHead, headers: list[tuple[bytes, bytes]]) -> bytes:
    """``METHOD target HTTP/1.1`` and ``headers`` (not ``head.headers``: the proxy chooses)."""
    return _field_block(b"%s %s HTTP/1.1\r\n" % (head.method, head.target), headers)


def serialize_response_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """``HTTP/1.1 status reason`` and ``headers``."""
    if not 100 <= status <= 999:
        raise ValueError(f"status {status!r} is not three digits")
    return _field_block(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; b"" for no data (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)
