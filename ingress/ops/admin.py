"""The admin listener: ``/metrics`` (Prometheus), ``/livez`` and ``/readyz``, on its own port.

Every worker binds it (``SO_REUSEPORT``, like the traffic listeners), so a scrape reaches any
worker, which answers with every worker's metrics (see ``ingress/ops/metrics.py``). Requests are
parsed with h11: this port sees a scrape every few seconds, not traffic, and h11 is strict.
One request per connection, answered and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import h11

from ingress.ops import metrics

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0


class AdminSession(asyncio.Protocol):
    def __init__(self, ready: Callable[[], tuple[bool, str]]) -> None:
        self._ready = ready
        self._connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: a cast, not a check.
        self._transport = cast(asyncio.Transport, transport)
        self._deadline = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT,
                                                               self._transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._connection.receive_data(data)
        try:
            event = self._connection.next_event()
        except h11.RemoteProtocolError:
            self._respond(400, b"text/plain", b"Bad request.\n")
            return
        if isinstance(event, h11.Request):
            self._answer(event)

    def eof_received(self) -> bool | None:
        return None

    def _answer(self, request: h11.Request) -> None:
        path = request.target.partition(b"?")[0]
        if request.method not in (b"GET", b"HEAD"):
            self._respond(405, b"text/plain", b"Only GET and HEAD.\n", head=False)
        elif path == b"/metrics":
            metrics.metrics().flush()  # this worker's pending sums; the others' within a second
            body, content_type = metrics.exposition()
            self._respond(200, content_type.encode(), body, head=request.method == b"HEAD")
        elif path == b"/livez":
            self._respond(200, b"text/plain", b"live\n", head=request.method == b"HEAD")
        elif path == b"/readyz":
            ready, why = self._ready()
            self._respond(200 if ready else 503, b"text/plain", f"{why}\n".encode(),
                          head=request.method == b"HEAD")
        else:
            self._respond(404, b"text/plain", b"Try /metrics, /livez or /readyz.\n")

    def _respond(self, status: int, content_type: bytes, body: bytes, *,
                 head: bool = False) -> None:
        transport = self._transport
        if transport is None:
            return
        headers = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode()),
                   (b"Cache-Control", b"no-cache"), (b"Connection", b"close")]
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode()
        transport.write(line + b"".join(name + b": " + value + b"\r\n"
                                        for name, value in headers) + b"\r\n"
                        + (b"" if head else body))
        transport.close()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}
