"""ingress.proxy.sockets: the epoll engine's transports over real loopback sockets, on uvloop.

What the sessions rely on: bytes and EOF in order, even when they arrive together; writes that a
peer does not take are buffered, pause the protocol past the high-water mark and resume it once
written; paused reading resumes with what came meanwhile; close() writes what is buffered first;
connection_lost comes once, after the call that closed; a refused or cancelled connect leaves no
descriptor behind."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from ingress.proxy.sockets import (
    Engine,
    SocketListener,
    SocketTransport,
    connect_socket,
    create_connection,
)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.transport: SocketTransport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.keep_open = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> bool:
        self.events.append(("eof", None))
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append(("pause_writing", None))

    def resume_writing(self) -> None:
        self.events.append(("resume_writing", None))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set_result(exc)

    def received(self) -> bytes:
        return b"".join(item for kind, item in self.events if kind == "data")


def run(test: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(test(), 20))


async def until(condition: Callable[[], bool]) -> None:
    # the conditions are the protocol's records, which nothing signals: polled
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def accepted_pair(engine: Engine) -> tuple[Recorder, socket.socket, SocketListener]:
    """A SocketListener's accepted connection (its protocol) and the plain client socket."""
    protocols: list[Recorder] = []

    def factory() -> Recorder:
        protocols.append(Recorder())
        return protocols[-1]

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listener = SocketListener(engine, listening, factory, 16)
    client = socket.create_connection(listening.getsockname())
    client.setblocking(False)
    await until(lambda: bool(protocols))
    return protocols[0], client, listener


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_bytes_and_eof_that_arrive_together_come_in_order() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        protocol, client, listener = await accepted_pair(engine)
        client.sendall(b"x" * 100_000)
        client.shutdown(socket.SHUT_WR)
        await until(lambda: protocol.events[-1][0] == "eof")
        assert protocol.received() == b"x" * 100_000
        assert [kind for kind, _ in protocol.events].count("eof") == 1
        # kept open (eof_received said so): the other direction still works
        assert protocol.transport is not None
        protocol.transport.write(b"reply")
        await until(lambda: _recv(client) == b"reply")
        protocol.transport.close()
        assert await protocol.lost is None
        client.close()
        listener.close()
        engine.close()

    run(scenario)


def test_eof_received_false_closes_the_transport() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        protocol, client, listener = await accepted_pair(engine)
        protocol.keep_open = False
        client.shutdown(socket.SHUT_WR)
        assert await protocol.lost is None
        assert protocol.transport is not None
        assert protocol.transport.is_closing()
        client.close()
        listener.close()
        engine.close()

    run(scenario)


def test_a_peer_that_does_not_read_pauses_the_writer_and_gets_everything_later() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        protocol, client, listener = await accepted_pair(engine)
        transport = protocol.transport
        assert transport is not None
        transport.set_write_buffer_limits(high=64 * 1024)
        payload = bytes(range(256)) * 32 * 1024  # 8 MiB: more than the socket buffers hold
        transport.write(payload)
        assert ("pause_writing", None) in protocol.events
        assert transport.get_write_buffer_size() > 0
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.get_running_loop().sock_recv(client, 1 << 20)
        assert bytes(got) == payload
        await until(lambda: ("resume_writing", None) in protocol.events)
        assert transport.get_write_buffer_size() == 0
        transport.close()
        await protocol.lost
        client.close()
        listener.close()
        engine.close()

    run(scenario)


def test_paused_reading_resumes_with_what_came_meanwhile() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        protocol, client, listener = await accepted_pair(engine)
        transport = protocol.transport
        assert transport is not None
        transport.pause_reading()
        client.sendall(b"while paused")
        await asyncio.sleep(0.1)
        assert protocol.received() == b""
        transport.resume_reading()
        await until(lambda: protocol.received() == b"while paused")
        transport.abort()
        await protocol.lost
        client.close()
        listener.close()
        engine.close()

    run(scenario)


