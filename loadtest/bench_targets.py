"""The parties of a benchmark: HAProxy, mta-ingress and the reference floor, each configured like
the KRA's HAProxy, and the backend; started, pinned, waited for and stopped."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from loadtest import procstat
from loadtest.bench_scenarios import READINESS_PATH, cpu_list, key_type
from tls import selfsigned

ROOT = Path(__file__).resolve().parent.parent

# Lines of a proxy's stderr that mean something went wrong, except HAProxy's soft stop, which
# says "Proxy NAME stopped (cumulated conns: ...)" as a [WARNING].
ALARMING = ("[ALERT]", "[WARNING]", "level=ERROR", "level=WARNING", "Traceback", "crashed")
ROUTINE = ("stopped (cumulated conns",)


HAPROXY = "/usr/sbin/haproxy"


BENCH_VENV = ROOT / ".venv-bench"


# Enough descriptors for the idle scenario: the ingress holds two per relayed connection.
WANTED_NOFILE = 65536


CONTRACT_MAXCONN = 20000


# HAProxy 2.6 asks for maxconn * 2 + 14 descriptors with this configuration (one listener).
HAPROXY_FD_OVERHEAD = 20


# Descriptors a process needs besides its connections (listeners, std streams, epoll, pipes).
FD_MARGIN = 100


READY_TIMEOUT = 15.0


STOP_TIMEOUT = 10.0


_PR_SET_PDEATHSIG = 1


_children: list[Child] = []


def _death_signal(signum: int) -> Callable[[], None]:
    """preexec_fn: the child gets ``signum`` when the bench dies, even by SIGKILL, so that no
    proxy outlives the run.  The ingress gets SIGINT: its supervisor then stops its workers at
    once, without the drain period."""

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return arm


class Child:
    """A process in a process group of its own (Ctrl-C reaches only the bench, which then stops
    the group) with its output in files of the results directory."""

    def __init__(self, name: str, argv: list[str], *, stop_signal: signal.Signals,
                 death_signal: signal.Signals, stdout: Path | int, stderr: Path,
                 pipe_stdin: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.stop_signal = stop_signal
        self.stderr_path = stderr
        out: IO[bytes] | int = open(stdout, "wb") if isinstance(stdout, Path) else stdout  # noqa: SIM115
        with open(stderr, "wb") as err:
            try:
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True,
                    preexec_fn=_death_signal(death_signal), env={**os.environ,
                                                                "PYTHONUNBUFFERED": "1"})
            finally:
                if not isinstance(out, int):
                    out.close()
        _children.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Stop signal, then SIGKILL to the whole group if it does not exit in time."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        # Ingress workers share the group: none may outlive its supervisor.  While a member is
        # alive the group ID cannot have been reused, so this never signals a stranger.
        if self.alive() or procstat.group_members(self.process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        if self in _children:
            _children.remove(self)
        return self.process.returncode


def stop_all_children() -> None:
    for child in list(_children):
        child.stop()


def taskset(cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", cpu_list(cpus)] if cpus else []


def listening(port: int) -> bool:
    needle = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as file:
            for line in file:
                fields = line.split()
                if len(fields) > 3 and (fields[1] + " ").endswith(needle) and fields[3] == "0A":
                    return True
    return False


class Backend:
    """``loadtest/backend.py`` (smtp stub, sink or http origin) on the load generator's CPU."""

    def __init__(self, mode: str, port: int, cpus: set[int] | None, workdir: Path,
                 script: Path | None = None, arguments: tuple[str, ...] = ()) -> None:
        """``script``: another server with the same control protocol (``port N``, then a JSON
        line per ``stats``), given ``mode``, ``--port`` and ``arguments``."""
        self.mode = mode
        self.argv = [*taskset(cpus), sys.executable,
                     str(script or ROOT / "loadtest" / "backend.py"), mode, "--port", str(port),
                     *arguments]
        self.child = Child(f"backend-{mode}", self.argv, stop_signal=signal.SIGKILL,
                           death_signal=signal.SIGKILL,
                           stdout=subprocess.PIPE, stderr=workdir / f"backend-{mode}.stderr",
                           pipe_stdin=True)
        self.port = port
        line = self._readline(READY_TIMEOUT)
        if not line.startswith("port "):
            raise RuntimeError(f"backend did not start: {line!r}\n{self.child.stderr_tail()}")

    def _readline(self, timeout: float) -> str:
        stdout = self.child.process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        if not readable:
            raise RuntimeError(f"backend {self.mode} did not answer within {timeout:g}s")
        return stdout.readline().decode()

    def stats(self) -> dict[str, int]:
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write(b"stats\n")
        stdin.flush()
        answer: dict[str, int] = json.loads(self._readline(READY_TIMEOUT))
        return answer

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.child.process.stdin is not None:
                self.child.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.process.wait(2.0)
        self.child.stop()


