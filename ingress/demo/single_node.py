"""The single-node demo: the ingress in front of stub GreenArrow services, on loopback.

``mta-ingress demo [--base-port N]`` (what ``make demo`` runs) starts, on 127.0.0.1:

- stub services, in this process on uvloop: an MTA and an Event Tracker that speak SMTP (with
  the PROXY header the greenarrow preset sends) and HTTP, and a TLS service (HTTP); each answers
  with what it saw (``ingress/demo/stub_smtp.py``, ``ingress/demo/stub_http.py``);
- the ingress itself, ``mta-ingress run`` with the greenarrow preset moved onto loopback ports
  (``demo_config_text``), as a child process;

then prints a guide (``guide_text``) of commands to try, once the ingress reports ready.

Ports are a block starting at ``--base-port`` (default 20000); see ``OFFSETS``.  Every port is
checked before anything starts, and a taken one is reported in one line naming it and the
option.

Stopping: Ctrl-C (SIGINT), SIGTERM or SIGHUP.  The ingress child runs in its own process group,
so a Ctrl-C on the terminal reaches only this process, which stops the ingress with one SIGTERM
(its configured drain is 0 s, so this is the same shutdown as a SIGINT; and a SIGTERM that
arrives while the child is still importing ends it silently, where a SIGINT would print a
KeyboardInterrupt traceback), waits for it, then stops the stubs.  A second Ctrl-C kills the
ingress's process group at once.  The demo exits 0 when it was stopped this way (being stopped
is how the demo ends, and ``make`` would otherwise report an error), 1 when something failed,
2 for a bad ``--base-port``.

Under ``make demo`` that status alone is not enough: the terminal sends Ctrl-C's SIGINT to its
foreground process group, make's, and GNU make, once its child has exited, kills itself with
the signal it got (exit 130), whatever the child's status.  So a demo started inside another
program's process group on a terminal moves into a group of its own and makes it the
terminal's foreground (``_TerminalForeground``), as a shell does for a job: Ctrl-C then reaches
only the demo, and make exits with the demo's 0.  The terminal is given back on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ingress import config
from ingress.demo import stub_http, stub_smtp
from tls import selfsigned

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 20000

# Port = base + offset. The listeners keep the last digits of the KRA's ports (10025 -> base+25,
# 11025 -> base+1025, ...), so that a port number says which listener it is.
OFFSETS: dict[str, int] = {
    "smtp25": 25,
    "smtp587": 587,
    "http": 80,
    "https": 443,
    "smtp25-proxied": 1025,
    "smtp587-proxied": 1587,
    "http-proxied": 1080,
    "https-proxied": 1443,
    "admin": 81,
    "event-tracker-smtp": 2025,
    "mta-smtp": 2587,
    "event-tracker-http": 2080,
    "mta-http": 2081,
    "tls-http": 2082,
}
LISTENERS = ("smtp25", "smtp587", "http", "https", "smtp25-proxied", "smtp587-proxied",
             "http-proxied", "https-proxied")
# Stub ports carry the names of the greenarrow preset's backends that point at them.
STUBS = ("event-tracker-smtp", "mta-smtp", "event-tracker-http", "mta-http", "tls-http")
MIN_BASE_PORT = 1024
MAX_BASE_PORT = 65535 - max(OFFSETS.values())

READY_TIMEOUT = 20.0
# The demo's timeouts.grace is 2 s: the ingress is gone well within this after a SIGINT.
STOP_TIMEOUT = 8.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Ports:
    base: int

    def __getitem__(self, name: str) -> int:
        return self.base + OFFSETS[name]

    def all(self) -> list[tuple[str, int]]:
        """Every port the demo binds, ascending, with what binds it."""
        return sorted(((name, self.base + offset) for name, offset in OFFSETS.items()),
                      key=lambda item: item[1])


def describe(name: str) -> str:
    """What binds a port of ``OFFSETS``, for messages."""
    if name == "admin":
        return "the admin listener"
    if name in LISTENERS:
        return f"the {name} listener"
    service, _, protocol = name.rpartition("-")
    return f"the {service} {protocol.upper()} stub"


def base_port_problem(base_port: int) -> str | None:
    if MIN_BASE_PORT <= base_port <= MAX_BASE_PORT:
        return None
    return (f"demo: --base-port must be between {MIN_BASE_PORT} and {MAX_BASE_PORT} "
            f"(the demo uses ports up to base+{max(OFFSETS.values())}), not {base_port}")


def port_in_use_message(name: str, port: int, base_port: int) -> str:
    suggestion = base_port + 3000 if base_port + 3000 <= MAX_BASE_PORT else DEFAULT_BASE_PORT
    if suggestion == base_port:
        suggestion = 30000
    return (f"demo: port {port} on {HOST} ({describe(name)}) is already in use; move the demo's "
            f"ports with --base-port, e.g. mta-ingress demo --base-port {suggestion}")


def demo_config_text(ports: Ports, cert_dir: Path) -> str:
    """The greenarrow preset on loopback: its eight listeners, routes and backends unchanged
    but for addresses (tables of the file are merged into the preset's, key by key)."""
    lines = ['preset = "greenarrow"', "workers = 1", "",
             "[timeouts]", 'drain = "0s"', 'grace = "2s"', ""]
    for name in LISTENERS:
        lines += [f"[listeners.{name}]", f'bind = ["{HOST}:{ports[name]}"]', ""]
    for name in STUBS:
        lines += [f"[backends.{name}]", f'servers = ["{HOST}:{ports[name]}"]', ""]
    # A JSON string is a valid TOML basic string: the path is quoted and escaped either way.
    lines += ["[tls]", f"cert_dir = {json.dumps(str(cert_dir))}", "",
              "[admin]", f'bind = ["{HOST}:{ports["admin"]}"]', ""]
    return "\n".join(lines)


GUIDE = """\
mta-ingress demo: the ingress (greenarrow preset) on {host}, in front of stub GreenArrow services
(MTA, Event Tracker, TLS) that answer with what they received. In another terminal:

A click, answered by the Event Tracker stub; "x_forwarded_for" is the address the ingress
added (yours), "peer" the ingress's own connection to the stub:
  curl -s http://{host}:{http}/click/demo/42

The send API over HTTPS, answered by the MTA stub. The certificate is a self-signed one for
localhost, written at start to {cert_file} (hence -k):
  curl -sk https://{host}:{https}/api/v1/send.json -H 'Content-Type: application/json' -d '{{"message": {{"to": "someone@example.org"}}}}'

An ACME HTTP-01 validation, answered by the TLS service stub:
  curl -s http://{host}:{http}/.well-known/acme-challenge/demo-token

SMTP on port 587 (to the MTA stub) and 25 (to the Event Tracker stub); the stub's replies give
the client address it read from the ingress's PROXY header:
  swaks --server {host}:{smtp587} --from demo@example.org --to someone@example.org
  swaks --server {host}:{smtp25} --from bounces@example.net --to return-path@example.org
or with Python's smtplib:
  python3 -c 'import smtplib; s = smtplib.SMTP(); print(s.connect("{host}", {smtp587})); s.ehlo(); s.mail("demo@example.org"); s.rcpt("someone@example.org"); print(s.data("Subject: hi\\n\\nhello\\n")); s.quit()'

Behind an outer load balancer, the -proxied ports take its PROXY header and pass its client
address on (here a made-up 203.0.113.7):
  swaks --server {host}:{smtp587_proxied} --to someone@example.org --proxy-version 1 --proxy-family TCP4 --proxy-source 203.0.113.7 --proxy-source-port 40000 --proxy-dest {host} --proxy-dest-port 587

Metrics (Prometheus text; /livez and /readyz on the same admin port), and what the MTA stub
counted:
  curl -s http://{host}:{admin}/metrics
  curl -s http://{host}:{mta_http}/_stub/counts

Ports: listeners {smtp25} {smtp587} {http} {https} (and +1000: -proxied), admin {admin},
stubs {stubs}; --base-port moves them all.
The ingress's access log follows. Ctrl-C stops everything.
"""  # noqa: E501 (one command a line, to copy whole)

GUIDE_LAST_LINE = "The ingress's access log follows. Ctrl-C stops everything."


def guide_text(ports: Ports, cert_file: Path) -> str:
    return GUIDE.format(
        host=HOST, cert_file=cert_file, http=ports["http"], https=ports["https"],
        smtp25=ports["smtp25"], smtp587=ports["smtp587"],
        smtp587_proxied=ports["smtp587-proxied"], admin=ports["admin"],
        mta_http=ports["mta-http"], stubs=" ".join(str(ports[name]) for name in STUBS))


# --- running ------------------------------------------------------------------------------------


class PortInUseError(Exception):
    def __init__(self, name: str, port: int) -> None:
        super().__init__(name, port)
        self.name = name
        self.port = port


def _bind(name: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR as the ingress sets it: a port in TIME_WAIT is free, a listening one is not.
    # No SO_REUSEPORT: with it, a second demo would share the ports of the first one silently.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise PortInUseError(name, port) from error
    return sock


def claim_ports(ports: Ports) -> dict[str, socket.socket]:
    """Check every port, in order; returns the stubs' sockets, bound and listening, and raises
    ``PortInUseError`` for the first port that cannot be bound."""
    stubs: dict[str, socket.socket] = {}
    try:
        for name, port in ports.all():
            sock = _bind(name, port)
            if name in STUBS:
                sock.listen(128)
                sock.setblocking(False)
                stubs[name] = sock
            else:
                sock.close()  # the ingress binds it in a moment
    except PortInUseError:
        for sock in stubs.values():
            sock.close()
        raise
    return stubs


def _child_setup() -> None:
    # Runs in the ingress child between fork and exec: if this process dies without stopping
    # it (SIGKILL), the kernel sends it SIGTERM instead of leaving it serving on the ports.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_ingress(config_path: Path) -> subprocess.Popen[bytes]:
    # The user's MTA_INGRESS_* variables would change the demo's configuration under it.
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("MTA_INGRESS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "ingress", "run", "--config", str(config_path)],
        stdin=subprocess.DEVNULL, env=environ, process_group=0, preexec_fn=_child_setup)


def _kill_ingress(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group: its workers too


def _stop_ingress(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_ingress(process)
        return process.wait()


async def _is_ready(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 1.0)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def _serve(ports: Ports, stub_sockets: dict[str, socket.socket],
                 process: subprocess.Popen[bytes], cert_file: Path) -> int:
    loop = asyncio.get_running_loop()
    signals = 0
    stop = asyncio.Event()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            _kill_ingress(process)  # a second Ctrl-C: no more waiting for open sessions
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)

    mta = stub_http.StubService("mta", smtp=stub_smtp.StubStats())
    event_tracker = stub_http.StubService("event-tracker", smtp=stub_smtp.StubStats())
    tls_service = stub_http.StubService("tls")
    assert mta.smtp is not None
    assert event_tracker.smtp is not None
    servers = [
        await loop.create_server(stub_smtp.factory("mta.demo", mta.smtp, expect_proxy=True),
                                 sock=stub_sockets["mta-smtp"]),
        await loop.create_server(stub_smtp.factory("event-tracker.demo", event_tracker.smtp,
                                                   expect_proxy=True),
                                 sock=stub_sockets["event-tracker-smtp"]),
        await stub_http.start(mta, sock=stub_sockets["mta-http"]),
        await stub_http.start(event_tracker, sock=stub_sockets["event-tracker-http"]),
        await stub_http.start(tls_service, sock=stub_sockets["tls-http"]),
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not await _is_ready(ports["admin"]):
            if stop.is_set():
                print("demo: stopping", file=sys.stderr, flush=True)
                return 0  # the caller stops the ingress
            if process.poll() is not None:
                print(f"demo: the ingress exited during start-up (code {process.returncode}); "
                      "see its messages above", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"demo: the ingress was not ready within {READY_TIMEOUT:.0f} s",
                      file=sys.stderr)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        print(guide_text(ports, cert_file), flush=True)
        while not stop.is_set():
            if process.poll() is not None:
                print(f"demo: the ingress exited (code {process.returncode})", file=sys.stderr)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        print("demo: stopping", file=sys.stderr, flush=True)
        # The stubs keep answering while the ingress lets open sessions finish.
        code = await loop.run_in_executor(None, _stop_ingress, process)
        if code != 0:
            print(f"demo: the ingress exited with code {code} while stopping", file=sys.stderr)
            return 1
        return 0
    finally:
        for server in servers:
            server.close()


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _TerminalForeground:
    """The controlling terminal's foreground, taken from the process group this process was
    started in (make's) and given back; nothing is done unless stdin is that terminal, the
    group is in its foreground, and this process is not the group's leader already (started by
    a shell, it is: Ctrl-C then reaches only what the shell started)."""

    def __init__(self) -> None:
        self._fd = -1
        self._previous = -1
        self._tstp: _Handler = signal.SIG_DFL

    def take(self) -> None:
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp() \
                    or os.getpgrp() == os.getpid():
                return
            previous = os.getpgrp()
            os.setpgid(0, 0)
        except (OSError, ValueError):
            return
        try:
            self._set_foreground(fd, os.getpid())
        except OSError:
            # A background group without the terminal would never see Ctrl-C: back to make's.
            with contextlib.suppress(OSError):
                os.setpgid(0, previous)
            return
        self._fd, self._previous = fd, previous
        # Ctrl-Z would stop the demo with nobody to continue it: the shell watches make, which
        # is not stopped, and has handed the terminal to make's group, not this one.
        self._tstp = signal.signal(signal.SIGTSTP, signal.SIG_IGN)

    def give_back(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):  # make's group gone: nothing to give back to
            self._set_foreground(self._fd, self._previous)
        signal.signal(signal.SIGTSTP, self._tstp)
        self._fd = -1

    @staticmethod
    def _set_foreground(fd: int, group: int) -> None:
        # From a background group tcsetpgrp sends SIGTTOU, which would stop this process.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(fd, group)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def main(base_port: int = DEFAULT_BASE_PORT) -> int:
    terminal = _TerminalForeground()
    terminal.take()
    try:
        return _main(base_port)
    except KeyboardInterrupt:
        # Ctrl-C outside the event loop (while starting or after stopping): the files and the
        # child have been dealt with by the finally clauses on the way out.
        print("demo: stopped", file=sys.stderr)
        return 0
    finally:
        terminal.give_back()


def _main(base_port: int) -> int:
    problem = base_port_problem(base_port)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    ports = Ports(base_port)
    try:
        stub_sockets = claim_ports(ports)
    except PortInUseError as error:
        print(port_in_use_message(error.name, error.port, base_port), file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="mta-ingress-demo-") as workdir:
            cert_dir = Path(workdir) / "tls"
            cert_dir.mkdir()
            cert_file = cert_dir / "localhost.pem"
            cert_file.write_bytes(selfsigned.generate(("localhost", HOST)))
            config_path = Path(workdir) / "demo.toml"
            config_path.write_text(demo_config_text(ports, cert_dir))
            try:
                config.load(config_path, environ={})  # its problems, here and in one place
            except config.ConfigError as error:
                for line in error.problems:
                    print(f"demo: {line}", file=sys.stderr)
                return 1
            import uvloop

            process = _start_ingress(config_path)
            try:
                return uvloop.run(_serve(ports, stub_sockets, process, cert_file))
            finally:
                _stop_ingress(process)
    finally:
        for sock in stub_sockets.values():
            sock.close()
