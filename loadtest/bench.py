"""Side-by-side benchmark of mta-ingress and HAProxy on loopback (``make bench``).

Both proxies are configured like the GreenArrow KRA chart's HAProxy for SMTP and put in front of
the same backend process; each scenario runs alternately on HAProxy and on mta-ingress, a fresh
proxy process per measurement.  The proxy under test has a CPU to itself; the load generator
(this process) and the backend share the other one.  CPU time of every party is read from /proc
over the measurement window, so that the output says who was the bottleneck.

See docs/benchmarks.md for what each scenario measures and how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python loadtest/bench.py` puts loadtest/, not the repository, first on sys.path.
    sys.path.insert(0, str(ROOT))

from loadtest import load, procstat, profile  # noqa: E402
from tls import selfsigned  # noqa: E402

T = TypeVar("T")

HAPROXY = "/usr/sbin/haproxy"
BENCH_VENV = ROOT / ".venv-bench"
RESULTS = ROOT / "loadtest" / "results"
SCENARIOS = ("sessions", "bulk", "idle", "http-keepalive", "http-close", "http-1mib",
             "http-latency", "https-handshake-ecdsa", "https-handshake-rsa", "https-keepalive")
# HTTPS: the same origin and routing behind the https listener, a certificate of the key type
# in the name (https-keepalive: ECDSA P-256); handshakes are new connections with one request.
TLS_SCENARIOS = ("https-handshake-ecdsa", "https-handshake-rsa", "https-keepalive")
# Measured with wrk (closed loop: each connection sends its next request when the last ends).
WRK_SCENARIOS = ("http-keepalive", "http-close", "http-1mib", *TLS_SCENARIOS)
HTTP_SCENARIOS = (*WRK_SCENARIOS, "http-latency")
# Where --floor measures the reference relay (loadtest/floor.py) too, over TLS in
# https-keepalive. Not http-close nor the handshakes: the relay opens a backend connection per
# client connection (mta-ingress pools them), so it would measure more work than the proxy it is
# a floor for.
FLOOR_SCENARIOS = ("http-keepalive", "https-keepalive")
COMPARED = ("haproxy", "mta-ingress")
# A click-tracking-like path: no route but the default one matches it, on both proxies.
HTTP_PATH = "/click/abc?x=1"
HTTP_LARGE_PATH = "/1m/click/abc?x=1"  # the origin answers /1m... with 1 MiB
# Proxies below this CPU utilisation were not the bottleneck of their measurement.
SATURATED = 0.90
# Busy time outside the bench's processes (see _cpu_figures), as a fraction of one CPU, above
# which a measurement is flagged: something else was competing for the CPUs.
DISTURBED = 0.15
TARGETS = {"sessions": 0.9, "bulk": 1.2, "http-keepalive": 0.75, "http-close": 0.85,
           "http-1mib": 1.0, "https-handshake-ecdsa": 0.9, "https-handshake-rsa": 0.9,
           "https-keepalive": 0.75}
# http-latency: ingress p99 at most this multiple of HAProxy's, at half HAProxy's peak rate.
LATENCY_MAX_RATIO = 2.0
# Enough descriptors for the idle scenario: the ingress holds two per relayed connection.
WANTED_NOFILE = 65536
CONTRACT_MAXCONN = 20000
# HAProxy 2.6 asks for maxconn * 2 + 14 descriptors with this configuration (one listener).
HAPROXY_FD_OVERHEAD = 20
# Descriptors a process needs besides its connections (listeners, std streams, epoll, pipes).
FD_MARGIN = 100
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Taken before the bench pins itself, which it does per run.
ALL_CPUS = frozenset(os.sched_getaffinity(0))


# --- processes -----------------------------------------------------------------------------------

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


def _pin(cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []


def _listening(port: int) -> bool:
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

    def __init__(self, mode: str, port: int, cpus: set[int] | None, workdir: Path) -> None:
        self.mode = mode
        self.argv = [*_pin(cpus), sys.executable, str(ROOT / "loadtest" / "backend.py"), mode,
                     "--port", str(port)]
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


# --- proxy configurations ------------------------------------------------------------------------

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
                     "if { path_beg /.kubernetes-readiness-probe }")

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
            ("bench.localhost",), key_type="rsa" if scenario.endswith("-rsa") else "ecdsa"))
    return directory


def haproxy_setup(workdir: Path, port: int, backend_port: int, cpus: set[int] | None,
                  http: bool = False, certs: Path | None = None,
                  log: str = "off") -> ProxySetup:
    """``log``: "off", or "file": one line per request (``option httplog``) or session
    (``tcplog``) on stdout, which goes to a file in the results directory, as the contract's
    HAProxy logs ("Logs go to stdout, one line per HTTP request or TCP session")."""
    path = workdir / "haproxy.cfg"
    maxconn, note = haproxy_maxconn()
    logs = log == "file"
    path.write_text((HAPROXY_HTTP_CONFIG if http else HAPROXY_CONFIG).format(
        port=port, backend_port=backend_port, maxconn=maxconn, readiness=HAPROXY_READINESS,
        maxconn_note=f"  # {note}" if note else "",
        log_global="\n    log stdout format raw local0" if logs else "",
        log_defaults=(f"\n    log global\n    option {'httplog' if http else 'tcplog'}"
                      if logs else ""),
        tls_global=HAPROXY_TLS_GLOBAL if certs else "\n",
        tls_bind=f" ssl crt {certs} alpn http/1.1" if certs else ""))
    # -db: stay in the foreground, one process, no master: what is measured is what serves.
    return ProxySetup("haproxy", port, path, [*_pin(cpus), HAPROXY, "-db", "-f", str(path)],
                      str(workdir / "haproxy-access-{tag}.log") if logs else None)


def floor_setup(port: int, backend_port: int, cpus: set[int] | None,
                burn_us: float, certs: Path | None = None) -> ProxySetup:
    """loadtest/floor.py: the reference relay, ``burn_us`` of busy CPU added per request; with
    ``certs`` (certificate_dir's), over TLS with the certificate the proxies serve."""
    # on this process's interpreter, as the backend and the load generator
    script = Path(__file__).with_name("floor.py")
    name = "floor" if not burn_us else f"floor+{burn_us:g}us"
    tls = ["--tls-cert", str(certs / CERTIFICATE_FILE)] if certs else []
    return ProxySetup(name, port, script,
                      [*_pin(cpus), sys.executable, str(script), "--port", str(port),
                       "--backend-port", str(backend_port), "--burn-us", f"{burn_us:g}",
                       *tls])


ADMIN_PORT_OFFSET = 100


def ingress_setup(workdir: Path, port: int, backend_port: int, cpus: set[int] | None,
                  workers: int, access_log: str, http: bool = False,
                  certs: Path | None = None) -> ProxySetup:
    path = workdir / "ingress.toml"
    if http:
        listener = "https" if certs else "http"
        disabled = "".join(f"\n[listeners.{name}]\nenabled = false\n"
                           for name in (*INGRESS_DISABLED, "http") if name != listener)
        tls = f'\n[tls]\ncert_dir = "{certs}"\n' if certs else ""
        text = INGRESS_HTTP_CONFIG.format(port=port, backend_port=backend_port,
                                          workers=workers, disabled=disabled,
                                          listener=listener, tls=tls)
    else:
        text = INGRESS_CONFIG.format(port=port, backend_port=backend_port, workers=workers)
    # Metrics are counted as in production; their listener stays on loopback, unscraped.
    path.write_text(f'{text}\n[admin]\nbind = ["127.0.0.1:{port + ADMIN_PORT_OFFSET}"]\n')
    binary = BENCH_VENV / "bin" / "mta-ingress"
    if not binary.exists():
        binary = Path(sys.executable).parent / "mta-ingress"
    return ProxySetup("mta-ingress", port, path,
                      [*_pin(cpus), str(binary), "run", "--config", str(path)],
                      None if access_log == "devnull"
                      else str(workdir / "ingress-access-{tag}.log"))


class RunningProxy:
    def __init__(self, setup: ProxySetup, workdir: Path, tag: str) -> None:
        self.setup = setup
        ingress = setup.name == "mta-ingress"
        self.access_log = (Path(setup.access_log.format(tag=tag))
                           if setup.access_log is not None else None)
        stdout: Path | int = self.access_log or subprocess.DEVNULL
        # HAProxy: SIGUSR1 is its soft stop (exit 0 once idle; SIGTERM kills it with the
        # signal's status).  mta-ingress: SIGINT stops at once, without the drain period.
        self.child = Child(setup.name, setup.argv,
                           stop_signal=signal.SIGINT if ingress else signal.SIGUSR1,
                           death_signal=signal.SIGINT if ingress else signal.SIGTERM,
                           stdout=stdout, stderr=workdir / f"{setup.name}-{tag}.stderr")
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if not self.child.alive():
                raise RuntimeError(f"{setup.name} exited {self.child.process.returncode}:\n"
                                   f"{self.child.stderr_tail()}")
            ready = _listening(setup.port)
            if ingress:
                ready = ready and 'msg="ready"' in self.child.stderr_tail(50)
            if ready:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name} not ready in {READY_TIMEOUT:g}s:\n"
                                   f"{self.child.stderr_tail()}")
            time.sleep(0.02)
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


