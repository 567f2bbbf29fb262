"""The process: a supervisor and its worker processes.

Theory of operation
-------------------
The supervisor loads the configuration, forks ``workers`` processes and then only watches them.
Each worker opens its own listening sockets with ``SO_REUSEPORT`` (the kernel spreads new
connections over them) and runs one uvloop event loop.  A worker tells the supervisor it is
listening by writing one byte to a pipe; the supervisor declares the ingress started when every
worker has done so.  A worker that cannot bind exits with ``EXIT_CONFIG`` and the supervisor
stops everything instead of restarting it in a loop: a port taken by another program will not
free itself.  A worker that dies later is restarted (with a pause when it keeps dying young).

The supervisor blocks the signals it handles and takes them synchronously with
``sigtimedwait``: no handler runs in the middle of a fork, and a signal that arrives between two
checks is never lost.  Workers unblock them and handle them on their event loop.

Shutdown (SIGTERM, as Kubernetes sends it): every worker at once reports not-ready (the
readiness answer of HTTP listeners turns 503) but keeps accepting for ``timeouts.drain``, the
time the endpoints controller needs to take the pod out of the Service; then it closes its
listeners, gives open sessions up to ``timeouts.grace`` to finish on their own, aborts what is
left, and exits 0.  SIGINT does the same without the drain period; a second SIGINT to the
supervisor kills the workers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import math
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dns.exception import DNSException

from ingress.config import Address, BackendConfig, Config, ListenerConfig
from ingress.config.users import Authenticator, UsersFileError, load_users
from ingress.ops import metrics
from ingress.ops.admin import AdminSession
from ingress.ops.logs import AccessLog
from ingress.process.build import build_name
from ingress.process.memory import tune_malloc
from ingress.protocol.http1 import Limits
from ingress.proxy import egress
from ingress.proxy import http as http_proxy
from ingress.proxy.flow import WriteBatch
from ingress.proxy.sockets import Engine, SocketListener, family_of
from ingress.proxy.tcp import RelayContext, RelaySession, make_factory
from ingress.proxy.tls_accept import ProxiedTlsListener, handshake_failure_logger
from ingress.proxy.tls_transport import tls_factory
from routing.backends import Backend, Resolver
from routing.discovery import Discovery, DnsName, TtlPolicy, make_resolver
from routing.pool import ConnectionPool
from routing.table import RouteTable
from tls import selfsigned
from tls.acme import AcmeManager, ChallengeDirectory
from tls.store import CertificateStore, ReloadReport

log = logging.getLogger("mta_ingress.server")

EXIT_CONFIG = 78  # sysexits EX_CONFIG: do not restart, the same error would come back
LISTEN_BACKLOG = 4096
RESTART_PAUSE = 1.0
START_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1
# Longest wait at start for the first answers of dns+ servers: well inside START_TIMEOUT.
FIRST_ANSWER_WAIT = 5.0


def cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 ``cpu.max`` quota
    (what a Kubernetes CPU limit becomes), rounded up."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return count
        return max(1, min(count, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError, ZeroDivisionError):
        return count


def worker_count(config: Config) -> int:
    return config.workers or cpu_limit()


def _die_with_parent(supervisor: int) -> None:
    """Ask the kernel to send SIGTERM to this worker when the supervisor dies, even by SIGKILL:
    an orphaned worker would keep serving with nobody to stop it, and keep the ports bound
    against the supervisor's replacement."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor's own shutdown still stops the workers
    # The supervisor died before the request was made. Compared with its pid, not with 1: in a
    # container the supervisor is pid 1 itself (the image's exec-form entrypoint).
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def certificate_store(config: Config) -> CertificateStore | None:
    """The store every TLS listener shares, loaded once; None when no TLS listener is on.

    Made by the supervisor before it forks, so that the workers share its contexts' session
    ticket key and the self-signed fallback (one certificate, whichever worker answers)."""
    if not any(listener.tls and listener.mode == "http"
               for listener in config.enabled_listeners):
        return None
    names = config.tls.self_signed_names or (f"{config.release}-ingress", "localhost")
    fallback = selfsigned.generate(names)
    store = CertificateStore(Path(config.tls.cert_dir), default_file=config.tls.default_cert,
                             self_signed=lambda: fallback,
                             handshake_timeout=config.tls.handshake_timeout)
    store.reload()
    store.trust_front_copy()  # no listener exists yet
    return store


