"""The egress scenarios: mta-ingress's socks5 and forward listeners beside Dante as a SOCKS5
server and HAProxy in forward mode, on one core each, in front of the same loopback SMTP sink
(issue 20, "Speed").

``--scenarios egress-sessions,egress-bulk,egress-idle``; docs/benchmarks.md, "Egress: SOCKS5 and
forward mode beside Dante and HAProxy", says what each measures and how to read it.

Five targets take turns in every round, a fresh proxy process per measurement:

``dante``                Dante 1.4 (``danted -f FILE -N 1``), clients doing a SOCKS5 CONNECT:
                         Dante has no BIND-then-CONNECT, so this is its exchange.
``ingress-socks5``       mta-ingress's socks5 listener, the same CONNECT: like for like.
``ingress-socks5-bind``  the same listener, KumoMTA's BIND to the source, then CONNECT: one more
                         round trip than Dante is asked for.
``haproxy-forward``      HAProxy 2.6 as KumoMTA documents it for ``ha_proxy_server``
                         (``accept-proxy``, ``source 0.0.0.0 usesrc clientip``, ``server mx
                         0.0.0.0``), a PROXY v2 header per session.
``ingress-forward``      mta-ingress's forward listener, the same header.

The ratios: ``ingress-socks5`` and ``ingress-socks5-bind`` to ``dante``, ``ingress-forward`` to
``haproxy-forward``, each with the issue's target for its reference.

Each proxy, and every process it forks (Dante's negotiate, request and io children, the
ingress's worker), is pinned to the proxy core with taskset; the load generator (this process)
and the sink share the other core.  A proxy's CPU time is that of its whole process tree, the
children it has reaped included (Dante starts and ends children as the load needs); what
decides whether it was saturated, and its capacity per second of CPU, is its core's busy time,
which also holds the kernel's network processing for what the proxy sends (softirq, in no
process's time).  A measurement during which other programs used the CPUs is taken again
(``--egress-retries``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest import bench_egress_load as egress_load
from loadtest import load, procstat
from loadtest.bench_report import (
    clean,
    cpu_text,
    health,
    latency_text,
    median,
    number,
    pass_fail,
    percent,
    qualified,
    ratio,
    round_tail,
    rounds_text,
    trouble,
)
from loadtest.bench_runner import (
    PortPool,
    cpu_figures,
    load_info,
    per_session_us,
    record_stop,
    run_workdir,
    uvloop_run,
)
from loadtest.bench_scenarios import (
    DISTURBED,
    SATURATED,
    Layout,
    Measurement,
    Run,
)
from loadtest.bench_targets import (
    ALARMING,
    BENCH_VENV,
    HAPROXY,
    ROOT,
    ROUTINE,
    Backend,
    Child,
    ProxySetup,
    access_log_ends,
    haproxy_log_lines,
    haproxy_maxconn,
    taskset,
    wait_ready,
)

DANTED = "/usr/sbin/danted"
SINK_SCRIPT = Path(__file__).with_name("bench_egress_sink.py")
# The sink listens off the client's 127.0.0.1: allow_clients ranges are denied as destinations.
SINK_HOST = "127.0.0.200"
# The addresses sessions leave from (every 127/8 address is this host's).  Dante sends from its
# one external address; the ingress's CONNECT without BIND from the first of its sources.
SOURCES = ("127.0.0.5", "127.0.0.7")
DANTE_EXTERNAL = "127.0.0.7"
CLIENT_NETWORK = "127.0.0.1/32"
ADMIN_PORT_OFFSET = 100


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    proxy: str  # "dante", "haproxy" or "mta-ingress"
    protocol: str  # bench_egress_load.PROTOCOLS
    label: str


TARGETS = (
    Target("dante", "dante", "socks5-connect", "Dante, SOCKS5 CONNECT"),
    Target("ingress-socks5", "mta-ingress", "socks5-connect",
           "mta-ingress socks5 listener, CONNECT only"),
    Target("ingress-socks5-bind", "mta-ingress", "socks5-bind",
           "mta-ingress socks5 listener, BIND then CONNECT (KumoMTA's exchange)"),
    Target("haproxy-forward", "haproxy", "proxy-v2",
           "HAProxy forward mode (accept-proxy, usesrc clientip), PROXY v2 header"),
    Target("ingress-forward", "mta-ingress", "proxy-v2",
           "mta-ingress forward listener, PROXY v2 header"),
)
TARGET_NAMES = tuple(target.name for target in TARGETS)


# --floor in egress-sessions: loadtest/floor.py --forward beside them, once per --floor value and
# engine, a reference for forward mode (what a connect from a bound source and the relay cost
# with none of mta-ingress's work), compared with HAProxy's forward mode but never judged.
FLOOR_SCENARIOS = ("egress-sessions",)
# The floor's engines, by the suffix of their names: uvloop's transports (as the ingress relays
# today), and an epoll set of the floor's own that uvloop watches as one descriptor (--epoll).
FLOOR_ENGINES = ("", "-epoll")


def floor_name(burn_us: float, engine: str = "") -> str:
    return f"floor-forward{engine}" + (f"+{burn_us:g}us" if burn_us else "")


def floors(burns: Sequence[float]) -> list[tuple[str, float, str]]:
    """(name, burn, engine) of each forward floor that ``burns`` asks for."""
    return [(floor_name(burn_us, engine), burn_us, engine)
            for burn_us in burns for engine in FLOOR_ENGINES]


def floor_values(run: Run, options: argparse.Namespace) -> list[float]:
    """The --floor values a run measures the forward floor with (none outside FLOOR_SCENARIOS)."""
    return list(getattr(options, "floor", [])) if run.scenario in FLOOR_SCENARIOS else []


# --io-engine in the egress scenarios: the targets' listeners' io_engine ("epoll", the default,
# or "uvloop"); "both" keeps the targets on epoll and measures each mta-ingress target again on
# uvloop's transports, named with "+uvloop", as a reference beside the same proxy.
def io_engines(options: argparse.Namespace) -> tuple[str, str | None]:
    """The targets' io_engine, and the engine measured beside them (None: none)."""
    engine = getattr(options, "io_engine", "epoll")
    return ("epoll", "uvloop") if engine == "both" else (engine, None)


