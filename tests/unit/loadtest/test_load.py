"""loadtest/load.py's runners, shared by the HAProxy and the egress benchmarks: the closed loop of
sessions, the opening and holding of idle sessions, and the threads of a bulk load, each against
a small server on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import cast

from loadtest import load, procstat


def mark() -> load.Mark:
    return load.Mark(procstat.CpuSample(time.monotonic(), {}, {}, {}), {})


class SmtpServer(asyncio.Protocol):
    """220 (every ``bad``-th connection: 554), then 221 and close on QUIT."""

    accepted = 0
    bad = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        SmtpServer.accepted += 1
        bad = SmtpServer.bad and SmtpServer.accepted % SmtpServer.bad == 0
        self.transport.write(b"554 no\r\n" if bad else b"220 test\r\n")

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"QUIT"):
            self.transport.write(b"221 bye\r\n")
            self.transport.close()


async def serve(bad: int = 0) -> tuple[asyncio.Server, int]:
    SmtpServer.accepted, SmtpServer.bad = 0, bad
    server = await asyncio.get_running_loop().create_server(SmtpServer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_closed_loop_runs_each_clients_factory_and_measures_the_window() -> None:
    built: Counter[str] = Counter()

    def factory(name: str) -> load.SessionFactory:
        def build(done: asyncio.Future[str]) -> asyncio.Protocol:
            built[name] += 1
            return load._SmtpSession(done)
        return build

    async def run() -> load.SessionsResult:
        server, port = await serve()
        async with server:
            return await load.closed_loop("127.0.0.1", port, [factory("a"), factory("b")],
                                          concurrency=3, warmup=0.05, duration=0.2, mark=mark)

    result = asyncio.run(run())
    assert not result.errors
    assert 0 < result.completed <= result.completed_total == sum(built.values())
    assert built["a"]  # clients 0 and 2
    assert built["b"]  # client 1
    assert set(result.latency_ms) == {"p50", "p90", "p99"}
    assert result.window.seconds >= 0.2


def test_closed_loop_counts_failed_sessions_by_kind() -> None:
    async def run() -> load.SessionsResult:
        server, port = await serve(bad=1)
        async with server:
            return await load.sessions("127.0.0.1", port, concurrency=2, warmup=0.0,
                                       duration=0.1, mark=mark)

    result = asyncio.run(run())
    assert result.completed == result.completed_total == 0
    assert set(result.errors) == {"bad-banner"}
    assert result.latency_ms == {}


def test_hold_sessions_opens_in_batches_samples_while_holding_and_closes() -> None:
    samples: list[float] = []
    closed: list[int] = []

    async def close(held: list[load._IdleClient]) -> None:
        closed.append(len(held))
        await load.close_all(held)

    async def run() -> load.Holding:
        server, port = await serve(bad=2)  # connections 2 and 4 of 5 get a 554
        async with server:
            return await load.hold_sessions(
                "127.0.0.1", port, [load._IdleClient], count=5, batch=2, hold=0.1,
                sample=lambda: samples.append(time.monotonic()),
                backend_sessions=lambda: SmtpServer.accepted, close=close)

    held = asyncio.run(run())
    assert held.established == 3
    assert held.failed == {"bad-banner": 2}
    assert held.lost_while_holding == 0
    assert held.backend_sessions == 5
    assert closed == [3]
    assert len(samples) >= 2  # once all are open, and at the end of the hold
    assert samples[-1] - samples[0] >= 0.1


def test_run_threads_marks_a_window_after_the_warmup_and_stops_the_threads() -> None:
    stop = threading.Event()
    sent = [0]
    started: list[bool] = []

    def work() -> None:
        while not stop.is_set():
            sent[0] += 1
            time.sleep(0.001)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(2)]
    window, in_window = load.run_threads(threads, stop, lambda: sent[0], warmup=0.02,
                                         duration=0.1, mark=mark,
                                         started=lambda: started.append(True))
    assert started == [True]
    assert stop.is_set()
    assert not any(thread.is_alive() for thread in threads)
    assert 0 < in_window < sent[0]
    assert window.seconds >= 0.1


def test_body_chunk_is_mail_like_lines() -> None:
    chunk = bytes(load.body_chunk(200))
    assert len(chunk) == 200
    assert chunk[76:78] == b"\r\n"
    assert b"\n." not in chunk


def test_error_name() -> None:
    assert load.error_name(ConnectionRefusedError(111, "refused")) == "ECONNREFUSED"
    assert load.error_name(TimeoutError()) == "TimeoutError"