def test_close_writes_what_is_buffered_first_and_reports_lost_once_after_the_call() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        protocol, client, listener = await accepted_pair(engine)
        transport = protocol.transport
        assert transport is not None
        payload = b"y" * (8 << 20)
        transport.write(payload)
        transport.close()
        assert protocol.events[-1][0] != "lost"  # not from inside close()
        got = bytearray()
        while chunk := await asyncio.get_running_loop().sock_recv(client, 1 << 20):
            got += chunk
        assert bytes(got) == payload
        await protocol.lost
        assert [kind for kind, _ in protocol.events].count("lost") == 1
        client.close()
        listener.close()
        engine.close()

    run(scenario)


def test_a_reset_reaches_connection_lost_with_its_error() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        protocol, client, listener = await accepted_pair(engine)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        error = await protocol.lost
        assert isinstance(error, ConnectionResetError)
        listener.close()
        engine.close()

    run(scenario)


def test_connect_relays_both_ways_and_a_refused_one_raises_and_leaves_no_descriptor() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        engine = Engine(loop)
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]  # nothing listens there once the block ends
            server.setblocking(False)
            transport, protocol = await create_connection(engine, Recorder, "127.0.0.1", port)
            assert isinstance(protocol, Recorder)
            peer, _ = await loop.sock_accept(server)
            await loop.sock_sendall(peer, b"220 banner\r\n")
            await until(lambda: protocol.received() == b"220 banner\r\n")
            transport.write(b"QUIT\r\n")
            assert await loop.sock_recv(peer, 100) == b"QUIT\r\n"
            transport.write_eof()
            assert await loop.sock_recv(peer, 100) == b""
            peer.close()
            await until(lambda: protocol.events[-1][0] == "eof")
            transport.close()  # both EOFs passed: closing is the protocol's call, as in asyncio
            await protocol.lost
        before = open_descriptors()
        with pytest.raises(ConnectionRefusedError) as refused:
            await create_connection(engine, Recorder, "127.0.0.1", port)
        assert refused.value.errno == errno.ECONNREFUSED
        await asyncio.sleep(0)
        assert open_descriptors() == before
        engine.close()

    run(scenario)


def test_a_cancelled_connect_closes_its_socket() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        with socket.socket() as full:
            # a loopback listener whose accept queue is full drops further SYNs: the next
            # connect to it stays in progress until cancelled
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            queued = []
            for _ in range(4):
                attempt = socket.socket()
                attempt.setblocking(False)
                attempt.connect_ex(full.getsockname())
                queued.append(attempt)
            await asyncio.sleep(0.05)
            before = open_descriptors()
            task = asyncio.get_running_loop().create_task(
                create_connection(engine, Recorder, *full.getsockname()))
            await asyncio.sleep(0.1)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert open_descriptors() == before
            for attempt in queued:
                attempt.close()
        engine.close()

    run(scenario)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


