"""The rules of HTTP/1.1 messages, pure: what is refused, with which status and reason, and the
framing a valid head asks for.

What llhttp 9 (httptools 0.9.0) enforces by itself, found by feeding it each case in its default
(strict) mode; the last column is what these rules report, which they do whatever llhttp does:

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
"""

from __future__ import annotations

import re
from typing import Final

from ingress.protocol.http1.message import (
    DEFAULT_LIMITS,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    shown,
    shown_around,
)

# --------------------------------------------------------------------------------------------
# Character classes (RFC 9110 section 5.6.2, RFC 5234 appendix B.1), as ``bytes.translate``
# deletion tables: ``x.translate(None, ALLOWED)`` is empty exactly when every byte of ``x`` is
# allowed, and runs in C.
# --------------------------------------------------------------------------------------------

_ALPHA_DIGIT: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|"
#         / "~" / DIGIT / ALPHA
TCHAR: Final = _ALPHA_DIGIT + b"!#$%&'*+-.^_`|~"
_TCHAR_SP: Final = TCHAR + b" "
#   VCHAR = %x21-7E ; obs-text = %x80-FF
_VCHAR: Final = bytes(range(0x21, 0x7F))
_OBS_TEXT: Final = bytes(range(0x80, 0x100))
#   field-value = *field-content ; field-content = field-vchar [ 1*( SP / HTAB / field-vchar )
#   field-vchar ] ; field-vchar = VCHAR / obs-text
#   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
FIELD_BYTES: Final = _VCHAR + _OBS_TEXT + b" \t"
# Every byte that may appear anywhere in a head; CR and LF are then checked to pair up.
HEAD_BYTES: Final = FIELD_BYTES + b"\r\n"
_DIGITS: Final = b"0123456789"
HEXDIG: Final = b"0123456789ABCDEFabcdef"

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
FIELD_CONTENT_LENGTH: Final = 0
FIELD_TRANSFER_ENCODING: Final = 1
FIELD_HOST: Final = 2
FIELD_CONNECTION: Final = 3
FIELD_EXPECT: Final = 4
FIELD_OTHER_HOP_BY_HOP: Final = 5  # a hop-by-hop field that is none of the above (fast path)
FIELD_FORWARDING: Final = 6  # one of FORWARDED_FIELDS or FORWARDED_PROTO_FIELDS (fast path)
SPECIAL_FIELDS: Final = {
    b"content-length": FIELD_CONTENT_LENGTH,
    b"transfer-encoding": FIELD_TRANSFER_ENCODING,
    b"host": FIELD_HOST,
    b"connection": FIELD_CONNECTION,
    b"expect": FIELD_EXPECT,
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

# The last Host value valid_host accepted: the requests of a keep-alive connection, and most
# connections of a cluster, carry the same one, and comparing it costs a fraction of the
# regular expression. None until one is accepted (b"" is not a valid Host).
_last_valid_host: bytes | None = None


def valid_host(host: bytes) -> bool:
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
CHUNK_EXT_RE: Final = re.compile(
    rb"(?:;[-!#$%&'*+.^_`|~0-9A-Za-z]+"
    rb"(?:=(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+"
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
)
# A chunk-size line ("1f;name=value" CRLF) longer than this is refused: the extension is dropped
# anyway, and an unbounded line would be an unbounded buffer.
MAX_CHUNK_LINE: Final = 4096
# 16 hex digits hold any 64-bit size, which no body reaches; a longer size (even with leading
# zeros) is refused rather than handed to int() unbounded.
MAX_CHUNK_SIZE_DIGITS: Final = 16
# 18 decimal digits stay below 2**63 (so no peer's signed 64-bit parse can overflow) and still
# allow an exabyte.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18
# Methods that skip the token check (they are tokens); anything else is checked.
_COMMON_METHODS: Final = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
)