# --- runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Who runs where.  ``proxy`` None: the proxies may use every CPU."""

    load: set[int] | None
    proxy: set[int] | None

    def describe(self) -> str:
        if self.proxy is None:
            return "unpinned: proxy, load generator and backend share every CPU"
        return (f"proxy pinned to CPU {_cpus(self.proxy)}; load generator and backend "
                f"pinned to CPU {_cpus(self.load or set())}")


def _cpus(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


@dataclass(frozen=True, slots=True)
class Run:
    scenario: str
    workers: int
    layout: Layout

    @property
    def key(self) -> str:
        return self.scenario if self.workers == 1 else f"{self.scenario}-w{self.workers}"


@dataclass(slots=True)
class Measurement:
    """One proxy, one round: the figures of the summary, and everything else in ``detail``."""

    proxy: str
    round: int
    value: float  # the scenario's headline figure (sessions/s, MB/s, KiB per connection)
    per_cpu: float | None  # value per proxy-CPU-second (sessions, MB), where it means something
    cpu: dict[str, float]  # utilisation of proxy / loadgen / backend, 1.0 = one core
    errors: dict[str, int]
    exit_code: int | None
    ingress_ends: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)
    stderr_alarms: list[str] = field(default_factory=list)


NORMAL_ENDS = {"closed", "client-closed", "server-closed", "ok"}
# Lines of a proxy's stderr that mean something went wrong, except HAProxy's soft stop, which
# says "Proxy NAME stopped (cumulated conns: ...)" as a [WARNING].
ALARMING = ("[ALERT]", "[WARNING]", "level=ERROR", "level=WARNING", "Traceback", "crashed")
ROUTINE = ("stopped (cumulated conns",)


# A client that left: in the middle of a response, or of a TLS handshake
CLIENT_LEFT_ENDS = ("client-aborted", "rejected:tls-handshake-aborted")


def _abnormal_ends(m: Measurement) -> dict[str, int]:
    """Ends other than the normal ones.  wrk closes its connections when its run ends, in the
    middle of the responses or handshakes in flight: up to one such end per connection and wrk
    run (warm-up and measured) is the load's doing, not the proxy's."""
    allowed = int(m.detail.get("expected_client_aborts", 0))
    odd = {k: v for k, v in m.ingress_ends.items() if k not in NORMAL_ENDS}
    if 0 < sum(odd.get(end, 0) for end in CLIENT_LEFT_ENDS) <= allowed:
        for end in CLIENT_LEFT_ENDS:
            odd.pop(end, None)
    return odd


def _marker(proxy: RunningProxy, backend: Backend) -> load.Marker:
    trees = {"proxy": proxy.pids, "loadgen": [os.getpid()], "backend": [backend.pid]}

    def mark() -> load.Mark:
        cpu = procstat.sample(trees, time.monotonic())
        return load.Mark(cpu, backend.stats())

    return mark


def _uvloop_run(coroutine: Coroutine[Any, Any, T]) -> T:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def wrk_argv(run: Run, options: argparse.Namespace, port: int, workdir: Path) -> list[str]:
    """wrk, on the load generator's CPU, with one thread: its JSON summary script, the
    scenario's connections and headers; ``-d`` is added by ``load.wrk``."""
    script = workdir / "wrk-summary.lua"
    if not script.exists():
        script.write_text(load.WRK_SCRIPT)
    large = run.scenario == "http-1mib"
    argv = [*_pin(run.layout.load), load.WRK, "-t1",
            f"-c{options.http_1mib_connections if large else options.http_connections}",
            "-s", str(script)]
    if run.scenario == "http-close" or run.scenario.startswith("https-handshake"):
        argv += ["-H", "Connection: close"]
    scheme = "https" if run.scenario in TLS_SCENARIOS else "http"
    return [*argv, f"{scheme}://127.0.0.1:{port}{HTTP_LARGE_PATH if large else HTTP_PATH}"]


def measure_wrk(run: Run, options: argparse.Namespace, proxy: RunningProxy, backend: Backend,
                round_number: int, workdir: Path) -> Measurement:
    result = load.wrk(wrk_argv(run, options, proxy.setup.port, workdir), warmup=options.warmup,
                      duration=options.http_duration, mark=_marker(proxy, backend))
    window, figures = result.window, result.figures
    proxy_cpu = window.cpu_seconds("proxy")
    seconds = figures.get("duration_us", 0) / 1e6
    amount = (figures.get("bytes", 0) / 1e6 if run.scenario == "http-1mib"
              else figures.get("requests", 0))
    return Measurement(
        proxy.setup.name, round_number, amount / seconds if seconds else float("nan"),
        amount / proxy_cpu if proxy_cpu > 0 else None,
        _cpu_figures(window, run.layout, loadgen_seconds=result.loadgen_cpu_s),
        dict(result.errors), None, {},
        {"wrk": figures, "wrk_command": " ".join(result.argv), "window_s": window.seconds,
         "expected_client_aborts": 2 * (options.http_1mib_connections
                                        if run.scenario == "http-1mib"
                                        else options.http_connections),
         "proxy_cpu_s": proxy_cpu,
         "backend_requests_in_window": window.backend_delta("requests"),
         "backend_connections_in_window": window.backend_delta("sessions"),
         "latency_ms": {"p50": figures.get("p50_us", 0) / 1000,
                        "p99": figures.get("p99_us", 0) / 1000} if figures else {},
         "proxy_us_per_request": _per_session(proxy_cpu, figures.get("requests", 0)),
         "proxy_sys_us_per_request": _per_session(
             window.utilisation()["proxy_sys"] * window.seconds, figures.get("requests", 0))})


