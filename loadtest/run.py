"""``make loadtest``: the ingress, the egress tier, counting backends and locust on this
machine, then the exactly-once comparison (docs/loadtesting.md).

    python -m loadtest.run [--duration 60] [--users 40] [--spawn-rate 20]
                           [--scenario all|ingress|egress]
                           [--fault none|worker|rolling|cert|backend|egress-rolling|
                                    egress-restart]
                           [--base-port 24000] [-- extra locust options]

Everything listens on loopback, in the demo's port layout (``ingress/demo/single_node.py``)
moved to ``--base-port``: the ingress (``mta-ingress run``, the greenarrow preset, ``--workers``
processes) and the egress tier (``mta-ingress run``, the egress preset, as many processes;
``loadtest/egress_run.py``) as child processes, the stub services of the demo and the MX stub
(on 127.0.0.250) with their id logs on a thread of this process, and locust headless as a child
process writing its CSV files and its ledger into the run's directory
(``loadtest/results/loadtest-<time>/``).  ``--scenario`` says whose traffic runs: the ingress's
users, the egress users (an MTA's outbound mail, from several source addresses), or both (the
default).  When locust is done, the ingress and the egress tier are stopped (so nothing is still
in flight), the stubs' id logs are read (from their ``/_stub/received``, the MX stub's from this
process) and compared with the ledger (``loadtest/compare.py``): for the MX, the client address
checked is the source each message asked for.

Faults, one per run, ``--fault-at`` seconds after locust starts (default: 40% of the run):

- ``worker``: SIGTERM to one worker process; the supervisor starts a new one;
- ``rolling``: a second ingress with the same configuration is started (``SO_REUSEPORT``: both
  share the ports), then the first gets SIGTERM, as a rolling update does;
- ``cert``: the certificate file is replaced by a new one (new key) and the run waits until new
  TLS connections get it; HTTPS clients must not notice;
- ``backend``: the MTA's SMTP and HTTP stubs stop for ``--stop-seconds`` (listeners closed,
  connections aborted), then come back;
- ``egress-rolling``: the egress tier's rolling update: a second egress process starts, then
  the first gets SIGTERM with sessions in flight, which must finish (``loadtest/egress_run.py``);
- ``egress-restart``: the same, but the second starts once the first has closed its listeners
  (a Recreate rollout, or one replica with no surge): connections are refused meanwhile, and the
  MTAs' retries must still deliver each message once.

Each fault has a window, from its start until the ingress is whole again; a failed HTTP
request overlapping it is explained (``compare.py``), any other failure is not, and an SMTP
message is never allowed to be lost (the egress faults have no window: HTTP does not pass
through the egress tier).  Exit status: 0 when the comparison passed, 1 when it did not, 2 for a
usage or set-up error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingress import config
from ingress.demo import single_node as demo
from ingress.demo import stub_http, stub_smtp
from loadtest import compare, egress_run
from tls import selfsigned

HOST = demo.HOST
ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_BASE_PORT = 24000
FAULTS = ("none", "worker", "rolling", "cert", "backend", "egress-rolling", "egress-restart")
SCENARIOS = ("all", "ingress", "egress")
# The faults of each tier: a fault needs its tier in the scenario.
EGRESS_FAULTS = ("egress-rolling", "egress-restart")
# The locust weights that leave each tier's users out.
NO_INGRESS_USERS = ["--weight-tracking", "0", "--weight-api", "0", "--weight-smtp", "0",
                    "--weight-inbound", "0"]
NO_EGRESS_USERS = ["--weight-egress", "0"]
# What the stubs of each service are called in the demo's port layout.
SERVICE_STUBS = {"mta": ("mta-smtp", "mta-http"),
                 "event-tracker": ("event-tracker-smtp", "event-tracker-http"),
                 "tls": ("tls-http",)}
DRAIN = 2.0
GRACE = 15.0
CHECK_INTERVAL = 2.0  # the preset's health checks: every 2 s, back after 2 successes
RISE = 2
READY_TIMEOUT = 30.0
# Locust lets a user finish its task for this long after the run time: an SMTP message being
# retried must reach its end (``--smtp-retry-for`` is 30 s by default).
STOP_TIMEOUT = 45


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=float, default=20.0)
    parser.add_argument("--scenario", choices=SCENARIOS, default="all",
                        help="whose users run: the ingress's, the egress tier's, or both (all)")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--fault-at", type=float, default=None,
                        help="seconds after the start (default: 40%% of --duration)")
    parser.add_argument("--stop-seconds", type=float, default=5.0,
                        help="how long --fault backend keeps the MTA stubs down")
    parser.add_argument("--workers", type=int, default=2, help="ingress worker processes")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    parser.add_argument("--out", type=Path, default=None,
                        help="the run's directory (default: loadtest/results/loadtest-<time>)")
    parser.add_argument("locust_args", nargs="*", help="after --: more locust options")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.users <= 0 or args.spawn_rate <= 0:
        parser.error("--duration, --users and --spawn-rate must be positive")
    if args.fault_at is None:
        args.fault_at = args.duration * 0.4
    if not 0 <= args.fault_at < args.duration:
        parser.error("--fault-at must fall inside the run")
    if args.fault in EGRESS_FAULTS and not runs_egress(args):
        parser.error(f"--fault {args.fault} needs the egress tier: --scenario all or egress")
    if args.fault not in (*EGRESS_FAULTS, "none") and not runs_ingress(args):
        parser.error(f"--fault {args.fault} needs the ingress: --scenario all or ingress")
    problem = demo.base_port_problem(args.base_port)
    if problem is not None:
        parser.error(problem.replace("demo: ", ""))
    return args


def runs_ingress(args: argparse.Namespace) -> bool:
    return bool(args.scenario in ("all", "ingress"))


def runs_egress(args: argparse.Namespace) -> bool:
    return bool(args.scenario in ("all", "egress"))


def config_text(ports: demo.Ports, cert_dir: Path, workers: int) -> str:
    """The demo's configuration (greenarrow preset on loopback) with the load test's process
    count, a drain and grace that a rolling update can be watched in, and fast cert polling."""
    text = demo.demo_config_text(ports, cert_dir)
    text = text.replace("workers = 1", f"workers = {workers}")
    text = text.replace('drain = "0s"', f'drain = "{DRAIN:g}s"')
    text = text.replace('grace = "2s"', f'grace = "{GRACE:g}s"')
    return text.replace("[tls]\n", '[tls]\npoll_interval = "1s"\n')


# --- the counting backends ------------------------------------------------------------------


@dataclass(slots=True)
class Stubs:
    """The demo's stub services with id logs, on a uvloop thread; ``stop``/``start`` take a
    service's stubs down and up from the main thread."""

    ports: demo.Ports
    services: dict[str, stub_http.StubService] = field(default_factory=dict)
    # The MX behind the egress tier: no PROXY header, its client is its TCP peer (the source).
    mx: stub_smtp.StubStats = field(
        default_factory=lambda: stub_smtp.StubStats(received=stub_smtp.IdLog()))
    servers: dict[str, asyncio.Server] = field(default_factory=dict)
    transports: dict[str, set[asyncio.BaseTransport]] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    def start(self, sockets: dict[str, socket.socket]) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        for name in ("mta", "event-tracker", "tls"):
            log = stub_smtp.IdLog()
            smtp = stub_smtp.StubStats(received=log) if name != "tls" else None
            self.services[name] = stub_http.StubService(name, smtp=smtp, received=log)
        self.thread = threading.Thread(target=self.loop.run_forever, name="stubs", daemon=True)
        self.thread.start()
        for stub in (*demo.STUBS, demo.SINK):
            self._call(self._serve(stub, sockets.pop(stub)))

    def _call(self, coroutine: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def _factory(self, stub: str) -> Callable[[], asyncio.Protocol]:
        inner: Callable[[], asyncio.Protocol]
        if stub == demo.SINK:
            inner = stub_smtp.factory(egress_run.MX_NAME, self.mx, expect_proxy=False)
            return self._tracked(stub, inner)
        service = self.services[stub.rpartition("-")[0]]
        if stub.endswith("-smtp"):
            assert service.smtp is not None
            inner = stub_smtp.factory(f"{service.name}.loadtest", service.smtp,
                                      expect_proxy=True)
        else:
            inner = stub_http.factory(service)
        return self._tracked(stub, inner)

    def _tracked(self, stub: str, inner: Callable[[], asyncio.Protocol]
                 ) -> Callable[[], asyncio.Protocol]:
        transports = self.transports.setdefault(stub, set())

        def make() -> asyncio.Protocol:
            # The stubs' connections are remembered so that stopping a service can abort them
            # (Server.close() leaves open connections alone).
            protocol = inner()
            made, lost = protocol.connection_made, protocol.connection_lost
            mine: list[asyncio.BaseTransport] = []

            def connection_made(transport: asyncio.BaseTransport) -> None:
                mine.append(transport)
                transports.add(transport)
                made(transport)

            def connection_lost(exc: Exception | None) -> None:
                transports.difference_update(mine)
                lost(exc)

            setattr(protocol, "connection_made", connection_made)  # noqa: B010
            setattr(protocol, "connection_lost", connection_lost)  # noqa: B010
            return protocol

        return make

    async def _serve(self, stub: str, sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.servers[stub] = await loop.create_server(self._factory(stub), sock=sock)
        else:
            self.servers[stub] = await loop.create_server(
                self._factory(stub), demo.host_of(stub), self.ports[stub], reuse_address=True)

    async def _close(self, stub: str) -> None:
        server = self.servers.pop(stub, None)
        if server is not None:
            server.close()
        for transport in list(self.transports.get(stub, ())):
            transport.abort()  # type: ignore[attr-defined]

    def stop(self, service: str) -> None:
        for stub in SERVICE_STUBS[service]:
            self._call(self._close(stub))

    def resume(self, service: str) -> None:
        for stub in SERVICE_STUBS[service]:
            self._call(self._serve(stub, None))

    def mx_log(self) -> compare.ServiceLog:
        """The MX stub's id log, read on the stubs' loop."""
        async def snapshot() -> dict[str, Any]:
            assert self.mx.received is not None
            return {"service": egress_run.SERVICE, **self.mx.received.snapshot()}

        return compare.ServiceLog.from_json(self._call(snapshot()))

    def close(self) -> None:
        if self.loop is None:
            return
        for stub in list(self.servers):
            self._call(self._close(stub))
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(5)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_json(port: int, path: str, timeout: float = 30.0) -> Any:
    # No proxy from the environment: the request must stay on loopback.
    with _NO_PROXY.open(f"http://{HOST}:{port}{path}", timeout=timeout) as answer:
        return json.load(answer)


# --- the ingress ----------------------------------------------------------------------------


@dataclass(slots=True)
class Ingress:
    """An ``mta-ingress run`` child: the ingress, or the egress tier (``name`` says which)."""

    process: subprocess.Popen[bytes]
    stderr_path: Path
    name: str = "ingress"

    @classmethod
    def start(cls, config_path: Path, out: Path, name: str) -> Ingress:
        environ = {key: value for key, value in os.environ.items()
                   if not key.startswith("MTA_INGRESS_")}
        stderr_path = out / f"{name}.stderr.log"
        with open(out / f"{name}.access.log", "wb") as stdout, open(stderr_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "ingress", "run", "--config", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, env=environ,
                process_group=0)
        return cls(process, stderr_path, name)

    @property
    def access_log(self) -> Path:
        return self.stderr_path.with_name(f"{self.name}.access.log")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while b'msg="ready"' not in self.stderr_path.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited (code {self.process.returncode}); "
                                   f"see {self.stderr_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s")
            time.sleep(0.1)

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def stop(self, timeout: float = DRAIN + GRACE + 10.0) -> int:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


# --- faults ---------------------------------------------------------------------------------


@dataclass(slots=True)
class FaultReport:
    name: str
    windows: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def served_fingerprint(port: int) -> str | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((HOST, port), 2.0) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def certificate_fingerprint(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def egress_switch(report: FaultReport, egress: list[Ingress], ports: demo.Ports,
                  config_path: Path, out: Path) -> None:
    """The egress tier's update, with a session of its own in flight across it
    (``loadtest/egress_run.py``): ``egress-rolling`` starts the second process before the
    first gets SIGTERM (a surge), ``egress-restart`` once the first has closed its listeners,
    so that connections are refused until it is ready.  No window: nothing is excused."""
    first = egress[0]
    surge = report.name == "egress-rolling"
    # Opened before the second process exists, so that the first is the one that accepts it.
    canary = egress_run.Canary(ports)
    try:
        if surge:
            egress.append(Ingress.start(config_path, out, "egress-2"))
            egress[-1].wait_ready()
        pids = [first.process.pid, *first.workers()]
        started = time.time()
        first.process.send_signal(signal.SIGTERM)
        listening = [ports[name] for name in egress_run.LISTENERS]
        deadline = time.monotonic() + DRAIN + 10.0
        while egress_run.still_listening(pids, listening):
            if time.monotonic() > deadline:
                raise RuntimeError("the first egress process kept its listeners past its drain")
            time.sleep(0.05)
        closed = time.time()
        egress_run.append_to_ledger(out / "ledger.jsonl", canary.finish())
    finally:
        canary.close()
    if not surge:
        egress.append(Ingress.start(config_path, out, "egress-2"))
        egress[-1].wait_ready()
        ready = time.time()
    code = first.stop()
    ended = time.time()
    report.notes.append(
        ("second egress process ready; the first got SIGTERM" if surge else
         "the first egress process got SIGTERM")
        + f", closed its listeners after {closed - started:.1f} s and exited {code} after "
        f"{ended - started:.1f} s"
        + ("" if surge else f"; the second was ready {ready - closed:.1f} s after the close, "
           "connections were refused meanwhile")
        + "; a session the first had accepted before the SIGTERM delivered its message after "
        "its listeners closed")
    drain = egress_run.drain_report(first.access_log.read_text().splitlines(), started)
    report.notes.append(drain.text())
    if code != 0:
        report.error = f"the first egress process exited {code}"
    elif drain.cut:
        report.error = f"{drain.cut} egress sessions were cut at the end of the grace period"


def run_fault(args: argparse.Namespace, report: FaultReport, ingress: list[Ingress],
              stubs: Stubs, ports: demo.Ports, config_path: Path, cert_file: Path,
              out: Path, egress: list[Ingress], egress_config: Path) -> None:
    """Runs on its own thread, ``--fault-at`` seconds into the load; fills ``report``."""
    try:
        if report.name in EGRESS_FAULTS:
            egress_switch(report, egress, ports, egress_config, out)
        elif report.name == "worker":
            first = ingress[0]
            workers = first.workers()
            if not workers:
                raise RuntimeError("no worker process found")
            victim = workers[0]
            started = time.time()
            os.kill(victim, signal.SIGTERM)
            deadline = time.monotonic() + DRAIN + GRACE + 20
            while time.monotonic() < deadline:
                current = first.workers()
                if victim not in current and len(current) == len(workers):
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("the worker was not replaced in time")
            # The new worker binds within a moment of its fork.
            ended = time.time() + 1.0
            report.windows.append((started, ended))
            report.notes.append(f"worker {victim} got SIGTERM; replaced after "
                                f"{ended - 1.0 - started:.1f} s")
        elif report.name == "rolling":
            second = Ingress.start(config_path, out, "ingress-2")
            ingress.append(second)
            second.wait_ready()
            started = time.time()
            code = ingress[0].stop()
            ended = time.time() + 1.0
            report.windows.append((started, ended))
            report.notes.append(f"second instance ready; first got SIGTERM and exited "
                                f"{code} after {ended - 1.0 - started:.1f} s")
        elif report.name == "cert":
            fresh = selfsigned.generate(("localhost", HOST))
            want = certificate_fingerprint(fresh)
            started = time.time()
            temporary = cert_file.with_name(".localhost.pem.tmp")
            temporary.write_bytes(fresh)
            temporary.replace(cert_file)  # what a TLS pod's atomic renewal looks like
            deadline = time.monotonic() + 20
            while served_fingerprint(ports["https"]) != want:
                if time.monotonic() > deadline:
                    raise RuntimeError("the new certificate was not served within 20 s")
                time.sleep(0.2)
            report.notes.append(f"certificate replaced; served after "
                                f"{time.time() - started:.1f} s; no failure excused")
        elif report.name == "backend":
            started = time.time()
            stubs.stop("mta")
            time.sleep(args.stop_seconds)
            stubs.resume("mta")
            # Until the health checks see the server again (rise successes) the ingress may
            # still refuse, with 503 or SMTP 421.
            ended = time.time() + RISE * CHECK_INTERVAL + 2.0
            report.windows.append((started, ended))
            report.notes.append(f"MTA stubs (SMTP and HTTP) down for {args.stop_seconds:g} s")
    except Exception as error:  # reported and fails the run
        report.error = f"{type(error).__name__}: {error}"


# --- output ---------------------------------------------------------------------------------


def summary_table(stats_csv: Path) -> list[str]:
    """Locust's per-request statistics, the rows that measure whole requests and messages."""
    if not stats_csv.exists():
        return [f"(no {stats_csv.name})"]
    lines = [f"{'type':<10} {'name':<22} {'requests':>9} {'failures':>8} {'req/s':>8} "
             f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8}"]
    with open(stats_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Type"] == "SMTP step":
                continue
            lines.append(
                f"{row['Type'] or '':<10} {row['Name']:<22} {row['Request Count']:>9} "
                f"{row['Failure Count']:>8} {float(row['Requests/s']):>8.1f} "
                f"{row['50%']:>7} {row['95%']:>7} {row['99%']:>7} "
                f"{float(row['Max Response Time']):>8.0f}")
    return lines


def message_counts(sent: list[compare.Sent], logs: list[compare.ServiceLog]) -> list[str]:
    sent_ok = Counter((record.kind, record.service) for record in sent if record.ok)
    sent_failed = Counter((record.kind, record.service) for record in sent if not record.ok)
    received = Counter((arrival.kind, arrival.service) for log in logs for arrival in log.arrivals)
    lines = []
    for key in sorted(set(sent_ok) | set(sent_failed) | set(received)):
        lines.append(f"  {key[0]:<5} {key[1]:<14} sent ok {sent_ok[key]:>7}  "
                     f"failed {sent_failed[key]:>5}  received {received[key]:>7}")
    return lines


# --- the run --------------------------------------------------------------------------------


def locust_command(args: argparse.Namespace, ports: demo.Ports, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(args.users), "--spawn-rate", f"{args.spawn_rate:g}",
        "--run-time", f"{args.duration:g}s", "--stop-timeout", str(STOP_TIMEOUT),
        "--csv", str(out / "locust"), "--only-summary", "--host", HOST,
        "--http-port", str(ports["http"]), "--https-port", str(ports["https"]),
        "--smtp-port", str(ports["smtp587"]), "--inbound-port", str(ports["smtp25"]),
        "--http-proxied-port", str(ports["http-proxied"]),
        "--https-proxied-port", str(ports["https-proxied"]),
        "--smtp-proxied-port", str(ports["smtp587-proxied"]),
        "--inbound-proxied-port", str(ports["smtp25-proxied"]),
        "--ledger", str(out / "ledger.jsonl"),
        *(egress_run.locust_options(ports) if runs_egress(args) else NO_EGRESS_USERS),
        *([] if runs_ingress(args) else NO_INGRESS_USERS),
        *args.locust_args,
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("locust") is None:
        print("loadtest: locust is not installed (pip install -e '.[loadtest]')",
              file=sys.stderr)
        return 2
    out = args.out or ROOT / "loadtest" / "results" / time.strftime("loadtest-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    ports = demo.Ports(args.base_port)
    try:
        sockets = demo.claim_ports(ports)
    except demo.PortInUseError as error:
        print(f"loadtest: port {error.port} ({demo.describe(error.name)}) is in use; "
              "choose another --base-port", file=sys.stderr)
        return 2
    cert_dir = out / "tls"
    cert_dir.mkdir(exist_ok=True)
    cert_file = cert_dir / "localhost.pem"
    cert_file.write_bytes(selfsigned.generate(("localhost", HOST)))
    config_path = out / "ingress.toml"
    config_path.write_text(config_text(ports, cert_dir, args.workers))
    egress_config = out / "egress.toml"
    egress_config.write_text(egress_run.config_text(ports, workers=args.workers, drain=DRAIN,
                                                    grace=GRACE))
    for path in (config_path, egress_config):
        try:
            config.load(path, environ={})
        except config.ConfigError as error:
            print("\n".join(f"{path.name}: {problem}" for problem in error.problems),
                  file=sys.stderr)
            return 2
    stubs = Stubs(ports)
    instances: list[Ingress] = []
    egress: list[Ingress] = []
    fault = FaultReport(args.fault)
    try:
        stubs.start(sockets)
        if runs_ingress(args):
            instances.append(Ingress.start(config_path, out, "ingress"))
        if runs_egress(args):
            egress.append(Ingress.start(egress_config, out, "egress"))
        for instance in (*instances, *egress):
            instance.wait_ready()
        print(f"loadtest: {args.users} users for {args.duration:g} s, scenario "
              f"{args.scenario}, fault {args.fault}; output in {out}", flush=True)
        with open(out / "locust.log", "wb") as locust_log:
            locust_process = subprocess.Popen(locust_command(args, ports, out), cwd=ROOT,
                                      stdin=subprocess.DEVNULL, stdout=locust_log,
                                      stderr=subprocess.STDOUT)
        fault_thread: threading.Thread | None = None
        if args.fault != "none":
            fault_thread = threading.Timer(args.fault_at, run_fault, (
                args, fault, instances, stubs, ports, config_path, cert_file, out, egress,
                egress_config))
            fault_thread.start()
        try:
            code = locust_process.wait(args.duration + STOP_TIMEOUT + 60)
        except subprocess.TimeoutExpired:
            locust_process.kill()
            code = locust_process.wait()
            print("loadtest: locust did not finish in time and was killed", file=sys.stderr)
        if fault_thread is not None:
            fault_thread.join(DRAIN + GRACE + 60)
        # Stopped before the logs are read, so that nothing is still on its way to a stub.
        for instance in (*instances, *egress):
            instance.stop()
        logs = [compare.ServiceLog.from_json(fetch_json(ports[stubs_of[-1]], "/_stub/received"))
                for stubs_of in SERVICE_STUBS.values()] if runs_ingress(args) else []
        if runs_egress(args):
            logs.append(stubs.mx_log())
    except RuntimeError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2
    finally:
        for instance in (*instances, *egress):
            instance.stop()
        stubs.close()
    ledger_path = out / "ledger.jsonl"
    sent = compare.read_ledger(ledger_path.read_text().splitlines()) if ledger_path.exists() \
        else []
    result = compare.compare(sent, logs, fault.windows)
    print("\n".join(summary_table(out / "locust_stats.csv")))
    print("\nsent and received (requests and messages, by protocol and service):")
    print("\n".join(message_counts(sent, logs)))
    if args.fault != "none":
        print(f"\nfault {args.fault}: " + ("; ".join(fault.notes) or "-")
              + (f"; ERROR {fault.error}" if fault.error else ""))
    print(f"\ncomparison: {result.sent_ok} ok and {result.sent_failed} failed sent, "
          f"{result.received} received; failures explained by the fault: "
          f"{len(result.failed_explained)} ({result.failed_arrived} of them reached the "
          f"backend); SMTP messages retried: {result.retried_messages}; ambiguous duplicates: "
          f"{len(result.ambiguous_duplicates)}")
    problems = result.problems()
    if not sent:
        problems.append(f"locust sent nothing (exit {code}); see {out / 'locust.log'}")
    if fault.error:
        problems.append(f"fault {args.fault} failed: {fault.error}")
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "locust_exit": code, "fault": {"name": fault.name, "windows": fault.windows,
                                             "notes": fault.notes, "error": fault.error},
              "comparison": result.to_json(), "problems": problems}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("PASSED: every request and message counted as successful arrived exactly once, at "
          "the right backend, with the right client address"
          + (" (for the MX, the source it asked for)" if runs_egress(args) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