def engine_references(other: str | None) -> tuple[Target, ...]:
    if other is None:
        return ()
    return tuple(Target(f"{target.name}+{other}", target.proxy, target.protocol,
                        f'{target.label}, io_engine = "{other}"')
                 for target in TARGETS if target.proxy == "mta-ingress")


def targets(run: Run, options: argparse.Namespace) -> tuple[Target, ...]:
    engines = engine_references(io_engines(options)[1])
    references = tuple(
        Target(name, "floor", "proxy-v2",
               "loadtest/floor.py --forward" + (" --epoll" if engine else "")
               + ": the same connect and relay, none of mta-ingress's work"
               + (" (its own epoll set, not uvloop's transports)" if engine else "")
               + (f", +{burn_us:g} us per session" if burn_us else ""))
        for name, burn_us, engine in floors(floor_values(run, options)))
    return (*TARGETS, *engines, *references)


@dataclass(frozen=True, slots=True)
class Comparison:
    subject: str
    reference: str
    label: str


COMPARISONS = (
    Comparison("ingress-socks5", "dante", "socks5 CONNECT / Dante CONNECT (like for like)"),
    Comparison("ingress-socks5-bind", "dante",
               "socks5 BIND+CONNECT / Dante CONNECT (KumoMTA's exchange, one round trip more)"),
    Comparison("ingress-forward", "haproxy-forward", "forward / HAProxy forward"),
)


# Issue 20's targets, by scenario and reference: mta-ingress's least ratio to it.
RATIO_TARGETS: dict[str, dict[str, float]] = {
    "egress-sessions": {"dante": 1.0, "haproxy-forward": 0.9},
    "egress-bulk": {"dante": 1.2, "haproxy-forward": 1.2},
}


UNITS = {"egress-sessions": ("sessions/s", "sessions per proxy-core-s"),
         "egress-bulk": ("MB/s", "MB per proxy-core-s"),
         "egress-idle": ("bytes RSS per session", "")}


# Dante's log lines that mean something went wrong ("danted[PID]: warning: ..."), except what
# it says when it is stopped: "alert: mother[1/1]: shutting down".
DANTE_ALARMING = (": warning:", ": error:", ": alert:", ": crit:", ": emerg:")
DANTE_ROUTINE = ("]: shutting down", "exiting on signal")


# --- configurations ----------------------------------------------------------------------------

DANTE_CONFIG = """\
# Dante 1.4 as a plain SOCKS5 server: no authentication, CONNECT only, sending from one
# external address; timeouts as the other proxies': negotiation 10s (the ingress's
# socks_handshake), idle 1m.  No per-session log (no "log:" in the rules), as HAProxy logs
# nothing.
logoutput: stderr
internal: 127.0.0.1 port = {port}
external: {external}
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
timeout.negotiate: 10
timeout.io: 60

client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
}}

socks pass {{
    from: 127.0.0.0/8 to: {sink_host}/32 port = {sink_port}
    command: connect
}}
"""


HAPROXY_FORWARD_CONFIG = """\
# HAProxy as KumoMTA documents it for ha_proxy_server: the PROXY header's source is the address
# to send from (usesrc clientip: transparent binding, which needs root), its destination the
# server (0.0.0.0: the connection's destination).  One thread, maxconn as the descriptor limit
# allows, timeouts connect 5s / client 1m / server 1m, no splice; logging as --haproxy-log says
# (off, or a tcplog line per session on stdout, as the ingress writes its egress line).
global
    nbthread 1
    maxconn {maxconn}{maxconn_note}{log_global}

defaults
    mode tcp{log_defaults}
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend egress_forward
    bind 127.0.0.1:{port} accept-proxy
    default_backend to_the_mx

backend to_the_mx
    source 0.0.0.0 usesrc clientip
    server mx 0.0.0.0
"""


INGRESS_EGRESS_CONFIG = """\
# Both egress listeners in one process, one worker; only the sink's port is allowed, loopback
# off the deny list (127.0.0.1, the clients' network, stays denied), connect timeout 5s and idle
# timeout 1m as HAProxy's.  drain and grace only shorten the bench's teardown.
preset = "none"
workers = 1
log_format = "logfmt"

[listeners.egress-socks]
bind = ["127.0.0.1:{socks_port}"]
mode = "socks5"
{common}
[listeners.egress-forward]
bind = ["127.0.0.1:{forward_port}"]
mode = "forward"
{common}
[timeouts]
connect = "5s"
tcp_idle = "1m"
drain = "0s"
grace = "2s"

[admin]
bind = ["127.0.0.1:{admin_port}"]
"""


