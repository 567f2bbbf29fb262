"""The types the HTTP/1.1 parts share: heads, body events, limits, the error that carries its
status, and the serializers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

LAST_CHUNK: Final = b"0\r\n\r\n"

# bytes shown of offending input in ``HttpError.detail``
EXCERPT_LENGTH: Final = 60


def shown(data: bytes | bytearray) -> str:
    # Details end up in logs; a hostile peer must not be able to make them large.
    return repr(bytes(data[:EXCERPT_LENGTH])) + ("..." if len(data) > EXCERPT_LENGTH else "")


def shown_around(data: bytes, index: int) -> str:
    """An excerpt of ``data`` centred on ``index``."""
    start = max(0, index - EXCERPT_LENGTH // 2)
    return ("..." if start else "") + shown(data[start:])


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


END_OF_MESSAGE: Final = EndOfMessage()
DEFAULT_LIMITS: Final = Limits()

RequestEvent = RequestHead | Data | EndOfMessage
ResponseEvent = ResponseHead | Data | EndOfMessage
Event = RequestHead | ResponseHead | Data | EndOfMessage


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
        raise ValueError(f"CR or LF inside a start line, name or value: {shown(block)}")
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