def measure_latency(run: Run, options: argparse.Namespace, proxy: RunningProxy,
                    backend: Backend, round_number: int) -> Measurement:
    result = _uvloop_run(load.http_rate(
        "127.0.0.1", proxy.setup.port, path=HTTP_PATH, rate=options.http_rate,
        connections=options.http_connections, warmup=options.warmup,
        duration=options.http_duration, mark=_marker(proxy, backend)))
    window = result.window
    proxy_cpu = window.cpu_seconds("proxy")
    latency = result.latency_ms
    return Measurement(
        proxy.setup.name, round_number, latency.get("p99", float("nan")), None,
        _cpu_figures(window, run.layout), dict(result.errors), None, {},
        {"rate_asked": result.rate, "rate_achieved": result.completed / window.seconds,
         "completed_in_window": result.completed, "latency_ms": latency,
         "max_queue": result.max_queue, "window_s": window.seconds, "proxy_cpu_s": proxy_cpu})


def measure(run: Run, options: argparse.Namespace, proxy: RunningProxy, backend: Backend,
            round_number: int, workdir: Path | None = None) -> Measurement:
    name = proxy.setup.name
    host, port = "127.0.0.1", proxy.setup.port
    if run.scenario in WRK_SCENARIOS:
        assert workdir is not None
        return measure_wrk(run, options, proxy, backend, round_number, workdir)
    if run.scenario == "http-latency":
        return measure_latency(run, options, proxy, backend, round_number)
    if run.scenario == "sessions":
        result = _uvloop_run(load.sessions(
            host, port, concurrency=options.concurrency, warmup=options.warmup,
            duration=options.duration, mark=_marker(proxy, backend)))
        window = result.window
        proxy_cpu = window.cpu_seconds("proxy")
        return Measurement(
            name, round_number, result.completed / window.seconds,
            result.completed / proxy_cpu if proxy_cpu > 0 else None,
            _cpu_figures(window, run.layout),
            dict(result.errors), None, {},
            {"completed_in_window": result.completed, "completed_total": result.completed_total,
             "window_s": window.seconds, "proxy_cpu_s": proxy_cpu,
             "backend_sessions_in_window": window.backend_delta("sessions"),
             "backend_proxy_header_errors": window.end.backend.get("proxy_errors", 0),
             "latency_ms": result.latency_ms,
             "proxy_us_per_session": _per_session(proxy_cpu, result.completed),
             "proxy_sys_us_per_session": _per_session(
                 window.utilisation()["proxy_sys"] * window.seconds, result.completed)})
    if run.scenario == "bulk":
        bulk = load.bulk(host, port, connections=options.bulk_connections,
                         chunk_size=options.bulk_chunk, warmup=options.warmup,
                         duration=options.duration, mark=_marker(proxy, backend))
        window = bulk.window
        proxy_cpu = window.cpu_seconds("proxy")
        megabytes = bulk.received / 1e6
        return Measurement(
            name, round_number, megabytes / window.seconds,
            megabytes / proxy_cpu if proxy_cpu > 0 else None,
            _cpu_figures(window, run.layout),
            dict(bulk.errors), None, {},
            {"received_bytes": bulk.received, "sent_bytes": bulk.sent,
             "window_s": window.seconds, "proxy_cpu_s": proxy_cpu,
             "backend_proxy_header_errors": window.end.backend.get("proxy_errors", 0)})
    idle = _uvloop_run(load.idle(
        host, port, count=options.idle_connections, batch=options.idle_batch,
        hold=options.idle_hold, proxy_memory=proxy.memory_kib,
        backend_sessions=lambda: backend.stats()["sessions"]))
    growth = idle.rss_holding_kib - idle.rss_before_kib
    errors = dict(idle.failed)
    if idle.lost_while_holding:
        errors["lost-while-holding"] = idle.lost_while_holding
    return Measurement(
        name, round_number, growth / idle.established if idle.established else float("nan"),
        None, {}, errors, None, {},
        {"target": idle.target, "established": idle.established,
         "failed": sum(idle.failed.values()), "lost_while_holding": idle.lost_while_holding,
         "backend_sessions_opened": idle.backend_sessions,
         "rss_before_kib": idle.rss_before_kib, "rss_holding_kib": idle.rss_holding_kib,
         "pss_before_kib": idle.pss_before_kib, "pss_holding_kib": idle.pss_holding_kib,
         "open_s": idle.open_seconds, "hold_s": idle.hold_seconds})


def _cpu_figures(window: load.Window, layout: Layout,
                 loadgen_seconds: float | None = None) -> dict[str, float]:
    """Process trees' utilisation, plus how busy the proxy's and the load side's CPUs were
    (``proxy_core``, ``load_core``; ``machine`` when unpinned): softirq work the kernel hands
    to ksoftirqd is on the core but in no tree.  ``loadgen_seconds``: the CPU time of a load
    generator that is not this process (wrk), added to this process's."""
    figures = window.utilisation()
    if loadgen_seconds is not None and window.seconds > 0:
        figures["loadgen"] = figures.get("loadgen", 0.0) + loadgen_seconds / window.seconds
    if layout.proxy is not None and layout.load is not None:
        figures["proxy_core"] = statistics.fmean(figures.get(f"cpu{c}", 0.0) for c in layout.proxy)
        figures["load_core"] = statistics.fmean(figures.get(f"cpu{c}", 0.0) for c in layout.load)
        # Busy time on a CPU that none of the bench's processes account for: kernel threads
        # working for them (a few percent), or another program competing with the measurement.
        figures["other"] = max(figures["proxy_core"] - figures["proxy"],
                               figures["load_core"] - figures["loadgen"] - figures["backend"])
    else:
        figures["machine"] = statistics.fmean(figures.get(f"cpu{c}", 0.0) for c in ALL_CPUS)
        figures["other"] = (figures["machine"] * len(ALL_CPUS) - figures["proxy"]
                            - figures["loadgen"] - figures["backend"])
    return figures


def _per_session(cpu_seconds: float, sessions: int) -> float | None:
    return cpu_seconds / sessions * 1e6 if sessions else None


# --- output --------------------------------------------------------------------------------------

