"""Sockets on an epoll set of the worker's own, behind asyncio's transport interface.

Why: a TCP session on uvloop's transports costs a transport and its handle per socket, a task
and a future per connect, and the system calls of their registration; the same relay on an epoll
set of its own costs 120 us a session against 155 on this machine, HAProxy 109
(docs/benchmarks.md, "A relay on its own epoll set"). The sessions' protocols
(``ingress/proxy/relay.py``) stay as they are: ``SocketTransport`` has the part of
``asyncio.Transport`` they use, and calls the protocol's methods as asyncio does. A connect
ends in a callback (``connect_socket``), so a session that connects to an address needs no task.

How: one ``Engine`` per worker, an edge-triggered epoll set that the loop watches as one reader.
Each socket is registered once, for reading and writing. A read shorter than the buffer ends a
round unless the event said the peer's EOF came with it (EPOLLRDHUP), as nginx reads; so no call
is made only to learn that nothing is left. Sockets closed during a round are closed after it,
so that a descriptor number is not reused while events for its old socket are still being
delivered. ``connection_lost`` is called at the end of the round (or soon, when the close came
from outside one), never from inside the call that closed. The sockets are the C type
(``_socket.socket``), not ``socket.socket``, whose methods a session would otherwise run as
Python code.
"""

from __future__ import annotations

import _socket
import abc
import asyncio
import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Any

EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
HANGUP_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
READ_SIZE = 256 * 1024  # uvloop's read buffer
DEFAULT_HIGH_WATER = 64 * 1024
ACCEPTS_PER_ROUND = 128
# accept() failures that say the process or the system is short of something: accepting pauses
# for a second (as asyncio's own servers do) instead of spinning on a listener that stays ready.
_SHORTAGES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_PAUSE = 1.0


class Handler(metaclass=abc.ABCMeta):
    """What the engine calls with a registered descriptor's events."""

    @abc.abstractmethod
    def on_events(self, events: int) -> None:
        """The descriptor's epoll events (edge-triggered) of this round."""

    @abc.abstractmethod
    def on_error(self, error: Exception) -> None:
        """``on_events`` raised (the engine has reported it): the descriptor's owner ends
        what it was doing."""


class Engine:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self._in_round = False
        self._closing: list[_socket.socket] = []
        self._lost: list[tuple[asyncio.BaseProtocol, Exception | None]] = []
        loop.add_reader(self.epoll.fileno(), self._ready)

    def register(self, fd: int, handler: Handler, events: int = EVENTS) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, events)

    def close_socket(self, sock: _socket.socket) -> None:
        """Forget the socket and close it: at once, or after the round of events under way."""
        self.handlers.pop(sock.fileno(), None)
        if self._in_round:
            self._closing.append(sock)
        else:
            sock.close()

    def connection_lost(self, protocol: asyncio.BaseProtocol, error: Exception | None) -> None:
        """``protocol.connection_lost(error)``, never from inside the call that closed: at the
        end of the round of events under way (no loop callback per transport), else soon."""
        if self._in_round:
            self._lost.append((protocol, error))
        else:
            self.loop.call_soon(protocol.connection_lost, error)

    def _ready(self) -> None:
        self._in_round = True
        handlers = self.handlers
        try:
            for fd, events in self.epoll.poll(0, 1024):
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler.on_events(events)
                except Exception as error:  # one session's fault must not drop the round
                    self.loop.call_exception_handler(
                        {"message": "socket event handler failed", "exception": error})
                    handler.on_error(error)
            # still in the round: a session's connection_lost that closes its other side
            # (the relays do) has that side's connection_lost come in the same pass
            while self._lost:
                lost, self._lost = self._lost, []
                for protocol, reason in lost:
                    try:
                        protocol.connection_lost(reason)
                    except Exception as failure:
                        self.loop.call_exception_handler(
                            {"message": "connection_lost failed", "exception": failure,
                             "protocol": protocol})
        finally:
            self._in_round = False
            closing, self._closing = self._closing, []
            for sock in closing:
                sock.close()

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