def acme_manager(config: Config) -> AcmeManager:
    acme = config.tls.acme
    cert_dir = Path(config.tls.cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    return AcmeManager(acme, cert_dir,
                       nameservers=[(a.host, a.port) for a in config.dns.nameservers],
                       dns_timeout=config.dns.timeout,
                       on_order=metrics.metrics().acme_order)


def listening_socket(address: Address) -> socket.socket:
    family = family_of(address.host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Leave IPv4 to an explicit 0.0.0.0 bind, so that both may be configured.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Worker:
    def __init__(self, config: Config, index: int,
                 tls_store: CertificateStore | None = None) -> None:
        self.config = config
        self.index = index
        self.tls_store = tls_store
        self.access_log = AccessLog(config.log_format, log_normal=config.log_normal)
        self.sessions: set[RelaySession] = set()
        self.http_sessions: set[http_proxy.HttpSession] = set()
        self.egress_sessions: set[egress.EgressSession] = set()
        # Egress listeners with a users_file, by listener name: SIGHUP reloads their tables.
        self.authenticators: dict[str, Authenticator] = {}
        self.state = http_proxy.WorkerState()
        self.pool = ConnectionPool(idle_timeout=config.timeouts.http_keep_alive)
        self.write_batch: WriteBatch | None = None  # made on the worker's loop
        self.servers: list[asyncio.Server | ProxiedTlsListener | SocketListener] = []
        # io_engine = "epoll" listeners' epoll set, made on the worker's loop when one needs it
        self.socket_engine: Engine | None = None
        # Open until the very end of a shutdown: /readyz must say "draining" meanwhile.
        self.admin_servers: list[asyncio.Server] = []
        self.started = False
        self.draining = False
        self.stopping = False
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_interval = 1.0
        self.acme_challenges = (ChallengeDirectory(Path(config.tls.cert_dir))
                                if config.tls.acme.enabled else None)

    async def start(self) -> None:
        """Bind every listener; raises OSError if one cannot be bound."""
        loop = asyncio.get_running_loop()
        resolver = Resolver()
        backends = {name: self._backend(backend, resolver)
                    for name, backend in self.config.backends.items()}
        await self._start_discovery(backends)
        for listener in self.config.enabled_listeners:
            if listener.mode == "http" and listener.tls and listener.accept_proxy:
                make_session = http_proxy.make_proxied_factory(
                    self._http_context(listener, backends))
                for address in listener.bind:
                    self.servers.append(self._proxied_tls_listener(
                        listener, listening_socket(address), make_session))
                continue
            factory = self._factory(listener, backends)
            if listener.tls and self.tls_store is not None:
                factory = tls_factory(
                    self.tls_store.front, factory,
                    handshake_timeout=self.config.tls.handshake_timeout,
                    on_failure=handshake_failure_logger(listener.name, self.access_log,
                                                        self.index))
            if listener.io_engine == "epoll":  # tcp and egress listeners (validation.py)
                engine = self._socket_engine(loop)
                for address in listener.bind:
                    self.servers.append(SocketListener(engine, listening_socket(address),
                                                       factory, LISTEN_BACKLOG))
                continue
            for address in listener.bind:
                server = await loop.create_server(factory, sock=listening_socket(address),
                                                  backlog=LISTEN_BACKLOG)
                self.servers.append(server)
        if self.config.admin.enabled:
            for address in self.config.admin.bind:
                self.admin_servers.append(await loop.create_server(
                    lambda: AdminSession(self.readiness), sock=listening_socket(address)))
        self.started = True
        if self.tls_store is not None:
            self._record_certificates(None)
            task = loop.create_task(self._poll_certificates(self.tls_store))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.config.tls.acme.enabled and self.index == 0:
            # One manager per replica; the lease on the shared volume keeps replicas apart.
            task = loop.create_task(acme_manager(self.config).run_forever())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for name in sorted(self._referenced_backends()):
            backend_config = self.config.backends[name]
            if backend_config.check:
                task = loop.create_task(backends[name].check_forever(
                    backend_config.check_interval, self.config.timeouts.connect))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        timeouts = self.config.timeouts
        # A session's idle and PROXY-header timeouts are checked by this sweep, so they fire
        # up to one interval late: at most a quarter of the shorter timeout, at most 1 s.
        self._sweep_interval = min(1.0, max(0.05, min(timeouts.tcp_idle,
                                                      timeouts.proxy_header) / 4))
        loop.call_later(self._sweep_interval, self._sweep)

    def _backend(self, config: BackendConfig, resolver: Resolver) -> Backend:
        backend = Backend(
            config.name, [(s.host, s.port) for s in config.servers if isinstance(s, Address)],
            resolver, rise=config.rise, fall=config.fall, balance=config.balance,
            sources=[str(s) for s in config.servers if isinstance(s, DnsName)])
        backend.on_removed = self.pool.close_idle
        backend.events = metrics.metrics()
        return backend

    async def _start_discovery(self, backends: dict[str, Backend]) -> None:
        """One refresh task per dns+ server of the served backends.  The listeners open after
        the first answers (or a bounded wait), so that the first clients find servers."""
        discoveries: list[Discovery] = []
        for name in sorted(self._referenced_backends()):
            config = self.config.backends[name]
            policy = TtlPolicy(config.dns_min_ttl, config.dns_max_ttl, config.dns_grace)
            for server in config.servers:
                if not isinstance(server, DnsName):
                    continue
                if not discoveries:
                    try:
                        resolver = make_resolver(
                            [(a.host, a.port) for a in self.config.dns.nameservers],
                            self.config.dns.timeout)
                    except DNSException as error:
                        log.error("msg=\"no DNS resolver: dns+ servers stay empty; set "
                                  "[dns] nameservers\" worker=%d error=%r", self.index, str(error))
                        return
                discovery = Discovery(server, name, resolver, policy,
                                      functools.partial(backends[name].update_source, str(server)),
                                      on_refresh=functools.partial(
                                          metrics.metrics().dns_refresh, name))
                discoveries.append(discovery)
                task = asyncio.get_running_loop().create_task(discovery.run())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if discoveries:
            # An SRV refresh is two rounds of queries, each up to the DNS timeout.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(2 * self.config.dns.timeout + 0.5,
                                               FIRST_ANSWER_WAIT)):
                    await asyncio.gather(*(d.first_answer.wait() for d in discoveries))

    def _referenced_backends(self) -> set[str]:
        """Backends some served listener can reach: only those are health-checked (checking a
        preset's unused backends would look up names that exist nowhere)."""
        names: set[str] = set()
        for listener in self.config.enabled_listeners:
            if listener.backend is not None:
                names.add(listener.backend)
            if listener.routes is not None:
                names.update(rule.backend for rule in self.config.routes[listener.routes]
                             if rule.backend is not None)
        return names

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for session in list(self.sessions):
            session.check_timeouts(now)
        for http_session in list(self.http_sessions):
            http_session.check_timeouts(now)
        for egress_session in list(self.egress_sessions):
            egress_session.check_timeouts(now)
        self.pool.expire()
        metrics.metrics().flush()
        if not self._stopped.is_set():
            loop.call_later(self._sweep_interval, self._sweep)

    def _http_context(self, listener: ListenerConfig,
                      backends: dict[str, Backend]) -> http_proxy.HttpContext:
        routes = (RouteTable(self.config.routes[listener.routes])
                  if listener.routes is not None else None)
        loop = asyncio.get_running_loop()
        if self.write_batch is None:
            self.write_batch = WriteBatch(loop)
        return http_proxy.HttpContext(
            listener=listener, routes=routes, backends=backends, pool=self.pool,
            timeouts=self.config.timeouts, access_log=self.access_log,
            sessions=self.http_sessions, state=self.state, loop=loop, writes=self.write_batch,
            worker=self.index,
            limits=Limits(max_body=listener.max_body), acme_challenges=self.acme_challenges)

    def _proxied_tls_listener(
            self, listener: ListenerConfig, sock: socket.socket,
            make_session: Callable[[tuple[str, int] | None], asyncio.Protocol],
    ) -> ProxiedTlsListener:
        if self.tls_store is None:
            raise ValueError(f"listener {listener.name}: TLS without a certificate store")
        server = ProxiedTlsListener(
            sock, context=self.tls_store.front,
            handshake_timeout=self.config.tls.handshake_timeout,
            header_timeout=self.config.timeouts.proxy_header, listener=listener.name,
            access_log=self.access_log, worker=self.index, make_session=make_session)
        server.start()
        return server

    def _factory(self, listener: ListenerConfig,
                 backends: dict[str, Backend]) -> Callable[[], asyncio.Protocol]:
        if listener.egress:
            return egress.make_factory(self._egress_context(listener))
        if listener.mode == "http":
            return http_proxy.make_factory(self._http_context(listener, backends))
        if listener.backend is None:
            raise ValueError(f"tcp listener {listener.name} has no backend")
        backend_config = self.config.backends[listener.backend]
        ctx = RelayContext(
            listener=listener,
            backend=backends[listener.backend],
            send_proxy=backend_config.send_proxy,
            timeouts=self.config.timeouts,
            access_log=self.access_log,
            sessions=self.sessions,
            loop=asyncio.get_running_loop(),
            worker=self.index,
            engine=(self._socket_engine(asyncio.get_running_loop())
                    if listener.io_engine == "epoll" else None),
        )
        return make_factory(ctx)

    def _socket_engine(self, loop: asyncio.AbstractEventLoop) -> Engine:
        if self.socket_engine is None:
            self.socket_engine = Engine(loop)
        return self.socket_engine

    def _egress_context(self, listener: ListenerConfig) -> egress.EgressContext:
        authenticator = None
        if listener.users is not None:
            authenticator = self.authenticators[listener.name] = Authenticator(
                dict(listener.users))
        return egress.EgressContext(
            listener=listener, policy=egress.policy_of(listener), authenticator=authenticator,
            timeouts=self.config.timeouts, access_log=self.access_log,
            sessions=self.egress_sessions, loop=asyncio.get_running_loop(), worker=self.index,
            engine=(self._socket_engine(asyncio.get_running_loop())
                    if listener.io_engine == "epoll" else None))

    def begin_shutdown(self, fast: bool) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.draining = True
        self.state.draining = True
        # The sweep writes the per-request sums once a second: the scrapes of the drain, which
        # may be the pod's last, then see everything up to the signal.
        metrics.metrics().flush()
        drain = 0.0 if fast else self.config.timeouts.drain
        log.info("msg=\"shutting down\" worker=%d drain_s=%g grace_s=%g sessions=%d",
                 self.index, drain, self.config.timeouts.grace,
                 len(self.sessions) + len(self.egress_sessions))
        task = asyncio.get_running_loop().create_task(self._shutdown(drain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self, drain: float) -> None:
        await asyncio.sleep(drain)
        for server in self.servers:
            server.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        deadline = time.monotonic() + self.config.timeouts.grace
        # Polling, only during shutdown, spares every session end a callback in normal running;
        # it also closes HTTP keep-alive connections as soon as they fall idle.
        while ((self.sessions or self.http_sessions or self.egress_sessions)
               and time.monotonic() < deadline):
            for http_session in list(self.http_sessions):
                http_session.close_if_idle()
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort("shutdown-grace-expired")
        for egress_session in list(self.egress_sessions):
            egress_session.abort("shutdown-grace-expired")
        for http_session in list(self.http_sessions):
            if http_session.transport is not None:
                http_session.transport.abort()
        self.pool.close_all()
        if self.sessions or self.http_sessions or self.egress_sessions:
            await asyncio.sleep(0.05)  # let the aborts' connection_lost callbacks run
        self.access_log.flush()
        metrics.metrics().flush()
        for admin in self.admin_servers:
            admin.close()
        self._stopped.set()

    async def serve(self, ready_fd: int | None) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.begin_shutdown, False)
        loop.add_signal_handler(signal.SIGINT, self.begin_shutdown, True)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        await self.start()
        if ready_fd is not None:
            os.write(ready_fd, b"r")
            os.close(ready_fd)
        await self._stopped.wait()
        for server in self.servers:
            await server.wait_closed()

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: every listener bound, certificates loaded, not draining."""
        if self.draining:
            return False, "draining"
        if not self.started:
            return False, "starting"
        if self.tls_store is not None and not self.tls_store.loaded:
            return False, "certificates not loaded"
        return True, "ready"

    def _reload(self) -> None:
        self._reload_users()
        if self.tls_store is None:
            if not self.authenticators:
                log.info("msg=\"SIGHUP received: nothing to reload\" worker=%d", self.index)
            return
        report = self.tls_store.reload()
        self._record_certificates(report)
        log.info("msg=\"SIGHUP: certificates reloaded\" worker=%d loaded=%d failed=%d "
                 "removed=%d", self.index, len(report.loaded), len(report.failed),
                 len(report.removed))

    def _reload_users(self) -> None:
        """Each users_file read again; one that no longer reads or parses keeps the table it
        replaces (as a certificate that fails to load keeps the last good one)."""
        for name, authenticator in self.authenticators.items():
            path = self.config.listeners[name].users_file
            if path is None:
                continue
            try:
                users = load_users(path)
            except UsersFileError as error:
                log.error("msg=\"users file not reloaded; the last good one stays\" worker=%d "
                          "listener=%s error=%r", self.index, name, "; ".join(error.problems))
                continue
            authenticator.replace(users)
            log.info("msg=\"SIGHUP: users file reloaded\" worker=%d listener=%s users=%d",
                     self.index, name, len(users))

    async def _poll_certificates(self, store: CertificateStore) -> None:
        # Metadata polling, not inotify: NFS and EFS volumes deliver no change events.
        while True:
            await asyncio.sleep(self.config.tls.poll_interval)
            try:
                report = store.poll()
            except Exception:
                log.exception("msg=\"certificate poll failed\" worker=%d", self.index)
                continue
            if report is not None:
                self._record_certificates(report)

    def _record_certificates(self, report: ReloadReport | None) -> None:
        if self.tls_store is None:
            return
        expiry: dict[str, float] = {}
        for certificate in self.tls_store.certificates.values():
            for name in certificate.names:
                expires = certificate.not_after.timestamp()
                expiry[name] = min(expiry.get(name, expires), expires)
        metrics.metrics().certificates(
            expiry, loaded=len(report.loaded) if report else 0,
            kept=len(report.failed) if report else 0,
            removed=len(report.removed) if report else 0)


def run_worker(config: Config, index: int, ready_fd: int | None,
               tls_store: CertificateStore | None = None) -> int:
    import uvloop

    worker = Worker(config, index, tls_store)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(worker.serve(ready_fd))
    except OSError as error:
        log.error("msg=\"cannot listen\" worker=%d error=%r", index, str(error))
        return EXIT_CONFIG
    finally:
        worker.access_log.flush()
    return 0


class Supervisor:
    HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = worker_count(config)
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started_at: dict[int, float] = {}
        self.stopping: signal.Signals | None = None
        self.failed = False
        # Before anything imports prometheus_client here or in a worker: see ingress/ops/metrics.py.
        self.metrics_dir = metrics.prepare_directory(config.admin.metrics_dir)
        self.tls_store = certificate_store(config)

    def _spawn(self, index: int, ready_fd: int | None) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self.HANDLED)
                for signum in self.HANDLED:
                    signal.signal(signum, signal.SIG_DFL)
                _die_with_parent(supervisor)
                code = run_worker(self.config, index, ready_fd, self.tls_store)
            except BaseException:
                logging.getLogger("mta_ingress").exception("msg=\"worker crashed\"")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = index
        self.started_at[pid] = time.monotonic()

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, self.HANDLED)
        read_fd, write_fd = os.pipe()
        for index in range(self.count):
            self._spawn(index, write_fd)
        os.close(write_fd)
        if not self._await_ready(read_fd):
            self._kill_all(signal.SIGTERM)
            self._reap_all(timeout=5.0)
            return 1
        listeners = [f"{listener.name}={','.join(map(str, listener.bind))}"
                     for listener in self.config.enabled_listeners]
        for warning in egress.source_warnings(self.config.enabled_listeners):
            log.warning("msg=\"egress source not on this host\" warning=%r", warning)
        log.info("msg=\"ready\" workers=%d build=%s listeners=%s", self.count, build_name(),
                 " ".join(listeners))
        return self._watch()

    def _await_ready(self, read_fd: int) -> bool:
        ready = 0
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while ready < self.count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.error("msg=\"workers did not start in time\"")
                    return False
                readable, _, _ = select.select([read_fd], [], [], min(remaining, 0.1))
                if readable:
                    data = os.read(read_fd, 64)
                    if not data:  # every writer exited: some worker died before listening
                        break
                    ready += len(data)
                if ready < self.count and self._reap_unready():
                    return False
        finally:
            os.close(read_fd)
        if ready < self.count:
            # The pipe closed because the workers exited: wait briefly to name them in the log.
            for _ in range(20):
                if self._reap_unready() or not self.children:
                    break
                time.sleep(0.05)
            return False
        return True

    def _reap_unready(self) -> list[tuple[int, int]]:
        exited = self._reap()
        for index, code in exited:
            # Negative: the signal that ended it (a SIGTERM here is the parent-death check).
            log.error("msg=\"worker exited before it was ready\" worker=%d code=%d", index, code)
        return exited

    def _reap(self) -> list[tuple[int, int]]:
        """Collect exited children; returns (worker index, exit status) pairs."""
        exited = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.children.pop(pid, -1)
            self.started_at.pop(pid, None)
            metrics.worker_exited(pid)
            exited.append((index, os.waitstatus_to_exitcode(status)))
        return exited

    def _watch(self) -> int:
        deadline = math.inf
        while True:
            info = signal.sigtimedwait(self.HANDLED, 0.5)
            signum = info.si_signo if info is not None else None
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping == signal.SIGINT and signum == signal.SIGINT:
                    log.warning("msg=\"second SIGINT: stopping at once\"")
                    self._kill_all(signal.SIGKILL)
                elif self.stopping is None:
                    self.stopping = signal.Signals(signum)
                    t = self.config.timeouts
                    drain = 0.0 if signum == signal.SIGINT else t.drain
                    deadline = time.monotonic() + drain + t.grace + 5.0
                    self._kill_all(signum)
            elif signum == signal.SIGHUP:
                self._kill_all(signal.SIGHUP)
            for index, code in self._reap():
                if self.stopping is not None:
                    continue
                if code == EXIT_CONFIG:
                    log.error("msg=\"worker cannot listen; stopping\" worker=%d", index)
                    self.failed = True
                    self.stopping = signal.SIGTERM
                    self._kill_all(signal.SIGTERM)
                    deadline = time.monotonic() + 5.0
                    continue
                log.error("msg=\"worker exited; restarting\" worker=%d code=%d", index, code)
                self._restart(index)
            if self.stopping is not None and not self.children:
                log.info("msg=\"stopped\"")
                return 1 if self.failed else 0
            if time.monotonic() > deadline:
                log.error("msg=\"workers did not stop in time; killing\"")
                self._kill_all(signal.SIGKILL)
                deadline = math.inf

    def _restart(self, index: int) -> None:
        time.sleep(RESTART_PAUSE)  # a worker that crashes at once must not spin the CPU
        self._spawn(index, None)

    def _kill_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._kill_all(signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.01)


def serve(config: Config) -> int:
    tune_malloc()  # inherited by the workers forked below
    supervisor = Supervisor(config)
    try:
        return supervisor.run()
    finally:
        metrics.remove_directory(supervisor.metrics_dir, config.admin.metrics_dir)