UNITS = {"sessions": ("sessions/s", "sessions per proxy-CPU-s"),
         "bulk": ("MB/s", "MB per proxy-CPU-s"),
         "http-keepalive": ("requests/s", "requests per proxy-CPU-s"),
         "http-close": ("requests/s", "requests per proxy-CPU-s"),
         "http-1mib": ("MB/s", "MB per proxy-CPU-s"),
         "https-handshake-ecdsa": ("handshakes/s", "handshakes per proxy-CPU-s"),
         "https-handshake-rsa": ("handshakes/s", "handshakes per proxy-CPU-s"),
         "https-keepalive": ("requests/s", "requests per proxy-CPU-s"),
         "http-latency": ("ms p99", ""),
         "idle": ("KiB RSS per connection", "")}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def round_line(run: Run, m: Measurement) -> str:
    errors = ", ".join(f"{k}={v}" for k, v in sorted(m.errors.items())) or "none"
    odd_ends = _abnormal_ends(m)
    ends = ("" if not m.ingress_ends else
            "  ends: " + ", ".join(f"{k}={v}" for k, v in sorted(m.ingress_ends.items()))
            + ("  <-- abnormal" if odd_ends else ""))
    exit_note = "" if m.exit_code in (0, None) else f"  exit={m.exit_code}"
    if m.stderr_alarms:
        exit_note += f"  stderr: {len(m.stderr_alarms)} alarming line(s), first: " \
                     f"{m.stderr_alarms[0][:160]}"
    if run.scenario == "idle":
        d = m.detail
        return (f"  round {m.round} {m.proxy:<11}  established {d['established']:,}/"
                f"{d['target']:,}  failed {d['failed']}  lost {d['lost_while_holding']}  "
                f"backend sessions {d['backend_sessions_opened']:,}  RSS "
                f"{d['rss_before_kib'] / 1024:,.1f} -> {d['rss_holding_kib'] / 1024:,.1f} MiB "
                f"(PSS {d['pss_before_kib'] / 1024:,.1f} -> {d['pss_holding_kib'] / 1024:,.1f})"
                f"  = {_num(m.value, 2)} KiB/conn  (opened in {d['open_s']:.1f}s)  "
                f"errors: {errors}{exit_note}{ends}")
    unit = UNITS[run.scenario][0]
    latency = ""
    if m.detail.get("latency_ms"):
        lat = m.detail["latency_ms"]
        latency = f"  latency p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms"
    if run.scenario == "http-latency":
        d = m.detail
        lat = d["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
        return (f"  round {m.round} {m.proxy:<11} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms"
                f"  at {_num(d['rate_achieved'])}/{_num(d['rate_asked'])} requests/s "
                f"(achieved/asked)  max queued {d['max_queue']}  CPU {_cpu_text(m.cpu)}  "
                f"errors: {errors}{exit_note}{ends}")
    return (f"  round {m.round} {m.proxy:<11} {_num(m.value):>9} {unit}  "
            f"CPU {_cpu_text(m.cpu)}  "
            f"per proxy-CPU-s {_num(m.per_cpu)}"
            f"{latency}  errors: {errors}{exit_note}{ends}")


def _cpu_text(cpu: dict[str, Any]) -> str:
    text = (f"proxy {_pct(cpu.get('proxy'))} (sys {_pct(cpu.get('proxy_sys'))}"
            + (f", core {_pct(cpu['proxy_core'])}" if cpu.get("proxy_core") is not None else "")
            + f") loadgen {_pct(cpu.get('loadgen'))} backend {_pct(cpu.get('backend'))}")
    if cpu.get("load_core") is not None:
        text += f" (core {_pct(cpu['load_core'])})"
    if cpu.get("machine") is not None:
        text += f" (all CPUs {_pct(cpu['machine'])})"
    if (cpu.get("other") or 0.0) >= DISTURBED:
        text += (f"  DISTURBED: {_pct(cpu['other'])} of a CPU busy outside the bench's "
                 "processes")
    return text


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None and value == value]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(run: Run, measurements: list[Measurement]) -> dict[str, Any]:
    per_proxy: dict[str, dict[str, Any]] = {}
    # haproxy and mta-ingress, then the references of --floor, if measured
    for proxy in dict.fromkeys([*COMPARED, *(m.proxy for m in measurements)]):
        mine = [m for m in measurements if m.proxy == proxy]
        per_proxy[proxy] = {
            "value": _median([m.value for m in mine]),
            "per_cpu": _median([m.per_cpu for m in mine]),
            "cpu": {part: _median([m.cpu.get(part) for m in mine])
                    for part in ("proxy", "proxy_sys", "proxy_core", "loadgen", "backend",
                                 "load_core", "machine")},
            "errors": sum(sum(m.errors.values()) for m in mine),
            "abnormal_ends": sum(sum(_abnormal_ends(m).values()) for m in mine),
            "stderr_alarms": sum(len(m.stderr_alarms) for m in mine),
            "disturbed_rounds": sum((m.cpu.get("other") or 0.0) >= DISTURBED for m in mine),
            "bad_exits": sum(m.exit_code not in (0, None) for m in mine),
            "rounds": len(mine),
        }
        if run.scenario == "sessions":
            for key in ("proxy_us_per_session", "proxy_sys_us_per_session"):
                per_proxy[proxy][key] = _median([m.detail.get(key) for m in mine])
        if run.scenario in WRK_SCENARIOS:
            for key in ("proxy_us_per_request", "proxy_sys_us_per_request"):
                per_proxy[proxy][key] = _median([m.detail.get(key) for m in mine])
        if run.scenario in HTTP_SCENARIOS:
            for cut in ("p50", "p99"):
                per_proxy[proxy][f"latency_{cut}_ms"] = _median(
                    [m.detail.get("latency_ms", {}).get(cut) for m in mine])
        if run.scenario == "http-latency":
            per_proxy[proxy]["rate_asked"] = _median([m.detail["rate_asked"] for m in mine])
            per_proxy[proxy]["rate_achieved"] = _median([m.detail["rate_achieved"]
                                                         for m in mine])
            per_proxy[proxy]["max_queue"] = max((m.detail["max_queue"] for m in mine), default=0)
        if run.scenario == "idle":
            per_proxy[proxy]["rss_before_kib"] = _median([m.detail["rss_before_kib"]
                                                          for m in mine])
            per_proxy[proxy]["rss_holding_kib"] = _median([m.detail["rss_holding_kib"]
                                                           for m in mine])
            per_proxy[proxy]["pss_before_kib"] = _median([m.detail["pss_before_kib"]
                                                          for m in mine])
            per_proxy[proxy]["pss_holding_kib"] = _median([m.detail["pss_holding_kib"]
                                                           for m in mine])
            per_proxy[proxy]["pss_per_connection"] = _median([
                (m.detail["pss_holding_kib"] - m.detail["pss_before_kib"]) / m.detail["established"]
                for m in mine if m.detail["established"]])
            per_proxy[proxy]["established"] = min((m.detail["established"] for m in mine),
                                                  default=0)
    haproxy, ingress = per_proxy["haproxy"], per_proxy["mta-ingress"]
    compared = [haproxy, ingress]  # what the targets are about; references are not
    # Rounds alternate, so round i of each proxy ran under the same conditions, drift of
    # the machine included: the spread of these paired ratios shows how firm the ratio is.
    pairs = [(h, i) for h in measurements for i in measurements
             if h.proxy == "haproxy" and i.proxy == "mta-ingress" and h.round == i.round]
    summary: dict[str, Any] = {
        "medians": per_proxy,
        "ratio": _ratio(ingress["value"], haproxy["value"]),
        "ratio_per_cpu": _ratio(ingress["per_cpu"], haproxy["per_cpu"]),
        "round_ratios": [_ratio(i.value, h.value) for h, i in pairs],
        "round_ratios_per_cpu": [_ratio(i.per_cpu, h.per_cpu) for h, i in pairs],
        "references": {name: {"ratio": _ratio(part["value"], haproxy["value"]),
                              "ratio_per_cpu": _ratio(part["per_cpu"], haproxy["per_cpu"])}
                       for name, part in per_proxy.items() if name not in COMPARED},
    }
    target = TARGETS.get(run.scenario)
    if target is not None:
        saturated = all(_proxy_busy(p) >= SATURATED for p in compared)
        if run.layout.proxy is None:
            # Unpinned, the proxies share the CPUs with the load: CPU shares say little about
            # capacity, so throughput decides, and the verdict is only indicative.
            decisive = "throughput (unpinned run: indicative)"
        else:
            decisive = "throughput" if saturated else "per-cpu"
        figure = summary["ratio"] if decisive != "per-cpu" else summary["ratio_per_cpu"]
        verdict = _pass(figure, target)
        if not all(_clean(p) for p in compared):
            # A fast proxy that loses sessions has not met anything.
            verdict = "FAIL (errors, see the rounds)"
        elif any(p["disturbed_rounds"] for p in compared):
            verdict += " (unreliable: DISTURBED rounds, re-run on a quiet machine)"
        summary["target"] = {
            "min_ratio": target,
            "throughput": _pass(summary["ratio"], target),
            "per_cpu": _pass(summary["ratio_per_cpu"], target),
            "decided_by": decisive,
            "verdict": verdict,
        }
    elif run.scenario == "http-latency":
        ratio = summary["ratio"]
        verdict = ("n/a" if ratio is None else "PASS" if ratio <= LATENCY_MAX_RATIO
                   else "FAIL")
        if not all(_clean(p) for p in per_proxy.values()):
            verdict = "FAIL (errors, see the rounds)"
        elif any(p["disturbed_rounds"] for p in per_proxy.values()):
            verdict += " (unreliable: DISTURBED rounds, re-run on a quiet machine)"
        summary["target"] = {"max_ratio": LATENCY_MAX_RATIO, "verdict": verdict,
                             "rule": f"ingress p99 <= {LATENCY_MAX_RATIO:g}x haproxy p99"}
    elif run.scenario == "idle":
        clean = all(_clean(p) and p["established"] == run_target(measurements)
                    for p in per_proxy.values())
        summary["target"] = {"verdict": "PASS" if clean else "FAIL",
                             "rule": "every connection established and held, none failed"}
    return summary


