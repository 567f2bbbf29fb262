"""The benchmark's backend server process, started by ``bench.py`` on the load generator's CPU.

``smtp``: ``ingress.demo.stub_smtp`` (reads the PROXY header, answers SMTP) on uvloop: the
backend of the ``sessions`` and ``idle`` scenarios.

``http``: an HTTP/1.1 origin on uvloop for the ``http-*`` scenarios: every request gets a fixed
~100-byte ``200`` with Content-Length on a keep-alive connection (closed after the answer when the
request said ``Connection: close``); a path starting with ``/1m`` gets a 1 MiB body instead.  It
parses no more than it must (where each head ends, the method's path, a ``close``), so that it is
cheaper than any proxy in front of it.

``sink``: reads the PROXY header, then throws every byte away: the backend of ``bulk``.  One
thread per connection blocks in ``recv_into`` on one preallocated buffer: no allocation and no
event loop per read, and the GIL is released while the kernel copies, so that the sink costs
less CPU than any relay in front of it and is never what ``bulk`` measures.

Control: the process prints ``port N`` once listening; each ``stats`` line on stdin is answered
with one JSON line; EOF on stdin (the bench exited, however it died) ends the process.  The
egress benchmark's sink (``loadtest/bench_egress_sink.py``) speaks the same control protocol
with the helpers below: ``raise_nofile``, ``announce``, ``answer``, ``until_stdin_closed``
for a server on an event loop, ``ThreadSink`` and ``serve_threads`` for one with a thread per
connection.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import threading
from collections.abc import Callable, Sequence

from ingress.demo import stub_smtp
from ingress.protocol import proxy_protocol

LISTEN_BACKLOG = 4096
SINK_BUFFER = 1 << 20
SINK_LOWAT = 256 * 1024


# --- control, also the egress sink's -------------------------------------------------------------


def raise_nofile() -> None:
    # The idle scenarios hold one connection here per idle session (10,000 by default).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def announce(port: int) -> None:
    sys.stdout.write(f"port {port}\n")
    sys.stdout.flush()


def answer(stats: dict[str, int]) -> None:
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()


async def until_stdin_closed(loop: asyncio.AbstractEventLoop,
                             stats: Callable[[], dict[str, int]]) -> None:
    """Answer each ``stats`` line on stdin with ``stats()``, until stdin ends."""
    stdin_closed: asyncio.Future[None] = loop.create_future()
    pending = bytearray()

    def on_stdin() -> None:
        data = os.read(0, 4096)
        if not data:
            loop.remove_reader(0)
            if not stdin_closed.done():
                stdin_closed.set_result(None)
            return
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            if line.strip() == b"stats":
                answer(stats())

    loop.add_reader(0, on_stdin)
    await stdin_closed


class ThreadSink(abc.ABC):
    """A server with a thread per connection, blocking in ``session`` (the subclass's), each
    with a counter of what it received: no event loop, and the GIL released while the kernel
    copies."""

    def __init__(self) -> None:
        self.connections = 0
        self.per_connection: list[list[int]] = []  # one mutable counter per connection thread
        self._lock = threading.Lock()

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            counter = [0]
            with self._lock:
                self.connections += 1
                self.per_connection.append(counter)
            threading.Thread(target=self.session, args=(conn, counter), daemon=True).start()

    @abc.abstractmethod
    def session(self, conn: socket.socket, counter: list[int]) -> None:
        """Serve one connection until it ends, adding what it received to ``counter[0]``."""

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """The counters of a ``stats`` answer."""


def serve_threads(host: str, port: int, sink: ThreadSink) -> None:
    """Listen on ``host`` and ``port``, ``sink`` serving every connection, until stdin ends;
    each ``stats`` line on it is answered with ``sink.stats()``."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(LISTEN_BACKLOG)
    threading.Thread(target=sink.serve, args=(listener,), daemon=True).start()
    announce(listener.getsockname()[1])
    for line in sys.stdin:
        if line.strip() == "stats":
            answer(sink.stats())
    listener.close()


# --- smtp ----------------------------------------------------------------------------------------


async def _serve_smtp(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = stub_smtp.StubStats()
    server = await loop.create_server(
        stub_smtp.factory("backend.bench", stats, expect_proxy=True), host, port,
        backlog=LISTEN_BACKLOG, reuse_address=True)
    announce(server.sockets[0].getsockname()[1])
    try:
        await until_stdin_closed(loop, lambda: {"sessions": stats.sessions,
                                                 "proxy_errors": stats.proxy_errors,
                                                 "messages": len(stats.messages)})
    finally:
        server.close()


# --- http ----------------------------------------------------------------------------------------

HTTP_SMALL_BODY = b"ok: served by the benchmark origin\n"
HTTP_SMALL = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
              + str(len(HTTP_SMALL_BODY)).encode() + b"\r\n\r\n" + HTTP_SMALL_BODY)
HTTP_LARGE_BODY_SIZE = 1 << 20
HTTP_LARGE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
              + str(HTTP_LARGE_BODY_SIZE).encode() + b"\r\n\r\n" + b"x" * HTTP_LARGE_BODY_SIZE)