HAPROXY_CONFIG = """\
# Like the GreenArrow KRA chart's HAProxy for SMTP: mode tcp, send-proxy (v1), timeouts
# connect 5s / client 1m / server 1m, one thread, maxconn 20000, logging as --haproxy-log says;
# no splice.
global
    nbthread 1
    maxconn {maxconn}{maxconn_note}{log_global}

defaults
    mode tcp{log_defaults}
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend smtp
    bind 127.0.0.1:{port}
    default_backend mta-smtp

backend mta-smtp
    server mta 127.0.0.1:{backend_port} send-proxy
"""


INGRESS_CONFIG = """\
# The same contract as the HAProxy side: one tcp listener, one backend with a PROXY v1 header,
# connect timeout 5s, idle timeout 1m (HAProxy's client/server timeouts).  drain and grace only
# shorten the bench's teardown: the proxy is stopped after its load has ended.
preset = "none"
workers = {workers}
log_format = "logfmt"

[listeners.smtp]
bind = ["127.0.0.1:{port}"]
mode = "tcp"
backend = "mta-smtp"
io_engine = "{io_engine}"

[backends.mta-smtp]
servers = ["127.0.0.1:{backend_port}"]
send_proxy = "v1"

[timeouts]
connect = "5s"
tcp_idle = "1m"
drain = "0s"
grace = "2s"
"""


HAPROXY_HTTP_CONFIG = """\
# Like the GreenArrow KRA chart's HAProxy for HTTP: mode http, option forwardfor, keep-alive on
# both sides with aggressive server connection reuse, timeouts connect 5s / client 1m / server 1m,
# one thread, logging as --haproxy-log says; its routing: readiness answered locally, the send
# API to the MTA, everything else (clicks, opens) to the event tracker.  Every backend is the
# bench's origin.
global
    nbthread 1
    maxconn {maxconn}{maxconn_note}{log_global}{tls_global}
defaults
    mode http{log_defaults}
    option forwardfor
    option http-keep-alive
    http-reuse aggressive
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend http
    bind 127.0.0.1:{port}{tls_bind}
    {readiness}
    use_backend mta if {{ path_beg /api/v1/send.json }}
    default_backend event-tracker

backend mta
    server mta 127.0.0.1:{backend_port}

backend event-tracker
    server event-tracker 127.0.0.1:{backend_port}
"""


# The ingress's TLS settings (tls/store.py): TLS 1.2-1.3, Mozilla intermediate ECDHE suites.
HAPROXY_TLS_GLOBAL = """
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305
    ssl-default-bind-options ssl-min-ver TLSv1.2
"""


HAPROXY_READINESS = ('http-request return status 200 content-type text/plain string "ready\\n" '
                     f"if {{ path_beg {READINESS_PATH} }}")


INGRESS_HTTP_CONFIG = """\
# The greenarrow preset's http listener and routes table (readiness and stats answered locally,
# /api/v1/send.json -> mta-http, ACME -> tls-http, everything else -> event-tracker-http), every
# backend pointing at the bench's origin; the other listeners are disabled.  Health checks stay
# as the preset has them on the http backends (a TCP connect every 2s); the SMTP backends, whose
# listeners are off, are not checked.  Timeouts as HAProxy's: connect 5s, client and server 1m.
preset = "greenarrow"
workers = {workers}
log_format = "logfmt"

[listeners.{listener}]
bind = ["127.0.0.1:{port}"]
{disabled}{tls}
[backends.mta-http]
servers = ["127.0.0.1:{backend_port}"]

[backends.event-tracker-http]
servers = ["127.0.0.1:{backend_port}"]

[backends.tls-http]
servers = ["127.0.0.1:{backend_port}"]

[backends.mta-smtp]
servers = ["127.0.0.1:{backend_port}"]
check = false

[backends.event-tracker-smtp]
servers = ["127.0.0.1:{backend_port}"]
check = false

[timeouts]
connect = "5s"
http_keep_alive = "1m"
server = "1m"
drain = "0s"
grace = "2s"
"""


INGRESS_DISABLED = ("smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied", "http-proxied",
                    "https", "https-proxied")


@dataclass(slots=True)
class ProxySetup:
    name: str
    port: int
    config_path: Path
    argv: list[str]
    # The ingress's stdout, one file per measurement ("{tag}" replaced), or None: /dev/null.
    access_log: str | None = None