def _clean(part: dict[str, Any]) -> bool:
    return not any(part[key] for key in ("errors", "abnormal_ends", "stderr_alarms",
                                         "bad_exits"))


def run_target(measurements: list[Measurement]) -> int:
    return int(measurements[0].detail["target"]) if measurements else 0


def _pass(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "n/a"
    return "PASS" if ratio >= target else "FAIL"


def _proxy_busy(part: dict[str, Any]) -> float:
    # The process's own share: the core's may include another program (see DISTURBED).
    return float(part["cpu"]["proxy"] or 0.0)


def _bottleneck(part: dict[str, Any], layout: Layout) -> str:
    cpu = part["cpu"]
    proxy = _proxy_busy(part)
    load_side = cpu.get("load_core") or (cpu["loadgen"] or 0.0) + (cpu["backend"] or 0.0)
    if layout.proxy is None:
        machine = cpu.get("machine") or 0.0
        busy = (f"all CPUs {machine * 100:.0f}% busy: proxy {(cpu['proxy'] or 0) * 100:.0f}%, "
                f"load generator and backend "
                f"{((cpu['loadgen'] or 0) + (cpu['backend'] or 0)) * 100:.0f}% of one CPU")
        if machine >= SATURATED:
            return f"the machine ({busy})"
        return f"neither the proxy nor the machine ({busy})"
    if proxy >= SATURATED:
        return "the proxy (its CPU is saturated)"
    if load_side >= SATURATED:
        return (f"the load generator side (its CPU is {load_side * 100:.0f}% busy: "
                f"loadgen + backend); the proxy used {proxy * 100:.0f}% of its CPU")
    return "neither CPU is saturated (latency or concurrency bound)"


def _rounds(ratios: list[float | None]) -> str:
    return f" (rounds: {', '.join(_num(r, 2) for r in ratios)})" if len(ratios) > 1 else ""


def _trouble(part: dict[str, Any]) -> str:
    notes = [f"{part[key]} {label}" for key, label in (
        ("abnormal_ends", "abnormal session ends"), ("stderr_alarms", "alarming stderr lines"),
        ("bad_exits", "non-zero exits")) if part.get(key)]
    text = ("  TROUBLE: " + ", ".join(notes)) if notes else ""
    if part.get("disturbed_rounds"):
        text += f"  DISTURBED rounds: {part['disturbed_rounds']} (another program used the CPUs)"
    return text


def summary_text(run: Run, summary: dict[str, Any], options: argparse.Namespace) -> list[str]:
    medians = summary["medians"]
    h, i = medians["haproxy"], medians["mta-ingress"]
    lines = [f"{run.key}: {describe_scenario(run, options)}"]
    if run.scenario == "idle":
        for name, part in medians.items():
            lines.append(
                f"  {name:<11} established {part['established']:,} (min over rounds)  "
                f"failed/lost {part['errors']}{_trouble(part)}  "
                f"RSS {_num(part['rss_before_kib'] / 1024, 1)} -> "
                f"{_num(part['rss_holding_kib'] / 1024, 1)} MiB (PSS "
                f"{_num(part['pss_before_kib'] / 1024, 1)} -> "
                f"{_num(part['pss_holding_kib'] / 1024, 1)})  "
                f"{_num(part['value'], 2)} KiB RSS per connection (median; by PSS "
                f"{_num(part['pss_per_connection'], 2)})")
        lines.append(f"  ratio ingress/haproxy RSS per connection: {_num(summary['ratio'], 2)}x"
                     f"{_rounds(summary['round_ratios'])}")
        lines.append(f"  target: {summary['target']['rule']}: {summary['target']['verdict']}")
        return lines
    if run.scenario == "http-latency":
        for name, part in medians.items():
            lines.append(
                f"  {name:<11} p50 {_num(part['latency_p50_ms'], 2)} ms  p99 "
                f"{_num(part['latency_p99_ms'], 2)} ms (medians)  at "
                f"{_num(part['rate_achieved'])}/{_num(part['rate_asked'])} requests/s "
                f"(achieved/asked)  max queued {part['max_queue']}  CPU {_cpu_text(part['cpu'])}"
                f"  errors {part['errors']}{_trouble(part)}")
        lines.append(f"  ratio ingress/haproxy p99: {_num(summary['ratio'], 2)}x"
                     f"{_rounds(summary['round_ratios'])}; p50: "
                     f"{_num(_ratio(i['latency_p50_ms'], h['latency_p50_ms']), 2)}x")
        lines.append(f"  target: {summary['target']['rule']}: {summary['target']['verdict']}")
        return lines
    unit, per_cpu_unit = UNITS[run.scenario]
    for name, part in medians.items():
        cpu = part["cpu"]
        lines.append(
            f"  {name:<11} {_num(part['value']):>9} {unit} (median)  CPU {_cpu_text(cpu)}  "
            f"{_num(part['per_cpu'])} {per_cpu_unit}  "
            f"errors {part['errors']}"
            + _trouble(part))
        for what in ("session", "request"):
            if part.get(f"proxy_us_per_{what}") is not None:
                total, kernel = part[f"proxy_us_per_{what}"], part[f"proxy_sys_us_per_{what}"]
                lines.append(f"  {'':<11} proxy CPU per {what} {total:.0f} us: user "
                             f"{total - kernel:.0f} us, kernel {kernel:.0f} us"
                             + (f"; wrk latency p50 {_num(part['latency_p50_ms'], 2)} ms p99 "
                                f"{_num(part['latency_p99_ms'], 2)} ms (closed loop)"
                                if what == "request" else ""))
    lines.append(f"  ratio ingress/haproxy: {_num(summary['ratio'], 2)}x {unit}"
                 f"{_rounds(summary['round_ratios'])}; {_num(summary['ratio_per_cpu'], 2)}x "
                 f"{per_cpu_unit}{_rounds(summary['round_ratios_per_cpu'])}")
    references = summary.get("references", {})
    for name, reference in references.items():
        lines.append(f"  reference {name}/haproxy: {_num(reference['ratio'], 2)}x {unit}; "
                     f"{_num(reference['ratio_per_cpu'], 2)}x {per_cpu_unit}")
    if references:
        lines.append("  (references: loadtest/floor.py, uvloop and httptools without "
                     "mta-ingress's work; +N us: that much busy CPU added per request)")
    lines.append(f"  limited by: haproxy: {_bottleneck(h, run.layout)}; "
                 f"mta-ingress: {_bottleneck(i, run.layout)}")
    target = summary.get("target")
    if target:
        why = {"throughput": "both proxies saturated their CPU, so throughput compares capacity",
               "per-cpu": "a proxy did not saturate its CPU, so its throughput measured the load "
                          "generator; the per-CPU figure estimates capacity"
               }.get(target["decided_by"], "the proxies shared the CPUs with the load")
        lines.append(f"  target ingress >= {target['min_ratio']}x haproxy: throughput "
                     f"{target['throughput']}, per proxy-CPU-s {target['per_cpu']} -> "
                     f"{target['verdict']} (decided by {target['decided_by']}: {why})")
    return lines


def describe_scenario(run: Run, options: argparse.Namespace) -> str:
    workers = f"mta-ingress workers={run.workers}; {run.layout.describe()}"
    if run.scenario == "sessions":
        return (f"new SMTP sessions/s (connect, 220, QUIT, 221, close), {options.concurrency} "
                f"clients in flight, {options.duration:g}s window after {options.warmup:g}s "
                f"warm-up; {workers}")
    if run.scenario == "bulk":
        return (f"DATA throughput, {options.bulk_connections} connection(s) streaming "
                f"{options.bulk_chunk // 1024} KiB sends to a discarding sink, "
                f"{options.duration:g}s window after {options.warmup:g}s warm-up; {workers}")
    http = (f"{options.http_duration:g}s window after {options.warmup:g}s warm-up "
            f"(a separate wrk run); {workers}")
    if run.scenario == "http-keepalive":
        return (f"HTTP requests/s, ~100-byte responses, wrk -t1 -c{options.http_connections} "
                f"keep-alive, GET {HTTP_PATH}, {http}")
    if run.scenario == "http-close":
        return (f"HTTP requests/s, one request per connection (Connection: close), wrk -t1 "
                f"-c{options.http_connections}, GET {HTTP_PATH}, {http}")
    if run.scenario == "http-1mib":
        return (f"HTTP MB/s of 1 MiB responses, wrk -t1 -c{options.http_1mib_connections} "
                f"keep-alive, GET {HTTP_LARGE_PATH}, {http}")
    if run.scenario.startswith("https-handshake"):
        key = "RSA-2048" if run.scenario.endswith("-rsa") else "ECDSA P-256"
        return (f"new TLS connections/s, {key} certificate, one request each (Connection: "
                f"close, no session resumption: wrk does not resume), wrk -t1 "
                f"-c{options.http_connections}, GET {HTTP_PATH}, {http}")
    if run.scenario == "https-keepalive":
        return (f"HTTPS requests/s, ~100-byte responses, ECDSA P-256 certificate, wrk -t1 "
                f"-c{options.http_connections} keep-alive, GET {HTTP_PATH}, {http}")
    if run.scenario == "http-latency":
        rate = (f"{options.http_rate:,.0f} requests/s" if options.http_rate
                else "half HAProxy's http-keepalive peak")
        return (f"HTTP latency at {rate}, open loop (latency from each request's scheduled "
                f"time), {options.http_connections} keep-alive connections, GET {HTTP_PATH}, "
                f"{options.http_duration:g}s window after {options.warmup:g}s warm-up; {workers}")
    lowered = (f" (lowered from {options.idle_requested:,}: descriptor limit, see the note at "
               "the top)" if options.idle_note else "")
    return (f"{options.idle_connections:,} idle SMTP connections{lowered} (each past its 220 "
            f"banner), opened {options.idle_batch} at a time, held {options.idle_hold:g}s; "
            f"{workers}")


# --- environment ---------------------------------------------------------------------------------


def raise_nofile() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = f"{soft}/{hard}"
    if hard < WANTED_NOFILE:
        # Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to
        # the hard one and the idle scenario may fall short, which it then reports.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_NOFILE, WANTED_NOFILE))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return f"{soft}/{hard} (was {before}; inherited by the proxies and the backend)"


def fit_idle_connections(options: argparse.Namespace) -> str:
    """Lower the idle count to what one proxy process can hold: two descriptors per relayed
    connection.  Returns why it was lowered, or ''."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fitting = (hard - FD_MARGIN) // 2 // 100 * 100
    if options.idle_connections <= fitting:
        return ""
    requested, options.idle_connections = options.idle_connections, fitting
    options.idle_requested = requested
    return (f"{requested:,} requested, but a proxy process holds two descriptors per relayed "
            f"connection and the RLIMIT_NOFILE hard limit is {hard} (raising it needs "
            f"CAP_SYS_RESOURCE), so at most {fitting:,} fit")


def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def environment(nofile: str) -> dict[str, Any]:
    from importlib.metadata import version

    from ingress import __version__

    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                             "ingress", "routing"])
    return {
        "kernel": platform.release(),
        "cpu": cpu_model,
        "cpus": len(ALL_CPUS),
        "python": f"{sys.executable} {platform.python_version()}",
        "uvloop": version("uvloop"),
        "mta_ingress": __version__,
        "commit": (commit or "not a git checkout") + (
            " (ingress/ or routing/ modified or untracked files)" if dirty else ""),
        "haproxy": (_command_output([HAPROXY, "-v"]).splitlines() or ["?"])[0],
        "rlimit_nofile": nofile,
        "ip_local_port_range": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
        "somaxconn": Path("/proc/sys/net/core/somaxconn").read_text().strip(),
    }


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds``, before the bench has started anything."""
    before = procstat.core_ticks()
    time.sleep(seconds)
    after = procstat.core_ticks()
    busy = sum(after[c][0] - before[c][0] for c in after if c in before)
    total = sum(after[c][1] - before[c][1] for c in after if c in before)
    return busy / total if total else 0.0


class PortPool:
    """Ports below the ephemeral range, so that a proxy restarted on its port between rounds
    never finds it taken as the source port of an outgoing connection."""

    def __init__(self, base: int) -> None:
        self.next = base

    def take(self) -> int:
        while True:
            port, self.next = self.next, self.next + 1
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


# --- main ----------------------------------------------------------------------------------------


def plan(options: argparse.Namespace) -> list[Run]:
    cpus = sorted(ALL_CPUS)
    pinned = (Layout({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 and not options.no_pin
              else Layout(None, None))
    unpinned = Layout(None, None)
    runs = []
    for scenario in options.scenarios:
        if options.workers == 1:
            runs.append(Run(scenario, 1, pinned))
        else:
            # The contract comparison (one worker against one HAProxy thread, each with a core)
            # stays for sessions; the N-worker figure comes on top of it, unpinned.
            if scenario == "sessions":
                runs.append(Run(scenario, 1, pinned))
            runs.append(Run(scenario, options.workers, unpinned))
    return runs


def execute(run: Run, options: argparse.Namespace, ports: PortPool, run_dir: Path,
            on_measurement: Callable[[Measurement], None]) -> tuple[list[Measurement],
                                                                     dict[str, Any]]:
    workdir = run_dir / run.key
    workdir.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, run.layout.load or ALL_CPUS)
    http = run.scenario in HTTP_SCENARIOS
    certs = certificate_dir(workdir, run.scenario) if run.scenario in TLS_SCENARIOS else None
    backend = Backend("sink" if run.scenario == "bulk" else "http" if http else "smtp",
                      ports.take(), run.layout.load, workdir)
    setups = {
        "haproxy": haproxy_setup(workdir, ports.take(), backend.port, run.layout.proxy, http,
                                 certs, options.haproxy_log),
        "mta-ingress": ingress_setup(workdir, ports.take(), backend.port, run.layout.proxy,
                                     run.workers, options.access_log, http, certs),
    }
    if run.scenario in FLOOR_SCENARIOS and run.workers == 1:
        for burn_us in options.floor:
            floor = floor_setup(ports.take(), backend.port, run.layout.proxy, burn_us, certs)
            setups[floor.name] = floor
    if run.scenario == "http-latency" and options.http_rate is None:
        try:
            options.http_rate = haproxy_peak_rate(run, options, setups["haproxy"], backend,
                                                  workdir) / 2
        except BaseException:
            backend.stop()
            raise
    info: dict[str, Any] = {
        "backend": " ".join(backend.argv),
        "load_generator": f"{sys.executable} (this process, pid {os.getpid()}), "
                          f"CPU {_cpus(run.layout.load) if run.layout.load else 'any'}",
        "commands": {name: " ".join(s.argv) for name, s in setups.items()},
        "configs": {name: str(s.config_path) for name, s in setups.items()},
        "ingress_access_log": (setups["mta-ingress"].access_log or "/dev/null").format(
            tag="rN"),
        "haproxy_log": (setups["haproxy"].access_log or "off").format(tag="rN"),
    }
    print(f"\n== {run.key}: {describe_scenario(run, options)}")
    print(f"   backend:     {info['backend']}")
    for name in setups:
        print(f"   {name + ':':<12} {info['commands'][name]}")
    print(f"   ingress access log: {info['ingress_access_log']}")
    print(f"   haproxy log: {info['haproxy_log']}")
    measurements: list[Measurement] = []
    try:
        for round_number in range(1, options.rounds + 1):
            for setup in setups.values():
                proxy = RunningProxy(setup, workdir, f"r{round_number}")
                try:
                    measurement = measure(run, options, proxy, backend, round_number, workdir)
                finally:
                    code, ends, alarms = proxy.stop()
                measurement.exit_code = code
                measurement.ingress_ends = ends
                measurement.stderr_alarms = alarms[:20]
                measurements.append(measurement)
                on_measurement(measurement)
                print(round_line(run, measurement), flush=True)
        if options.profile != "off" and run.scenario == "sessions":
            info["profile"] = profile_ingress(run, options, setups["mta-ingress"], backend,
                                              workdir)
    finally:
        backend.stop()
    return measurements, info


def haproxy_peak_rate(run: Run, options: argparse.Namespace, setup: ProxySetup,
                      backend: Backend, workdir: Path) -> float:
    """http-latency's rate when http-keepalive has not given HAProxy's peak: one http-keepalive
    measurement of HAProxy, not counted."""
    peak_run = Run("http-keepalive", run.workers, run.layout)
    proxy = RunningProxy(setup, workdir, "peak")
    try:
        measurement = measure(peak_run, options, proxy, backend, 0, workdir)
    finally:
        proxy.stop()
    if measurement.errors or measurement.value != measurement.value:
        raise RuntimeError(f"http-latency: HAProxy's peak measurement failed: "
                           f"{measurement.errors}")
    print(f"  haproxy peak (http-keepalive, one uncounted run): {_num(measurement.value)} "
          "requests/s")
    return measurement.value


def profile_ingress(run: Run, options: argparse.Namespace, setup: ProxySetup, backend: Backend,
                    workdir: Path) -> dict[str, Any]:
    """One more mta-ingress measurement, not counted, with py-spy sampling every worker."""
    py_spy = profile.find_py_spy()
    if py_spy is None:
        message = (f"py-spy not found: {BENCH_VENV}/bin/pip install py-spy "
                   "(it is not a project dependency)")
        print(f"  profile: {message}")
        return {"error": message}
    proxy = RunningProxy(setup, workdir, "profile")
    workers = proxy.pids[1:] or proxy.pids  # the supervisor only waits on its workers
    outputs = [workdir / f"py-spy-{pid}.raw" for pid in workers]
    commands = [profile.command(py_spy, pid, options.warmup + options.duration, output,
                                native=options.profile == "native")
                for pid, output in zip(workers, outputs, strict=True)]
    recorders = [Child("py-spy", [*_pin(run.layout.load), *argv], stop_signal=signal.SIGINT,
                       death_signal=signal.SIGKILL, stdout=workdir / "py-spy.stdout",
                       stderr=workdir / f"py-spy-{index}.stderr")
                 for index, argv in enumerate(commands)]
    try:
        measurement = measure(run, options, proxy, backend, 0)
        for recorder in recorders:
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.process.wait(options.warmup + options.duration + 10)
    finally:
        for recorder in recorders:
            recorder.stop()
        proxy.stop()
    lines = [f"  profiled run (not counted; py-spy {options.profile} mode slows the worker): "
             f"{_num(measurement.value)} sessions/s, CPU proxy {_pct(measurement.cpu['proxy'])}",
             f"  command: {' '.join(commands[0])}",
             *profile.summarise(outputs)]
    for line in lines:
        print(line)
    return {"commands": [" ".join(c) for c in commands], "raw": [str(o) for o in outputs],
            "sessions_per_s": measurement.value, "summary": lines}


def _burns(text: str) -> list[float]:
    try:
        burns = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if (not all(math.isfinite(burn) and burn >= 0 for burn in burns)
            or len(set(burns)) != len(burns)):
        raise argparse.ArgumentTypeError(f"distinct finite values >= 0 wanted: {text!r}")
    return burns


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Side-by-side benchmark of mta-ingress and HAProxy on loopback.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: " + ", ".join(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per proxy, alternating haproxy / mta-ingress")
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds of each measurement window (sessions, bulk)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before each window")
    parser.add_argument("--workers", type=int, default=1,
                        help="mta-ingress workers; above 1 the proxies are not pinned, and "
                             "sessions also runs the pinned 1-worker comparison")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="sessions: SMTP sessions in flight")
    parser.add_argument("--bulk-connections", type=int, default=2,
                        help="bulk: connections streaming at once")
    parser.add_argument("--bulk-chunk", type=int, default=1 << 20,
                        help="bulk: bytes per send call")
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--idle-batch", type=int, default=500,
                        help="idle: connections opened at once (below the accept backlogs)")
    parser.add_argument("--idle-hold", type=float, default=3.0,
                        help="idle: seconds the connections are held open")
    parser.add_argument("--http-duration", type=float, default=3.0,
                        help="seconds of each measurement window of the http-* scenarios")
    parser.add_argument("--http-connections", type=int, default=64,
                        help="http-keepalive, http-close, http-latency: connections")
    parser.add_argument("--http-1mib-connections", type=int, default=8,
                        help="http-1mib: connections")
    parser.add_argument("--http-rate", type=float, default=None,
                        help="http-latency: requests/s (default: half of HAProxy's median "
                             "http-keepalive rate, measured first if that scenario is not run)")
    parser.add_argument("--access-log", choices=("file", "devnull"), default="file",
                        help="where mta-ingress's access log (its stdout) goes")
    parser.add_argument("--profile", choices=("off", "python", "native"), default="off",
                        help="sessions: one extra, uncounted mta-ingress run sampled by py-spy "
                             "(python: --nonblocking; native: C frames and system calls too)")
    parser.add_argument("--haproxy-log", choices=("off", "file"), default="off",
                        help="HAProxy's log: off, or one line per request or session to a file "
                             "in the results directory, as the contract's HAProxy logs to stdout")
    parser.add_argument("--floor", type=_burns, default=[], metavar="US[,US...]",
                        help="http-keepalive and https-keepalive (one worker): also measure "
                             "the reference relay loadtest/floor.py, once per value, with that "
                             "many microseconds of busy CPU added per request (0: none)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin any process to a CPU")
    parser.add_argument("--base-port", type=int, default=24000,
                        help="first loopback port to use (below the ephemeral range)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="where to write every figure (default "
                             "loadtest/results/bench-<timestamp>.json)")
    options = parser.parse_args(argv)
    options.scenarios = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    if unknown or not options.scenarios:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    if options.rounds < 1 or options.duration <= 0 or options.workers < 1:
        parser.error("--rounds and --workers must be at least 1, --duration positive")
    return options


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Treated as Ctrl-C.  Inside a measurement asyncio.Runner has replaced the SIGINT handler
    # with one that cancels the load (an exception raised here would land in some transport
    # callback instead); outside, the default handler raises KeyboardInterrupt.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for binary in (HAPROXY, "taskset"):
        if shutil.which(binary) is None:
            print(f"bench: {binary} not found", file=sys.stderr)
            return 2
    # Also when started in the background, where SIGINT is inherited as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / f"bench-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path: Path = options.json or RESULTS / f"bench-{stamp}.json"
    nofile = raise_nofile()
    options.idle_note = fit_idle_connections(options)
    env = environment(nofile)
    command = " ".join([sys.executable, "loadtest/bench.py", *(argv or sys.argv[1:])])
    print(f"mta-ingress vs HAProxy, loopback only; {env['cpus']} CPUs ({env['cpu']}), "
          f"kernel {env['kernel']}")
    print(f"command: {command}")
    print(f"python {env['python']}, uvloop {env['uvloop']}, mta-ingress {env['mta_ingress']} "
          f"({env['commit']}); {env['haproxy']}")
    print(f"RLIMIT_NOFILE {nofile}")
    maxconn_note = haproxy_maxconn()[1]
    if maxconn_note:
        print(f"note: haproxy maxconn {haproxy_maxconn()[0]}: {maxconn_note}")
    if options.idle_note:
        print(f"note: idle uses {options.idle_connections:,} connections: {options.idle_note}")
    print(f"configs, logs and access logs: {run_dir}")
    if not sys.executable.startswith(str(BENCH_VENV)):
        print(f"warning: not running on {BENCH_VENV}/bin/python; figures are not comparable "
              "with `make bench`")

    busy = machine_busy()
    if busy >= DISTURBED:
        print(f"warning: before the start, {busy * 100:.0f}% of the CPUs were busy with other "
              "programs; expect DISTURBED measurements")
    runs = plan(options)
    ports = PortPool(options.base_port)
    report: dict[str, Any] = {"command": command, "started": stamp, "environment": env,
                              "busy_before_start": busy,
                              "options": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(options).items()},
                              "runs": {}}
    interrupted = False
    failure = ""
    try:
        for index, run in enumerate(runs):
            results: list[Measurement] = []
            try:
                measurements, info = execute(run, options, ports, run_dir, results.append)
            finally:
                report["runs"][run.key] = {"rounds": [asdict(m) for m in results]}
            http = run.scenario in HTTP_SCENARIOS
            if index == 0 or (http and not any(r.scenario in HTTP_SCENARIOS
                                               for r in runs[:index])):
                # The first SMTP and the first HTTP scenario show their configurations.
                print("\n   haproxy config (" + info["configs"]["haproxy"] + "):")
                print(_indent(Path(info["configs"]["haproxy"]).read_text()))
                print("   mta-ingress config (" + info["configs"]["mta-ingress"] + "):")
                print(_indent(Path(info["configs"]["mta-ingress"]).read_text()))
                print(f"   (other {'HTTP' if http else 'SMTP'} scenarios differ only in ports)")
            summary = summarise(run, measurements)
            if (run.scenario == "http-keepalive" and run.workers == 1
                    and options.http_rate is None):
                peak = summary["medians"]["haproxy"]["value"]
                if peak and not summary["medians"]["haproxy"]["errors"]:
                    options.http_rate = peak / 2
            report["runs"][run.key].update({"scenario": run.scenario, "workers": run.workers,
                                            "layout": run.layout.describe(), **info,
                                            "summary": summary,
                                            "summary_text": summary_text(run, summary,
                                                                         options)})
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process", file=sys.stderr)
    except (RuntimeError, OSError) as error:
        # A proxy or the backend that does not start: say so plainly and keep what was measured.
        failure = str(error)
        report["error"] = failure
        print(f"\nbench: stopped: {failure}", file=sys.stderr)
    finally:
        stop_all_children()
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print("\n" + "=" * 100)
    print(f"SUMMARY ({options.rounds} rounds per proxy, medians; CPU 100% = one core; "
          f"mta-ingress access log: {'file' if options.access_log == 'file' else '/dev/null'}; "
          f"HAProxy log: {'file' if options.haproxy_log == 'file' else 'off'})")
    for key, data in report["runs"].items():
        for line in data.get("summary_text", [f"{key}: incomplete"]):
            print(line)
        if "summary" in data.get("profile", {}):
            print(f"  where mta-ingress spends its time ({options.profile} profile):")
            for line in data["profile"]["summary"]:
                print("  " + line)
    print(f"\nall figures: {json_path}")
    if failure:
        print(f"bench: stopped early: {failure.splitlines()[0]}")
    return 130 if interrupted else 1 if failure else 0


def _indent(text: str) -> str:
    return "\n".join("     " + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
