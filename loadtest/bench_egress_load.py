"""The egress scenarios' load: MTA-like clients that reach the sink through a SOCKS5 server or a
forward proxy, as cheaply as Python can, each load bounded in time and stopping by itself.

A client's *opening* is what it sends before the remote's banner, built once per source address
with the project's codecs (``ingress/protocol/socks5.py``, ``proxy_protocol.py``):

``socks5-connect``  greeting (no authentication), CONNECT to the sink: the exchange Dante
                    serves, and curl's; the proxy sends from its default source.
``socks5-bind``     greeting, BIND to the source, CONNECT: KumoMTA's exchange
                    (``ingress/demo/egress_clients.py``), one more round trip than the above.
``proxy-v2``        one PROXY v2 header naming the source and the sink, no reply: KumoMTA's
                    ``ha_proxy_server``, as HAProxy's ``accept-proxy`` with ``usesrc clientip``
                    and mta-ingress's forward listener read it.

Each SOCKS5 message waits for its reply, as kumod does.  Sessions alternate between the sources
they are given (one per client task), so that the proxy's leg to the sink spreads over them.
The runners are ``loadtest/load.py``'s, given this module's sessions: ``closed_loop``,
``hold_sessions`` and ``run_threads``, the measurement window bracketed by ``mark`` calls after
a warm-up.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

from ingress.protocol import proxy_protocol, socks5
from loadtest import load

PROTOCOLS = ("socks5-connect", "socks5-bind", "proxy-v2")
# The source port a forward-mode header names: HAProxy's usesrc clientip and mta-ingress's
# forward listener take only the address from it, so one fixed value saves a getsockname() per
# session.
HEADER_SOURCE_PORT = 40000
GREETING = socks5.encode_greeting([socks5.METHOD_NO_AUTH])
QUIT = b"QUIT\r\n"
DATA = b"DATA\r\n"
TERMINATOR = b"\r\n.\r\n"
QUIT_TIMEOUT = 10.0  # idle: held sessions closed by QUIT within this, by the client after it


@dataclass(frozen=True, slots=True)
class Opening:
    """What one client sends before the banner: ``messages`` in order; with ``replies``, each
    waits for the proxy's answer before the next goes (the first answer is the SOCKS5 method
    choice, the others are SOCKS5 replies)."""

    protocol: str
    source: str | None
    messages: tuple[bytes, ...]
    replies: bool


def opening(protocol: str, destination: tuple[str, int], source: str | None) -> Opening:
    if protocol == "socks5-connect":
        return Opening(protocol, None, (GREETING, socks5.encode_request(
            socks5.CMD_CONNECT, *destination)), True)
    if source is None:
        raise ValueError(f"{protocol} names its source")
    if protocol == "socks5-bind":
        return Opening(protocol, source, (
            GREETING, socks5.encode_request(socks5.CMD_BIND, source, 0),
            socks5.encode_request(socks5.CMD_CONNECT, *destination)), True)
    if protocol == "proxy-v2":
        return Opening(protocol, source, (proxy_protocol.encode_v2(
            (source, HEADER_SOURCE_PORT), destination),), False)
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def openings(protocol: str, destination: tuple[str, int],
             sources: tuple[str, ...]) -> list[Opening]:
    """One opening per source (just one for ``socks5-connect``, which names none)."""
    if protocol == "socks5-connect":
        return [opening(protocol, destination, None)]
    return [opening(protocol, destination, source) for source in sources]


def answer_length(data: bytes | bytearray, first: bool) -> int | None:
    """How long the SOCKS5 answer at the start of ``data`` is (the method choice when
    ``first``, else a reply: RFC 1928 section 6), or None while it is incomplete."""
    if first:
        return 2 if len(data) >= 2 else None
    if len(data) < 5:
        return None
    kind = data[3]
    if kind == socks5.ATYP_IPV4:
        length = 10
    elif kind == socks5.ATYP_IPV6:
        length = 22
    elif kind == socks5.ATYP_DOMAIN:
        length = 7 + data[4]
    else:
        raise ValueError(f"reply address type {kind}")
    return length if len(data) >= length else None


def answer_error(answer: bytes | bytearray, first: bool) -> str:
    """'' for a success, else the outcome to count."""
    if answer[0] != socks5.VERSION:
        return "socks-not-socks5"
    if first:
        return "" if answer[1] == socks5.METHOD_NO_AUTH else f"socks-method-{answer[1]}"
    return "" if answer[1] == socks5.REP_SUCCEEDED else f"socks-reply-{answer[1]}"


# --- the session, on the event loop --------------------------------------------------------------

_CLOSED_BEFORE = ("closed-in-negotiation", "closed-before-banner", "closed-before-221")


class _Session(load.HeldSession):
    """Opening, banner, then QUIT and 221 (``hold``: stop at the banner and stay).  ``_step``
    counts the answers had: below ``len(messages)`` the next is a SOCKS5 answer, then the
    banner, then (not holding) the 221.  The outcome is a string, so that failures are reported
    by kind."""

    __slots__ = ("_buffer", "_done", "_hold", "_messages", "_replies", "_step", "lost",
                 "transport")

    def __init__(self, plan: Opening, done: asyncio.Future[str], hold: bool = False) -> None:
        self._messages = plan.messages
        self._replies = len(plan.messages) if plan.replies else 0
        self._done = done
        self._hold = hold
        self._buffer = b""
        self._step = 0
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._replies:
            self.transport.write(self._messages[0])
        else:
            self.transport.write(b"".join(self._messages))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        replies = self._replies
        while self._step < replies:
            first = self._step == 0
            try:
                length = answer_length(buffer, first)
            except ValueError:
                self._finish("socks-bad-reply")
                return
            if length is None:
                self._buffer = buffer
                return
            error = answer_error(buffer[:length], first)
            if error:
                self._finish(error)
                return
            buffer = buffer[length:]
            self._step += 1
            if self._step < replies:
                self.transport.write(self._messages[self._step])  # type: ignore[union-attr]
        if not buffer.endswith(b"\r\n"):
            self._buffer = buffer
            return
        self._buffer = b""
        if self._step == replies:
            if not buffer.startswith(b"220 "):
                self._finish("bad-banner")
                return
            self._step += 1
            if self._hold:
                if not self._done.done():
                    self._done.set_result("ok")
                return
            self.transport.write(QUIT)  # type: ignore[union-attr]
        elif self._step == replies + 1 and not self._hold:
            self._finish("ok" if buffer.startswith(b"221 ") else "bad-quit-reply")

    def quit(self) -> None:
        """A held session: QUIT now, then close on the 221."""
        if self._hold and self.transport is not None and self._step == self._replies + 1:
            self._hold = False
            self.transport.write(QUIT)

    def _finish(self, outcome: str) -> None:
        self._step = self._replies + 2
        if not self._done.done():
            self._done.set_result(outcome)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        if not self._done.done():
            where = min(max(self._step - self._replies + 1, 0), 2)
            self._done.set_result("reset" if exc is not None else _CLOSED_BEFORE[where])


async def sessions(host: str, port: int, plans: list[Opening], *, concurrency: int,
                   warmup: float, duration: float, mark: load.Marker) -> load.SessionsResult:
    """``concurrency`` clients, each running sessions back to back for ``warmup + duration``
    (``load.closed_loop``); client ``i`` uses ``plans[i % len(plans)]``."""
    return await load.closed_loop(host, port, [partial(_Session, plan) for plan in plans],
                                  concurrency=concurrency, warmup=warmup, duration=duration,
                                  mark=mark)


# --- idle ----------------------------------------------------------------------------------------

Memory = dict[str, tuple[int, int]]  # part of the proxy ("total", ...) -> (RSS, PSS) in KiB


@dataclass(slots=True)
class IdleResult:
    target: int
    established: int
    failed: Counter[str]
    lost_while_holding: int
    sink_sessions: int  # sessions the sink saw opened while connecting
    before: Memory
    holding: Memory  # per part, the highest sample taken while holding
    processes_before: int
    processes_holding: int
    open_seconds: float
    hold_seconds: float


async def _quit_all(held: list[_Session]) -> None:
    """End held sessions as SMTP does: QUIT, 221, and the server closes first, so that the
    TIME-WAIT of the proxy's leg to the sink is the sink's (a proxy that binds its source
    before connecting, as Dante does, would otherwise find that address's ports taken for a
    minute); what has not closed within QUIT_TIMEOUT is closed from here."""
    for session in held:
        session.quit()
    for _ in range(int(QUIT_TIMEOUT / 0.05)):
        if all(session.lost for session in held):
            break
        await asyncio.sleep(0.05)
    await load.close_all(held)


async def idle(host: str, port: int, plans: list[Opening], *, count: int, batch: int,
               hold: float, memory: Callable[[], tuple[Memory, int]],
               sink_sessions: Callable[[], int]) -> IdleResult:
    """Open ``count`` relayed sessions, ``batch`` at a time, each up to the sink's banner; hold
    them ``hold`` seconds, sampling the proxy's memory (``memory``: per part, and how many
    processes it has) every half second; close them (``load.hold_sessions``)."""
    before, processes_before = memory()
    holding: Memory = {}
    processes = 0

    def sample() -> None:
        nonlocal processes
        parts, processes_now = memory()
        processes = max(processes, processes_now)
        for part, (rss, pss) in parts.items():
            old = holding.get(part, (0, 0))
            holding[part] = (max(old[0], rss), max(old[1], pss))

    held = await load.hold_sessions(
        host, port, [partial(_Session, plan, hold=True) for plan in plans], count=count,
        batch=batch, hold=hold, sample=sample, backend_sessions=sink_sessions, close=_quit_all)
    return IdleResult(target=count, established=held.established, failed=held.failed,
                      lost_while_holding=held.lost_while_holding,
                      sink_sessions=held.backend_sessions, before=before, holding=holding,
                      processes_before=processes_before, processes_holding=processes,
                      open_seconds=held.open_seconds, hold_seconds=hold)


# --- bulk: blocking clients in threads ---------------------------------------------------------


def message_chunks(message_bytes: int, chunk_size: int) -> tuple[memoryview, int, bytes]:
    """A message of ``message_bytes`` (terminator included) as ``count`` sends of ``chunk`` then
    ``last``, which ends with CRLF.CRLF: message-like 78-byte lines, none starting with a dot."""
    if message_bytes < len(TERMINATOR) or chunk_size < 1:
        raise ValueError("a message holds at least its terminator, a chunk at least a byte")
    chunk_size = min(chunk_size, message_bytes)
    body = load.body_chunk(chunk_size)
    count, rest = divmod(message_bytes - len(TERMINATOR), chunk_size)
    return body, count, bytes(body[:rest]) + TERMINATOR


def _read_answer(sock: socket.socket, pending: bytearray, first: bool) -> str:
    while (length := answer_length(pending, first)) is None:
        data = sock.recv(512)
        if not data:
            return "closed-in-negotiation"
        pending += data
    answer = bytes(pending[:length])
    del pending[:length]
    return answer_error(answer, first)


def _read_line(sock: socket.socket, pending: bytearray, expect: bytes) -> str:
    while (end := pending.find(b"\n")) < 0:
        data = sock.recv(512)
        if not data:
            return f"closed-before-{expect.decode().strip()}"
        pending += data
    line = bytes(pending[:end + 1])
    del pending[:end + 1]
    return "" if line.startswith(expect) else f"bad-reply-{line[:3].decode(errors='replace')}"


@dataclass(slots=True)
class _BulkClient:
    sent: int = 0
    messages: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def _bulk_session(sock: socket.socket, plan: Opening, chunks: tuple[memoryview, int, bytes],
                  stop: threading.Event, client: _BulkClient) -> str:
    pending = bytearray()
    for index, message in enumerate(plan.messages):
        sock.sendall(message)
        if plan.replies:
            error = _read_answer(sock, pending, index == 0)
            if error:
                return error
    if error := _read_line(sock, pending, b"220 "):
        return error
    sock.sendall(DATA)
    if error := _read_line(sock, pending, b"354 "):
        return error
    chunk, count, last = chunks
    sendall = sock.sendall
    size = len(chunk)
    for _ in range(count):
        if stop.is_set():
            return "stopped"
        sendall(chunk)
        client.sent += size
    sendall(last)
    client.sent += len(last)
    if error := _read_line(sock, pending, b"250 "):
        return error
    client.messages += 1
    sock.sendall(QUIT)
    return _read_line(sock, pending, b"221 ")


def _bulk_loop(host: str, port: int, plan: Opening, chunks: tuple[memoryview, int, bytes],
               stop: threading.Event, client: _BulkClient) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=load.ATTEMPT_TIMEOUT) as sock:
                outcome = _bulk_session(sock, plan, chunks, stop, client)
        except OSError as error:
            outcome = load.error_name(error)
        if outcome and outcome != "stopped":
            client.errors[outcome] += 1
            time.sleep(0.05)  # a refusing proxy must not turn this into a busy loop


@dataclass(slots=True)
class BulkResult:
    window: load.Window
    sent: int  # bytes of message data handed to the kernel by the clients inside the window
    received: int  # bytes of message data the sink received inside the window: the figure
    messages: int  # messages the sink accepted inside the window
    errors: Counter[str]


def bulk(host: str, port: int, plans: list[Opening], *, sessions: int, message_bytes: int,
         chunk_size: int, warmup: float, duration: float, mark: load.Marker) -> BulkResult:
    """``sessions`` clients, each sending messages of ``message_bytes`` back to back, a session
    per message (opening, banner, DATA, the message, 250, QUIT); blocking sends from threads,
    which release the GIL while the kernel copies.  At the window's end the clients stop, in
    the middle of a message if need be."""
    chunks = message_chunks(message_bytes, chunk_size)
    stop = threading.Event()
    clients = [_BulkClient() for _ in range(sessions)]
    threads = [threading.Thread(target=_bulk_loop, daemon=True, name=f"egress-bulk-{index}",
                                args=(host, port, plans[index % len(plans)], chunks, stop,
                                      client))
               for index, client in enumerate(clients)]
    window, sent = load.run_threads(threads, stop, lambda: sum(client.sent for client in clients),
                                    warmup=warmup, duration=duration, mark=mark)
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    return BulkResult(window=window, sent=sent, received=window.backend_delta("bytes"),
                      messages=window.backend_delta("messages"), errors=errors)
