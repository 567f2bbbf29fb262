"""The benchmark's runner: each run's rounds alternating the proxies, the load (wrk or the load
generator of loadtest/load.py), the CPU figures from /proc, and the machine's state."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from loadtest import load, procstat, profile
from loadtest.bench_report import number, percent, round_line
from loadtest.bench_scenarios import (
    ALL_CPUS,
    FLOOR_SCENARIOS,
    HTTP_LARGE_PATH,
    HTTP_PATH,
    HTTP_SCENARIOS,
    READINESS_PATH,
    S_TIME_REQUEST_SCENARIOS,
    S_TIME_SCENARIOS,
    TLS_SCENARIOS,
    WRK_SCENARIOS,
    Layout,
    Measurement,
    Run,
    cpu_list,
    describe_scenario,
)
from loadtest.bench_targets import (
    BENCH_VENV,
    FD_MARGIN,
    HAPROXY,
    ROOT,
    WANTED_NOFILE,
    Backend,
    Child,
    ProxySetup,
    RunningProxy,
    certificate_dir,
    floor_setup,
    haproxy_setup,
    ingress_setup,
    taskset,
)

T = TypeVar("T")


RESULTS = ROOT / "loadtest" / "results"


def _marker(proxy: RunningProxy, backend: Backend) -> load.Marker:
    # the backend's tree: nginx_origin.py's nginx processes are its children
    trees = {"proxy": proxy.pids, "loadgen": [os.getpid()],
             "backend": procstat.tree(backend.pid)}

    def mark() -> load.Mark:
        cpu = procstat.sample(trees, time.monotonic())
        return load.Mark(cpu, backend.stats())

    return mark


def uvloop_run(coroutine: Coroutine[Any, Any, T]) -> T:
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
    argv = [*taskset(run.layout.load), load.WRK, "-t1",
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
        cpu_figures(window, run.layout, loadgen_seconds=result.loadgen_cpu_s),
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
         "proxy_us_per_request": per_session_us(proxy_cpu, figures.get("requests", 0)),
         "proxy_sys_us_per_request": per_session_us(
             window.utilisation()["proxy_sys"] * window.seconds, figures.get("requests", 0))})


def s_time_argv(run: Run, port: int) -> list[str]:
    """One s_time client of a handshake scenario, without ``-time``: bare, or (tls-request-*)
    asking for the readiness path, which the proxy answers itself."""
    request = ["-www", READINESS_PATH] if run.scenario in S_TIME_REQUEST_SCENARIOS else []
    return [*taskset(run.layout.load), load.OPENSSL, "s_time", "-new", *request,
            "-connect", f"127.0.0.1:{port}"]


def measure_handshakes(run: Run, options: argparse.Namespace, proxy: RunningProxy,
                       backend: Backend, round_number: int) -> Measurement:
    argv = s_time_argv(run, proxy.setup.port)
    result = load.s_time(argv, clients=options.handshake_clients, warmup=options.warmup,
                         duration=options.http_duration, mark=_marker(proxy, backend))
    window = result.window
    proxy_cpu = window.cpu_seconds("proxy")
    return Measurement(
        proxy.setup.name, round_number,
        result.handshakes / window.seconds if window.seconds else float("nan"),
        result.handshakes / proxy_cpu if proxy_cpu > 0 else None,
        cpu_figures(window, run.layout, loadgen_seconds=result.loadgen_cpu_s),
        dict(result.errors), None, {},
        {"handshakes": result.handshakes, "s_time_command": " ".join(result.argv),
         "s_time_clients": options.handshake_clients, "window_s": window.seconds,
         # each s_time run may end in the middle of one handshake
         "expected_client_aborts": 2 * options.handshake_clients,
         "proxy_cpu_s": proxy_cpu,
         "proxy_us_per_handshake": per_session_us(proxy_cpu, result.handshakes),
         "proxy_sys_us_per_handshake": per_session_us(
             window.utilisation()["proxy_sys"] * window.seconds, result.handshakes)})


def measure_latency(run: Run, options: argparse.Namespace, proxy: RunningProxy,
                    backend: Backend, round_number: int) -> Measurement:
    result = uvloop_run(load.http_rate(
        "127.0.0.1", proxy.setup.port, path=HTTP_PATH, rate=options.http_rate,
        connections=options.http_connections, warmup=options.warmup,
        duration=options.http_duration, mark=_marker(proxy, backend)))
    window = result.window
    proxy_cpu = window.cpu_seconds("proxy")
    latency = result.latency_ms
    return Measurement(
        proxy.setup.name, round_number, latency.get("p99", float("nan")), None,
        cpu_figures(window, run.layout), dict(result.errors), None, {},
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
    if run.scenario in S_TIME_SCENARIOS:
        return measure_handshakes(run, options, proxy, backend, round_number)
    if run.scenario == "http-latency":
        return measure_latency(run, options, proxy, backend, round_number)
    if run.scenario == "sessions":
        result = uvloop_run(load.sessions(
            host, port, concurrency=options.concurrency, warmup=options.warmup,
            duration=options.duration, mark=_marker(proxy, backend)))
        window = result.window
        proxy_cpu = window.cpu_seconds("proxy")
        return Measurement(
            name, round_number, result.completed / window.seconds,
            result.completed / proxy_cpu if proxy_cpu > 0 else None,
            cpu_figures(window, run.layout),
            dict(result.errors), None, {},
            {"completed_in_window": result.completed, "completed_total": result.completed_total,
             "window_s": window.seconds, "proxy_cpu_s": proxy_cpu,
             "backend_sessions_in_window": window.backend_delta("sessions"),
             "backend_proxy_header_errors": window.end.backend.get("proxy_errors", 0),
             "latency_ms": result.latency_ms,
             "proxy_us_per_session": per_session_us(proxy_cpu, result.completed),
             "proxy_sys_us_per_session": per_session_us(
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
            cpu_figures(window, run.layout),
            dict(bulk.errors), None, {},
            {"received_bytes": bulk.received, "sent_bytes": bulk.sent,
             "window_s": window.seconds, "proxy_cpu_s": proxy_cpu,
             "backend_proxy_header_errors": window.end.backend.get("proxy_errors", 0)})
    idle = uvloop_run(load.idle(
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


def cpu_figures(window: load.Window, layout: Layout,
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


def ingress_variants(allocator: str, io_engine: str) -> list[tuple[str, str, str]]:
    """(name, allocator, io_engine) of each mta-ingress a run measures. The first is the one
    the targets compare: glibc's malloc and the epoll engine (the defaults) unless one alone is
    asked for; "both" adds the other as a reference beside it (mta-ingress+jemalloc,
    mta-ingress+uvloop)."""
    allocators = ("glibc", "jemalloc") if allocator == "both" else (allocator,)
    engines = ("epoll", "uvloop") if io_engine == "both" else (io_engine,)
    variants = [("mta-ingress", allocators[0], engines[0])]
    variants += [(f"mta-ingress+{other}", other, engines[0]) for other in allocators[1:]]
    variants += [(f"mta-ingress+{other}", allocators[0], other) for other in engines[1:]]
    return variants


def per_session_us(cpu_seconds: float, sessions: int) -> float | None:
    return cpu_seconds / sessions * 1e6 if sessions else None


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


def run_workdir(run: Run, run_dir: Path) -> Path:
    """The run's directory, made; and this process, the load generator, moved to the run's load
    CPUs."""
    workdir = run_dir / run.key
    workdir.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, run.layout.load or ALL_CPUS)
    return workdir


def load_info(run: Run, backend: Backend) -> dict[str, Any]:
    """The report's account of the backend (its command line) and of the load generator."""
    return {"backend": " ".join(backend.argv),
            "load_generator": f"{sys.executable} (this process, pid {os.getpid()}), "
                              f"CPU {cpu_list(run.layout.load) if run.layout.load else 'any'}"}