def _toml_list(items: Sequence[object]) -> str:
    return "[" + ", ".join(f'"{item}"' if isinstance(item, str) else str(item)
                           for item in items) + "]"


def dante_config(port: int, sink_port: int, *, external: str = DANTE_EXTERNAL,
                 sink_host: str = SINK_HOST) -> str:
    return DANTE_CONFIG.format(port=port, external=external, sink_host=sink_host,
                               sink_port=sink_port)


def haproxy_forward_config(port: int, maxconn: int, note: str = "", log: str = "off") -> str:
    """``log``: "off", "file" (``option tcplog``, a line per session on stdout) or "errors"
    (the same with ``option dontlog-normal``)."""
    return HAPROXY_FORWARD_CONFIG.format(
        port=port, maxconn=maxconn, maxconn_note=f"  # {note}" if note else "",
        **haproxy_log_lines(log, "tcplog"))


def ingress_egress_config(socks_port: int, forward_port: int, sink_port: int,
                          sources: Sequence[str] = SOURCES, io_engine: str = "uvloop") -> str:
    common = (f'io_engine = "{io_engine}"\n'
              f"egress_sources = {_toml_list(sources)}\n"
              f"egress_ports = {_toml_list([sink_port])}\n"
              f"allow_clients = {_toml_list([CLIENT_NETWORK])}\n"
              'deny_destinations = ["10.0.0.0/8"]\n')
    return INGRESS_EGRESS_CONFIG.format(socks_port=socks_port, forward_port=forward_port,
                                        admin_port=socks_port + ADMIN_PORT_OFFSET,
                                        common=common)


def egress_setups(workdir: Path, ports: PortPool, sink_port: int, cpus: set[int] | None,
                  access_log: str, haproxy_log: str = "off",
                  floor_burns: Sequence[float] = (), io_engine: str = "epoll",
                  engine_beside: str | None = None) -> dict[str, ProxySetup]:
    """Each target's configuration file, command line and port; the three mta-ingress targets
    share one configuration (both listeners, on ``io_engine``), each measured in a process of
    its own; with ``engine_beside``, the same three again on a configuration with that
    io_engine (named with "+" and it); then a forward floor per value of ``floor_burns``."""
    dante_port, haproxy_port = ports.take(), ports.take()
    socks_port, forward_port = ports.take(), ports.take()
    dante_path = workdir / "danted.conf"
    dante_path.write_text(dante_config(dante_port, sink_port))
    haproxy_path = workdir / "haproxy-forward.cfg"
    maxconn, note = haproxy_maxconn()
    haproxy_path.write_text(haproxy_forward_config(haproxy_port, maxconn, note, haproxy_log))
    binary = BENCH_VENV / "bin" / "mta-ingress"
    if not binary.exists():
        binary = Path(sys.executable).parent / "mta-ingress"
    setups = {
        # -N 1: one main process (its default), which forks its children as it needs them.
        "dante": ProxySetup("dante", dante_port, dante_path,
                            [*taskset(cpus), DANTED, "-f", str(dante_path), "-N", "1",
                             "-p", str(workdir / "danted.pid")]),
        "haproxy-forward": ProxySetup(
            "haproxy-forward", haproxy_port, haproxy_path,
            [*taskset(cpus), HAPROXY, "-db", "-f", str(haproxy_path)],
            None if haproxy_log == "off" else str(workdir / "haproxy-forward-access-{tag}.log")),
    }
    configurations = [("", "ingress-egress.toml", io_engine, socks_port, forward_port)]
    if engine_beside is not None:
        configurations.append((f"+{engine_beside}", f"ingress-egress-{engine_beside}.toml",
                               engine_beside, ports.take(), ports.take()))
    for suffix, file_name, engine, socks, forward in configurations:
        ingress_path = workdir / file_name
        ingress_path.write_text(ingress_egress_config(socks, forward, sink_port,
                                                      io_engine=engine))
        ingress_argv = [*taskset(cpus), str(binary), "run", "--config", str(ingress_path)]
        for base, port in (("ingress-socks5", socks), ("ingress-socks5-bind", socks),
                           ("ingress-forward", forward)):
            name = base + suffix
            setups[name] = ProxySetup(
                name, port, ingress_path, ingress_argv,
                None if access_log == "devnull" else str(workdir / f"{name}-access-{{tag}}.log"))
    floor_script = Path(__file__).with_name("floor.py")
    references = floors(floor_burns)
    for name, burn_us, engine in references:
        port = ports.take()
        setups[name] = ProxySetup(name, port, floor_script,
                                  [*taskset(cpus), sys.executable, str(floor_script),
                                   "--forward", *(["--epoll"] if engine else []),
                                   "--port", str(port), "--burn-us", f"{burn_us:g}"])
    engines = [target.name for target in engine_references(engine_beside)]
    return {target.name: setups[target.name] for target in TARGETS} | {
        name: setups[name] for name in engines} | {
        name: setups[name] for name, _, _ in references}


# --- the proxies under test --------------------------------------------------------------------

_STOP = {"mta-ingress": signal.SIGINT, "haproxy": signal.SIGUSR1, "dante": signal.SIGTERM,
         "floor": signal.SIGUSR1}
