"""The single-node demo: the ingress in front of stub GreenArrow services, and the egress tier in
front of a stub MX, on loopback.

``mta-ingress demo [--base-port N]`` (what ``make demo`` runs) starts, on 127.0.0.1:

- stub services, in this process on uvloop: an MTA and an Event Tracker that speak SMTP (with
  the PROXY header the greenarrow preset sends) and HTTP, and a TLS service (HTTP); each answers
  with what it saw (``ingress/demo/stub_smtp.py``, ``ingress/demo/stub_http.py``);
- an MX stub on 127.0.0.250 (``SINK_HOST``): the remote MX of an outbound message, the SMTP stub
  without a PROXY header, so that its replies name the address a session came from;
- the ingress itself, ``mta-ingress run`` with the greenarrow preset moved onto loopback ports
  (``demo_config_text``), as a child process;
- the egress tier, a second ``mta-ingress run`` with the egress preset (``egress_config_text``):
  a socks5 and a forward listener sending from 127.0.0.51 or 127.0.0.52 (``EGRESS_SOURCES``) to
  the MX stub only.  A process of its own, as in production, where it runs on the sending hosts;

then prints a guide (``guide_text``) of commands to try, once both report ready.

Ports are a block starting at ``--base-port`` (default 20000); see ``OFFSETS``.  Every port is
checked before anything starts, and a taken one is reported in one line naming it and the
option.

Stopping: Ctrl-C (SIGINT), SIGTERM or SIGHUP.  Each child runs in its own process group, so a
Ctrl-C on the terminal reaches only this process, which stops the children with one SIGTERM
each (their configured drain is 0 s, so this is the same shutdown as a SIGINT; and a SIGTERM
that arrives while a child is still importing ends it silently, where a SIGINT would print a
KeyboardInterrupt traceback), waits for them, then stops the stubs.  A second Ctrl-C kills the
children's process groups at once.  The demo exits 0 when it was stopped this way (being
stopped is how the demo ends, and ``make`` would otherwise report an error), 1 when something
failed, 2 for a bad ``--base-port``.

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
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ingress import config
from ingress.demo import stub_http, stub_smtp
from tls import selfsigned

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 20000
# The MX stub listens off 127.0.0.1: the egress listeners' client network (allow_clients,
# 127.0.0.1/32) is on their deny list, the rest of loopback is this host's to use.
SINK_HOST = "127.0.0.250"
# Two of this host's loopback addresses as the sending addresses, so that the MX stub's answer
# shows which one a session left from; the first is the default of a CONNECT without BIND.
EGRESS_SOURCES = ("127.0.0.51", "127.0.0.52")
# The egress listeners' default deny list (routing/egress.py) less loopback, where the demo's MX
# is; the client's own network stays denied (allow_clients is added to the list), and
# egress_ports lets a session reach the MX stub's port only.
DEMO_DENY_DESTINATIONS = ("169.254.0.0/16", "fe80::/10", "10.0.0.0/8", "172.16.0.0/12",
                          "192.168.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "fc00::/7")

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
    # The egress preset's ports, 2526 (forward) and 5000 (socks5, KumoProxy's), its admin's
    # last digits, and the MX stub's (25) after the 5.
    "egress-forward": 2526,
    "egress-socks": 5000,
    "mx-smtp": 5025,
    "egress-admin": 5081,
}
LISTENERS = ("smtp25", "smtp587", "http", "https", "smtp25-proxied", "smtp587-proxied",
             "http-proxied", "https-proxied")
# Stub ports carry the names of the greenarrow preset's backends that point at them.
STUBS = ("event-tracker-smtp", "mta-smtp", "event-tracker-http", "mta-http", "tls-http")
EGRESS_LISTENERS = ("egress-socks", "egress-forward")
SINK = "mx-smtp"
SINK_NAME = "sink.demo"
MIN_BASE_PORT = 1024
MAX_BASE_PORT = 65535 - max(OFFSETS.values())

READY_TIMEOUT = 20.0
# The demo's timeouts.grace is 2 s: the children are gone well within this after a SIGTERM.
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


def host_of(name: str) -> str:
    """The address a port of ``OFFSETS`` is bound on."""
    return SINK_HOST if name == SINK else HOST


def describe(name: str) -> str:
    """What binds a port of ``OFFSETS``, for messages."""
    if name == "admin":
        return "the admin listener"
    if name == "egress-admin":
        return "the egress tier's admin listener"
    if name == SINK:
        return "the MX SMTP stub"
    if name in LISTENERS or name in EGRESS_LISTENERS:
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
    return (f"demo: port {port} on {host_of(name)} ({describe(name)}) is already in use; move "
            f"the demo's ports with --base-port, e.g. mta-ingress demo --base-port {suggestion}")


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


def egress_config_text(ports: Ports, sources: Sequence[str] = EGRESS_SOURCES) -> str:
    """The egress preset on loopback: its two listeners, taking MTAs' sessions from 127.0.0.1
    only and sending them from ``sources`` (the first is the default) to the MX stub's port."""
    lines = ['preset = "egress"', "workers = 1", "",
             "[timeouts]", 'drain = "0s"', 'grace = "2s"', ""]
    # JSON arrays of strings and numbers are valid TOML arrays.
    for name in EGRESS_LISTENERS:
        lines += [f"[listeners.{name}]", f'bind = ["{HOST}:{ports[name]}"]',
                  f"egress_sources = {json.dumps(list(sources))}",
                  f"egress_ports = [{ports[SINK]}]",
                  f'allow_clients = ["{HOST}/32"]',
                  f"deny_destinations = {json.dumps(list(DEMO_DENY_DESTINATIONS))}", ""]
    lines += ["[admin]", f'bind = ["{HOST}:{ports["egress-admin"]}"]', ""]
    return "\n".join(lines)