_BARE_LF_RE: Final = re.compile(rb"(?<!\r)\n")
_BARE_CR_RE: Final = re.compile(rb"\r(?!\n)")


# --------------------------------------------------------------------------------------------
# Validation of parsed fields (pure)
# --------------------------------------------------------------------------------------------


# What the field rules shared by requests and responses found: (content_length, chunked,
# connection_tokens, host, host_count, expect_continue). A tuple: this is on every request.
_Framing = tuple[int | None, bool, frozenset[bytes], bytes | None, int, bool]
NO_TOKENS: Final[frozenset[bytes]] = frozenset()


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
        bad = next(name for name in names if not name or name.translate(None, TCHAR))
        raise HttpError(status, "bad-header-name", f"field name {shown(bad)}")
    if not values_checked:
        #   field-value = *field-content  (no CTL but HTAB, no CR, no LF, no NUL)
        for name, value in headers:
            if value.translate(None, FIELD_BYTES):
                raise HttpError(
                    status, "control-char", f"in the value of {shown(name)}: {shown(value)}"
                )
    if b"_" in joined:
        for lower, name in zip(lowers, names, strict=True):
            if lower.replace(b"_", b"-") in _GUARDED_NAMES and b"_" in lower:
                raise HttpError(
                    status, "bad-header-name", f"{shown(name)} would be read as a framing field"
                )

    content_length: bytes | None = None
    transfer_encoding: list[bytes] = []
    connection: set[bytes] = set()
    host: bytes | None = None
    host_count = 0
    expect_continue = False
    special = SPECIAL_FIELDS.get
    for lower, (_, value) in zip(lowers, headers, strict=True):
        kind = special(lower)
        if kind is None:
            continue
        if kind == FIELD_CONTENT_LENGTH:
            if content_length is not None:
                raise HttpError(
                    status, "repeated-content-length", f"second Content-Length {shown(value)}"
                )
            content_length = value
        elif kind == FIELD_TRANSFER_ENCODING:
            transfer_encoding.append(value)
        elif kind == FIELD_HOST:
            host_count += 1
            host = value
        elif kind == FIELD_CONNECTION:
            add_connection_tokens(connection, value)
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
                status, "repeated-content-length", f"Content-Length {shown(content_length)}"
            )
        if not valid_content_length(content_length):
            raise HttpError(status, "bad-content-length", f"Content-Length {shown(content_length)}")
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
    tokens = frozenset(connection) if connection else NO_TOKENS
    return length, chunked, tokens, host, host_count, expect_continue


def valid_content_length(value: bytes) -> bool:
    """``Content-Length = 1*DIGIT``, within _MAX_CONTENT_LENGTH_DIGITS. bytes.isdigit takes
    ASCII digits only and is False when empty."""
    return value.isdigit() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS


def add_connection_tokens(tokens: set[bytes], value: bytes) -> None:
    #   Connection = #connection-option ; connection-option = token
    for token in value.lower().split(b","):
        token = token.strip(b" \t")
        if token:
            tokens.add(token)


def keeps_alive(http11: bool, tokens: frozenset[bytes]) -> bool:
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
        raise HttpError(status, "chunked-not-final", f"Transfer-Encoding {shown(joined)}")
    if len(codings) > 1:
        # The framing is clear (chunked is last) but another coding is applied under it. RFC
        # 9112 section 6.1: "A server that receives a request message with a transfer coding it
        # does not understand SHOULD respond with 501 (Not Implemented)." Backends are not
        # asked to decode codings the proxy does not forward unchanged.
        raise HttpError(
            501 if status == 400 else status,
            "unknown-transfer-coding",
            f"Transfer-Encoding {shown(joined)}",
        )


def check_version(version: bytes, status: int) -> bytes:
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
        raise HttpError(return_status, "bad-version", f"unsupported version {shown(version)}")
    reason = "bad-request-line" if status == 400 else "bad-status-line"
    raise HttpError(status, reason, f"not an HTTP version: {shown(version)}")