_DEATH = {"mta-ingress": signal.SIGINT, "haproxy": signal.SIGTERM, "dante": signal.SIGTERM,
          "floor": signal.SIGTERM}


PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread


def stat_times(text: str) -> tuple[int, int, int, int]:
    """utime, stime, cutime, cstime (clock ticks) from the text of /proc/PID/stat."""
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def foreign_cpu_seconds(ours: set[int]) -> float:
    """CPU seconds (user + system, since they started) of every process but ``ours`` and the
    kernel's threads: other programs, whose time in a window means it was disturbed.  The
    kernel's network processing (softirq) is in no process: it is counted on the core where it
    ran, which for loopback traffic is the sender's."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                text = file.read().decode("ascii", "replace")
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[6]) & PF_KTHREAD:
                continue
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return ticks / procstat.CLOCK_TICKS


def tree_cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes and of the children they have reaped:
    a Dante child that ends between two samples is then still counted, in its parent."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                utime, stime, cutime, cstime = stat_times(file.read().decode("ascii", "replace"))
        except (OSError, ValueError, IndexError):
            continue
        user += utime + cutime
        system += stime + cstime
    return user / procstat.CLOCK_TICKS, system / procstat.CLOCK_TICKS


def stderr_alarms(lines: Sequence[str]) -> list[str]:
    return [line for line in lines
            if any(word in line for word in (*ALARMING, *DANTE_ALARMING))
            and not any(word in line for word in (*ROUTINE, *DANTE_ROUTINE))]


class EgressProxy:
    """One measurement's proxy process, in a process group of its own, ready when its port
    listens (the ingress: and its ``ready`` line is out)."""

    def __init__(self, target: Target, setup: ProxySetup, workdir: Path, tag: str) -> None:
        self.target = target
        self.setup = setup
        self.access_log = (Path(setup.access_log.format(tag=tag))
                           if setup.access_log is not None else None)
        self.child = Child(target.name, setup.argv, stop_signal=_STOP[target.proxy],
                           death_signal=_DEATH[target.proxy],
                           stdout=self.access_log or subprocess.DEVNULL,
                           stderr=workdir / f"{target.name}-{tag}.stderr")
        wait_ready(self.child, setup.port, ingress=target.proxy == "mta-ingress")
        self.started_pids = procstat.tree(self.child.pid)

    def pids(self) -> list[int]:
        """The tree now: Dante forks children under load."""
        return procstat.tree(self.child.pid)

    def memory(self) -> tuple[egress_load.Memory, int]:
        """RSS and PSS in KiB of the whole tree ("total") and, for the ingress, of its
        supervisor and worker apart; and how many processes the tree has."""
        pids = self.pids()
        parts = {"total": (procstat.rss_kib(pids), procstat.pss_kib(pids))}
        if self.target.proxy == "mta-ingress":
            root, workers = pids[:1], pids[1:]
            parts["supervisor"] = (procstat.rss_kib(root), procstat.pss_kib(root))
            parts["worker"] = (procstat.rss_kib(workers), procstat.pss_kib(workers))
        return parts, len(pids)

    def stop(self) -> tuple[int | None, dict[str, int], list[str]]:
        code = self.child.stop()
        if self.target.proxy == "dante" and code == -signal.SIGTERM:
            code = 0  # Dante ends by the signal it was asked to end by
        try:
            stderr = self.child.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            stderr = []
        ends: dict[str, int] = {}
        if self.access_log is not None and self.access_log.exists():
            with open(self.access_log, "rb") as file:
                ends = access_log_ends(file)
        return code, ends, stderr_alarms(stderr)


def machine_user_seconds() -> float:
    """User time (user + nice) of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as file:
        for line in file:
            if line.startswith("cpu "):
                fields = line.split()
                return (int(fields[1]) + int(fields[2])) / procstat.CLOCK_TICKS
    return 0.0


def _marker(proxy: EgressProxy, sink: Backend) -> load.Marker:
    loadgen = [os.getpid()]

    def mark() -> load.Mark:
        at = time.monotonic()
        pids = proxy.pids()
        proxy_user, proxy_system = tree_cpu_seconds(pids)
        load_user, load_system = procstat.cpu_seconds(loadgen)
        sink_user, sink_system = procstat.cpu_seconds([sink.pid])
        foreign = foreign_cpu_seconds({*pids, *loadgen, sink.pid})
        seconds = {"proxy": proxy_user + proxy_system, "loadgen": load_user + load_system,
                   "backend": sink_user + sink_system, "foreign": foreign,
                   "machine_user": machine_user_seconds(),
                   "bench_user": proxy_user + load_user + sink_user}
        system = {"proxy": proxy_system, "loadgen": load_system, "backend": sink_system}
        sample = procstat.CpuSample(at, seconds, {**dict.fromkeys(seconds, 0.0), **system},
                                    procstat.core_ticks())
        return load.Mark(sample, sink.stats())

    return mark


