"""A small SMTP server that reads the PROXY header: the demo's stand-in for GreenArrow's MTA and
Event Tracker, and the counting backend of the benchmarks.

It answers every command, accepts any message, and says in its replies which client address
the PROXY header gave it, so that a person trying the demo sees the address travel.  It is not
a mail server: messages are counted (and their size and client address kept), then dropped.

Without ``expect_proxy`` it is the remote MX behind the egress tier (the demo's, the load
test's): the client address in its banner and its ``250`` is then its TCP peer, which is the
source address the egress tier sent from.

Counting: ``StubStats`` is shared by every session of one stub.  ``sessions`` counts every
connection, the ingress's health checks included (they connect and close without a byte);
``session_clients`` and ``message_clients`` count, by client host, only the sessions that got
as far as a PROXY header (or any connection, without ``expect_proxy``) and the messages
accepted, so that a load test can compare what it sent with what arrived and from where.
``snapshot()`` gives them as JSON-ready data.

Identities (opt-in, for the load test's exactly-once check, ``loadtest/``): with an ``IdLog`` in
``StubStats.received``, every accepted message's ``X-Loadtest-Id`` header (searched in the first
``HEAD_LIMIT`` bytes of the message) is logged with the client address, and a message without
one is counted as unidentified.  One ``IdLog`` is meant to be shared by a service's SMTP and HTTP
stubs; the HTTP stub serves it at ``/_stub/received``.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ingress.ops.logs import address_text
from ingress.protocol import proxy_protocol

MAX_LINE = 4096
# How much of a message is kept to look for its X-Loadtest-Id: the header block of a generated
# message is well under this, and a body is never buffered whole.
HEAD_LIMIT = 8192
ID_HEADER = "X-Loadtest-Id"
# An id is an opaque token; anything else in the header is treated as no id, so that a log
# line can never be made ambiguous by what a client sent.
_ID_PATTERN = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_ID_FIELD = ID_HEADER.lower().encode() + b":"
# Bounds the log's memory by the run, not by the stub's lifetime: at about 200 bytes an entry,
# a million is some 200 MB, more than an hour of load at the demo's rates.
DEFAULT_ID_LIMIT = 1_000_000


def valid_id(value: str) -> bool:
    return _ID_PATTERN.fullmatch(value.encode("latin-1", "replace")) is not None


def loadtest_id(head: bytes) -> str | None:
    """The ``X-Loadtest-Id`` of a message from the start of its data (header fields up to the
    first empty line), or None when it has none, or one that is not a valid id."""
    for line in head.split(b"\r\n"):
        if not line:
            return None  # end of the header block
        if line[:len(_ID_FIELD)].lower() == _ID_FIELD:
            value = line[len(_ID_FIELD):].strip(b" \t")
            return value.decode("ascii") if _ID_PATTERN.fullmatch(value) else None
    return None


@dataclass(slots=True)
class IdLog:
    """What one service received that carried a load-test id: ``(kind, id, client)`` entries in
    arrival order (``kind`` is ``http`` or ``smtp``), arrivals without an id counted by kind, and
    entries beyond ``limit`` counted as dropped (a comparison must then refuse to conclude)."""

    limit: int = DEFAULT_ID_LIMIT
    entries: list[tuple[str, str, str]] = field(default_factory=list)
    unidentified: Counter[str] = field(default_factory=Counter)
    dropped: int = 0

    def add(self, kind: str, ident: str | None, client: str) -> None:
        if ident is None:
            self.unidentified[kind] += 1
        elif len(self.entries) < self.limit:
            self.entries.append((kind, ident, client))
        else:
            self.dropped += 1

    def snapshot(self) -> dict[str, Any]:
        return {"entries": [list(entry) for entry in self.entries],
                "unidentified": dict(self.unidentified), "dropped": self.dropped}

    def reset(self) -> None:
        self.entries.clear()
        self.unidentified.clear()
        self.dropped = 0


@dataclass(slots=True)
class Received:
    client: str
    mail_from: bytes
    recipients: list[bytes]
    size: int


@dataclass(slots=True)
class StubStats:
    sessions: int = 0
    messages: list[Received] = field(default_factory=list)
    proxy_errors: int = 0
    session_clients: Counter[str] = field(default_factory=Counter)
    message_clients: Counter[str] = field(default_factory=Counter)
    received: IdLog | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"sessions": self.sessions,
                "client_sessions": sum(self.session_clients.values()),
                "messages": len(self.messages),
                "message_bytes": sum(message.size for message in self.messages),
                "proxy_errors": self.proxy_errors,
                "sessions_by_client": dict(self.session_clients),
                "messages_by_client": dict(self.message_clients)}

    def reset(self) -> None:
        self.sessions = 0
        self.messages.clear()
        self.proxy_errors = 0
        self.session_clients.clear()
        self.message_clients.clear()
        if self.received is not None:
            self.received.reset()


class StubSmtp(asyncio.Protocol):
    """One SMTP session.  Lines are cut with ``bytes.find`` on a buffer: cheap enough that the
    stub is not what a benchmark measures."""

    def __init__(self, name: str, stats: StubStats, *, expect_proxy: bool) -> None:
        self._name = name
        self._stats = stats
        self._expect_proxy = expect_proxy
        self._buffer = bytearray()
        self._header = proxy_protocol.HeaderReader()
        self._in_data = False
        self._data_size = 0
        self._head = bytearray()
        self._mail_from = b""
        self._recipients: list[bytes] = []
        self._client = "unknown"
        self._client_host = "unknown"
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._stats.sessions += 1
        peer = transport.get_extra_info("peername")
        if peer:
            self._client = address_text((peer[0], peer[1]), "unknown")
            self._client_host = peer[0]
        if not self._expect_proxy:
            self._stats.session_clients[self._client_host] += 1
            self._banner()

    def _banner(self) -> None:
        self._reply(f"220 {self._name} ESMTP demo stub; your address is {self._client}")

    def _reply(self, text: str) -> None:
        if self._transport is not None:
            self._transport.write(text.encode() + b"\r\n")

    def data_received(self, data: bytes) -> None:
        if self._expect_proxy:
            try:
                parsed = self._header.feed(data)
            except proxy_protocol.ProxyProtocolError as error:
                self._stats.proxy_errors += 1
                self._reply(f"421 4.7.0 bad PROXY header: {error.reason}")
                self._close()
                return
            if parsed is None:
                return
            header, data = parsed
            if header.client_address is not None:
                self._client = address_text(header.client_address, "unknown")
                self._client_host = header.client_address[0]
            self._expect_proxy = False
            self._stats.session_clients[self._client_host] += 1
            self._banner()
        self._buffer += data
        self._process()

    def _process(self) -> None:
        buffer = self._buffer
        start = 0
        while self._transport is not None:
            if self._in_data:
                # Count body bytes up to the terminating "\r\n.\r\n" without splitting lines.
                end = buffer.find(b"\r\n.\r\n", max(start - 2, 0))
                if end < 0:
                    keep = max(start, len(buffer) - 4)
                    self._keep_head(buffer, start, keep)
                    self._data_size += keep - start
                    start = keep
                    break
                self._keep_head(buffer, start, end + 2)
                self._data_size += end - start + 2
                start = end + 5
                self._in_data = False
                self._stats.messages.append(Received(
                    self._client, self._mail_from, self._recipients, self._data_size))
                self._stats.message_clients[self._client_host] += 1
                if self._stats.received is not None:
                    self._stats.received.add("smtp", loadtest_id(bytes(self._head)),
                                             self._client_host)
                self._reply(f"250 2.0.0 queued by {self._name} "
                            f"({self._data_size} bytes, client {self._client})")
                self._recipients = []
                continue
            end = buffer.find(b"\r\n", start)
            if end < 0:
                if len(buffer) - start > MAX_LINE:
                    self._reply("500 5.5.2 line too long")
                    self._close()
                break
            self._command(bytes(buffer[start:end]))
            start = end + 2
        del buffer[:start]

    def _keep_head(self, buffer: bytearray, start: int, end: int) -> None:
        room = HEAD_LIMIT - len(self._head)
        if self._stats.received is not None and room > 0:
            self._head += buffer[start:min(end, start + room)]

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            self._reply(f"250-{self._name} hello, client {self._client}\r\n250-PIPELINING\r\n"
                        "250-8BITMIME\r\n250 SIZE 104857600" if verb == b"EHLO"
                        else f"250 {self._name}")
        elif verb == b"MAIL":
            self._mail_from = line[10:].strip()
            self._recipients = []
            self._reply("250 2.1.0 ok")
        elif verb == b"RCPT":
            self._recipients.append(line[8:].strip())
            self._reply("250 2.1.5 ok")
        elif verb == b"DATA":
            if not self._recipients:
                self._reply("503 5.5.1 no recipients")
                return
            self._in_data = True
            self._data_size = 0
            self._head.clear()
            self._reply("354 end with <CRLF>.<CRLF>")
        elif verb in (b"RSET", b"NOOP"):
            self._recipients = []
            self._reply("250 2.0.0 ok")
        elif verb == b"QUIT":
            self._reply("221 2.0.0 bye")
            self._close()
        else:
            self._reply("502 5.5.2 command not implemented")

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def factory(name: str, stats: StubStats, *, expect_proxy: bool) -> Callable[[], StubSmtp]:
    return lambda: StubSmtp(name, stats, expect_proxy=expect_proxy)
