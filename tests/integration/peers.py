"""Real third-party peers for the integration tests: an aiosmtpd backend, a private Postfix
instance and HAProxy, all on loopback, all started and stopped by the test that uses them.

Nothing here is a mock: each class runs the real server, and only adds what the tests need to
observe it (the PROXY headers and messages the backend received, the Postfix log, HAProxy's
output).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, Self

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = [
    "AiosmtpdBackend",
    "HAProxyInstance",
    "PostfixInstance",
    "ProxyHeader",
    "ReceivedMessage",
    "SmtpReplyError",
    "ephemeral_port_floor",
    "free_port",
    "haproxy_tcp_config",
    "ipv6_loopback_available",
    "live_processes_in_group",
    "read_smtp_reply",
    "require_binary",
    "smtp_transaction",
    "wait_for_listening",
    "wait_for_port",
]

# Postfix installs its daemons and some admin commands outside $PATH on Debian.
_EXTRA_BINARY_DIRS = ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin")

# Long enough for a loaded CI machine, short enough that a broken peer fails the test quickly.
DEFAULT_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    """Skip, unless the run promised that every interop peer is there (CI sets
    REQUIRE_INTEROP=1 so that a missing package cannot turn the interop suite into skips)."""
    if os.environ.get("REQUIRE_INTEROP") == "1":
        pytest.fail(f"{reason} (REQUIRE_INTEROP=1)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Absolute path of the program ``name``, or skip (fail under REQUIRE_INTEROP=1)."""
    found = shutil.which(name)
    if found is None:
        extra = os.pathsep.join(_EXTRA_BINARY_DIRS)
        found = shutil.which(name, path=extra)
    if found is None:
        _unavailable(f"{name} not installed")
    return found


