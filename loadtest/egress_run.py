"""The egress half of ``make loadtest`` (``loadtest/run.py`` drives it): the egress tier's
configuration, the MX stub's id log, and what the egress faults check.

Layout: the demo's (``ingress/demo/single_node.py``) moved to ``--base-port``: the egress tier
(``mta-ingress run``, egress preset) listens on 127.0.0.1 at base+5000 (socks5) and base+2526
(forward), admin base+5081, and sends from ``SOURCES`` to the MX stub on 127.0.0.250:base+5025
(the SMTP stub without a PROXY header, with an id log: it records each message's id and the TCP
peer it came from, which is the source address).

``egress-rolling``, as a Kubernetes rollout replaces an egress pod, here on one host's ports
(``SO_REUSEPORT``): a second egress process starts and reports ready, then the first gets
SIGTERM, keeps accepting for the drain, closes its listeners, lets its sessions finish and exits.
``egress-restart`` is the rollout without a surge (one replica, or ``Recreate``): the second
starts only once the first has closed its listeners, and until it is ready connections are
refused, which the MTAs (the locust users) retry.  In both, before anything else, the fault
opens a session of its own through the first process (the *canary*: BIND, CONNECT, banner,
EHLO) and keeps it open; once the first's processes hold no listening socket any more (asked of
the kernel, not guessed from the drain's length), the canary sends its message on that session,
and the message goes into the ledger like locust's.  After the first has exited, its access log
says how many of its sessions were open at the SIGTERM and how each ended: one cut by the grace
period (``shutdown-grace-expired``) fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ingress.demo import egress_try
from ingress.demo import single_node as demo
from ingress.demo.egress_clients import socks5_connect
from loadtest import traffic
from loadtest.compare import Sent

# The sources the egress tier sends from: this host's loopback addresses, none of them the
# client's 127.0.0.1 (on the deny list with allow_clients). The first is the listener's default.
SOURCES = ("127.0.0.5", "127.0.0.7", "127.0.0.8")
SERVICE = "mx"
MX_NAME = "mx.loadtest"
LISTENERS = demo.EGRESS_LISTENERS
# Ends of an egress session that a clean drain never produces.
CUT_ENDS = frozenset({"shutdown-grace-expired"})
CANARY_SIZE = 2_000
TIMEOUT = 15.0


def config_text(ports: demo.Ports, *, workers: int, drain: float, grace: float) -> str:
    """The demo's egress configuration with the load test's sources and process settings."""
    text = demo.egress_config_text(ports, SOURCES)
    text = text.replace("workers = 1", f"workers = {workers}")
    text = text.replace('drain = "0s"', f'drain = "{drain:g}s"')
    return text.replace('grace = "2s"', f'grace = "{grace:g}s"')


def locust_options(ports: demo.Ports) -> list[str]:
    return ["--egress-host", demo.HOST,
            "--egress-socks-port", str(ports["egress-socks"]),
            "--egress-forward-port", str(ports["egress-forward"]),
            "--egress-to", f"{demo.SINK_HOST}:{ports[demo.SINK]}",
            "--egress-sources", ",".join(SOURCES)]


# --- the first process's drain, from its access log --------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def fields_of(line: str) -> dict[str, str]:
    """A logfmt line's fields (quoted values keep their quotes off; escapes are left as they
    are, since no field read here has any)."""
    return {key: value[1:-1] if value.startswith('"') else value
            for key, value in _FIELD.findall(line)}


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(slots=True)
class DrainReport:
    """The first egress process's sessions that ended after its SIGTERM."""

    open_at_signal: int = 0  # started before the SIGTERM
    accepted_after: int = 0  # accepted during the drain
    ends: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)

    @property
    def cut(self) -> int:
        return sum(count for end, count in self.ends.items() if end in CUT_ENDS)

    def text(self) -> str:
        ends = ", ".join(f"{end} {count}" for end, count in sorted(self.ends.items())) or "-"
        return (f"{self.open_at_signal} of the first egress process's sessions were open at "
                f"its SIGTERM and {self.accepted_after} were accepted during its drain; they "
                f"ended: {ends}")


def drain_report(lines: Iterable[str], signalled_at: float) -> DrainReport:
    """From the access log's egress lines (their ``ts`` is the session's end, ``duration_ms``
    its length); refused sessions are counted as any other."""
    report = DrainReport()
    for line in lines:
        fields = fields_of(line)
        if fields.get("kind") != "egress" or "ts" not in fields:
            continue
        ended = _timestamp(fields["ts"])
        if ended < signalled_at:
            continue
        started = ended - int(fields.get("duration_ms", "0")) / 1000
        if started <= signalled_at:
            report.open_at_signal += 1
        else:
            report.accepted_after += 1
        report.ends[fields.get("end", "?")] += 1
        report.sources[fields.get("source", "-")] += 1
    return report