def egress_cpu_figures(window: load.Window, layout: Layout) -> dict[str, float]:
    """bench_runner's figures, with ``other`` (what DISTURBED is judged by) the CPU time other
    programs used: the larger of what the other processes alive at the window's end used in it,
    and the CPUs' user time beyond the bench's own (which a program that came and went in the
    window leaves); ``unaccounted``: what the busy cores did outside every process (the
    kernel's network processing, mostly)."""
    figures = cpu_figures(window, layout)
    foreign = figures.pop("foreign", 0.0)
    foreign_user = figures.pop("machine_user", 0.0) - figures.pop("bench_user", 0.0)
    for name in ("foreign", "machine_user", "bench_user"):
        figures.pop(f"{name}_sys", None)
    figures["unaccounted"] = figures.get("other", 0.0)
    figures["other"] = max(0.0, foreign, foreign_user)
    return figures


def _per_core(amount: float, cpu: dict[str, float], seconds: float) -> float | None:
    """``amount`` per second of the proxy core busy (softirq included)."""
    busy = cpu.get("proxy_core", cpu.get("proxy", 0.0)) * seconds
    return amount / busy if busy > 0 else None


def measure(run: Run, options: argparse.Namespace, target: Target, proxy: EgressProxy,
            sink: Backend, round_number: int) -> Measurement:
    host, port = "127.0.0.1", proxy.setup.port
    plans = egress_load.openings(target.protocol, (SINK_HOST, sink.port), SOURCES)
    mark = _marker(proxy, sink)
    if run.scenario == "egress-sessions":
        result = uvloop_run(egress_load.sessions(
            host, port, plans, concurrency=run.concurrency, warmup=options.warmup,
            duration=options.duration, mark=mark))
        window = result.window
        proxy_cpu = window.cpu_seconds("proxy")
        figures = egress_cpu_figures(window, run.layout)
        return Measurement(
            target.name, round_number, result.completed / window.seconds,
            _per_core(result.completed, figures, window.seconds),
            figures, dict(result.errors), None, {},
            {"completed_in_window": result.completed, "completed_total": result.completed_total,
             "window_s": window.seconds, "proxy_cpu_s": proxy_cpu,
             "per_process_cpu_s": result.completed / proxy_cpu if proxy_cpu > 0 else None,
             "sink_sessions_in_window": window.backend_delta("sessions"),
             "sink_errors": window.end.backend.get("errors", 0),
             "latency_ms": result.latency_ms,
             "proxy_processes": len(proxy.pids()),
             "proxy_us_per_session": per_session_us(proxy_cpu, result.completed),
             "proxy_sys_us_per_session": per_session_us(
                 window.utilisation()["proxy_sys"] * window.seconds, result.completed)})
    if run.scenario == "egress-bulk":
        bulk = egress_load.bulk(
            host, port, plans, sessions=options.egress_bulk_sessions,
            message_bytes=options.egress_message_mib << 20, chunk_size=options.bulk_chunk,
            warmup=options.warmup, duration=options.duration, mark=mark)
        window = bulk.window
        proxy_cpu = window.cpu_seconds("proxy")
        megabytes = bulk.received / 1e6
        errors = dict(bulk.errors)
        if window.end.backend.get("errors"):
            errors["sink-bad-message"] = window.end.backend["errors"]
        figures = egress_cpu_figures(window, run.layout)
        return Measurement(
            target.name, round_number, megabytes / window.seconds,
            _per_core(megabytes, figures, window.seconds), figures, errors, None, {},
            {"received_bytes": bulk.received, "sent_bytes": bulk.sent,
             "messages_in_window": bulk.messages, "window_s": window.seconds,
             "proxy_cpu_s": proxy_cpu,
             "per_process_cpu_s": megabytes / proxy_cpu if proxy_cpu > 0 else None,
             "proxy_processes": len(proxy.pids())})
    idle = uvloop_run(egress_load.idle(
        host, port, plans, count=options.idle_connections, batch=options.idle_batch,
        hold=options.idle_hold, memory=proxy.memory,
        sink_sessions=lambda: sink.stats()["sessions"]))
    errors = dict(idle.failed)
    if idle.lost_while_holding:
        errors["lost-while-holding"] = idle.lost_while_holding
    return Measurement(
        target.name, round_number, per_session_bytes(idle.before, idle.holding, "total", 0,
                                                     idle.established),
        None, {}, errors, None, {},
        {"target": idle.target, "established": idle.established,
         "failed": sum(idle.failed.values()), "lost_while_holding": idle.lost_while_holding,
         "sink_sessions_opened": idle.sink_sessions,
         "memory_before_kib": idle.before, "memory_holding_kib": idle.holding,
         "processes_before": idle.processes_before, "processes_holding": idle.processes_holding,
         "open_s": idle.open_seconds, "hold_s": idle.hold_seconds})


def per_session_bytes(before: egress_load.Memory, holding: egress_load.Memory, part: str,
                      kind: int, sessions: int) -> float:
    """Growth of ``part``'s RSS (``kind`` 0) or PSS (1) from ``before`` to ``holding``, in bytes
    per session; NaN without sessions or without that part."""
    if not sessions or part not in before or part not in holding:
        return float("nan")
    return (holding[part][kind] - before[part][kind]) * 1024 / sessions


# --- the run -----------------------------------------------------------------------------------


