"""A small HTTP/1.1 server that answers every request with what it saw: the demo's stand-in for
GreenArrow's HTTP services (MTA, Event Tracker, TLS), and a counting backend for load tests.

Every request gets ``200 application/json`` with one JSON object on one line::

    {"service": "event-tracker", "method": "GET", "path": "/click/1", "host": "...",
     "x_forwarded_for": "127.0.0.1", "client": "127.0.0.1", "peer": "127.0.0.1:40112",
     "body_bytes": 0}

``x_forwarded_for`` is every X-Forwarded-For field joined with ", " (null when there is none),
``client`` the address the service would attribute the request to (the last X-Forwarded-For
entry, the one the ingress added, else the TCP peer), ``peer`` the TCP peer itself (the ingress).

Counting: a ``StubService`` holds the counts of one service, shared by all its connections, and
the SMTP stub's ``StubStats`` when the service also speaks SMTP.  ``GET /_stub/counts`` answers
them as JSON (``DELETE /_stub/counts`` zeroes them); those requests are not counted.  The paths
are answered on whatever route reaches the stub, so ask the stub's own port to be sure which
service answers.  Health-check connections (connect, close) count as connections, never as
requests.

Identities (opt-in, for the load test's exactly-once check): a ``StubService`` given an
``IdLog`` (``ingress/demo/stub_smtp.py``, shared with its SMTP stub) logs every request's
``X-Loadtest-Id`` with its ``client``, and counts requests without one.  ``GET /_stub/received``
answers ``{"service": ..., "entries": [[kind, id, client], ...], "unidentified": {...},
"dropped": n}`` (404 without a log), ``DELETE /_stub/received`` empties it; neither is logged.

Requests are parsed with httptools (llhttp): keep-alive, pipelining, Content-Length and chunked
bodies, as the ingress's pooled backend connections use them.  Bodies are counted, not kept.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

from ingress.demo.stub_smtp import ID_HEADER, IdLog, StubStats, valid_id
from ingress.ops.logs import address_text

COUNTS_PATH = b"/_stub/counts"
RECEIVED_PATH = b"/_stub/received"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_ID_HEADER_LOWER = ID_HEADER.lower()


@dataclass(slots=True)
class HttpCounts:
    connections: int = 0
    requests: int = 0
    body_bytes: int = 0
    by_client: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {"connections": self.connections, "requests": self.requests,
                "body_bytes": self.body_bytes, "requests_by_client": dict(self.by_client)}

    def reset(self) -> None:
        self.connections = 0
        self.requests = 0
        self.body_bytes = 0
        self.by_client.clear()


@dataclass(slots=True)
class StubService:
    """One stub service: its name (``service`` in every answer) and what it counted."""

    name: str
    http: HttpCounts = field(default_factory=HttpCounts)
    smtp: StubStats | None = None
    received: IdLog | None = None

    def counts(self) -> dict[str, Any]:
        return {"service": self.name, "http": self.http.snapshot(),
                "smtp": self.smtp.snapshot() if self.smtp is not None else None}

    def reset(self) -> None:
        self.http.reset()
        if self.smtp is not None:
            self.smtp.reset()


def forwarded_client(forwarded_for: Sequence[str], peer_host: str) -> str:
    """The address a service behind a trusted proxy attributes a request to: the last entry of
    the last X-Forwarded-For field (a proxy appends, so the last one is the nearest proxy's
    claim), else the TCP peer."""
    for value in reversed(forwarded_for):
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if entries:
            return entries[-1]
    return peer_host


def request_document(service: str, method: str, path: str, headers: Sequence[tuple[str, str]],
                     peer: tuple[str, int] | None, body_bytes: int) -> dict[str, Any]:
    """What the stub answers to a request (see the module docstring)."""
    forwarded = [value for name, value in headers if name.lower() == "x-forwarded-for"]
    host = next((value for name, value in headers if name.lower() == "host"), None)
    peer_host = peer[0] if peer is not None else "unknown"
    return {"service": service, "method": method, "path": path, "host": host,
            "x_forwarded_for": ", ".join(forwarded) if forwarded else None,
            "client": forwarded_client(forwarded, peer_host),
            "peer": address_text(peer, "unknown"), "body_bytes": body_bytes}


def render_response(status: int, document: dict[str, Any], *, keep_alive: bool,
                    head_only: bool = False) -> bytes:
    body = (json.dumps(document) + "\n").encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n").encode()
    return head if head_only else head + body


class StubHttp(asyncio.Protocol):
    """One client connection (for the demo: one pooled connection from the ingress)."""

    def __init__(self, service: StubService) -> None:
        self._service = service
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] | None = None
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: a cast, not a check.
        self._transport = cast(asyncio.Transport, transport)
        self._service.http.connections += 1
        peer = transport.get_extra_info("peername")
        self._peer = (peer[0], peer[1]) if peer else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(400, {"error": "upgrade not supported"}, keep_alive=False)
        except httptools.HttpParserError as error:
            self._finish(400, {"error": f"bad request: {error}"}, keep_alive=False)

    # httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url  # may arrive in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        method: bytes = self._parser.get_method()
        keep_alive = bool(self._parser.should_keep_alive())
        target = bytes(self._url)
        path = target.partition(b"?")[0]
        if path == COUNTS_PATH:
            self._counts(method, keep_alive)
            return
        if path == RECEIVED_PATH:
            self._received(method, keep_alive)
            return
        counts = self._service.http
        document = request_document(self._service.name, method.decode("latin-1"),
                                    target.decode("latin-1"), self._headers, self._peer,
                                    self._body_bytes)
        counts.requests += 1
        counts.body_bytes += self._body_bytes
        counts.by_client[document["client"]] += 1
        if self._service.received is not None:
            ident = next((value.strip() for name, value in self._headers
                          if name.lower() == _ID_HEADER_LOWER), None)
            self._service.received.add(
                "http", ident if ident is not None and valid_id(ident) else None,
                document["client"])
        self._finish(200, document, keep_alive=keep_alive, head_only=method == b"HEAD")

    # ---------------------------------------------------------------------------------------

    def _counts(self, method: bytes, keep_alive: bool) -> None:
        if method == b"DELETE":
            self._service.reset()
        elif method not in (b"GET", b"HEAD"):
            self._finish(405, {"error": "GET or DELETE"}, keep_alive=keep_alive)
            return
        self._finish(200, self._service.counts(), keep_alive=keep_alive,
                     head_only=method == b"HEAD")

    def _received(self, method: bytes, keep_alive: bool) -> None:
        received = self._service.received
        if received is None:
            self._finish(404, {"error": "no id log on this stub"}, keep_alive=keep_alive)
            return
        if method == b"DELETE":
            received.reset()
        elif method not in (b"GET", b"HEAD"):
            self._finish(405, {"error": "GET or DELETE"}, keep_alive=keep_alive)
            return
        self._finish(200, {"service": self._service.name, **received.snapshot()},
                     keep_alive=keep_alive, head_only=method == b"HEAD")

    def _finish(self, status: int, document: dict[str, Any], *, keep_alive: bool,
                head_only: bool = False) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(render_response(status, document, keep_alive=keep_alive,
                                        head_only=head_only))
        if not keep_alive:
            transport.close()
            self._transport = None


def factory(service: StubService) -> Callable[[], StubHttp]:
    return lambda: StubHttp(service)


async def start(service: StubService, *, host: str = "127.0.0.1", port: int = 0,
                sock: socket.socket | None = None) -> asyncio.Server:
    """Serve ``service`` on ``sock`` (already bound) or on ``host:port`` (0: any free port)."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(factory(service), sock=sock)
    return await loop.create_server(factory(service), host, port)
