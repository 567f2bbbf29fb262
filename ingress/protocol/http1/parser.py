"""The general parsers: framing, pipelining, bodies (RFC 9112), sans-IO.

Theory of operation
-------------------
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

Cost of a request on the general path: one ``find`` for the blank line; one ``translate``,
three ``count`` and two ``find`` over the head; one ``split`` of the request line; one llhttp
call with a Python callback per field line; for all names at once one ``join``, ``translate``,
``lower`` and ``split``; one dict lookup per field; one regular expression per request (Host).
No regular expression runs per field.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Final, cast

import httptools

from ingress.protocol.http1.fast import fast_request, fast_response
from ingress.protocol.http1.message import (
    DEFAULT_LIMITS,
    END_OF_MESSAGE,
    EXCERPT_LENGTH,
    Data,
    Event,
    HttpError,
    Limits,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    shown,
    shown_around,
)
from ingress.protocol.http1.rules import (
    CHUNK_EXT_RE,
    FIELD_BYTES,
    HEAD_BYTES,
    HEXDIG,
    MAX_CHUNK_LINE,
    MAX_CHUNK_SIZE_DIGITS,
    TCHAR,
    check_raw_head,
    check_request_line,
    check_version,
    request_head,
    response_has_body,
    response_head,
    split_fields,
    status_code,
)

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
        exceed MAX_CHUNK_LINE, the trailer section not max_header_bytes.
        """
        limit = self._limits.max_header_bytes - self._trailer if trailer else MAX_CHUNK_LINE
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
            raise self._error("bare-lf", f"line ends with a bare LF: {shown(line)}")
        return line, end + 1

    def _error(self, reason: str, detail: str) -> HttpError:
        return HttpError(self._status, reason, detail)

    def feed(self, data: bytes, pos: int, events: list[Event]) -> int:
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
                            "bad-chunk",
                            f"chunk data not followed by CRLF: {shown_around(data, pos)}"
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
            return self._error("bad-chunk", f"chunk-size line over {MAX_CHUNK_LINE} bytes")
        limit = self._limits.max_header_bytes
        status = 431 if self._status == 400 else self._status
        return HttpError(status, "header-too-large", f"trailer section over {limit} bytes")

    def _size_line(self, line: bytes) -> None:
        body = line[:-2]
        size, semicolon, _ = body.partition(b";")
        if (
            not size
            or len(size) > MAX_CHUNK_SIZE_DIGITS
            or size.translate(None, HEXDIG)
            or (semicolon and not CHUNK_EXT_RE.fullmatch(body, len(size)))
        ):
            raise self._error("bad-chunk", f"chunk-size line {shown(body)}")
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
        if content.translate(None, FIELD_BYTES):
            kind = "bare-cr" if b"\r" in content else "control-char"
            raise self._error(kind, f"in trailer field {shown(content)}")
        if content[:1] in (b" ", b"\t"):
            raise self._error("obs-fold", f"continuation line in trailer: {shown(content)}")
        name, colon, _ = content.partition(b":")
        if not colon or not name or name.translate(None, TCHAR):
            raise self._error("bad-header-name", f"trailer field {shown(content)}")