def test_connect_socket_from_a_bound_source_calls_back_without_a_task() -> None:
    """The egress sessions' connect: a socket bound to a source, its transport made by the
    engine and handed to ``connected`` after the protocol's connection_made; the server's
    banner, sent at once, reaches the protocol."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        engine = Engine(loop)
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            server.setblocking(False)
            sock = socket.socket()
            sock.bind(("127.0.0.9", 0))
            calls: list[str] = []
            protocol = Recorder()

            def connected(transport: SocketTransport, made: asyncio.Protocol) -> None:
                calls.append("connected")
                assert made is protocol
                assert protocol.events == [("made", None)]
                assert transport.get_extra_info("sockname")[0] == "127.0.0.9"

            def failed(error: OSError) -> None:
                calls.append(f"failed {error}")

            connect_socket(engine, sock, server.getsockname(), lambda: protocol, failed,
                           connected)
            accepted, peer = await loop.sock_accept(server)
            assert peer[0] == "127.0.0.9"
            accepted.sendall(b"220 banner\r\n")
            await until(lambda: protocol.received() == b"220 banner\r\n")
            assert calls == ["connected"]
            protocol.keep_open = False
            accepted.close()
            await asyncio.wait_for(protocol.lost, 5)
        engine.close()

    run(scenario)


def test_connect_socket_reports_a_refusal_and_closes_the_socket() -> None:
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            address = unused.getsockname()
        before = open_descriptors()
        failures: list[OSError] = []
        sock = socket.socket()
        try:
            pending = connect_socket(engine, sock, address, Recorder, failures.append)
        except ConnectionRefusedError as refused:
            # refused within connect() itself: the socket is the caller's to close
            sock.close()
            pending = None
            failures.append(refused)
        await until(lambda: bool(failures))
        await asyncio.sleep(0)
        assert failures[0].errno == errno.ECONNREFUSED
        assert pending is None or not pending.waiting()
        assert open_descriptors() == before
        engine.close()

    run(scenario)


def test_accepted_and_connected_sockets_are_non_blocking_and_send_at_once() -> None:
    """TCP_NODELAY is set on the listening socket once, and the accepted ones inherit it."""
    async def scenario() -> None:
        engine = Engine(asyncio.get_running_loop())
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listener = SocketListener(engine, listening, factory, 16)
        transport, _ = await create_connection(engine, Recorder, *listening.getsockname())
        await until(lambda: bool(accepted) and accepted[0].transport is not None)
        server_side = accepted[0].transport
        assert server_side is not None
        for sock in (transport.get_extra_info("socket"), server_side.get_extra_info("socket")):
            assert sock.getblocking() is False
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        transport.abort()
        server_side.abort()
        listener.close()
        await asyncio.sleep(0)
        engine.close()

    run(scenario)


def test_a_connected_callback_that_fails_aborts_the_new_transport() -> None:
    """A session that breaks in its first step (here the ``connected`` callback) loses its
    transport at once: connection_lost once, the failure reported, no descriptor left."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[BaseException] = []
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        engine = Engine(loop)
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            before = open_descriptors()
            protocol = Recorder()

            def connected(transport: SocketTransport, made: asyncio.Protocol) -> None:
                raise RuntimeError("the session's first step broke")

            sock = socket.socket()
            try:
                connect_socket(engine, sock, server.getsockname(), lambda: protocol,
                               lambda error: None, connected)
            except RuntimeError as at_once:
                # the connect completed within connect(): the failure came back to the caller
                reported.append(at_once)
            assert await asyncio.wait_for(protocol.lost, 5) is None
            await asyncio.sleep(0)
            assert [str(error) for error in reported] == ["the session's first step broke"]
            assert [kind for kind, _ in protocol.events] == ["made", "lost"]
            assert sock.fileno() == -1
            assert open_descriptors() == before
        engine.close()

    run(scenario)


def test_connection_lost_that_closes_another_transport_and_one_that_fails() -> None:
    """connection_lost comes at the end of the engine's round: one that closes the other side
    of its session (as the relays do) has that side's connection_lost follow, and one that
    raises is reported without keeping the others from theirs."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[BaseException] = []
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        engine = Engine(loop)
        first, first_client, listener = await accepted_pair(engine)
        listener.close()
        second, second_client, listener = await accepted_pair(engine)
        listener.close()
        assert first.transport is not None
        assert second.transport is not None
        other = second.transport
        recorded = first.connection_lost

        def close_the_other_side(exc: Exception | None) -> None:
            recorded(exc)
            other.close()
            raise RuntimeError("connection_lost broke")

        first.connection_lost = close_the_other_side  # type: ignore[method-assign]
        first.keep_open = False
        first_client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(first.lost, 5) is None
        assert await asyncio.wait_for(second.lost, 5) is None
        assert [str(error) for error in reported] == ["connection_lost broke"]
        await asyncio.sleep(0)
        # both server-side sockets are closed: each client reads its EOF
        for client in (first_client, second_client):
            client.setblocking(True)
            client.settimeout(5)
            assert client.recv(16) == b""
            client.close()
        engine.close()

    run(scenario)
