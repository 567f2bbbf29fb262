"""The egress benchmark's remote "MX": a loopback SMTP server that costs as little as it can, so
that the proxy in front of it is what the egress scenarios measure (``loadtest/bench_egress.py``).

It listens on an address other than the load generator's (127.0.0.200 by default): the egress
listeners refuse their clients' own networks as destinations.  No PROXY header: an egress proxy
connects as itself, from the source address the session asked for.

``smtp`` (``egress-sessions``, ``egress-idle``): uvloop; the ``220`` banner at once, ``221`` and
close on ``QUIT``, ``502`` to anything else; an idle session just stays.

``data`` (``egress-bulk``): one thread per connection blocking in ``recv_into`` on one
preallocated buffer, as ``loadtest/backend.py sink`` does: ``220``; ``354`` to ``DATA``, then
exactly ``--message-bytes`` bytes are read (``SO_RCVLOWAT`` makes each read but those of the
last MiB wait for 256 KiB, so the sink's cost hardly depends on the proxy's write size) and
checked to end with the ``CRLF.CRLF`` terminator before ``250`` (``554`` and a counted error
otherwise); ``221`` and close on ``QUIT``.  The load sends messages of that size and never a
line starting with a dot, so the terminator needs no search: where the message ends is known.

Control, with ``loadtest/backend.py``'s helpers: ``port N`` once listening; each ``stats`` line
on stdin is answered with one JSON line; EOF on stdin ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python loadtest/bench_egress_sink.py` puts loadtest/, not the repository, first on
    # sys.path.
    sys.path.insert(0, str(ROOT))

from loadtest import backend  # noqa: E402

BANNER = b"220 sink.bench.invalid ESMTP\r\n"
BYE = b"221 bye\r\n"
GO_AHEAD = b"354 go ahead\r\n"
ACCEPTED = b"250 accepted\r\n"
BAD_MESSAGE = b"554 message did not end with CRLF.CRLF where expected\r\n"
UNKNOWN = b"502 not here\r\n"
TERMINATOR = b"\r\n.\r\n"
DATA_BUFFER = 1 << 20
DATA_LOWAT = 256 * 1024
DATA_TAIL = 4 * DATA_LOWAT
MAX_LINE = 1024


# --- smtp: sessions and idle -------------------------------------------------------------------


class _Counts:
    __slots__ = ("bad", "quits", "sessions")

    def __init__(self) -> None:
        self.sessions = 0
        self.quits = 0
        self.bad = 0


class _SmtpSink(asyncio.Protocol):
    __slots__ = ("_buffer", "_counts", "_transport")

    def __init__(self, counts: _Counts) -> None:
        self._counts = counts
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._counts.sessions += 1
        self._transport.write(BANNER)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        transport = self._transport
        assert transport is not None
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end + 1], buffer[end + 1:]
            if line[:4].upper() == b"QUIT":
                self._counts.quits += 1
                transport.write(BYE)
                transport.close()
                self._buffer = b""
                return
            self._counts.bad += 1
            transport.write(UNKNOWN)
        if len(buffer) > MAX_LINE:
            self._counts.bad += 1
            transport.close()
            buffer = b""
        self._buffer = buffer


async def _serve_smtp(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    counts = _Counts()
    server = await loop.create_server(lambda: _SmtpSink(counts), host, port,
                                      backlog=backend.LISTEN_BACKLOG, reuse_address=True)
    backend.announce(server.sockets[0].getsockname()[1])
    try:
        await backend.until_stdin_closed(loop, lambda: {"sessions": counts.sessions,
                                                        "quits": counts.quits,
                                                        "errors": counts.bad})
    finally:
        server.close()


# --- data: bulk --------------------------------------------------------------------------------


class _DataSink(backend.ThreadSink):
    def __init__(self, message_bytes: int) -> None:
        super().__init__()  # per_connection: bytes of message data
        self.message_bytes = message_bytes
        self.messages = 0
        self.errors = 0
        self.aborted = 0  # connections gone in the middle of a message (the load's stop)

    def _count(self, what: str) -> None:
        with self._lock:
            if what == "messages":
                self.messages += 1
            elif what == "aborted":
                self.aborted += 1
            else:
                self.errors += 1

    def session(self, conn: socket.socket, counter: list[int]) -> None:
        buffer = bytearray(DATA_BUFFER)
        view = memoryview(buffer)
        pending = bytearray()
        with conn, contextlib.suppress(OSError):
            conn.sendall(BANNER)
            while True:
                while (end := pending.find(b"\n")) < 0:
                    if len(pending) > MAX_LINE:
                        self._count("errors")
                        return
                    count = conn.recv_into(view, MAX_LINE)
                    if count == 0:
                        return
                    pending += view[:count]
                command = bytes(pending[:4]).upper()
                del pending[:end + 1]
                if command == b"QUIT":
                    conn.sendall(BYE)
                    return
                if command != b"DATA":
                    conn.sendall(UNKNOWN)
                    continue
                conn.sendall(GO_AHEAD)
                outcome = self._message(conn, view, pending, counter)
                if outcome is None:
                    self._count("aborted")
                    return
                self._count("messages" if outcome else "errors")
                conn.sendall(ACCEPTED if outcome else BAD_MESSAGE)

    def _message(self, conn: socket.socket, view: memoryview, pending: bytearray,
                 counter: list[int]) -> bool | None:
        """Read one message of ``message_bytes``: True if it ends with the terminator, False if
        not, None if the connection ended first.  ``pending``: bytes already read past DATA."""
        remaining = self.message_bytes
        early = bytes(pending[:remaining])
        del pending[:len(early)]
        remaining -= len(early)
        counter[0] += len(early)
        tail = early[-5:]
        lowat = 0
        recv_into = conn.recv_into
        try:
            while remaining:
                # The message's last bytes are read as they come: a low-water mark close to
                # what is left can wait for ever once the client has sent everything (seen on
                # loopback: the window opens no further while the reader waits).
                wanted = DATA_LOWAT if remaining > DATA_TAIL else 1
                if wanted != lowat:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, wanted)
                    lowat = wanted
                count = recv_into(view, min(remaining, len(view)))
                if count == 0:
                    return None
                remaining -= count
                counter[0] += count
                tail = (tail + bytes(view[max(0, count - 5):count]))[-5:]
        finally:
            if lowat != 1:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return tail == TERMINATOR

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"sessions": self.connections, "messages": self.messages,
                    "errors": self.errors, "aborted": self.aborted,
                    "bytes": sum(counter[0] for counter in self.per_connection)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("mode", choices=("smtp", "data"))
    parser.add_argument("--host", default="127.0.0.200")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--message-bytes", type=int, default=32 << 20,
                        help="data: the size of every message, terminator included")
    args = parser.parse_args(argv)
    backend.raise_nofile()
    if args.mode == "smtp":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_smtp(args.host, args.port))
    else:
        if args.message_bytes < len(TERMINATOR):
            parser.error("--message-bytes must hold at least the terminator")
        backend.serve_threads(args.host, args.port, _DataSink(args.message_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