class _Parser(ABC):
    """What RequestParser and ResponseParser share: the head buffer and body framing."""

    _STATUS = 400  # the status of errors; responses use 502
    _SKIPS_EMPTY_LINES = False  # requests only: RFC 9112 section 2.2

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
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

    def _feed(self, data: bytes, events: list[Event]) -> None:
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

    def _run(self, data: bytes, events: list[Event]) -> None:
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
        bad = new.translate(None, HEAD_BYTES)
        if bad:
            raise HttpError(
                self._STATUS, "control-char", f"in head: {shown_around(new, new.find(bad[:1]))}"
            )
        after_cr = buf.endswith(b"\r")
        joined = 1 if after_cr and new[:1] == b"\n" else 0
        if new.count(b"\n") > new.count(b"\r\n") + joined:
            raise HttpError(self._STATUS, "bare-lf", f"in head: {shown(bytes(buf[-30:]) + new)}")
        if (after_cr and not joined) or (
            new.count(b"\r") > new.count(b"\r\n") + new.endswith(b"\r")
        ):
            raise HttpError(self._STATUS, "bare-cr", f"in head: {shown(bytes(buf[-30:]) + new)}")
        limit = self._start_line_limit()
        if limit is not None and not self._line_seen and len(buf) + len(new) > limit + 1:
            # Once the start line is known to be complete and short enough, this is never
            # scanned again; until then it cannot exceed the limit plus a pending CR.
            line_end = (buf + new).find(b"\r\n")
            if line_end < 0 or line_end > limit:
                raise HttpError(
                    414,
                    "request-line-too-long",
                    f"request line longer than {limit} bytes: {shown(bytes(buf[:EXCERPT_LENGTH]))}",
                )
            self._line_seen = True

    def _end_message(self, events: list[Event]) -> None:
        events.append(END_OF_MESSAGE)
        self._state = _HEAD if self._keep_alive else _DONE
        self._message_done()

    def _start_body(
        self,
        content_length: int | None,
        chunked: bool,
        events: list[Event],
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
    def _on_head(self, head: bytes, events: list[Event]) -> None:
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
                return [head, END_OF_MESSAGE]
        events: list[Event] = []
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

    def _on_head(self, head: bytes, events: list[Event]) -> None:
        limits = self._limits
        if len(head) + self._skipped > limits.max_header_bytes:
            raise HttpError(
                431,
                "header-too-large",
                f"head of {len(head) + self._skipped} bytes, limit {limits.max_header_bytes}",
            )
        self._skipped = 0
        fields = check_raw_head(head, 400, limits)
        line_end = head.find(b"\r\n")
        if line_end > limits.max_request_line:
            raise HttpError(
                414,
                "request-line-too-long",
                f"{line_end} bytes, limit {limits.max_request_line}: {shown(head)}",
            )
        #   request-line = method SP request-target SP HTTP-version
        # Exactly single spaces: llhttp accepts "GET  / HTTP/1.1", others may not.
        parts = head[:line_end].split(b" ")
        if len(parts) != 3:
            raise HttpError(400, "bad-request-line", f"request line {shown(head[:line_end])}")
        method, target, version = parts
        http_version = check_request_line(method, target, version, limits)
        headers, reusable, failure = self._parse_fields(head)
        if failure is not None:
            headers = split_fields(head, line_end, 400)
            request_head(method, target, http_version, headers, limits, True)
            status, reason = _llhttp_reason(failure, 400)
            raise HttpError(status, reason, f"llhttp: {failure}; {shown(head[:line_end])}")
        if len(headers) != fields:
            raise HttpError(400, "parse-error", "llhttp saw a different number of fields")
        # values_checked: check_raw_head saw every byte of the head
        request = request_head(method, target, http_version, headers, limits, True)
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

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
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
                return [head, Data(body), END_OF_MESSAGE] if body else [head, END_OF_MESSAGE]
        events: list[Event] = []
        if data and not self._methods and self._state == _HEAD and self._error is None:
            raise self._fail(
                HttpError(502, "unsolicited-response", f"bytes with no request: {shown(data)}")
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
            return [END_OF_MESSAGE]
        if state in (_LENGTH, _CHUNKED) or (state == _HEAD and (self._buf or self._informational)):
            self._error = HttpError(502, "truncated", "connection closed inside a response")
            raise self._error
        return []

    def _on_head(self, head: bytes, events: list[Event]) -> None:
        if not self._methods:
            raise HttpError(502, "unsolicited-response", f"response with no request: {shown(head)}")
        limits = self._limits
        fields = check_raw_head(head, 502, limits)
        line_end = head.find(b"\r\n")
        #   status-line = HTTP-version SP status-code SP [ reason-phrase ]
        # The SP before an empty reason is often missing in practice; h11 and llhttp allow that.
        parts = head[:line_end].split(b" ", 2)
        if len(parts) < 2:
            raise HttpError(502, "bad-status-line", f"status line {shown(head[:line_end])}")
        version, status = parts[0], parts[1]
        reason = parts[2] if len(parts) == 3 else b""
        http_version = check_version(version, 502)
        code = status_code(status)
        method = self._methods[0]
        headers, reusable, failure = self._parse_fields(head)
        if failure is not None:
            headers = split_fields(head, line_end, 502)
            response_head(http_version, code, reason, headers, method, limits, True)
            raise HttpError(502, _llhttp_reason(failure, 502)[1], f"llhttp: {failure}")
        if len(headers) != fields:
            raise HttpError(502, "parse-error", "llhttp saw a different number of fields")
        response = response_head(http_version, code, reason, headers, method, limits, True)
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