def check_request_line(method: bytes, target: bytes, version: bytes, limits: Limits) -> bytes:
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
        if not method or method.translate(None, TCHAR):
            raise HttpError(400, "bad-request-line", f"method {shown(method)}")
        if method == b"CONNECT":
            # authority-form targets open tunnels; a reverse proxy in front of a web server
            # has nothing to tunnel to. RFC 9110 section 9.1: 501 for a method not implemented.
            raise HttpError(501, "unsupported-method", "CONNECT is not supported")
    http_version = check_version(version, 400)
    #   request-target = origin-form / absolute-form / authority-form / asterisk-form
    if not target:
        raise HttpError(400, "bad-request-line", "empty request-target")
    bad = target.translate(None, _VCHAR)
    if bad:
        # CTLs (HTAB included) are "control-char"; SP and obs-text are merely not URI bytes.
        reason = "control-char" if bad.translate(None, _OBS_TEXT + b" ") else "bad-target"
        raise HttpError(400, reason, f"in request-target {shown(target)}")
    if target[0] == 0x2F:  # "/"
        #   origin-form = absolute-path [ "?" query ]
        # The request-target grammar has no fragment (clients do not send it), and servers
        # disagree on whether a '#' ends the path, so it is refused.
        if b"#" in target:
            raise HttpError(400, "bad-target", f"fragment in request-target {shown(target)}")
        return http_version
    if target == b"*":
        #   asterisk-form = "*" ; "only used for a server-wide OPTIONS request"
        if method != b"OPTIONS":
            raise HttpError(400, "bad-target", f"'*' is only for OPTIONS, not {shown(method)}")
        return http_version
    #   absolute-form = absolute-URI   (its authority is checked against Host in request_head)
    scheme = target[:8].lower()
    if not (scheme.startswith(b"http://") or scheme == b"https://"):
        raise HttpError(400, "bad-target", f"request-target {shown(target)}")
    if b"#" in target:
        raise HttpError(400, "bad-target", f"fragment in request-target {shown(target)}")
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
    limits: Limits = DEFAULT_LIMITS,
) -> RequestHead:
    """Apply every request rule that can be seen in parsed fields; raise HttpError or return.

    ``method``, ``target`` and ``version`` are the three request-line tokens as received
    (``version`` is the whole token, b"HTTP/1.1"); ``headers`` are (name, value) pairs with OWS
    removed from the values. Rules that only raw bytes show (bare CR/LF, obs-fold, the size of
    the head) are the parser's; this function enforces the rest, and ``max_headers``,
    ``max_request_line`` and ``max_body`` (for a declared length).
    """
    http_version = check_request_line(method, target, version, limits)
    return request_head(method, target, http_version, headers, limits)