def describe(run: Run, options: argparse.Namespace) -> str:
    where = run.layout.describe().replace("backend", "sink")
    if run.scenario == "egress-sessions":
        return (f"new egress sessions/s (connect, SOCKS5 negotiation or PROXY v2 header, 220 "
                f"from the sink, QUIT, 221, close), {run.concurrency} clients in flight, "
                f"{options.duration:g}s window after {options.warmup:g}s warm-up; {where}")
    if run.scenario == "egress-bulk":
        return (f"DATA throughput, {options.egress_bulk_sessions} sessions each sending "
                f"{options.egress_message_mib} MiB messages back to back "
                f"({options.bulk_chunk // 1024} KiB sends), sink's MB/s over a "
                f"{options.duration:g}s window after {options.warmup:g}s warm-up; {where}")
    lowered = (f" (lowered from {options.idle_requested:,}: descriptor limit)"
               if getattr(options, "idle_note", "") else "")
    return (f"{options.idle_connections:,} idle relayed sessions{lowered}, each past the sink's "
            f"220, opened {options.idle_batch} at a time, held {options.idle_hold:g}s; "
            f"{where}")


def compiled_egress_modules() -> dict[str, bool]:
    """Whether each module of the egress path is loaded compiled (an extension beside it)."""
    modules = ("ingress/proxy/egress", "ingress/protocol/socks5", "routing/egress",
               "ingress/proxy/relay", "ingress/protocol/proxy_protocol")
    found = {}
    for module in modules:
        path = ROOT / module
        if path.with_suffix(".py").exists():
            found[module + ".py"] = any(path.parent.glob(path.name + ".*.so"))
    return found


def execute(run: Run, options: argparse.Namespace, ports: PortPool, run_dir: Path,
            on_measurement: Callable[[Measurement], None]) -> tuple[list[Measurement],
                                                                     dict[str, Any]]:
    workdir = run_workdir(run, run_dir)
    bulk = run.scenario == "egress-bulk"
    sink = Backend("data" if bulk else "smtp", ports.take(), run.layout.load, workdir,
                   script=SINK_SCRIPT,
                   arguments=("--host", SINK_HOST, "--message-bytes",
                              str(options.egress_message_mib << 20)))
    try:
        measured = targets(run, options)
        floor_burns = floor_values(run, options)
        io_engine, engine_beside = io_engines(options)
        setups = egress_setups(workdir, ports, sink.port, run.layout.proxy, options.access_log,
                               options.haproxy_log, floor_burns, io_engine, engine_beside)
    except BaseException:
        sink.stop()
        raise
    info: dict[str, Any] = {
        **load_info(run, sink),
        "targets": {target.name: target.label for target in measured},
        "commands": {name: " ".join(s.argv) for name, s in setups.items()},
        "configs": {name: str(s.config_path) for name, s in setups.items()
                    if name in ("dante", "haproxy-forward", "ingress-socks5")},
        "ingress_access_log": (setups["ingress-socks5"].access_log or "/dev/null").format(
            tag="rN"),
        "compiled": compiled_egress_modules(),
    }
    print(f"\n== {run.key}: {describe(run, options)}")
    print(f"   sink:        {info['backend']}")
    for name in setups:
        print(f"   {name + ':':<21} {info['commands'][name]}")
    print(f"   ingress access logs: {info['ingress_access_log']}")
    print("   compiled: " + ", ".join(f"{module} {'yes' if yes else 'NO'}"
                                      for module, yes in info["compiled"].items()))
    measurements: list[Measurement] = []
    info["discarded"] = []
    retries = getattr(options, "egress_retries", 0)
    try:
        for round_number in range(1, options.rounds + 1):
            for target in measured:
                for attempt in range(retries + 1):
                    measurement = _measure_once(run, options, target, setups[target.name],
                                                sink, workdir, round_number, attempt)
                    disturbed = (measurement.cpu.get("other") or 0.0) >= DISTURBED
                    if not disturbed or attempt == retries:
                        break
                    # Another program competed for the CPUs: not a measurement of the proxies.
                    info["discarded"].append(asdict(measurement))
                    print(round_line(run, measurement) + "  -> discarded, measured again",
                          flush=True)
                measurements.append(measurement)
                on_measurement(measurement)
                print(round_line(run, measurement), flush=True)
    finally:
        sink.stop()
    return measurements, info


