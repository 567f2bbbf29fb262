"""Prometheus metrics, counted in every worker and served by any of them.

prometheus_client's multiprocess mode: each process writes its values to memory-mapped files in
one directory (``PROMETHEUS_MULTIPROC_DIR``), and a scrape sums the files of all processes. The
supervisor makes (and empties) the directory and sets the variable before any worker starts, and
before this process imports prometheus_client, which picks its storage when first imported;
hence the imports inside functions. A dead worker's counters stay (they count what happened);
its live gauges are dropped when the supervisor reaps it.

Labels are configured names only (listener, backend, route, certificate name) or small fixed
sets (status class, reason, outcome): never paths, client addresses or discovered server
addresses, so the number of series stays bounded whatever the traffic.

The calls made per connection, request or session (``connection_opened``,
``connection_closed``, ``http_request``, ``tcp_session``) only add to plain numbers; ``flush()``
(every second from the worker's sweep, before a scrape answered by this worker, and when a
shutdown begins and ends) moves the sums into the shared values: each of those takes a lock and
writes a memory-mapped file, which per request cost about 5% of a keep-alive request's time and
per SMTP session 10 us.
The rarer calls write at once, keeping the labelled children they have used in a dictionary: a
``labels()`` lookup costs more than the increment itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0)
# An egress connect is a TCP handshake to a remote MX: milliseconds near, seconds far or failing.
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
TCP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def prepare_directory(configured: str | None) -> Path:
    """The multiprocess directory, emptied (values of an earlier run must not be summed in),
    and announced to prometheus_client through the environment. Call before any import of
    prometheus_client in this process and before forking workers."""
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for entry in directory.iterdir():
            if entry.suffix == ".db":
                entry.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="mta-ingress-metrics-"))
    os.environ[ENVIRONMENT] = str(directory)
    return directory


def remove_directory(directory: Path, configured: str | None) -> None:
    if configured is None:
        shutil.rmtree(directory, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Drop an exited worker's live gauges (its counters and histograms stay)."""
    if ENVIRONMENT in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def exposition() -> tuple[bytes, str]:
    """Every process's metrics, summed: the body and content type of a ``/metrics`` answer."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry()
    if ENVIRONMENT in os.environ:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Durations:
    """Durations not yet flushed into one histogram child: their sum and the count per bucket
    (the last one +Inf). A native class in the compiled build, so the sum is a C double rather
    than a new float object per duration."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.total = 0.0
        self.counts = [0] * (len(bounds) + 1)

    def add(self, seconds: float) -> None:
        self.total += seconds
        # Prometheus buckets are upper bounds: the first bound >= the value. Most durations
        # fall in the first few buckets, so a scan from the start beats a bisection call.
        index = 0
        for bound in self.bounds:
            if seconds <= bound:
                break
            index += 1
        self.counts[index] += 1


def _add_duration(pending: dict[str, _Durations], listener: str,
                  buckets: tuple[float, ...], seconds: float) -> None:
    durations = pending.get(listener)
    if durations is None:
        durations = pending[listener] = _Durations(buckets)
    durations.add(seconds)


def _move_durations(histogram: Any, durations: _Durations) -> None:
    # observe() per event would be the cost this batching avoids; the histogram's own sum and
    # buckets are what observe() adds to.
    histogram._sum.inc(durations.total)
    for bucket, observed in zip(histogram._buckets, durations.counts, strict=True):
        if observed:
            bucket.inc(observed)
    durations.total = 0.0
    durations.counts = [0] * len(durations.counts)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