# --- listening sockets ------------------------------------------------------------------------
#
# Which sockets listen, with their inodes, from the kernel's socket diagnostics (sock_diag
# netlink, what ``ss -l`` reads): asked for listening sockets only, so its cost does not grow
# with the tens of thousands of TIME_WAIT sockets a load leaves, as reading /proc/net/tcp does
# (a fifth of a second each time then). /proc/net/tcp stays the fallback.

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid (48).
_DIAG_REQUEST = struct.Struct("=BBBBI48x")
# inet_diag_msg: family, state, timer, retrans (4 bytes), the sockid (48: sport first, in
# network order), expires, rqueue, wqueue, uid (16), inode.
_DIAG_SPORT_AT, _DIAG_INODE_AT = 4, 4 + 48 + 16


def parse_diag(data: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The (port, inode) of each inet_diag_msg in one netlink read, and whether it ended the
    dump; OSError for an error message."""
    found: list[tuple[int, int]] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise OSError("malformed netlink message")
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            raise OSError(-struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0],
                          "sock_diag refused the request")
        if kind == SOCK_DIAG_BY_FAMILY:
            body = offset + _NLMSGHDR.size
            (port,) = struct.unpack_from(">H", data, body + _DIAG_SPORT_AT)
            (inode,) = struct.unpack_from("=I", data, body + _DIAG_INODE_AT)
            found.append((port, inode))
        offset += (length + 3) & ~3
    return found, False


def _diag_listening(family: int) -> list[tuple[int, int]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(5)
        request = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                                 NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        found: list[tuple[int, int]] = []
        while True:
            listening, done = parse_diag(sock.recv(65536))
            found += listening
            if done:
                return found


def listening_inodes(proc_net_tcp: str, ports: Iterable[int]) -> set[int]:
    """The socket inodes of ``/proc/net/tcp`` (or ``tcp6``) text that listen on ``ports``."""
    wanted = {f"{port:04X}" for port in ports}
    inodes: set[int] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        columns = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if len(columns) < 10 or columns[3] != "0A":
            continue
        if columns[1].rpartition(":")[2] in wanted:
            inodes.add(int(columns[9]))
    return inodes


def listening_on(ports: Iterable[int]) -> set[int]:
    """The inodes of this host's (network namespace's) sockets listening on ``ports``."""
    ports = set(ports)
    try:
        return {inode for family in (socket.AF_INET, socket.AF_INET6)
                for port, inode in _diag_listening(family) if port in ports}
    except OSError:
        inodes: set[int] = set()
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                inodes |= listening_inodes(Path(name).read_text(), ports)
        return inodes


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes  # gone
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def still_listening(pids: Sequence[int], ports: Iterable[int]) -> bool:
    """Whether any of ``pids`` holds a socket listening on one of ``ports``."""
    listening = listening_on(ports)
    return any(socket_inodes(pid) & listening for pid in pids)


# --- the canary -------------------------------------------------------------------------------


class CanaryError(RuntimeError):
    pass


class Canary:
    """One SMTP session through the egress tier, opened and kept open before a fault and given
    its message after it (blocking; on the fault's thread)."""

    def __init__(self, ports: demo.Ports, source: str = SOURCES[1]) -> None:
        self.source = source
        self.ident = f"canary{secrets.token_hex(4)}-smtp-1"
        self.transcript: list[str] = []
        self.t0 = time.time()
        self._sock = socket.create_connection((demo.HOST, ports["egress-socks"]), TIMEOUT)
        try:
            socks5_connect(self._sock, (demo.SINK_HOST, ports[demo.SINK]), source=source)
            self._dialogue = egress_try.SmtpDialogue(self._sock, self.transcript.append)
            self._expect(self._dialogue.reply(), 220)
            self._expect(self._dialogue.command("EHLO canary.loadtest"), 250)
        except BaseException:
            self._sock.close()
            raise

    def _expect(self, reply: tuple[int, list[str]], code: int) -> None:
        if reply[0] != code:
            raise CanaryError(f"the canary got {reply[1][-1]!r}, not {code}")

    def finish(self) -> Sent:
        """Send the message and QUIT; the ledger's record of it (raises CanaryError or OSError
        when it was not accepted)."""
        try:
            dialogue = self._dialogue
            self._expect(dialogue.command("MAIL FROM:<canary@example.com>"), 250)
            self._expect(dialogue.command("RCPT TO:<reader@example.net>"), 250)
            self._expect(dialogue.command("DATA"), 354)
            self._expect(dialogue.data(traffic.egress_message(self.ident, self.source,
                                                              CANARY_SIZE)), 250)
            accepted = time.time()
            try:
                dialogue.command("QUIT")
            except OSError:
                pass  # accepted already
        finally:
            self.close()
        return Sent(self.ident, "smtp", SERVICE, self.source, True, self.t0, accepted,
                    "canary message", 1, False, None)

    def close(self) -> None:
        self._dialogue.close()
        self._sock.close()


def append_to_ledger(path: Path, record: Sent) -> None:
    """One write on an O_APPEND descriptor, as the locustfile writes its own records."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(record.to_json()) + "\n").encode())
    finally:
        os.close(fd)