def haproxy_maxconn() -> tuple[int, str]:
    """The contract's maxconn 20000, or what the descriptor limit allows: HAProxy refuses to
    start when it cannot get two descriptors per connection (plus a few)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fitting = (hard - HAPROXY_FD_OVERHEAD) // 2
    if fitting >= CONTRACT_MAXCONN:
        return CONTRACT_MAXCONN, ""
    return fitting, (f"the contract's {CONTRACT_MAXCONN} needs "
                     f"{CONTRACT_MAXCONN * 2 + HAPROXY_FD_OVERHEAD} descriptors; "
                     f"RLIMIT_NOFILE hard limit is {hard}")


CERTIFICATE_FILE = "bench.pem"  # certificate_dir's one file, which the floor is given


def certificate_dir(workdir: Path, scenario: str) -> Path:
    """A directory holding one self-signed certificate of the scenario's key type, in the
    one-file PEM format both proxies read (HAProxy's ``crt <dir>``, the ingress's store)."""
    directory = workdir / "certs"
    directory.mkdir(exist_ok=True)
    path = directory / CERTIFICATE_FILE
    if not path.exists():
        path.write_bytes(selfsigned.generate(
            ("bench.localhost",), key_type=key_type(scenario)))
    return directory


def haproxy_log_lines(log: str, layout: str) -> dict[str, str]:
    """The ``log_global`` and ``log_defaults`` lines of a bench HAProxy configuration for
    --haproxy-log ``log`` ("off", "file", "errors": with ``option dontlog-normal``), lines in
    ``layout`` (``httplog`` or ``tcplog``) to stdout."""
    if log == "off":
        return {"log_global": "", "log_defaults": ""}
    return {"log_global": "\n    log stdout format raw local0",
            "log_defaults": f"\n    log global\n    option {layout}"
                            + ("\n    option dontlog-normal" if log == "errors" else "")}


def haproxy_setup(workdir: Path, port: int, backend_port: int, cpus: set[int] | None,
                  http: bool = False, certs: Path | None = None,
                  log: str = "off") -> ProxySetup:
    """``log``: "off", or "file": one line per request (``option httplog``) or session
    (``tcplog``) on stdout, which goes to a file in the results directory, as the contract's
    HAProxy logs ("Logs go to stdout, one line per HTTP request or TCP session"); or "errors":
    the same with ``option dontlog-normal``."""
    path = workdir / "haproxy.cfg"
    maxconn, note = haproxy_maxconn()
    logs = log != "off"
    path.write_text((HAPROXY_HTTP_CONFIG if http else HAPROXY_CONFIG).format(
        port=port, backend_port=backend_port, maxconn=maxconn, readiness=HAPROXY_READINESS,
        maxconn_note=f"  # {note}" if note else "",
        **haproxy_log_lines(log, "httplog" if http else "tcplog"),
        tls_global=HAPROXY_TLS_GLOBAL if certs else "\n",
        tls_bind=f" ssl crt {certs} alpn http/1.1" if certs else ""))
    # -db: stay in the foreground, one process, no master: what is measured is what serves.
    return ProxySetup("haproxy", port, path, [*taskset(cpus), HAPROXY, "-db", "-f", str(path)],
                      str(workdir / "haproxy-access-{tag}.log") if logs else None)


def floor_setup(port: int, backend_port: int, cpus: set[int] | None,
                burn_us: float, certs: Path | None = None, tcp: bool = False,
                epoll: bool = False) -> ProxySetup:
    """loadtest/floor.py: the reference relay, ``burn_us`` of busy CPU added per request (per
    session with ``tcp``, the TCP relay of the sessions scenario, on an epoll set of its own
    with ``epoll``); with ``certs`` (certificate_dir's), over TLS with the certificate the
    proxies serve."""
    # on this process's interpreter, as the backend and the load generator
    script = Path(__file__).with_name("floor.py")
    name = ("floor-epoll" if epoll else "floor") + (f"+{burn_us:g}us" if burn_us else "")
    tls = ["--tls-cert", str(certs / CERTIFICATE_FILE)] if certs else []
    return ProxySetup(name, port, script,
                      [*taskset(cpus), sys.executable, str(script), "--port", str(port),
                       "--backend-port", str(backend_port), "--burn-us", f"{burn_us:g}",
                       *tls, *(["--tcp"] if tcp else []), *(["--epoll"] if epoll else [])])


ADMIN_PORT_OFFSET = 100


# The allocators --allocator offers the ingress: glibc's malloc (no preload, as the image runs
# it) or jemalloc, the shared library of Debian's libjemalloc2, preloaded: a measurement of
# whether the image should preload it (docs/benchmarks.md: not so far).
JEMALLOC = "libjemalloc.so.2"


def jemalloc_available() -> bool:
    return ctypes.util.find_library("jemalloc") is not None


def ingress_setup(workdir: Path, port: int, backend_port: int, cpus: set[int] | None,
                  workers: int, access_log: str, http: bool = False,
                  certs: Path | None = None, allocator: str = "glibc",
                  name: str = "mta-ingress", io_engine: str = "epoll") -> ProxySetup:
    """``allocator``: "glibc", or "jemalloc", preloaded. ``name``: the setup's, which its
    configuration and access log files are named after (two setups of one run need two).
    ``io_engine``: the tcp listener's (not in the HTTP scenarios, whose listeners have none)."""
    short = name.removeprefix("mta-")
    path = workdir / f"{short}.toml"
    if http:
        listener = "https" if certs else "http"
        disabled = "".join(f"\n[listeners.{other}]\nenabled = false\n"
                           for other in (*INGRESS_DISABLED, "http") if other != listener)
        tls = f'\n[tls]\ncert_dir = "{certs}"\n' if certs else ""
        text = INGRESS_HTTP_CONFIG.format(port=port, backend_port=backend_port,
                                          workers=workers, disabled=disabled,
                                          listener=listener, tls=tls)
    else:
        text = INGRESS_CONFIG.format(port=port, backend_port=backend_port, workers=workers,
                                     io_engine=io_engine)
    if access_log == "errors":  # HAProxy's dontlog-normal: the lines of errors only
        text = f"log_normal = false\n{text}"
    # Metrics are counted as in production; their listener stays on loopback, unscraped.
    path.write_text(f'{text}\n[admin]\nbind = ["127.0.0.1:{port + ADMIN_PORT_OFFSET}"]\n')
    binary = BENCH_VENV / "bin" / "mta-ingress"
    if not binary.exists():
        binary = Path(sys.executable).parent / "mta-ingress"
    preload = [] if allocator == "glibc" else ["env", f"LD_PRELOAD={JEMALLOC}"]
    return ProxySetup(name, port, path,
                      [*taskset(cpus), *preload, str(binary), "run", "--config", str(path)],
                      None if access_log == "devnull"
                      else str(workdir / f"{short}-access-{{tag}}.log"))


def wait_ready(child: Child, port: int, *, ingress: bool) -> None:
    """Until ``child`` listens on ``port`` (an mta-ingress: and has logged its ``ready`` line);
    RuntimeError with its stderr's tail if it exits first or is not ready in READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited {child.process.returncode}:\n"
                               f"{child.stderr_tail()}")
        ready = listening(port)
        if ingress:
            ready = ready and 'msg="ready"' in child.stderr_tail(50)
        if ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready in {READY_TIMEOUT:g}s:\n"
                               f"{child.stderr_tail()}")
        time.sleep(0.02)


class RunningProxy:
    def __init__(self, setup: ProxySetup, workdir: Path, tag: str) -> None:
        self.setup = setup
        ingress = setup.name.startswith("mta-ingress")
        self.access_log = (Path(setup.access_log.format(tag=tag))
                           if setup.access_log is not None else None)
        stdout: Path | int = self.access_log or subprocess.DEVNULL
        # HAProxy: SIGUSR1 is its soft stop (exit 0 once idle; SIGTERM kills it with the
        # signal's status).  mta-ingress: SIGINT stops at once, without the drain period.
        self.child = Child(setup.name, setup.argv,
                           stop_signal=signal.SIGINT if ingress else signal.SIGUSR1,
                           death_signal=signal.SIGINT if ingress else signal.SIGTERM,
                           stdout=stdout, stderr=workdir / f"{setup.name}-{tag}.stderr")
        wait_ready(self.child, setup.port, ingress=ingress)
        self.pids = procstat.tree(self.child.pid)

    def memory_kib(self) -> tuple[int, int]:
        return procstat.rss_kib(self.pids), procstat.pss_kib(self.pids)

    def stop(self) -> tuple[int | None, dict[str, int], list[str]]:
        """Exit status, the access log's ``end=`` reasons (the ingress's own account of how
        every session ended; a rejection counted as ``rejected:REASON``), and the alarming
        lines of its stderr."""
        code = self.child.stop()
        try:
            stderr = self.child.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            stderr = []
        alarms = [line for line in stderr if any(word in line for word in ALARMING)
                  and not any(word in line for word in ROUTINE)]
        ends: dict[str, int] = {}
        if self.access_log is not None and self.access_log.exists():
            with open(self.access_log, "rb") as file:
                ends = access_log_ends(file)
        return code, ends, alarms


def access_log_ends(lines: Iterable[bytes]) -> dict[str, int]:
    """How many sessions ended each way, from the ``end=`` field of access log lines (text
    layout); a rejection is ``rejected:REASON``."""
    ends: Counter[str] = Counter()
    for line in lines:
        at = line.find(b" end=")
        if at < 0:
            continue
        end = line[at + 5:].split(b" ", 1)[0].decode(errors="replace")
        reason_at = line.find(b" reason=")
        if end == "rejected" and reason_at >= 0:
            end += ":" + line[reason_at + 8:].split(b" ", 1)[0].decode(errors="replace")
        ends[end] += 1
    return dict(ends)