GUIDE = """\
mta-ingress demo: the ingress (greenarrow preset) on {host}, in front of stub GreenArrow services
(MTA, Event Tracker, TLS) that answer with what they received, and the egress tier in front of a
stub MX. In another terminal:

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

The egress tier, a second mta-ingress (egress preset) as on the hosts that send the MTAs'
outbound mail: an MTA asks it to send from one of the host's addresses, here {default_source}
(the default) or {other_source}, and the MX stub at {sink_host}:{sink} answers with the address
each session came from. A SOCKS5 CONNECT alone, as curl makes it, leaves from the default (the
"<" lines of curl -v are the MX's replies):
  curl -sv --socks5 {host}:{egress_socks} smtp://{sink_host}:{sink} --mail-from demo@example.org --mail-rcpt someone@example.net --upload-file {message_file}
KumoMTA's SOCKS5 exchange, BIND to the source then CONNECT, leaves from the source it names:
  {python} -m ingress.demo.egress_try --socks5 {host}:{egress_socks} --source {other_source} --to {sink_host}:{sink}
The forward listener takes a PROXY header instead (KumoMTA's ha_proxy_server): the header's
source is the address to send from, its destination the MX:
  printf 'PROXY TCP4 {other_source} {sink_host} 40000 {sink}\\r\\nQUIT\\r\\n' | nc {host} {egress_forward}
or without nc, with a v2 header and a whole message:
  {python} -m ingress.demo.egress_try --forward {host}:{egress_forward} --source {other_source} --to {sink_host}:{sink}

Ports: listeners {smtp25} {smtp587} {http} {https} (and +1000: -proxied), admin {admin},
stubs {stubs}; egress listeners {egress_socks} (socks5) {egress_forward} (forward), egress admin
{egress_admin}, MX stub {sink_host}:{sink}; --base-port moves them all.
The access logs of the ingress and the egress tier follow; Ctrl-C stops all.
"""  # noqa: E501 (one command a line, to copy whole)

GUIDE_LAST_LINE = "The access logs of the ingress and the egress tier follow; Ctrl-C stops all."
MESSAGE = (b"From: demo@example.org\r\nTo: someone@example.net\r\n"
           b"Subject: through the egress tier\r\n\r\nHello from mta-ingress demo.\r\n")


def guide_text(ports: Ports, cert_file: Path, message_file: Path = Path("message.eml"),
               python: str = sys.executable) -> str:
    """``python``: the interpreter that runs the demo's own client (it has this package)."""
    return GUIDE.format(
        host=HOST, cert_file=cert_file, http=ports["http"], https=ports["https"],
        smtp25=ports["smtp25"], smtp587=ports["smtp587"],
        smtp587_proxied=ports["smtp587-proxied"], admin=ports["admin"],
        mta_http=ports["mta-http"], stubs=" ".join(str(ports[name]) for name in STUBS),
        default_source=EGRESS_SOURCES[0], other_source=EGRESS_SOURCES[1],
        sink_host=SINK_HOST, sink=ports[SINK], egress_socks=ports["egress-socks"],
        egress_forward=ports["egress-forward"], egress_admin=ports["egress-admin"],
        message_file=shlex.quote(str(message_file)), python=shlex.quote(python))


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
        sock.bind((host_of(name), port))
    except OSError as error:
        sock.close()
        raise PortInUseError(name, port) from error
    return sock