HTTP_LARGE_PATH = b"/1m"


class _HttpStats:
    __slots__ = ("bytes", "connections", "requests")

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.bytes = 0


class _HttpOrigin(asyncio.Protocol):
    """Requests without a body (what the scenarios send): a head ends at the empty line."""

    __slots__ = ("_buffer", "_stats", "_transport")

    def __init__(self, stats: _HttpStats) -> None:
        self._stats = stats
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._stats.connections += 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        transport = self._transport
        assert transport is not None
        start = 0
        while (end := buffer.find(b"\r\n\r\n", start)) >= 0:
            head = buffer[start:end]
            start = end + 4
            # "GET /1m HTTP/1.1": the path begins after the first space.
            path_at = head.find(b" ") + 1
            answer = (HTTP_LARGE if head.startswith(HTTP_LARGE_PATH, path_at) else HTTP_SMALL)
            transport.write(answer)
            self._stats.requests += 1
            self._stats.bytes += len(answer)
            lowered = head.lower()
            if b"\r\nconnection: close" in lowered or b"\r\nconnection:close" in lowered:
                transport.close()
                self._buffer = b""
                return
        self._buffer = buffer[start:]


async def _serve_http(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = _HttpStats()
    server = await loop.create_server(lambda: _HttpOrigin(stats), host, port,
                                      backlog=LISTEN_BACKLOG, reuse_address=True)
    announce(server.sockets[0].getsockname()[1])
    await until_stdin_closed(loop, lambda: {"sessions": stats.connections,
                                             "requests": stats.requests, "bytes": stats.bytes,
                                             "proxy_errors": 0})
    server.close()


# --- sink ----------------------------------------------------------------------------------------


class _Sink(ThreadSink):
    def __init__(self) -> None:
        super().__init__()
        self.header_errors = 0

    def session(self, conn: socket.socket, counter: list[int]) -> None:
        buffer = bytearray(SINK_BUFFER)
        view = memoryview(buffer)
        header = bytearray()
        with conn:
            try:
                while True:
                    count = conn.recv_into(view)
                    if count == 0:
                        return
                    header += view[:count]
                    try:
                        parsed = proxy_protocol.parse_header(header)
                    except proxy_protocol.ProxyProtocolError:
                        with self._lock:
                            self.header_errors += 1
                        return
                    if parsed is not None:
                        counter[0] += len(header) - parsed[1]
                        break
                # Woken per 256 KiB rather than per segment the proxy wrote (16 KiB for
                # HAProxy): the sink's CPU then hardly depends on the proxy's write size.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, SINK_LOWAT)
                recv_into = conn.recv_into
                while count := recv_into(view):
                    counter[0] += count
            except OSError:
                return

    def stats(self) -> dict[str, int]:
        with self._lock:
            received = sum(counter[0] for counter in self.per_connection)
            return {"sessions": self.connections, "proxy_errors": self.header_errors,
                    "bytes": received}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("mode", choices=("smtp", "sink", "http"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_nofile()
    if args.mode == "smtp":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_smtp(args.host, args.port))
    elif args.mode == "http":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_http(args.host, args.port))
    else:
        serve_threads(args.host, args.port, _Sink())
    return 0


if __name__ == "__main__":
    sys.exit(main())