def _measure_once(run: Run, options: argparse.Namespace, target: Target, setup: ProxySetup,
                  sink: Backend, workdir: Path, round_number: int, attempt: int) -> Measurement:
    deadline = getattr(options, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise RuntimeError(f"the run's time limit ({options.timeout:g}s) is up")
    tag = f"r{round_number}" + (f"-again{attempt}" if attempt else "")
    proxy = EgressProxy(target, setup, workdir, tag)
    try:
        measurement = measure(run, options, target, proxy, sink, round_number)
    finally:
        stopped = proxy.stop()
    record_stop(measurement, stopped)
    measurement.detail["attempt"] = attempt
    return measurement


# --- the report --------------------------------------------------------------------------------


def round_line(run: Run, m: Measurement) -> str:
    tail = round_tail(m)
    if run.scenario == "egress-idle":
        d = m.detail
        before, holding = d["memory_before_kib"], d["memory_holding_kib"]
        parts = "  ".join(
            f"{part} RSS {before[part][0] / 1024:,.1f} -> {holding[part][0] / 1024:,.1f} MiB "
            f"(PSS {before[part][1] / 1024:,.1f} -> {holding[part][1] / 1024:,.1f})"
            for part in before if part in holding)
        return (f"  round {m.round} {m.proxy:<19} established {d['established']:,}/"
                f"{d['target']:,}  failed {d['failed']}  lost {d['lost_while_holding']}  "
                f"{parts}  processes {d['processes_before']} -> {d['processes_holding']}  "
                f"= {number(m.value)} bytes RSS/session  (opened in {d['open_s']:.1f}s)  "
                f"{tail}")
    unit = UNITS[run.scenario][0]
    return (f"  round {m.round} {m.proxy:<19} {number(m.value):>9} {unit}  "
            f"CPU {cpu_text(m.cpu)}  per proxy-core-s {number(m.per_cpu)}{latency_text(m)}  "
            f"{tail}")


def _part_summary(run: Run, mine: list[Measurement]) -> dict[str, Any]:
    part: dict[str, Any] = {
        "value": median([m.value for m in mine]),
        "per_cpu": median([m.per_cpu for m in mine]),
        "per_process_cpu": median([m.detail.get("per_process_cpu_s") for m in mine]),
        "cpu": {key: median([m.cpu.get(key) for m in mine])
                for key in ("proxy", "proxy_sys", "proxy_core", "loadgen", "backend",
                            "load_core", "machine", "unaccounted")},
        **health(mine),
        "rounds": len(mine),
        "round_values": [m.value for m in mine],
    }
    if run.scenario == "egress-sessions":
        for key in ("proxy_us_per_session", "proxy_sys_us_per_session"):
            part[key] = median([m.detail.get(key) for m in mine])
        part["processes"] = max((m.detail.get("proxy_processes", 0) for m in mine), default=0)
    if run.scenario == "egress-idle":
        part["established"] = min((m.detail["established"] for m in mine), default=0)
        part["target"] = max((m.detail["target"] for m in mine), default=0)
        part["processes_holding"] = max((m.detail["processes_holding"] for m in mine),
                                        default=0)
        part["bytes_per_session"] = {}
        for name in mine[0].detail["memory_before_kib"] if mine else ():
            part["bytes_per_session"][name] = {
                kind: median([per_session_bytes(m.detail["memory_before_kib"],
                                                m.detail["memory_holding_kib"], name, index,
                                                m.detail["established"]) for m in mine])
                for index, kind in enumerate(("rss", "pss"))}
        part["memory_kib"] = {
            name: {when: [median([m.detail[f"memory_{when}_kib"][name][index] for m in mine])
                          for index in (0, 1)]
                   for when in ("before", "holding")}
            for name in (mine[0].detail["memory_before_kib"] if mine else ())}
    return part


def _proxy_core(part: dict[str, Any]) -> float:
    cpu = part["cpu"]
    return float(cpu.get("proxy_core") or cpu.get("proxy") or 0.0)


def bottleneck(part: dict[str, Any]) -> str:
    """Which core limited a target: the proxy's (busy, softirq included), the load side's
    (load generator and sink), or neither (latency or concurrency bound)."""
    cpu = part["cpu"]
    proxy, load_side = _proxy_core(part), float(cpu.get("load_core") or 0.0)
    if proxy >= SATURATED:
        return (f"the proxy (its core {percent(proxy)} busy, the load side's "
                f"{percent(load_side)})")
    if load_side >= SATURATED:
        return (f"the load side (its core {percent(load_side)} busy: load generator + sink; "
                f"the proxy's core {percent(proxy)})")
    return (f"neither core is saturated (proxy {percent(proxy)}, load side "
            f"{percent(load_side)}): latency or concurrency bound")


def summarise(run: Run, measurements: list[Measurement]) -> dict[str, Any]:
    measured = {m.proxy for m in measurements}
    # the targets in their order, then the floors
    parts = {name: _part_summary(run, [m for m in measurements if m.proxy == name])
             for name in dict.fromkeys([*TARGET_NAMES, *(m.proxy for m in measurements)])
             if name in measured}
    comparisons = []
    floors = [Comparison(name, "haproxy-forward",
                         f"{name} / HAProxy forward (a reference: no target)")
              for name in parts if name.startswith("floor-forward")]
    engines = [Comparison(f"{c.subject}+{engine}", c.reference,
                          f'{c.label}, io_engine = "{engine}" (a reference: no target)')
               for c in COMPARISONS for engine in ("uvloop", "epoll")
               if f"{c.subject}+{engine}" in parts]
    for comparison in (*COMPARISONS, *engines, *floors):
        subject, reference = parts.get(comparison.subject), parts.get(comparison.reference)
        if subject is None or reference is None:
            continue
        # Rounds alternate the targets: round i of each ran under the same conditions.
        pairs = [(s, r) for s in measurements for r in measurements
                 if s.proxy == comparison.subject and r.proxy == comparison.reference
                 and s.round == r.round]
        entry: dict[str, Any] = {
            "subject": comparison.subject, "reference": comparison.reference,
            "label": comparison.label,
            "ratio": ratio(subject["value"], reference["value"]),
            "ratio_per_cpu": ratio(subject["per_cpu"], reference["per_cpu"]),
            "round_ratios": [ratio(s.value, r.value) for s, r in pairs],
            "round_ratios_per_cpu": [ratio(s.per_cpu, r.per_cpu) for s, r in pairs],
        }
        if run.scenario == "egress-idle":
            entry["ratio_pss"] = ratio(subject["bytes_per_session"]["total"]["pss"],
                                       reference["bytes_per_session"]["total"]["pss"])
        target = RATIO_TARGETS.get(run.scenario, {}).get(comparison.reference)
        if target is not None and comparison in COMPARISONS:
            both = (subject, reference)
            saturated = all(_proxy_core(p) >= SATURATED for p in both)
            decided_by = "throughput" if saturated else "per-cpu"
            figure = entry["ratio"] if saturated else entry["ratio_per_cpu"]
            verdict = qualified(pass_fail(figure, target), both)
            entry["target"] = {"min_ratio": target,
                               "throughput": pass_fail(entry["ratio"], target),
                               "per_cpu": pass_fail(entry["ratio_per_cpu"], target),
                               "decided_by": decided_by, "verdict": verdict}
        comparisons.append(entry)
    summary: dict[str, Any] = {"medians": parts, "comparisons": comparisons}
    if run.scenario == "egress-idle":
        held = all(clean(p) and p["established"] == p["target"] for p in parts.values())
        summary["target"] = {"verdict": "PASS" if held else "FAIL",
                             "rule": "every session established and held, none failed "
                                     "(memory per session: reported, no target)"}
    return summary


def summary_text(run: Run, summary: dict[str, Any], options: argparse.Namespace) -> list[str]:
    parts = summary["medians"]
    lines = [f"{run.key}: {describe(run, options)}"]
    if run.scenario == "egress-idle":
        for name, part in parts.items():
            per = part["bytes_per_session"]
            memory = part["memory_kib"]
            split = ""
            if "worker" in per:
                split = (f"; worker {number(per['worker']['rss'])} (RSS "
                         f"{memory['worker']['before'][0] / 1024:,.1f} -> "
                         f"{memory['worker']['holding'][0] / 1024:,.1f} MiB), supervisor "
                         f"{number(per['supervisor']['rss'])}")
            lines.append(
                f"  {name:<19} established {part['established']:,}/{part['target']:,} "
                f"(min over rounds)  failed/lost {part['errors']}{trouble(part)}  "
                f"RSS {memory['total']['before'][0] / 1024:,.1f} -> "
                f"{memory['total']['holding'][0] / 1024:,.1f} MiB  "
                f"{number(per['total']['rss'])} bytes RSS/session (by PSS "
                f"{number(per['total']['pss'])}){split}; processes "
                f"{part['processes_holding']}")
        for entry in summary["comparisons"]:
            lines.append(f"  ratio {entry['label']}: {number(entry['ratio'], 2)}x RSS per "
                         f"session{rounds_text(entry['round_ratios'])}, "
                         f"{number(entry['ratio_pss'], 2)}x PSS per session")
        lines.append(f"  target: {summary['target']['rule']}: {summary['target']['verdict']}")
        return lines
    unit, per_cpu_unit = UNITS[run.scenario]
    for name, part in parts.items():
        lines.append(
            f"  {name:<19} {number(part['value']):>9} {unit} (median)  CPU "
            f"{cpu_text(part['cpu'])}  {number(part['per_cpu'])} {per_cpu_unit} "
            f"({number(part['per_process_cpu'])} per process-CPU-s)  "
            f"errors {part['errors']}{trouble(part)}")
        if part.get("proxy_us_per_session") is not None:
            total, kernel = part["proxy_us_per_session"], part["proxy_sys_us_per_session"]
            lines.append(f"  {'':<19} proxy CPU per session {total:.0f} us: user "
                         f"{total - kernel:.0f} us, kernel {kernel:.0f} us"
                         + (f"; up to {part['processes']} processes"
                            if part.get("processes", 1) > 2 else ""))
    for entry in summary["comparisons"]:
        target = entry.get("target")
        verdict = ""
        if target:
            verdict = (f"  target >= {target['min_ratio']}x: throughput {target['throughput']}"
                       f", per proxy-core-s {target['per_cpu']} -> {target['verdict']} "
                       f"(decided by {target['decided_by']})")
        lines.append(f"  ratio {entry['label']}: {number(entry['ratio'], 2)}x {unit}"
                     f"{rounds_text(entry['round_ratios'])}; {number(entry['ratio_per_cpu'], 2)}x "
                     f"{per_cpu_unit}{rounds_text(entry['round_ratios_per_cpu'])}{verdict}")
    lines.append("  limited by: " + "; ".join(
        f"{name}: {bottleneck(part)}" for name, part in parts.items()))
    lines.append(f"  (a verdict is decided by throughput when both proxies of the ratio kept "
                 f"their core {percent(SATURATED)}+ busy, else by the figure per proxy-core-"
                 "second, which estimates capacity; a core's busy time includes the kernel's "
                 "network processing for what its processes send, in no process's CPU time)")
    return lines


def dante_version() -> str:
    """``Dante v1.4.2`` (the first sentence of ``danted -v``), or ``?``."""
    try:
        text = subprocess.run([DANTED, "-v"], capture_output=True, text=True, timeout=10,
                              check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return text.split(".  ", 1)[0].strip() or "?"


def check_binaries() -> str:
    """'' when what the egress scenarios need is here, else what is missing."""
    missing = [path for path in (DANTED, HAPROXY) if not Path(path).exists()]
    if missing:
        return f"egress scenarios need {', '.join(missing)} (Debian: dante-server, haproxy)"
    if os.geteuid() != 0:
        return "egress scenarios need root: HAProxy's usesrc clientip binds transparently"
    return ""