def claim_ports(ports: Ports) -> dict[str, socket.socket]:
    """Check every port, in order; returns the stubs' sockets (the MX stub's too), bound and
    listening, and raises ``PortInUseError`` for the first port that cannot be bound."""
    stubs: dict[str, socket.socket] = {}
    try:
        for name, port in ports.all():
            sock = _bind(name, port)
            if name in STUBS or name == SINK:
                sock.listen(128)
                sock.setblocking(False)
                stubs[name] = sock
            else:
                sock.close()  # the ingress or the egress tier binds it in a moment
    except PortInUseError:
        for sock in stubs.values():
            sock.close()
        raise
    return stubs


@dataclass(frozen=True, slots=True)
class Child:
    """An ``mta-ingress run`` of the demo: ``name`` for messages, ``admin`` its admin port."""

    name: str
    process: subprocess.Popen[bytes]
    admin: int


def _child_setup() -> None:
    # Runs in each child between fork and exec: if this process dies without stopping it
    # (SIGKILL), the kernel sends it SIGTERM instead of leaving it serving on the ports.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_child(config_path: Path) -> subprocess.Popen[bytes]:
    """``mta-ingress run --config config_path``, in a process group of its own."""
    # The user's MTA_INGRESS_* variables would change the demo's configuration under it.
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("MTA_INGRESS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "ingress", "run", "--config", str(config_path)],
        stdin=subprocess.DEVNULL, env=environ, process_group=0, preexec_fn=_child_setup)


def _kill_child(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group: its workers too


def _stop_children(processes: Sequence[subprocess.Popen[bytes]],
                   timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM to every child first, so that they stop together, then wait for each within
    ``timeout`` in all; one still running then is killed with its process group."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _kill_child(process)
            codes.append(process.wait())
    return codes


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


async def _serve(ports: Ports, stub_sockets: dict[str, socket.socket], children: list[Child],
                 cert_file: Path, message_file: Path) -> int:
    loop = asyncio.get_running_loop()
    signals = 0
    stop = asyncio.Event()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            for child in children:  # a second Ctrl-C: no more waiting for open sessions
                _kill_child(child.process)
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
        # No PROXY header: the MX's peer is the egress tier's socket, bound to the source.
        await loop.create_server(stub_smtp.factory(SINK_NAME, stub_smtp.StubStats(),
                                                   expect_proxy=False),
                                 sock=stub_sockets[SINK]),
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(children)
        while waiting:
            waiting = [child for child in waiting if not await _is_ready(child.admin)]
            if not waiting:
                break
            if stop.is_set():
                print("demo: stopping", file=sys.stderr, flush=True)
                return 0  # the caller stops the children
            for child in children:
                if child.process.poll() is not None:
                    print(f"demo: {child.name} exited during start-up (code "
                          f"{child.process.returncode}); see its messages above",
                          file=sys.stderr)
                    return 1
            if time.monotonic() > deadline:
                print(f"demo: {waiting[0].name} was not ready within {READY_TIMEOUT:.0f} s",
                      file=sys.stderr)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        print(guide_text(ports, cert_file, message_file), flush=True)
        while not stop.is_set():
            for child in children:
                if child.process.poll() is not None:
                    print(f"demo: {child.name} exited (code {child.process.returncode})",
                          file=sys.stderr)
                    return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        print("demo: stopping", file=sys.stderr, flush=True)
        # The stubs keep answering while the children let open sessions finish.
        codes = await loop.run_in_executor(
            None, _stop_children, [child.process for child in children])
        failed = [(child, code) for child, code in zip(children, codes, strict=True) if code]
        for child, code in failed:
            print(f"demo: {child.name} exited with code {code} while stopping", file=sys.stderr)
        return 1 if failed else 0
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
            message_file = Path(workdir) / "message.eml"
            message_file.write_bytes(MESSAGE)
            config_path = Path(workdir) / "demo.toml"
            config_path.write_text(demo_config_text(ports, cert_dir))
            egress_path = Path(workdir) / "egress.toml"
            egress_path.write_text(egress_config_text(ports))
            for path in (config_path, egress_path):
                try:
                    config.load(path, environ={})  # its problems, here and in one place
                except config.ConfigError as error:
                    for line in error.problems:
                        print(f"demo: {path.name}: {line}", file=sys.stderr)
                    return 1
            import uvloop

            children: list[Child] = []
            try:
                children.append(Child("the ingress", _start_child(config_path),
                                      ports["admin"]))
                children.append(Child("the egress tier", _start_child(egress_path),
                                      ports["egress-admin"]))
                return uvloop.run(_serve(ports, stub_sockets, children, cert_file,
                                         message_file))
            finally:
                _stop_children([child.process for child in children])
    finally:
        for sock in stub_sockets.values():
            sock.close()