def request_head(
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
    elif host and not valid_host(host):
        # An empty Host is what RFC 9112 section 3.2 tells a client to send when the target
        # URI has no authority; it routes nowhere in particular but is not malformed.
        raise HttpError(400, "bad-host", f"Host {shown(host)}")
    if target[0] != 0x2F and target != b"*":
        # RFC 9112 section 3.2.2: an origin server "MUST ignore the received Host header field
        # (if any) and instead use the host information of the request-target". We route by
        # Host, so the two must agree or the route and Apache's virtual host could differ.
        authority = _authority(target)
        if not valid_host(authority):
            raise HttpError(400, "bad-target", f"authority in request-target {shown(target)}")
        if host is None:
            host = authority
        elif host.lower() != authority.lower():
            raise HttpError(
                400, "host-mismatch", f"Host {shown(host)} but request-target {shown(target)}"
            )
    keep_alive = keeps_alive(http11, tokens)
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


def status_code(status: bytes) -> int:
    #   status-code = 3DIGIT ; with the classes RFC 9110 section 15 defines (1xx to 5xx)
    if len(status) != 3 or status.translate(None, _DIGITS) or not b"100" <= status <= b"599":
        raise HttpError(502, "bad-status-line", f"status code {shown(status)}")
    return int(status)


def validate_response(
    version: bytes,
    status: bytes,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_method: bytes,
    limits: Limits = DEFAULT_LIMITS,
) -> ResponseHead:
    """Apply the response rules to parsed fields and decide the framing (RFC 9112 section 6.3).

    ``version``, ``status`` and ``reason`` are the status-line tokens as received (b"HTTP/1.1",
    b"200", b"OK"); ``request_method`` is the method of the request this answers. Every error
    is a 502: the backend is at fault, not the client.
    """
    http_version = check_version(version, 502)
    code = status_code(status)
    return response_head(http_version, code, reason, headers, request_method, limits)


def response_head(
    http_version: bytes,
    code: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_method: bytes,
    limits: Limits,
    values_checked: bool = False,
) -> ResponseHead:
    #   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
    if reason.translate(None, FIELD_BYTES):
        raise HttpError(502, "control-char", f"in reason phrase {shown(reason)}")
    if code == 101:
        # The proxy never forwards Upgrade, so a switch of protocols is not something it asked
        # for and not something it could relay.
        raise HttpError(502, "unsupported-upgrade", "101 Switching Protocols")
    http11 = http_version == b"1.1"
    content_length, chunked, tokens, _, _, _ = _check_fields(
        headers, http11, 502, limits, values_checked
    )
    keep_alive = keeps_alive(http11, tokens)
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


def check_raw_head(head: bytes, status: int, limits: Limits) -> int:
    """Checks only the raw bytes can show; returns the number of field lines.

    ``head`` runs from its first byte to CRLF CRLF.
    """
    if len(head) > limits.max_header_bytes:
        raise HttpError(
            431 if status == 400 else status,
            "header-too-large",
            f"head of {len(head)} bytes, limit {limits.max_header_bytes}",
        )
    bad = head.translate(None, HEAD_BYTES)
    if bad:
        raise HttpError(status, "control-char",
                        f"in head: {shown_around(head, head.find(bad[:1]))}")
    crlf = head.count(b"\r\n")
    # RFC 9112 section 2.2: "A sender MUST NOT generate a bare CR [...]. A recipient of such a
    # bare CR MUST consider that element to be invalid or replace each bare CR with SP". And
    # LF alone as a line terminator is tolerated by many recipients, so is refused here: the
    # recipients that do not tolerate it would see a different message.
    if head.count(b"\r") != crlf:
        match = _BARE_CR_RE.search(head)
        raise HttpError(
            status, "bare-cr", f"in head: {shown_around(head, match.start() if match else 0)}"
        )
    if head.count(b"\n") != crlf:
        match = _BARE_LF_RE.search(head)
        raise HttpError(
            status, "bare-lf", f"in head: {shown_around(head, match.start() if match else 0)}"
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
        raise HttpError(status, "obs-fold", f"continuation line: {shown_around(head, fold + 2)}")
    # start line + one CRLF per field + the blank line
    fields = crlf - 2
    if fields > limits.max_headers:
        raise HttpError(
            431 if status == 400 else status,
            "too-many-headers",
            f"{fields} fields, limit {limits.max_headers}",
        )
    return fields


def split_fields(head: bytes, line_end: int, status: int) -> list[tuple[bytes, bytes]]:
    """Field lines of ``head`` as (name, value) pairs, the way RFC 9112 section 5 reads them.

    Used only when llhttp refused a head, to name the rule it broke.
    """
    #   field-line = field-name ":" OWS field-value OWS
    fields: list[tuple[bytes, bytes]] = []
    # each field line ends with CRLF, then comes the blank line's CRLF
    for line in head[line_end + 2 : -2].split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise HttpError(status, "bad-header-name", f"field line without ':': {shown(line)}")
        fields.append((name, value.strip(b" \t")))
    return fields