class Metrics:
    """Every metric of the ingress; one instance per process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.connections = Counter(
            "mta_ingress_connections", "Client connections accepted.", ["listener"])
        self.connections_active = Gauge(
            "mta_ingress_connections_active", "Client connections open now.", ["listener"],
            multiprocess_mode="livesum")
        self.received_bytes = Counter(
            "mta_ingress_received_bytes", "Bytes received from clients.", ["listener"])
        self.sent_bytes = Counter(
            "mta_ingress_sent_bytes", "Bytes sent to clients.", ["listener"])
        self.http_requests = Counter(
            "mta_ingress_http_requests",
            "HTTP requests answered, by route, backend (<local> for local answers) and status "
            "class.", ["listener", "route", "backend", "code"])
        self.http_duration = Histogram(
            "mta_ingress_http_request_duration_seconds",
            "From a request head's arrival to the end of its response.", ["listener"],
            buckets=HTTP_BUCKETS)
        self.http_rejections = Counter(
            "mta_ingress_http_rejected_requests",
            "Requests and connections refused before any backend saw them, by reason.",
            ["listener", "reason"])
        self.tcp_sessions = Counter(
            "mta_ingress_tcp_sessions", "TCP (SMTP) sessions ended, by how they ended.",
            ["listener", "backend", "end"])
        self.tcp_duration = Histogram(
            "mta_ingress_tcp_session_duration_seconds", "TCP (SMTP) session durations.",
            ["listener"], buckets=TCP_BUCKETS)
        self.proxy_header_errors = Counter(
            "mta_ingress_proxy_header_errors",
            "Inbound PROXY protocol headers refused, by reason.", ["listener", "reason"])
        self.backend_connect_failures = Counter(
            "mta_ingress_backend_connect_failures",
            "Connections to backend servers that failed.", ["backend"])
        self.backend_retries = Counter(
            "mta_ingress_backend_retries",
            "Requests retried on a fresh connection after a pooled one turned out closed.",
            ["backend"])
        self.backend_checks = Counter(
            "mta_ingress_backend_checks", "Health checks of backend servers, by result.",
            ["backend", "result"])
        self.backend_servers = Gauge(
            "mta_ingress_backend_servers", "Servers of a backend, by health-check state "
            "(the least optimistic worker's view).", ["backend", "state"],
            multiprocess_mode="livemin")
        self.certificate_expiry = Gauge(
            "mta_ingress_certificate_expiry_timestamp_seconds",
            "When the certificate serving a name expires (Unix time).", ["name"],
            multiprocess_mode="livemin")
        self.certificate_reloads = Counter(
            "mta_ingress_certificate_reloads",
            "Certificate files examined on reload, by outcome (loaded, kept-last-good, "
            "removed).", ["outcome"])
        self.acme_orders = Counter(
            "mta_ingress_acme_orders", "ACME orders, by outcome.", ["outcome"])
        self.dns_refreshes = Counter(
            "mta_ingress_dns_refreshes", "DNS discovery refreshes, by backend and outcome.",
            ["backend", "outcome"])
        # Egress: sources are configuration (the listener's egress_sources, or "-" when a
        # session never got one), never destinations, so the series stay bounded.
        self.egress_sessions = Counter(
            "mta_ingress_egress_sessions", "Egress sessions ended, by source and how they ended.",
            ["listener", "source", "outcome"])
        self.egress_bytes = Counter(
            "mta_ingress_egress_bytes", "Bytes relayed by egress sessions, by source and "
            "direction (to-remote, to-client).", ["listener", "source", "direction"])
        self.egress_connect = Histogram(
            "mta_ingress_egress_connect_seconds",
            "From an egress session's connect request to the remote's answer (failures too).",
            ["listener", "source"], buckets=CONNECT_BUCKETS)
        self.egress_refusals = Counter(
            "mta_ingress_egress_refusals", "Egress clients and requests refused, by reason.",
            ["listener", "reason"])
        self._children: dict[tuple[Any, ...], Any] = {}
        self._http_children: dict[tuple[str, str, str, int], Any] = {}
        # Not yet flushed (see flush): requests per label set; per listener the duration sum
        # and the count per bucket (the last one +Inf); connections opened, and closed with
        # their bytes, per listener; TCP sessions per label set and their durations.
        self._pending_requests: dict[tuple[str, str, str, int], int] = {}
        self._pending_durations: dict[str, _Durations] = {}
        self._pending_opened: dict[str, int] = {}
        self._pending_closed: dict[str, list[int]] = {}
        self._pending_sessions: dict[tuple[str, str, str], int] = {}
        self._pending_session_durations: dict[str, _Durations] = {}
        self._pending_egress: dict[tuple[str, str, str], list[int]] = {}
        self._pending_connects: dict[tuple[str, str], _Durations] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- per connection and per request: cached children ---------------------------------------

    # Each of these adds to plain Python numbers; flush() moves them into the shared values.
    # A value written per event cost 2.7 to 4 us (a lock and an mmap write each), 10 us per
    # SMTP session; the gauge of active connections and the counters lag by one sweep at most.

    def connection_opened(self, listener: str) -> None:
        pending = self._pending_opened
        pending[listener] = pending.get(listener, 0) + 1

    def connection_closed(self, listener: str, received: int, sent: int) -> None:
        totals = self._pending_closed.get(listener)
        if totals is None:
            totals = self._pending_closed[listener] = [0, 0, 0]
        totals[0] += 1
        totals[1] += received
        totals[2] += sent

    def http_request(self, listener: str, route: str, backend: str, status: int,
                     seconds: float) -> None:
        key = (listener, route, backend, status)
        pending = self._pending_requests
        pending[key] = pending.get(key, 0) + 1
        _add_duration(self._pending_durations, listener, HTTP_BUCKETS, seconds)

    def flush(self) -> None:
        """Move the pending sums into the shared values."""
        for key, count in self._pending_requests.items():
            child = self._http_children.get(key)
            if child is None:
                listener, route, backend, status = key
                child = self._http_children[key] = self.http_requests.labels(
                    listener, route, backend, status_class(status))
            child.inc(count)
        self._pending_requests.clear()
        self._flush_durations(self.http_duration, self._pending_durations)
        for listener, opened in self._pending_opened.items():
            self._child(self.connections, listener).inc(opened)
            self._child(self.connections_active, listener).inc(opened)
        self._pending_opened.clear()
        for listener, (closed, received, sent) in self._pending_closed.items():
            self._child(self.connections_active, listener).dec(closed)
            if received:
                self._child(self.received_bytes, listener).inc(received)
            if sent:
                self._child(self.sent_bytes, listener).inc(sent)
        self._pending_closed.clear()
        for labels, count in self._pending_sessions.items():
            self._child(self.tcp_sessions, *labels).inc(count)
        self._pending_sessions.clear()
        self._flush_durations(self.tcp_duration, self._pending_session_durations)
        if self._pending_egress or self._pending_connects:
            self._flush_egress()

    def _flush_egress(self) -> None:
        for (listener, source, outcome), (count, to_remote, to_client) in (
                self._pending_egress.items()):
            self._child(self.egress_sessions, listener, source, outcome).inc(count)
            if to_remote:
                self._child(self.egress_bytes, listener, source, "to-remote").inc(to_remote)
            if to_client:
                self._child(self.egress_bytes, listener, source, "to-client").inc(to_client)
        self._pending_egress.clear()
        for (listener, source), durations in self._pending_connects.items():
            if any(durations.counts):
                _move_durations(self._child(self.egress_connect, listener, source), durations)

    def _flush_durations(self, metric: Any, pending: dict[str, _Durations]) -> None:
        for listener, durations in pending.items():
            if not any(durations.counts):
                continue
            _move_durations(self._child(metric, listener), durations)

    def http_rejected(self, listener: str, reason: str) -> None:
        self._child(self.http_rejections, listener, reason).inc()
        if "proxy-header" in reason:
            self._child(self.proxy_header_errors, listener, reason).inc()

    def tcp_session(self, listener: str, backend: str, end: str, seconds: float) -> None:
        key = (listener, backend, end)
        pending = self._pending_sessions
        pending[key] = pending.get(key, 0) + 1
        _add_duration(self._pending_session_durations, listener, TCP_BUCKETS, seconds)
        if "proxy-header" in end:
            self._child(self.proxy_header_errors, listener, end).inc()

    def egress_session(self, listener: str, source: str, outcome: str, to_remote: int,
                       to_client: int) -> None:
        key = (listener, source, outcome)
        totals = self._pending_egress.get(key)
        if totals is None:
            totals = self._pending_egress[key] = [0, 0, 0]
        totals[0] += 1
        totals[1] += to_remote
        totals[2] += to_client

    def egress_connected(self, listener: str, source: str, seconds: float) -> None:
        key = (listener, source)
        durations = self._pending_connects.get(key)
        if durations is None:
            durations = self._pending_connects[key] = _Durations(CONNECT_BUCKETS)
        durations.add(seconds)

    def egress_refused(self, listener: str, reason: str) -> None:
        self._child(self.egress_refusals, listener, reason).inc()

    # --- rarer events --------------------------------------------------------------------------

    def connect_failed(self, backend: str) -> None:
        self._child(self.backend_connect_failures, backend).inc()

    def retried(self, backend: str) -> None:
        self._child(self.backend_retries, backend).inc()

    def checked(self, backend: str, ok: bool) -> None:
        self._child(self.backend_checks, backend, "ok" if ok else "failed").inc()

    def servers(self, backend: str, up: int, down: int) -> None:
        self._child(self.backend_servers, backend, "up").set(up)
        self._child(self.backend_servers, backend, "down").set(down)

    def certificates(self, expiry_by_name: dict[str, float], loaded: int, kept: int,
                     removed: int) -> None:
        for name, expires in expiry_by_name.items():
            self._child(self.certificate_expiry, name).set(expires)
        for outcome, count in (("loaded", loaded), ("kept-last-good", kept),
                               ("removed", removed)):
            if count:
                self._child(self.certificate_reloads, outcome).inc(count)

    def acme_order(self, outcome: str) -> None:
        self._child(self.acme_orders, outcome).inc()

    def dns_refresh(self, backend: str, outcome: str) -> None:
        self._child(self.dns_refreshes, backend, outcome).inc()


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, made on first use (after the supervisor set the directory)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics

