"""The load generators of the three scenarios.  Each runs for a bounded time and stops by itself.
Their runners (``closed_loop``, ``hold_sessions``, ``run_threads``) also drive the egress
benchmark's sessions (``loadtest/bench_egress_load.py``).

The measurement window is bracketed by two *marks* taken by the caller's ``mark`` function (CPU
time of the proxy, load generator and backend, and the backend's counters), after a warm-up:
the figures describe a steady state, not connection ramp-up or the first allocations.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import resource
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar, cast

from loadtest import procstat

# A session or connection attempt that takes longer than this is counted as an error and
# abandoned, so that a stalled proxy cannot stretch a measurement beyond its bound.
ATTEMPT_TIMEOUT = 10.0
# Threads and tasks still running when the window ends get this long to notice and stop.
STOP_TIMEOUT = ATTEMPT_TIMEOUT + 5.0


@dataclass(frozen=True, slots=True)
class Mark:
    cpu: procstat.CpuSample
    backend: dict[str, int]


Marker = Callable[[], Mark]


@dataclass(frozen=True, slots=True)
class Window:
    start: Mark
    end: Mark

    @property
    def seconds(self) -> float:
        return self.end.cpu.at - self.start.cpu.at

    def cpu_seconds(self, name: str) -> float:
        return self.end.cpu.seconds[name] - self.start.cpu.seconds[name]

    def utilisation(self) -> dict[str, float]:
        return procstat.utilisation(self.start.cpu, self.end.cpu)

    def backend_delta(self, key: str) -> int:
        return self.end.backend.get(key, 0) - self.start.backend.get(key, 0)


def error_name(error: OSError) -> str:
    """``ECONNREFUSED`` and the like: how a failed attempt is counted."""
    if error.errno is not None and error.errno in errno.errorcode:
        return errno.errorcode[error.errno]
    return type(error).__name__


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of ``values`` (seconds) in milliseconds; {} for fewer than two."""
    if len(values) < 2:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p90": cuts[89] * 1000, "p99": cuts[98] * 1000}


# A session's protocol, built for one connection from the future it sets to the session's outcome:
# "ok" for a complete session, else what went wrong ("bad-banner", "reset", ...).
SessionFactory = Callable[[asyncio.Future[str]], asyncio.Protocol]


# --- sessions ------------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionsResult:
    window: Window
    completed: int  # sessions that ended with 221 inside the window
    completed_total: int
    errors: Counter[str]  # over the whole run, warm-up and stop included
    latency_ms: dict[str, float]


class _SmtpSession(asyncio.Protocol):
    """Banner, QUIT, 221: the shortest complete SMTP session.  The outcome is a string so that
    failures are reported by kind."""

    __slots__ = ("_buffer", "_done", "_state", "_transport")

    def __init__(self, done: asyncio.Future[str]) -> None:
        self._done = done
        self._buffer = b""
        self._state = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not buffer.endswith(b"\r\n"):
            self._buffer = buffer
            return
        self._buffer = b""
        if self._state == 0:
            if buffer.startswith(b"220 "):
                self._state = 1
                self._transport.write(b"QUIT\r\n")  # type: ignore[union-attr]
            else:
                self._finish("bad-banner")
        elif self._state == 1:
            self._finish("ok" if buffer.startswith(b"221 ") else "bad-quit-reply")

    def _finish(self, outcome: str) -> None:
        self._state = 2
        if not self._done.done():
            self._done.set_result(outcome)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result("reset" if exc is not None else "closed-before-221")


@dataclass(slots=True)
class _Progress:
    completed: int = 0
    measuring: bool = False
    stop: bool = False


async def sessions(host: str, port: int, *, concurrency: int, warmup: float, duration: float,
                   mark: Marker) -> SessionsResult:
    """Banner, QUIT, 221 back to back from ``concurrency`` clients: ``closed_loop``."""
    return await closed_loop(host, port, [_SmtpSession], concurrency=concurrency, warmup=warmup,
                             duration=duration, mark=mark)


async def closed_loop(host: str, port: int, factories: Sequence[SessionFactory], *,
                      concurrency: int, warmup: float, duration: float,
                      mark: Marker) -> SessionsResult:
    """``concurrency`` clients, each running sessions back to back (the next once the last has
    ended) for ``warmup + duration``; client ``i`` builds its sessions with
    ``factories[i % len(factories)]``.  A session is counted when its outcome is "ok", and its
    latency (connect to outcome) when it ends inside the window; any other outcome, or an
    attempt over ATTEMPT_TIMEOUT, is counted as an error by kind."""
    loop = asyncio.get_running_loop()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    state = _Progress()

    async def client(factory: SessionFactory) -> None:
        while not state.stop:
            started = time.perf_counter()  # loop.time() is cached to the millisecond
            done: asyncio.Future[str] = loop.create_future()
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT):
                    await loop.create_connection(partial(factory, done), host, port)
                    outcome = await done
            except OSError as error:
                outcome = f"connect-{error_name(error)}"
            except TimeoutError:
                outcome = "timeout"
            if outcome != "ok":
                errors[outcome] += 1
                continue
            state.completed += 1
            if state.measuring:
                latencies.append(time.perf_counter() - started)

    tasks = [loop.create_task(client(factories[index % len(factories)]))
             for index in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        start, completed_at_start = mark(), state.completed
        state.measuring = True
        await asyncio.sleep(duration)
        end, completed_at_end = mark(), state.completed
        state.measuring = False
        state.stop = True
        await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return SessionsResult(
        window=Window(start, end),
        completed=completed_at_end - completed_at_start,
        completed_total=state.completed,
        errors=errors,
        latency_ms=percentiles(latencies),
    )


# --- bulk ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class BulkResult:
    window: Window
    sent: int  # bytes handed to the kernel by the senders inside the window
    received: int  # bytes the sink received inside the window: what the figure is made of
    errors: Counter[str]


@dataclass(slots=True)
class _Sender:
    sent: int = 0
    error: str = ""
    connected: threading.Event = field(default_factory=threading.Event)


def body_chunk(size: int) -> memoryview:
    """``size`` bytes of message-like content (76-character lines, none starting with a dot);
    the relays do not look at it, but a body that looks like mail keeps the benchmark honest
    should one ever inspect it."""
    line = b"".join(bytes([33 + (i % 90)]) for i in range(76)) + b"\r\n"
    return memoryview((line * (size // len(line) + 1))[:size])


def run_threads(threads: Sequence[threading.Thread], stop: threading.Event,
                sent: Callable[[], int], *, warmup: float, duration: float, mark: Marker,
                started: Callable[[], None] | None = None) -> tuple[Window, int]:
    """Start ``threads`` (then call ``started``), let them run ``warmup`` seconds, then mark a
    window of ``duration``; set ``stop`` and join them (STOP_TIMEOUT for all), however the
    window ended.  Returns the window and how much ``sent()`` grew inside it."""
    try:
        for thread in threads:
            thread.start()
        if started is not None:
            started()
        time.sleep(warmup)
        start, sent_at_start = mark(), sent()
        time.sleep(duration)
        end, sent_at_end = mark(), sent()
    finally:
        stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    return Window(start, end), sent_at_end - sent_at_start


def _send(host: str, port: int, chunk: memoryview, stop: threading.Event,
          sender: _Sender) -> None:
    try:
        with socket.create_connection((host, port), timeout=ATTEMPT_TIMEOUT) as sock:
            sender.connected.set()
            sendall = sock.sendall
            size = len(chunk)
            while not stop.is_set():
                sendall(chunk)
                sender.sent += size
    except OSError as error:
        sender.error = error_name(error)
    finally:
        sender.connected.set()


def bulk(host: str, port: int, *, connections: int, chunk_size: int, warmup: float,
         duration: float, mark: Marker) -> BulkResult:
    """Blocking sends from threads: the GIL is released while the kernel copies, so one Python
    process can push more than a relay can carry."""
    chunk = body_chunk(chunk_size)
    stop = threading.Event()
    senders = [_Sender() for _ in range(connections)]
    threads = [threading.Thread(target=_send, args=(host, port, chunk, stop, sender),
                                daemon=True, name=f"bulk-{index}")
               for index, sender in enumerate(senders)]

    def connected() -> None:
        for sender in senders:
            sender.connected.wait(ATTEMPT_TIMEOUT)

    window, sent = run_threads(threads, stop, lambda: sum(sender.sent for sender in senders),
                               warmup=warmup, duration=duration, mark=mark, started=connected)
    errors = Counter(sender.error for sender in senders if sender.error)
    return BulkResult(window=window, sent=sent, received=window.backend_delta("bytes"),
                      errors=errors)


# --- idle ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class IdleResult:
    target: int
    established: int
    failed: Counter[str]
    lost_while_holding: int
    backend_sessions: int  # sessions the backend saw opened while connecting
    rss_before_kib: int
    rss_holding_kib: int  # the highest sample taken while holding
    pss_before_kib: int
    pss_holding_kib: int
    open_seconds: float
    hold_seconds: float


class HeldSession(asyncio.Protocol):
    """A session that can be held open past its outcome: ``transport`` while connected,
    ``lost`` once the connection is gone."""

    __slots__ = ()
    transport: asyncio.Transport | None
    lost: bool


H = TypeVar("H", bound=HeldSession)


class _IdleClient(HeldSession):
    __slots__ = ("_buffer", "banner", "lost", "transport")

    def __init__(self, banner: asyncio.Future[str]) -> None:
        self.banner = banner
        self.lost = False
        self._buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.banner.done():
            return
        self._buffer += data
        if self._buffer.endswith(b"\r\n"):
            self.banner.set_result("ok" if self._buffer.startswith(b"220 ") else "bad-banner")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        if not self.banner.done():
            self.banner.set_result("reset" if exc is not None else "closed-before-banner")


async def _open_one(host: str, port: int,
                    factory: Callable[[asyncio.Future[str]], H]) -> tuple[str, H | None]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    session: H | None = None
    try:
        async with asyncio.timeout(ATTEMPT_TIMEOUT):
            _, session = await loop.create_connection(partial(factory, done), host, port)
            outcome = await done
    except OSError as error:
        return f"connect-{error_name(error)}", None
    except TimeoutError:
        outcome = "timeout"
    if outcome != "ok" and session is not None and session.transport is not None:
        session.transport.abort()
    return outcome, session


@dataclass(slots=True)
class Holding:
    established: int  # held from the end of the opening to the end of the hold
    failed: Counter[str]  # by outcome, "closed-after-banner" for those lost before the hold
    lost_while_holding: int
    backend_sessions: int  # sessions the backend saw opened while connecting
    open_seconds: float


async def hold_sessions(host: str, port: int,
                        factories: Sequence[Callable[[asyncio.Future[str]], H]], *, count: int,
                        batch: int, hold: float, sample: Callable[[], None],
                        backend_sessions: Callable[[], int],
                        close: Callable[[list[H]], Awaitable[None]]) -> Holding:
    """Open ``count`` sessions, ``batch`` at a time (below the accept backlogs), session ``i``
    with ``factories[i % len(factories)]``, each up to its outcome ("ok": held; the others'
    connections are aborted); hold them ``hold`` seconds, calling ``sample`` once they are all
    open, then every half second and at the end; then ``close`` those held, however this
    ended."""
    loop = asyncio.get_running_loop()
    failed: Counter[str] = Counter()
    held: list[H] = []
    sessions_before = backend_sessions()
    opened_at = loop.time()
    try:
        for first in range(0, count, batch):
            size = min(batch, count - first)
            for outcome, session in await asyncio.gather(
                    *(_open_one(host, port, factories[(first + i) % len(factories)])
                      for i in range(size))):
                if outcome == "ok" and session is not None:
                    held.append(session)
                else:
                    failed[outcome] += 1
        open_seconds = loop.time() - opened_at
        opened_sessions = backend_sessions() - sessions_before
        lost_before_hold = sum(session.lost for session in held)
        if lost_before_hold:
            failed["closed-after-banner"] += lost_before_hold
        hold_until = loop.time() + hold
        while True:
            sample()
            remaining = hold_until - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(0.5, remaining))
        lost = sum(session.lost for session in held) - lost_before_hold
        established = len(held) - lost_before_hold
    finally:
        await close(held)
    return Holding(established=established, failed=failed, lost_while_holding=lost,
                   backend_sessions=opened_sessions, open_seconds=open_seconds)


async def close_all(sessions: Sequence[HeldSession]) -> None:
    """Close the connections of ``sessions`` still open."""
    for session in sessions:
        if session.transport is not None:
            session.transport.close()
    # Let the close callbacks run, so the transports are gone before the loop closes.
    await asyncio.sleep(0.2)


async def idle(host: str, port: int, *, count: int, batch: int, hold: float,
               proxy_memory: Callable[[], tuple[int, int]],
               backend_sessions: Callable[[], int]) -> IdleResult:
    """Open ``count`` SMTP connections through the proxy, ``batch`` at a time (below the accept
    backlogs), each up to its 220 banner; hold them, sampling the proxy's memory (RSS, PSS)
    every half second; close them (``hold_sessions``)."""
    rss_before, pss_before = proxy_memory()
    holding = [0, 0]  # the highest RSS and PSS sampled

    def sample() -> None:
        rss, pss = proxy_memory()
        holding[:] = max(holding[0], rss), max(holding[1], pss)

    held = await hold_sessions(host, port, [_IdleClient], count=count, batch=batch, hold=hold,
                               sample=sample, backend_sessions=backend_sessions,
                               close=close_all)
    return IdleResult(
        target=count,
        established=held.established,
        failed=held.failed,
        lost_while_holding=held.lost_while_holding,
        backend_sessions=held.backend_sessions,
        rss_before_kib=rss_before,
        rss_holding_kib=holding[0],
        pss_before_kib=pss_before,
        pss_holding_kib=holding[1],
        open_seconds=held.open_seconds,
        hold_seconds=hold,
    )


# --- http ----------------------------------------------------------------------------------------

WRK = "/usr/bin/wrk"
# Printed by wrk at the end of its run: every figure the bench needs, as one JSON line.
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(slots=True)
class WrkResult:
    window: Window
    loadgen_cpu_s: float  # wrk's own user + system time (it has exited when the window ends)
    figures: dict[str, int]  # from WRK_SCRIPT
    errors: Counter[str]
    argv: list[str]


def wrk(argv: list[str], *, warmup: float, duration: float, mark: Marker) -> WrkResult:
    """``argv`` without ``-d``: a warm-up run of ``warmup`` seconds, then the measured run.  The
    window is the measured wrk process's life, whose CPU time comes from ``wait4``: it is gone
    when the end mark is taken."""
    if warmup > 0:
        subprocess.run([*argv, "-d", f"{max(1, round(warmup))}s"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=warmup + ATTEMPT_TIMEOUT, check=False)
    measured = [*argv, "-d", f"{max(1, round(duration))}s"]
    _children_cpu()  # forget the warm-up run
    start = mark()
    process = subprocess.Popen(measured, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=duration + ATTEMPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    # communicate() has reaped the child: its rusage is in RUSAGE_CHILDREN's growth.
    end = mark()
    usage = _children_cpu()
    errors: Counter[str] = Counter()
    figures: dict[str, int] = {}
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("{"):
            figures = json.loads(line)
    if not figures:
        errors[f"wrk-failed: {stderr.decode(errors='replace').strip()[:200] or process.returncode}"
               ] += 1
    for kind in ("connect", "read", "write", "status", "timeout"):
        if figures.get(kind):
            errors["non-2xx/3xx" if kind == "status" else f"socket-{kind}"] += figures[kind]
    return WrkResult(Window(start, end), usage, figures, errors, measured)


OPENSSL = "/usr/bin/openssl"
# s_time's first summary line: handshakes completed, over its own run.
S_TIME_COUNT = re.compile(rb"^(\d+) connections in [\d.]+s;", re.MULTILINE)


@dataclass(slots=True)
class HandshakeResult:
    window: Window
    loadgen_cpu_s: float  # the s_time processes' user + system time (reaped at the window's end)
    handshakes: int
    errors: Counter[str]
    argv: list[str]  # one client's command; ``clients`` of them ran at once


def s_time(argv: list[str], *, clients: int, warmup: float, duration: float,
           mark: Marker) -> HandshakeResult:
    """``clients`` copies of ``argv`` (``openssl s_time -new -connect ...`` without ``-time``) at
    once: a warm-up run of ``warmup`` seconds, then the measured one.  One s_time is one
    connection at a time and spends more CPU verifying than a server does signing, so only
    several of them keep one proxy core busy.  The window spans the measured processes' lives:
    s_time counts whole seconds, the marks do not."""
    if warmup > 0:
        _run_clients([*argv, "-time", str(max(1, round(warmup)))], clients, warmup)
    measured = [*argv, "-time", str(max(1, round(duration)))]
    _children_cpu()  # forget the warm-up run
    start = mark()
    outputs = _run_clients(measured, clients, duration)
    end = mark()
    usage = _children_cpu()
    errors: Counter[str] = Counter()
    handshakes = 0
    for returncode, stdout, stderr in outputs:
        found = S_TIME_COUNT.search(stdout)
        if found is None or returncode != 0:
            detail = (stderr.decode(errors="replace").strip().splitlines() or [str(returncode)])
            errors[f"s_time-failed: {detail[-1][:200]}"] += 1
        if found is not None:
            handshakes += int(found.group(1))
    return HandshakeResult(Window(start, end), usage, handshakes, errors, measured)


def _run_clients(argv: list[str], clients: int, duration: float) -> list[tuple[int, bytes, bytes]]:
    """``clients`` processes of ``argv`` at once; each one's exit status, stdout and stderr.
    Their output goes to files: s_time prints a character per connection, which would fill a
    pipe not read while another process is waited for."""
    with contextlib.ExitStack() as stack:
        files = [(stack.enter_context(tempfile.TemporaryFile()),
                  stack.enter_context(tempfile.TemporaryFile())) for _ in range(clients)]
        processes = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
                     for out, err in files]
        deadline = time.monotonic() + duration + ATTEMPT_TIMEOUT
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        outputs = []
        for process, (out, err) in zip(processes, files, strict=True):
            out.seek(0)
            err.seek(0)
            outputs.append((process.returncode, out.read(), err.read()))
        return outputs


_children_seen = 0.0


def _children_cpu() -> float:
    """CPU seconds of reaped children since the previous call (the last wrk run)."""
    global _children_seen
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta, _children_seen = total - _children_seen, total
    return delta


@dataclass(slots=True)
class RateResult:
    window: Window
    rate: float  # requests per second asked for
    completed: int  # responses to requests scheduled inside the window
    errors: Counter[str]
    latency_ms: dict[str, float]  # from each request's scheduled time, not its send time
    max_queue: int  # requests that waited for a free connection at once, at most


class _HttpClient(asyncio.Protocol):
    """One request in flight on a keep-alive connection; a response is complete when its
    Content-Length bytes have arrived after the head."""

    __slots__ = ("_buffer", "_idle", "_need", "_on_done", "_request", "_scheduled", "_status",
                 "_transport", "lost")

    def __init__(self, request: bytes, on_done: Callable[[_HttpClient, float, str], None],
                 idle: deque[_HttpClient]) -> None:
        self._request = request
        self._on_done = on_done
        self._idle = idle
        self._buffer = b""
        self._need = -1
        self._scheduled = 0.0
        self._status = b""
        self._transport: asyncio.Transport | None = None
        self.lost = False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._idle.append(self)

    def send(self, scheduled: float) -> None:
        self._scheduled = scheduled
        self._transport.write(self._request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if self._need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            head = buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                              else None]) if at >= 0 else 0
            self._need = end + 4 + length
            self._status = buffer[9:12]
        if len(buffer) < self._need:
            self._buffer = buffer
            return
        self._buffer = buffer[self._need:]
        self._need = -1
        ok = "ok" if self._status[:1] in (b"2", b"3") else f"status-{self._status.decode()}"
        self._on_done(self, self._scheduled, ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self in self._idle:
            self._idle.remove(self)
        else:
            self._on_done(self, self._scheduled, "reset" if exc is not None else "closed")


async def http_rate(host: str, port: int, *, path: str, rate: float, connections: int,
                    warmup: float, duration: float, mark: Marker) -> RateResult:
    """Open-loop load: request i is due at ``start + i / rate`` whatever happened to the others
    (a request due while every connection is busy waits in a queue, and that wait counts in
    its latency), so that a slow proxy cannot slow the load down and hide its own latency: the
    coordinated omission that closed-loop clients such as wrk suffer from."""
    loop = asyncio.get_running_loop()
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\n\r\n"
               .encode())
    idle: deque[_HttpClient] = deque()
    queue: deque[float] = deque()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    window = [float("inf"), float("inf")]
    completed = [0, 0]  # [inside the window, max queue]
    stopping = [False]
    drained = asyncio.Event()
    reconnecting: set[asyncio.Task[None]] = set()

    def on_done(client: _HttpClient, scheduled: float, outcome: str) -> None:
        now = time.perf_counter()
        if outcome != "ok":
            errors[outcome] += 1
        elif window[0] <= scheduled < window[1]:
            completed[0] += 1
            latencies.append(now - scheduled)
        if client.lost:
            if not stopping[0]:
                task = loop.create_task(_connect())
                reconnecting.add(task)
                task.add_done_callback(reconnecting.discard)
            return
        if queue:
            client.send(queue.popleft())
        else:
            idle.append(client)
            if stopping[0] and len(idle) >= connections:
                drained.set()

    async def _connect() -> None:
        try:
            await loop.create_connection(partial(_HttpClient, request, on_done, idle), host, port)
        except OSError as error:
            errors[f"connect-{error_name(error)}"] += 1

    await asyncio.gather(*(_connect() for _ in range(connections)))
    begin = time.perf_counter()
    deadline = begin + warmup + duration
    sent = 0
    start = end = None
    while True:
        now = time.perf_counter()
        if start is None and now >= begin + warmup:
            start, window[0] = mark(), begin + sent / rate
        if now >= deadline:
            break
        due = int((now - begin) * rate)
        while sent < due:
            scheduled = begin + sent / rate
            sent += 1
            if idle:
                idle.popleft().send(scheduled)
            else:
                queue.append(scheduled)
        completed[1] = max(completed[1], len(queue))
        await asyncio.sleep(0.0005)
    window[1] = begin + sent / rate
    # Wait for the window's requests (bounded), then mark: the CPU of their answers counts.
    stopping[0] = True
    if queue or len(idle) < connections:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), ATTEMPT_TIMEOUT)
    end = mark()
    for client in list(idle):
        client.close()
    await asyncio.sleep(0.05)
    assert start is not None
    if queue:
        errors["unanswered"] += len(queue)
    return RateResult(Window(start, end), rate, completed[0], errors, percentiles(latencies),
                      completed[1])