def loopback_resolver(workdir: Path) -> tuple[str, ...]:
    """A command prefix that runs a program with the system resolver pointed at 127.0.0.1,
    where no DNS server listens: in a mount namespace of its own, /etc/resolv.conf is a file
    naming only loopback. A test of names that do not resolve then sends no query off the
    machine, and the lookups fail at once (port unreachable). Needs root (CI runs as root);
    skipped otherwise (a failure under REQUIRE_INTEROP=1)."""
    unshare = require_binary("unshare")
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    prefix = (unshare, "-m", "--propagation", "private", "sh", "-c",
              'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv))
    probe = subprocess.run([*prefix, "cat", "/etc/resolv.conf"], capture_output=True,
                           text=True, timeout=DEFAULT_TIMEOUT, check=False)
    if probe.returncode != 0 or probe.stdout != resolv.read_text():
        _unavailable(f"cannot give a process its own /etc/resolv.conf: {probe.stderr.strip()}")
    return prefix


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Ports handed out below the kernel's ephemeral range: a port the kernel chose for port 0 (the
# old way) sits in that range, where the kernel could hand it again, to the next port-0 bind or
# as the source port of any outgoing connection, before the test's server binds it. CI lost a
# run to that ("Address already in use").  Below 20000, where the demo's and the load test's
# blocks start.
_PORT_FLOOR, _PORT_CEILING = 10100, 20000
_handed_out: set[tuple[str, int]] = set()


def ephemeral_port_floor() -> int:
    """The lowest port the kernel picks for port 0 or an outgoing connection (Linux's
    ip_local_port_range; its default where that file cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # Off explicitly: with it, a port still in TIME_WAIT would pass, and a peer binding
        # without SO_REUSEADDR would then fail to bind it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, never handed out before in this process, and outside the
    range the kernel draws from, so nothing but the caller takes it in the meantime."""
    ceiling = min(_PORT_CEILING, ephemeral_port_floor())
    span = ceiling - _PORT_FLOOR
    # Start where the pid says, so that two test runs on one machine rarely walk the same ports.
    start = (os.getpid() * 7919) % span
    for step in range(span):
        port = _PORT_FLOOR + (start + step) % span
        if (host, port) not in _handed_out and _bindable(host, port):
            _handed_out.add((host, port))
            return port
    raise RuntimeError(f"no free port on {host} between {_PORT_FLOOR} and {ceiling}")


def ipv6_loopback_available() -> bool:
    """Whether ::1 can be bound (containers often run without IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def wait_for_port(host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Connect-poll until ``host:port`` accepts a connection, else raise TimeoutError.

    This opens (and closes) real connections, which the server sees as sessions; for a proxy
    in front of a recording backend prefer wait_for_listening(), which does not connect.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{_hostport(host, port)} not accepting after {timeout}s: "
                               f"{last_error}")
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return
        except OSError as exc:
            last_error = exc
        time.sleep(0.02)


def _proc_net_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # /proc/net/tcp{,6} prints each 32-bit word of the address in host byte order.
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _listening_sockets() -> set[tuple[str, int]] | None:
    """(address, port) of every listening TCP socket of this network namespace, or None where
    /proc/net is not available."""
    found: set[tuple[str, int]] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A is TCP_LISTEN
                continue
            address, _, port = fields[1].partition(":")
            found.add((str(_proc_net_address(address)), int(port, 16)))
    return found if readable else None


def _is_listening(host: str, port: int) -> bool | None:
    try:
        normalized = str(ipaddress.ip_address(host))
    except ValueError:  # a name: only connecting resolves it the way the client would
        return None
    sockets = _listening_sockets()
    if sockets is None:
        return None
    wildcard = "::" if ":" in host else "0.0.0.0"
    return (normalized, port) in sockets or (wildcard, port) in sockets or ("::", port) in sockets


def wait_for_listening(host: str, port: int, timeout: float = DEFAULT_TIMEOUT,
                       *, alive: Callable[[], None] | None = None) -> None:
    """Wait until a socket listens on ``host:port`` without connecting to it.

    A probe connection through HAProxy reaches the backend as a session with its own PROXY
    header, which would then show up in the backend's records; reading /proc/net/tcp avoids
    that. Falls back to wait_for_port() where /proc/net is unavailable. ``alive`` is called on
    every poll so that a server that died while starting is reported at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        listening = _is_listening(host, port)
        if listening is None:
            wait_for_port(host, port, max(0.0, deadline - time.monotonic()))
            return
        if listening:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {_hostport(host, port)} after {timeout}s")
        time.sleep(0.02)


def live_processes_in_group(pgid: int) -> list[int]:
    """PIDs of the processes of group ``pgid`` that have not exited (zombies excluded)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces or parentheses itself.
        fields = stat[stat.rfind(")") + 2:].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _stop_process_group(process: subprocess.Popen[bytes], first_signal: signal.Signals,
                        timeout: float = DEFAULT_TIMEOUT) -> None:
    """Signal the leader of a group started with start_new_session=True, wait for it, then make
    sure no process of its group survives it; escalates to SIGKILL, every wait bounded."""
    pgid = process.pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(first_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait(timeout)
    deadline = time.monotonic() + timeout
    killed = False
    while live_processes_in_group(pgid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of group {pgid} survive: "
                               f"{live_processes_in_group(pgid)}")
        if not killed and time.monotonic() > deadline - timeout / 2:
            # Children normally exit on the leader's signal; these did not.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            killed = True
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# A raw SMTP client, for talking to peers after writing a PROXY header by hand
# --------------------------------------------------------------------------------------------


class SmtpReplyError(AssertionError):
    """A peer answered with an unexpected SMTP reply code."""


def read_smtp_reply(reader: BinaryIO) -> tuple[int, str]:
    """One (possibly multi-line) reply from a socket file; the socket's timeout bounds it."""
    lines: list[str] = []
    while True:
        line = reader.readline(4096)
        if not line:
            raise ConnectionError(f"connection closed while reading a reply; got {lines!r}")
        lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    try:
        code = int(lines[-1][:3])
    except ValueError:
        raise SmtpReplyError(f"not an SMTP reply: {lines!r}") from None
    return code, "\n".join(lines)


def _dot_stuff(data: bytes) -> bytes:
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def smtp_transaction(sock: socket.socket, *, mail_from: str = "sender@example.org",
                     rcpt_tos: Sequence[str] = ("user@test.invalid",),
                     data: bytes = b"Subject: test\r\n\r\nhello\r\n",
                     ehlo: str = "client.test", timeout: float = DEFAULT_TIMEOUT,
                     read_banner: bool = True) -> list[tuple[int, str]]:
    """Banner, EHLO, MAIL, RCPT..., DATA, QUIT over an already connected socket (after any PROXY
    header the caller wrote). Returns every reply; raises SmtpReplyError on an unexpected one."""
    sock.settimeout(timeout)
    replies: list[tuple[int, str]] = []
    with sock.makefile("rb") as reader:

        def expect(command: bytes | None, codes: tuple[int, ...]) -> None:
            if command is not None:
                sock.sendall(command + b"\r\n")
            reply = read_smtp_reply(reader)
            replies.append(reply)
            if reply[0] not in codes:
                raise SmtpReplyError(f"{command!r}: expected {codes}, got {reply}")

        if read_banner:
            expect(None, (220,))
        expect(b"EHLO " + ehlo.encode(), (250,))
        expect(f"MAIL FROM:<{mail_from}>".encode(), (250,))
        for rcpt in rcpt_tos:
            expect(f"RCPT TO:<{rcpt}>".encode(), (250, 251))
        expect(b"DATA", (354,))
        expect(_dot_stuff(data) + b".", (250,))
        expect(b"QUIT", (221,))
    return replies


# --------------------------------------------------------------------------------------------
# aiosmtpd backend
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyHeader:
    """A PROXY header as an aiosmtpd backend received it."""

    version: int | None                     # 1, 2, or None when not recognizable at all
    source: tuple[str, int] | None          # None for UNKNOWN / LOCAL / invalid headers
    destination: tuple[str, int] | None
    peer: tuple[str, int]                   # TCP peer that sent it (the relay)
    raw: bytes                              # the whole header as received
    v1_line: bytes | None                   # == raw (with CRLF) for v1, None for v2
    valid: bool
    error: str                              # aiosmtpd's parse error, "" when valid


@dataclass
class ReceivedMessage:
    proxy_source: tuple[str, int] | None    # address from the PROXY header the backend received
    peer: tuple[str, int]                   # actual TCP peer (the relay)
    mail_from: str
    rcpt_tos: list[str]
    data: bytes                             # as received after DATA, dot-unstuffed, CRLF kept
    proxy_header: ProxyHeader | None = None  # the header of the session that carried it


def _peer(address: Any) -> tuple[str, int]:
    # IPv6 peer names are 4-tuples (host, port, flowinfo, scope_id).
    return str(address[0]), int(address[1])


def _endpoint(address: object, port: int | None) -> tuple[str, int] | None:
    if address is None or port is None:
        return None
    if isinstance(address, bytes):
        address = address.decode("latin-1")
    return str(address), int(port)


def _proxy_header(peer: tuple[str, int], proxy_data: Any) -> ProxyHeader:
    raw = bytes(proxy_data.whole_raw)
    return ProxyHeader(
        version=proxy_data.version,
        source=_endpoint(proxy_data.src_addr, proxy_data.src_port),
        destination=_endpoint(proxy_data.dst_addr, proxy_data.dst_port),
        peer=peer,
        raw=raw,
        v1_line=raw if proxy_data.version == 1 else None,
        valid=bool(proxy_data.valid),
        error=str(proxy_data.error),
    )


class _RecordingSMTP(SMTP):
    """aiosmtpd only calls handle_PROXY for valid headers and then drops the connection; the
    invalid ones are still in session.proxy_data when the connection goes, so record them there
    (a relay that garbles headers must be visible to the tests)."""

    def __init__(self, backend: AiosmtpdBackend, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backend = backend
        self._own_transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._own_transport = transport
        self._backend._transports.add(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        if session is not None:
            proxy_data = getattr(session, "proxy_data", None)
            if proxy_data is not None and not proxy_data.valid:
                self._backend._record_header(_proxy_header(_peer(session.peer), proxy_data))
        if self._own_transport is not None:
            self._backend._transports.discard(self._own_transport)
        super().connection_lost(error)


class _RecordingHandler:
    def __init__(self, backend: AiosmtpdBackend) -> None:
        self._backend = backend

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope,  # noqa: N802
                           proxy_data: Any) -> bool:
        self._backend._record_header(_proxy_header(_peer(session.peer), proxy_data))
        return True

    async def handle_DATA(self, server: SMTP, session: Session,  # noqa: N802
                          envelope: Envelope) -> str:
        proxy_data = session.proxy_data
        header = _proxy_header(_peer(session.peer), proxy_data) if proxy_data else None
        # original_content is the bytes as received (content may be decoded to str).
        content: bytes | str | None = envelope.original_content
        if content is None:
            content = envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        message = ReceivedMessage(
            proxy_source=header.source if header is not None else None,
            peer=_peer(session.peer),
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(content or b""),
            proxy_header=header,
        )
        self._backend._record_message(message)
        return "250 2.0.0 OK recorded"


class AiosmtpdBackend:
    """aiosmtpd SMTP server on loopback with the PROXY protocol required (aiosmtpd's
    proxy_protocol_timeout), run in its own thread with its own event loop, recording each PROXY
    header and each message.

    Not aiosmtpd.controller.Controller: its start() probes the server with a connection that
    waits up to 1 s for a banner, which a PROXY-protocol server never sends to a silent client,
    it cannot bind port 0, and its probe would be recorded as a session.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, proxy_protocol: bool = True,
                 banner_hostname: str = "backend.test", proxy_timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.proxy_protocol = proxy_protocol
        self.banner_hostname = banner_hostname
        # aiosmtpd logs a warning below 3 s; the relay sends its header at once anyway.
        self.proxy_timeout = proxy_timeout
        self.messages: list[ReceivedMessage] = []
        self.proxy_headers: list[ProxyHeader] = []
        # Exceptions the event loop could not hand to anyone (a bug in the harness or aiosmtpd).
        self.loop_errors: list[str] = []
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    # -- recording, called from the server thread ------------------------------------------

    def _record_header(self, header: ProxyHeader) -> None:
        with self._changed:
            self.proxy_headers.append(header)
            self._changed.notify_all()

    def _record_message(self, message: ReceivedMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    # -- waiting, from the test thread -----------------------------------------------------

    def wait_for_messages(self, n: int, timeout: float = DEFAULT_TIMEOUT
                          ) -> list[ReceivedMessage]:
        """All messages received so far, once there are at least ``n``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= n, timeout):
                raise TimeoutError(f"{len(self.messages)} of {n} messages after {timeout}s; "
                                   f"PROXY headers seen: {self.proxy_headers!r}")
            return list(self.messages)

    def wait_for_proxy_headers(self, n: int, timeout: float = DEFAULT_TIMEOUT
                               ) -> list[ProxyHeader]:
        """All PROXY headers received so far, once there are at least ``n``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.proxy_headers) >= n, timeout):
                raise TimeoutError(f"{len(self.proxy_headers)} of {n} PROXY headers after "
                                   f"{timeout}s")
            return list(self.proxy_headers)

    # -- lifecycle -------------------------------------------------------------------------

    def _protocol(self) -> SMTP:
        return _RecordingSMTP(
            self, _RecordingHandler(self),
            hostname=self.banner_hostname,
            proxy_protocol_timeout=self.proxy_timeout if self.proxy_protocol else None,
            loop=self._loop,
            # As aiosmtpd's own Controller does, so that relayed UTF-8 test messages pass.
            enable_SMTPUTF8=True,
        )

    def _exception_handler(self, loop: asyncio.AbstractEventLoop,
                           context: dict[str, Any]) -> None:
        self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        loop.default_exception_handler(context)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("AiosmtpdBackend already started")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._exception_handler)
        self._loop = loop
        ready = threading.Event()
        startup_error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    loop.create_server(self._protocol, host=self.host, port=self.port))
            except BaseException as exc:
                startup_error.append(exc)
                loop.close()
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._shutdown(loop, server)

        self._thread = threading.Thread(target=run, name=f"aiosmtpd-{self.host}", daemon=True)
        self._thread.start()
        if not ready.wait(DEFAULT_TIMEOUT):
            self.stop()
            raise TimeoutError("aiosmtpd backend did not start")
        if startup_error:
            self._thread.join(DEFAULT_TIMEOUT)
            self._thread = None
            raise startup_error[0]

    def _shutdown(self, loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
        # Close what is open, then let the cancelled tasks finish, so that nothing is left for
        # the garbage collector to complain about (ResourceWarning is an error in this suite).
        # A connection accepted in the loop's last iteration is a task that has not run yet:
        # after server.close() it fails to attach its transport, and cancelled it drops its
        # socket; either way the socket is left unclosed. So stop accepting, let such tasks
        # reach connection_made, and only then close the server.
        for listener in server.sockets:
            loop.remove_reader(listener.fileno())
        for _ in range(5):
            loop.run_until_complete(asyncio.sleep(0))
        server.close()
        for transport in list(self._transports):
            transport.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between by a failed start
                loop.call_soon_threadsafe(loop.stop)
        thread.join(DEFAULT_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("aiosmtpd backend thread did not stop")
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Postfix
# --------------------------------------------------------------------------------------------


def _postconf_defaults(*names: str) -> dict[str, str]:
    postconf = require_binary("postconf")
    result = subprocess.run([postconf, "-d", *names], capture_output=True, text=True,
                            timeout=DEFAULT_TIMEOUT, check=True)
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()
    return values


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents))


def _state_root() -> Path:
    """A fresh directory for the queue and data directories that the ``postfix`` user can
    reach: the master takes its lock file with the postfix uid, by absolute path, so every
    ancestor must be searchable by others, which pytest's tmp_path (under a 0700 directory) is
    not. Configuration and log stay in the caller's workdir: they are opened as root."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        base = Path(candidate)
        if base.is_dir() and _traversable_by_others(base):
            root = Path(tempfile.mkdtemp(prefix="mta-ingress-postfix-", dir=base))
            root.chmod(0o755)
            return root
    raise RuntimeError("no temporary directory searchable by the postfix user")


# Queue subdirectories as "postfix set-permissions" creates them: (name, mode, group or None).
_QUEUE_DIRS: tuple[tuple[str, int, str | None], ...] = (
    *((name, 0o700, None) for name in ("active", "bounce", "corrupt", "defer", "deferred",
                                        "flush", "hold", "incoming", "private", "saved",
                                        "trace")),
    ("maildrop", 0o730, "postdrop"),
    ("public", 0o710, "postdrop"),
)

# Only the services a message accepted by smtpd and discarded needs. No chroot: the queue
# directory has none of the files a chroot jail needs (and this is not a production setup).
_MASTER_CF_SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
flush     unix  n       -       n       1000?   0       flush
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_CLIENT_LINE = r"/smtpd\[\d+\]: [0-9A-Za-z]+: client=[^\s\[]*\[([^\]]+)\]"


class PostfixInstance:
    """A private Postfix instance, listening on 127.0.0.1:<port> (and optionally
    [::1]:<port6>), with smtpd_upstream_proxy_protocol = haproxy, accepting any recipient in
    ``test.invalid`` and discarding the mail, logging to a file of its own (maillog_file, via
    postlogd) from which the tests read the ``client=`` address.

    It is the real master(8) run directly in the foreground (``master -d -c DIR``) as a child
    of the test, in a process group of its own:
    - ``postfix -c DIR start`` would work too when run as root, but it detaches the master
      (reparented to init, so a crashed test leaves it running) and runs the ``postfix check``
      scripts (about a second).
    - the master has no notion of other instances: its own config_directory, queue_directory
      and data_directory (lock and pid files) keep it apart from the system Postfix and from
      any other instance; /etc/postfix is only read (meta_directory: postfix-files,
      dynamicmaps.cf).
    - stopping it is ``postfix stop``'s way: SIGTERM to the master, which passes it on to its
      process group.
    """

    DOMAIN = "test.invalid"

    def __init__(self, workdir: Path, port: int, *, port6: int | None = None,
                 proxy_protocol: bool = True, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.port6 = port6
        self.proxy_protocol = proxy_protocol
        # Per port, so that two instances may share a workdir; the port is unique while running.
        self.confdir = workdir / f"postfix-{port}"
        self.log_path = self.confdir / "maillog"
        self.syslog_name = f"mta-ingress-pf{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._master_output: BinaryIO | None = None
        self._state: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _listeners(self) -> list[tuple[str, int]]:
        listeners = [(self.host, self.port)]
        if self.port6 is not None:
            listeners.append(("::1", self.port6))
        return listeners

    def _check_environment(self) -> tuple[str, str]:
        """(master path, compatibility level), or skip/fail when this host cannot run it."""
        require_binary("postfix")
        if os.geteuid() != 0:
            _unavailable("a private Postfix instance needs root (its daemons switch to the "
                         "postfix user)")
        for lookup, name in ((pwd.getpwnam, "postfix"), (grp.getgrnam, "postfix"),
                             (grp.getgrnam, "postdrop")):
            try:
                lookup(name)
            except KeyError:
                _unavailable(f"user or group {name!r} missing (is Postfix installed?)")
        defaults = _postconf_defaults("mail_version", "daemon_directory")
        version = _version_tuple(defaults["mail_version"])
        if version < (3, 5):
            # maillog_file needs 3.4, PROXY v2 in smtpd_upstream_proxy_protocol 3.5.
            _unavailable(f"Postfix {defaults['mail_version']} is older than 3.5")
        master = Path(defaults["daemon_directory"]) / "master"
        if not os.access(master, os.X_OK):
            _unavailable(f"{master} not executable")
        return str(master), "3.6" if version >= (3, 6) else "2"

    def _write_config(self, compatibility_level: str, state: Path) -> None:
        def value(path: Path) -> str:
            return str(path).replace("$", "$$")

        interfaces = ", ".join(f"[{h}]" if ":" in h else h for h, _ in self._listeners())
        main_cf = f"""\
# Written by tests/integration/peers.py: a private, throw-away instance.
compatibility_level = {compatibility_level}
config_directory = {value(self.confdir)}
queue_directory = {value(state / "queue")}
data_directory = {value(state / "data")}
syslog_name = {self.syslog_name}
maillog_file = {value(self.log_path)}
# The log is outside /var; postlogd refuses a maillog_file without an allowed prefix.
maillog_file_prefixes = {value(self.confdir)}
myhostname = postfix.{self.DOMAIN}
mydomain = {self.DOMAIN}
myorigin = $myhostname
mydestination = $myhostname, {self.DOMAIN}
inet_interfaces = {interfaces}
# "all" even when listening on IPv4 only: smtpd rejects a "PROXY TCP6" header ("bad or missing
# protocol type") unless IPv6 is enabled here. Without kernel IPv6, Postfix drops it with a
# warning.
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128
relay_domains =
relayhost =
# Any local part is a valid recipient, and whatever is accepted is thrown away: no mail can
# leave the instance, and no mailbox or alias file is needed.
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard:
default_transport = discard:
relay_transport = discard:
biff = no
# No DNS: the proxied addresses are documentation ranges, and their lookups would only cost
# time (or hang where there is no resolver).
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0s
# Every relayed session comes from a handful of proxied addresses; no per-client limits.
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
"""
        smtpd_options = " -o smtpd_upstream_proxy_protocol=haproxy" if self.proxy_protocol else ""
        master_cf = "".join(
            f"{_hostport(host, port)} inet n - n - - smtpd{smtpd_options}\n"
            for host, port in self._listeners()
        ) + _MASTER_CF_SERVICES
        (self.confdir / "main.cf").write_text(main_cf)
        (self.confdir / "master.cf").write_text(master_cf)
        # Postfix will not read a file modified in the last second or two (it may be being
        # written): each process dozes 300 ms and rereads until the mtime is old enough, which
        # made every start take about 2 s. Nothing writes these files again.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.confdir / name, (past, past))

    @staticmethod
    def _make_state(state: Path) -> None:
        postfix_uid = pwd.getpwnam("postfix").pw_uid
        postfix_gid = grp.getgrnam("postfix").gr_gid
        queue = state / "queue"
        queue.mkdir(mode=0o755)
        for name, mode, group in _QUEUE_DIRS:
            path = queue / name
            path.mkdir()
            os.chown(path, postfix_uid, grp.getgrnam(group).gr_gid if group else 0)
            path.chmod(mode)  # mkdir's mode is masked by the umask
        (queue / "pid").mkdir(mode=0o755)
        data = state / "data"
        data.mkdir(mode=0o700)
        os.chown(data, postfix_uid, postfix_gid)

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("PostfixInstance already started")
        master, compatibility_level = self._check_environment()
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        try:
            self._state = _state_root()
            self._make_state(self._state)
            self._write_config(compatibility_level, self._state)
            self._master_output = open(self.confdir / "master.out", "wb")  # noqa: SIM115
            self.process = subprocess.Popen(
                # -d: stay in the foreground as our child, stderr kept (early fatal errors go
                # to syslog, though: postlogd is not running yet).
                [master, "-d", "-c", str(self.confdir)],
                stdin=subprocess.DEVNULL, stdout=self._master_output,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(self.confdir),
                     "LANG": "C"},
            )
            for host, port in self._listeners():
                # Not connect-polling: each probe would be logged as a session that never sent
                # its PROXY header.
                wait_for_listening(host, port, DEFAULT_TIMEOUT, alive=self._check_alive)
            # The master binds before it logs; the log is what the tests read.
            self.wait_for_log(r"daemon started", DEFAULT_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"postfix master exited with {self.process.returncode} while starting; "
                f"log:\n{self.log_text()}\nmaster output:\n{self._read_master_output()}\n"
                f"(errors before postlogd runs go to syslog only: try "
                f"`postfix -c {self.confdir} check`)")

    def _read_master_output(self) -> str:
        try:
            return (self.confdir / "master.out").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if self.process is not None:
                _stop_process_group(self.process, signal.SIGTERM)
        finally:
            self.process = None
            if self._master_output is not None:
                self._master_output.close()
                self._master_output = None
            if self._state is not None:
                shutil.rmtree(self._state, ignore_errors=True)
                self._state = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """First match of the regular expression ``pattern`` in the log, waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            match = regex.search(text)
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in the Postfix log after {timeout}s:\n"
                                   f"{text[-4000:]}")
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postfix master exited with {self.process.returncode};"
                                   f" log:\n{text[-4000:]}")
            time.sleep(0.05)

    def client_addresses(self) -> list[str]:
        """The address of every ``<qid>: client=<name>[<addr>]`` line, in log order."""
        regex = re.compile(re.escape(self.syslog_name) + _CLIENT_LINE)
        return regex.findall(self.log_text())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# HAProxy
# --------------------------------------------------------------------------------------------


def _fd_limited_maxconn(maxconn: int) -> int:
    """HAProxy needs about two descriptors per connection and, with strict-limits (the default
    since 2.3), refuses to start when it cannot raise RLIMIT_NOFILE to that; containers and CI
    often cap the hard limit at 20000 or less. Cap maxconn to what the limit allows."""
    try:
        import resource
    except ImportError:
        return maxconn
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return maxconn
    return max(100, min(maxconn, (hard - 1000) // 2))


def haproxy_tcp_config(listen_port: int, backend: tuple[str, int], *,
                       send_proxy: str = "send-proxy", accept_proxy: bool = False,
                       nbthread: int = 1, listen_host: str = "127.0.0.1",
                       maxconn: int = 20000) -> str:
    """A TCP-mode HAProxy configuration like the GreenArrow KRA chart's: one frontend, one
    server, ``send_proxy`` being "send-proxy", "send-proxy-v2" or "" (no header)."""
    if send_proxy not in ("send-proxy", "send-proxy-v2", ""):
        raise ValueError(f"send_proxy must be send-proxy, send-proxy-v2 or '', not {send_proxy!r}")
    bind_options = " accept-proxy" if accept_proxy else ""
    server_options = f" {send_proxy}" if send_proxy else ""
    return f"""\
global
    maxconn {_fd_limited_maxconn(maxconn)}
    nbthread {nbthread}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend smtp_in
    bind {_hostport(listen_host, listen_port)}{bind_options}
    default_backend smtp_out

backend smtp_out
    server s1 {_hostport(*backend)}{server_options}
"""


_BIND_LINE = re.compile(r"^\s*bind\s+(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d+)\b", re.MULTILINE)


def _bind_addresses(config_text: str) -> list[tuple[str, int]]:
    return [(v6 or v4, int(port)) for v6, v4, port in _BIND_LINE.findall(config_text)]


class HAProxyInstance:
    """haproxy in the foreground (``-db``) with ``config_text`` written to a file in
    ``workdir``; its own process group, stopped with SIGTERM (hard stop: open connections are
    cut, which is what a test tearing down wants).

    start() may be called again while running (also after ``with``, which starts it): it then
    only waits for the given ports.
    """

    def __init__(self, workdir: Path, config_text: str) -> None:
        self.workdir = workdir
        self.config_text = config_text
        # Numbered when taken, so that several instances may share a workdir.
        self.config_path = workdir / "haproxy.cfg"
        self.output_path = workdir / "haproxy.out"
        self.process: subprocess.Popen[bytes] | None = None
        self._output_file: BinaryIO | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, wait_ports: Sequence[tuple[str, int]] = ()) -> None:
        """Start (unless running), check it did not exit, and wait until ``wait_ports`` (or
        else every ``bind host:port`` of the configuration) listen, without connecting."""
        ports: Iterable[tuple[str, int]] = wait_ports or _bind_addresses(self.config_text)
        if self.process is None:
            binary = require_binary("haproxy")
            self.workdir.mkdir(parents=True, exist_ok=True)
            index = 1
            while self.config_path.exists():
                index += 1
                self.config_path = self.workdir / f"haproxy-{index}.cfg"
                self.output_path = self.workdir / f"haproxy-{index}.out"
            self.config_path.write_text(self.config_text)
            check = subprocess.run([binary, "-c", "-q", "-f", str(self.config_path)],
                                   capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
            if check.returncode != 0:
                raise RuntimeError(f"haproxy rejects the configuration:\n{check.stdout}"
                                   f"{check.stderr}\n{self.config_text}")
            self._output_file = open(self.output_path, "wb")  # noqa: SIM115
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=self._output_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            for host, port in ports:
                wait_for_listening(host, port, DEFAULT_TIMEOUT, alive=self._check_alive)
            self._check_alive()
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n"
                               f"{self.output()}")

    def stop(self) -> None:
        try:
            if self.process is not None:
                _stop_process_group(self.process, signal.SIGTERM)
        finally:
            self.process = None
            if self._output_file is not None:
                self._output_file.close()
                self._output_file = None

    def output(self) -> str:
        """What haproxy printed (stdout and stderr), for test failure messages."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