class SocketTransport(Handler):
    """A connected TCP socket with the asyncio.Transport methods the sessions call."""

    __slots__ = (
        "_buffer",
        "_buffer_size",
        "_closing",
        "_engine",
        "_eof_wanted",
        "_eof_written",
        "_hangup",
        "_high",
        "_lost",
        "_low",
        "_peername",
        "_protocol",
        "_readable",
        "_reading",
        "_sock",
        "_sockname",
        "_writing_paused",
    )

    def __init__(self, engine: Engine, sock: _socket.socket, protocol: asyncio.Protocol,
                 peername: Any = None) -> None:
        self._engine = engine
        self._sock = sock
        self._protocol = protocol
        self._peername = peername
        self._sockname: Any = None
        self._buffer: list[bytes] = []
        self._buffer_size = 0
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._writing_paused = False
        self._reading = True
        self._readable = False  # an edge came that has not been read to its end
        self._hangup = False  # the peer's EOF is behind what is left to read
        self._eof_wanted = False
        self._eof_written = False
        self._closing = False
        self._lost = False

    # --- events --------------------------------------------------------------------------------

    def on_events(self, events: int) -> None:
        if events & select.EPOLLOUT and (self._buffer or self._eof_wanted):
            self._flush()
        if events & READ_EVENTS:
            self._readable = True
            if events & HANGUP_EVENTS:
                self._hangup = True
            if self._reading and not self._closing:
                self._read()

    def on_error(self, error: Exception) -> None:
        self._fatal(error)

    def _read(self) -> None:
        sock, protocol = self._sock, self._protocol
        while self._reading and not self._closing:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                self._readable = False
                return
            except OSError as error:
                self._fatal(error)
                return
            if not data:
                self._readable = False
                self._reading = False
                if not protocol.eof_received():
                    self.close()
                return
            protocol.data_received(data)
            if len(data) < READ_SIZE and not self._hangup:
                self._readable = False
                return

    def _resume_read(self) -> None:
        if self._reading and self._readable and not self._closing:
            self._read()

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or not data:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._fatal(error)
                return
            if sent == len(data):
                return
            data = data[sent:]
        chunk = bytes(data)
        self._buffer.append(chunk)
        self._buffer_size += len(chunk)
        if not self._writing_paused and self._buffer_size > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def _flush(self) -> None:
        if self._buffer:
            data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._fatal(error)
                return
            rest = data[sent:]
            self._buffer = [rest] if rest else []
            self._buffer_size = len(rest)
            if rest:
                return
            if self._writing_paused and not self._closing:
                self._writing_paused = False
                self._protocol.resume_writing()
        if self._eof_wanted and not self._eof_written:
            self._shutdown()
        if self._closing and not self._buffer:
            self._close_now(None)

    def write_eof(self) -> None:
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._buffer:
            self._shutdown()

    def _shutdown(self) -> None:
        self._eof_written = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            # the peer is gone: the read side says how, with its reset or its EOF
            pass

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = DEFAULT_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    # --- reading control -------------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        if self._readable:
            # not from inside the caller's callback: the data would arrive in the middle of it
            self._engine.loop.call_soon(self._resume_read)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # --- ending --------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """What is buffered is written first, then the socket closes."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        if not self._buffer:
            self._close_now(None)

    def abort(self) -> None:
        self._closing = True
        self._buffer = []
        self._buffer_size = 0
        self._close_now(None)

    def _fatal(self, error: Exception) -> None:
        self._closing = True
        self._buffer = []
        self._buffer_size = 0
        self._close_now(error)

    def _close_now(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._engine.close_socket(self._sock)
        self._engine.connection_lost(self._protocol, error)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # asked for once a session at most: a system call only then (an accepted socket's peer
        # came with accept)
        if name == "peername":
            if self._peername is None:
                self._peername = self._address(self._sock.getpeername)
            return default if self._peername is None else self._peername
        if name == "sockname":
            if self._sockname is None:
                self._sockname = self._address(self._sock.getsockname)
            return default if self._sockname is None else self._sockname
        if name == "socket":
            return self._sock
        return default

    def _address(self, ask: Callable[[], Any]) -> Any:
        if self._lost:
            return None
        try:
            return ask()
        except OSError:
            return None


def stream_socket(family: int) -> _socket.socket:
    """A non-blocking TCP socket to connect with on the engine. The C type itself: the
    ``socket.socket`` class around it is Python code (its constructor, ``close``, and
    ``family``, which converts to an enum on every read) that a session would run for
    nothing."""
    return _socket.socket(family, _STREAM_NONBLOCK)


def family_of(host: str) -> int:
    """The address family of an IP address's text."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def python_socket(sock: _socket.socket) -> socket.socket:
    """The descriptor of a C-type socket in a ``socket.socket``, for what takes only that
    (uvloop's ``create_connection(sock=)``); ``sock`` is left detached."""
    return socket.socket(sock.family, sock.type, sock.proto, sock.detach())


def _tune(sock: _socket.socket, *, nodelay: bool = True) -> None:
    if sock.gettimeout() != 0.0:  # a socket made with SOCK_NONBLOCK needs no ioctl
        sock.setblocking(False)
    if nodelay and sock.family in _INET:
        _no_delay(sock)


def _no_delay(sock: _socket.socket) -> None:
    # as uvloop's TCP transports: a relay's small writes go out at once
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_INET = (int(socket.AF_INET), int(socket.AF_INET6))
_STREAM_NONBLOCK = int(socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
# socket.socket.accept() is Python code around this (it builds a socket.socket and reads the
# listener's family and type as enums): the C method, and the C type, are called directly.
_accept: Callable[[_socket.socket], tuple[int, Any]] = (
    _socket.socket._accept)  # type: ignore[attr-defined]


class SocketListener(Handler):
    """A listening socket whose connections get a ``SocketTransport`` and a protocol from
    ``factory``; has the ``close``/``wait_closed`` of an asyncio Server."""

    def __init__(self, engine: Engine, sock: _socket.socket,
                 factory: Callable[[], asyncio.Protocol], backlog: int) -> None:
        self._engine = engine
        self._sock = sock
        self._factory = factory
        self._closed = False
        self._family, self._type, self._proto = int(sock.family), int(sock.type), sock.proto
        sock.setblocking(False)
        if self._family in _INET:
            # set once here: Linux's accepted sockets inherit it (as HAProxy's listeners rely
            # on), one system call less per connection
            _no_delay(sock)
        sock.listen(backlog)
        # level-triggered: what one round leaves in the queue is there in the next
        engine.register(sock.fileno(), self, select.EPOLLIN)

    def on_events(self, events: int) -> None:
        engine, listening = self._engine, self._sock
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                fd, peer = _accept(listening)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _SHORTAGES:
                    self._pause_accepting(error)
                # ECONNABORTED and the like: that one connection is gone, the next may not be
                return
            try:
                # not SOCK_NONBLOCK in the type: given a descriptor, the constructor would
                # believe it without setting it (accept4 left it blocking)
                sock = _socket.socket(self._family, self._type, self._proto, fd)
            except BaseException:
                os.close(fd)
                raise
            try:
                _tune(sock, nodelay=False)
                protocol = self._factory()
                transport = SocketTransport(engine, sock, protocol, peer)
                engine.register(sock.fileno(), transport)
            except BaseException:
                sock.close()
                raise
            try:
                protocol.connection_made(transport)  # type: ignore[arg-type]
            except Exception:
                # the next connections are still accepted: the engine reports this one's fault
                transport.abort()
                raise

    def on_error(self, error: Exception) -> None:
        # one connection's fault, already aborted and reported: the listener goes on, and
        # (level-triggered) what is left in the queue comes in the next round
        return None

    def _pause_accepting(self, error: OSError) -> None:
        engine = self._engine
        engine.loop.call_exception_handler(
            {"message": f"accept failed, pausing {_ACCEPT_PAUSE:g}s", "exception": error})
        engine.epoll.modify(self._sock.fileno(), 0)
        engine.loop.call_later(_ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self._closed:
            self._engine.epoll.modify(self._sock.fileno(), select.EPOLLIN)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on, as with a Server."""
        if self._closed:
            return
        self._closed = True
        self._engine.close_socket(self._sock)

    async def wait_closed(self) -> None:
        return None


# What a connect calls once it has made the transport and its protocol's connection_made has run.
Connected = Callable[["SocketTransport", asyncio.Protocol], None]


class PendingConnect(Handler):
    """A socket whose non-blocking connect is under way on the engine. Its first event ends the
    wait: the socket becomes a ``SocketTransport`` whose protocol is ``factory()`` (and
    ``connection_made`` is called), or ``failed`` is called with the connect's error. A
    callback, not a future: a session that connects this way needs no task."""

    __slots__ = ("_connected", "_engine", "_factory", "_failed", "_sock", "address")

    def __init__(self, engine: Engine, sock: _socket.socket, address: tuple[Any, ...],
                 factory: Callable[[], asyncio.Protocol], failed: Callable[[OSError], None],
                 connected: Connected | None) -> None:
        self._engine = engine
        self._sock = sock
        self.address = address
        self._factory = factory
        self._failed = failed
        self._connected = connected

    def on_events(self, events: int) -> None:
        error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.cancel()
            self._failed(OSError(error, os.strerror(error)))
            return
        # what came with the connect's edge (a server that speaks first): that edge was the
        # connect's, so the transport is handed it
        _become_transport(self._engine, self._sock, self._factory, self.address,
                          events & READ_EVENTS, self._connected)

    def on_error(self, error: Exception) -> None:
        # a failure after the transport was made has aborted it already (_become_transport)
        if self.waiting():
            self.cancel()

    def waiting(self) -> bool:
        """Neither connected nor failed yet."""
        sock = self._sock
        return sock.fileno() >= 0 and self._engine.handlers.get(sock.fileno()) is self

    def cancel(self) -> None:
        """The connect is given up (a timeout, the client gone): the socket closes."""
        self._engine.close_socket(self._sock)


def connect_socket(engine: Engine, sock: _socket.socket, address: tuple[Any, ...],
                   factory: Callable[[], asyncio.Protocol], failed: Callable[[OSError], None],
                   connected: Connected | None = None) -> PendingConnect | None:
    """Connect ``sock`` (bound or not) to ``address`` on the engine. When it is connected, the
    socket becomes a transport, the protocol's ``connection_made`` is called, then
    ``connected(transport, protocol)``; a connect that fails later calls ``failed``.
    Returns None when that all happened before returning, else the connect's wait, to
    ``cancel`` when it is given up. A connect refused at once raises its OSError; the socket
    is then the caller's to close."""
    _tune(sock)
    error = sock.connect_ex(address)
    if error == 0:
        _become_transport(engine, sock, factory, address, 0, connected, register=True)
        return None
    if error != errno.EINPROGRESS:
        raise OSError(error, os.strerror(error))
    pending = PendingConnect(engine, sock, address, factory, failed, connected)
    engine.register(sock.fileno(), pending)
    return pending


def _become_transport(engine: Engine, sock: _socket.socket,
                      factory: Callable[[], asyncio.Protocol], address: tuple[Any, ...],
                      read_events: int, connected: Connected | None, *,
                      register: bool = False) -> None:
    protocol = factory()
    transport = SocketTransport(engine, sock, protocol, address)
    if register:
        engine.register(sock.fileno(), transport)
    else:
        engine.handlers[sock.fileno()] = transport
    try:
        protocol.connection_made(transport)  # type: ignore[arg-type]
        if connected is not None:
            connected(transport, protocol)
        if read_events:
            transport.on_events(read_events)
    except BaseException:
        # the session never began, or broke in its first step: no half-made transport stays
        transport.abort()
        raise


async def create_connection(engine: Engine, factory: Callable[[], asyncio.Protocol], host: str,
                            port: int) -> tuple[SocketTransport, asyncio.Protocol]:
    """``loop.create_connection(factory, host, port)`` on the engine: each address of ``host``
    in turn; raises the last one's OSError when none accepts."""
    loop = engine.loop
    addresses: list[tuple[int, tuple[Any, ...]]]
    if _is_address(host, socket.AF_INET):
        addresses = [(socket.AF_INET, (host, port))]
    elif _is_address(host, socket.AF_INET6):
        addresses = [(socket.AF_INET6, (host, port))]
    else:
        addresses = [(family, address) for family, _, _, _, address in
                     await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        if not addresses:
            raise OSError(f"no address for {host}")
    failure: OSError | None = None
    for family, address in addresses:
        try:
            return await _connect_one(engine, factory, family, address)
        except OSError as error:
            failure = error
    assert failure is not None
    raise failure


async def _connect_one(engine: Engine, factory: Callable[[], asyncio.Protocol], family: int,
                       address: tuple[Any, ...]) -> tuple[SocketTransport, asyncio.Protocol]:
    done: asyncio.Future[tuple[SocketTransport, asyncio.Protocol]] = engine.loop.create_future()

    def connected(transport: SocketTransport, protocol: asyncio.Protocol) -> None:
        done.set_result((transport, protocol))

    sock = stream_socket(family)
    try:
        pending = connect_socket(engine, sock, address, factory, done.set_exception, connected)
    except BaseException:
        sock.close()
        raise
    try:
        return await done
    except asyncio.CancelledError:
        # the task's cancel cancels the future it awaits: "done" says nothing of the connect
        if pending is not None and pending.waiting():
            pending.cancel()
        elif done.done() and not done.cancelled() and done.exception() is None:
            # connected, but the caller gave up meanwhile: not kept, as with
            # loop.create_connection
            done.result()[0].abort()
        raise


def _is_address(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except OSError:
        return False
    return True
