"""The fast path: one common message in one read.

A message that arrives whole in one read and needs none of the general path's machinery (a
request without a body, a response framed by Content-Length, only printable ASCII, no '_' in a
name, no Transfer-Encoding or Expect, well inside the limits) is checked and split by regular
expressions instead, one for its start line and one per field line, whose results for the
usual lines are remembered (``fast_request``, ``fast_response``):
they accept a subset of what the general path accepts and build the same head; anything else
falls through to the general path, so every rejection in ``rules`` is still the general path's.
``take_whole`` is that path alone, for a caller that handles a whole message itself without
events (the proxy does, on every read): it takes what ``feed`` would take there, or nothing.
tests/unit/protocol/http1/test_fast.py holds the two paths to that with hypothesis. A response head
the fast path takes also keeps its bytes (``ResponseHead.raw``, without a Connection field of
only "close" or "keep-alive") when a proxy could forward them unchanged: HTTP/1.1 and no other
hop-by-hop field but one Content-Length; the same test checks that a client reads those bytes
as it reads the proxy's re-serialisation of the head. A request head keeps them
(``RequestHead.raw``, cut the same way) when it is HTTP/1.1 with no other hop-by-hop field
and no X-Forwarded-* or Forwarded field; the test checks that, with the proxy's forwarding
fields appended, a backend reads them as it reads the re-serialisation.
"""

from __future__ import annotations

import re
from typing import Final

from ingress.protocol.http1.message import DEFAULT_LIMITS, Limits, RequestHead, ResponseHead
from ingress.protocol.http1.rules import (
    FIELD_CONNECTION,
    FIELD_CONTENT_LENGTH,
    FIELD_FORWARDING,
    FIELD_HOST,
    FIELD_OTHER_HOP_BY_HOP,
    FORWARDED_FIELDS,
    FORWARDED_PROTO_FIELDS,
    HOP_BY_HOP,
    NO_TOKENS,
    add_connection_tokens,
    keeps_alive,
    response_has_body,
    valid_content_length,
    valid_host,
)

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
# tests/unit/protocol/http1/test_fast.py holds the two paths to that with hypothesis.

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
# status 200 to 599 (1xx and 101 have rules of their own); the reason as response_head allows,
# without obs-text
_FAST_STATUS_LINE_RE: Final = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\t\x20-\x7e]*)\r\n")
# The fast path only looks at heads this short, well inside the default request-line and head
# limits, which the configuration does not change; under smaller Limits (tests make them) it
# takes nothing, see _fast_limit. max_headers and max_body are checked.
_FAST_HEAD_MAX: Final = 4096
# What a field's lowercased name means to the fast path: FIELD_HOST and FIELD_CONNECTION are read,
# FIELD_CONTENT_LENGTH only in a response, FIELD_OTHER_HOP_BY_HOP and FIELD_FORWARDING only decide
# whether the head's bytes may be forwarded as they came (``raw``), -1 sends the message to the
# general path.
_FAST_REQUEST_FIELDS: Final = {
    b"host": FIELD_HOST, b"connection": FIELD_CONNECTION,
    b"content-length": -1, b"transfer-encoding": -1, b"expect": -1,
    **{name: FIELD_OTHER_HOP_BY_HOP for name in HOP_BY_HOP
       if name not in (b"connection", b"content-length", b"transfer-encoding")},
    **{name: FIELD_FORWARDING for name in FORWARDED_FIELDS | FORWARDED_PROTO_FIELDS},
}
# A request's own Connection field, as most clients spell it, which ``raw`` leaves out when
# it holds no more than these tokens (the proxy's serialisation drops it in any case).
_CONNECTION_LINE: Final = b"\r\nConnection:"
_PLAIN_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive"})
_FAST_RESPONSE_FIELDS: Final = {
    b"connection": FIELD_CONNECTION, b"content-length": FIELD_CONTENT_LENGTH,
    b"transfer-encoding": -1,
    # the other hop-by-hop fields: allowed, but the head is then not forwarded as it came
    **{name: FIELD_OTHER_HOP_BY_HOP for name in HOP_BY_HOP
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


# The tokens of the usual Connection values, as add_connection_tokens reads them.
_USUAL_CONNECTION_TOKENS: Final = {
    value: frozenset({value.lower()})
    for value in (b"close", b"keep-alive", b"Close", b"Keep-Alive")
}


def _fast_connection_tokens(headers: list[tuple[bytes, bytes]], last_value: bytes,
                            lines: int) -> frozenset[bytes]:
    """The tokens of the Connection fields among ``headers``: ``lines`` of them, the last one
    holding ``last_value``. A single usual value is looked up instead of read."""
    if lines == 0:
        return NO_TOKENS
    if lines == 1:
        usual = _USUAL_CONNECTION_TOKENS.get(last_value)
        if usual is not None:
            return usual
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            add_connection_tokens(tokens, value)
    return frozenset(tokens) if tokens else NO_TOKENS


def fast_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> RequestHead | None:
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
        if kind == FIELD_HOST:
            host = value
            host_count += 1
        elif kind == FIELD_CONNECTION:
            connection = value
            connection_lines += 1
        elif kind in (FIELD_OTHER_HOP_BY_HOP, FIELD_FORWARDING):
            forwardable = False
        else:
            return None
    http11 = minor == b"1"
    if host_count > 1 or (host is None and http11) or (host and not valid_host(host)):
        return None
    tokens = _fast_connection_tokens(headers, connection, connection_lines)
    raw = _forwardable_head(data, connection_lines, tokens) if http11 and forwardable else b""
    return RequestHead(
        method=method,
        target=target,
        version=b"1.1" if http11 else b"1.0",
        headers=headers,
        content_length=None,
        chunked=False,
        keep_alive=keeps_alive(http11, tokens),
        expect_continue=False,
        connection_tokens=tokens,
        host=host,
        raw=raw,
    )


def fast_response(
    data: bytes, request_method: bytes, limits: Limits = DEFAULT_LIMITS
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
        if kind == FIELD_CONTENT_LENGTH:
            if content_length is not None:
                return None
            content_length = value
        elif kind == FIELD_CONNECTION:
            connection = value
            connection_lines += 1
        elif kind == FIELD_OTHER_HOP_BY_HOP:
            hop_by_hop = True
        else:
            return None
    length: int | None = None
    if content_length is not None:
        if not valid_content_length(content_length):
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
        keep_alive=keeps_alive(http11, tokens),
        raw=(_forwardable_head(data[:blank + 4], connection_lines, tokens)
             if http11 and not hop_by_hop else b""),
    )
    return head, body


def _forwardable_head(head: bytes, connection_lines: int, tokens: frozenset[bytes]) -> bytes:
    """``head`` as a proxy may forward it (its own Connection field is added by the proxy): as
    it came, or without its one Connection field of only "close" or "keep-alive" (nginx sends
    "Connection: keep-alive" on every response); b"" when it has to be re-serialised."""
    if connection_lines == 0:
        return head
    if connection_lines == 1 and tokens <= _PLAIN_CONNECTION_TOKENS:
        # No value holds a CR or LF, so this can only be the start of the field's line.
        line = head.find(_CONNECTION_LINE)
        if line >= 0:
            return head[:line] + head[head.index(b"\r\n", line + 2):]
    return b""