def record_stop(measurement: Measurement,
                stopped: tuple[int | None, dict[str, int], list[str]]) -> None:
    """What the proxy's ``stop()`` returned, on its measurement: the exit status, the access
    log's session ends and the alarming stderr lines (the first 20)."""
    measurement.exit_code, measurement.ingress_ends, alarms = stopped
    measurement.stderr_alarms = alarms[:20]


def execute(run: Run, options: argparse.Namespace, ports: PortPool, run_dir: Path,
            on_measurement: Callable[[Measurement], None]) -> tuple[list[Measurement],
                                                                     dict[str, Any]]:
    workdir = run_workdir(run, run_dir)
    http = run.scenario in HTTP_SCENARIOS
    certs = certificate_dir(workdir, run.scenario) if run.scenario in TLS_SCENARIOS else None
    nginx = http and options.origin == "nginx"
    backend = Backend("sink" if run.scenario == "bulk" else "http" if http else "smtp",
                      ports.take(), run.layout.load, workdir,
                      script=ROOT / "loadtest" / "nginx_origin.py" if nginx else None)
    setups = {
        "haproxy": haproxy_setup(workdir, ports.take(), backend.port, run.layout.proxy, http,
                                 certs, options.haproxy_log),
    }
    for name, allocator, io_engine in ingress_variants(options.allocator,
                                                       "epoll" if http else options.io_engine):
        setups[name] = ingress_setup(workdir, ports.take(), backend.port, run.layout.proxy,
                                     run.workers, options.access_log, http, certs, allocator,
                                     name, io_engine)
    if run.scenario in FLOOR_SCENARIOS and run.workers == 1:
        tcp = run.scenario == "sessions"
        # the epoll engine relays TCP only: in sessions, each value measured on both engines
        for burn_us in options.floor:
            for epoll in (False, True) if tcp else (False,):
                floor = floor_setup(ports.take(), backend.port, run.layout.proxy, burn_us, certs,
                                    tcp=tcp, epoll=epoll)
                setups[floor.name] = floor
    if run.scenario == "http-latency" and options.http_rate is None:
        try:
            options.http_rate = haproxy_peak_rate(run, options, setups["haproxy"], backend,
                                                  workdir) / 2
        except BaseException:
            backend.stop()
            raise
    info: dict[str, Any] = {
        **load_info(run, backend),
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
                    stopped = proxy.stop()
                record_stop(measurement, stopped)
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
    print(f"  haproxy peak (http-keepalive, one uncounted run): {number(measurement.value)} "
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
    recorders = [Child("py-spy", [*taskset(run.layout.load), *argv], stop_signal=signal.SIGINT,
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
             f"{number(measurement.value)} sessions/s, "
             f"CPU proxy {percent(measurement.cpu['proxy'])}",
             f"  command: {' '.join(commands[0])}",
             *profile.summarise(outputs)]
    for line in lines:
        print(line)
    return {"commands": [" ".join(c) for c in commands], "raw": [str(o) for o in outputs],
            "sessions_per_s": measurement.value, "summary": lines}
