"""The benchmark's scenarios: what is measured, on which CPUs, against which targets; the runs a
command line plans and the measurement each round yields."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

SCENARIOS = ("sessions", "bulk", "idle", "http-keepalive", "http-close", "http-1mib",
             "http-latency", "https-handshake-ecdsa", "https-handshake-rsa", "https-keepalive",
             "tls-handshake-ecdsa", "tls-handshake-rsa", "tls-request-ecdsa", "tls-request-rsa")


# Egress (loadtest/bench_egress.py): mta-ingress's socks5 and forward listeners beside Dante and
# HAProxy in forward mode, in front of a loopback SMTP sink.  Not in the default run: they need
# Dante (/usr/sbin/danted), and HAProxy as root for usesrc clientip.
EGRESS_SCENARIOS = ("egress-sessions", "egress-bulk", "egress-idle")


# HTTPS through wrk: the same origin and routing behind the https listener, a certificate of
# the key type in the name (https-keepalive: ECDSA P-256); the handshake scenarios open a new
# connection per request, and wrk keeps each connection's SSL object across its reconnects
# (SSL_clear) with a client session cache, so all but its first handshakes resume the session.
HTTPS_WRK_SCENARIOS = ("https-handshake-ecdsa", "https-handshake-rsa", "https-keepalive")


# Full handshakes by parallel ``openssl s_time -new`` (loadtest/load.py s_time), the issue 21
# harness's measurement: bare, no request. s_time resets each connection (SO_LINGER 0) as soon
# as it has sent its Finished. HAProxy learns of the reset before it reads the Finished and
# closes: it neither checks the Finished nor makes the two TLS 1.3 session tickets. mta-ingress
# reads what arrived before the reset (libuv reads before it reports an error) and does both,
# as it does for a client that stays. So these compare unequal work.
S_TIME_BARE_SCENARIOS = ("tls-handshake-ecdsa", "tls-handshake-rsa")
# The same handshakes, finished: ``s_time -new -www`` asks for the readiness path, which both
# proxies answer themselves, so each connection is a handshake done in full (Finished checked,
# tickets sent) and one short request without a backend.
S_TIME_REQUEST_SCENARIOS = ("tls-request-ecdsa", "tls-request-rsa")
S_TIME_SCENARIOS = (*S_TIME_BARE_SCENARIOS, *S_TIME_REQUEST_SCENARIOS)
READINESS_PATH = "/.kubernetes-readiness-probe"


# Those served by the https listener, with a certificate (bench_targets.certificate_dir).
TLS_SCENARIOS = (*HTTPS_WRK_SCENARIOS, *S_TIME_SCENARIOS)


# Measured with wrk (closed loop: each connection sends its next request when the last ends).
WRK_SCENARIOS = ("http-keepalive", "http-close", "http-1mib", *HTTPS_WRK_SCENARIOS)


HTTP_SCENARIOS = (*WRK_SCENARIOS, "http-latency", *S_TIME_SCENARIOS)


# Where --floor measures the reference relay (loadtest/floor.py) too: over TLS in
# https-keepalive and the bare handshakes (no request: the floor only handshakes, as the proxies
# do), as a TCP relay (--tcp) in sessions. Not http-close nor https-handshake-*: the floor's HTTP
# relay opens a backend connection per client connection (mta-ingress pools them), so it would
# measure more work than the proxy it is a floor for; nor tls-request-*, whose readiness answer
# the floor does not give.
FLOOR_SCENARIOS = ("http-keepalive", "https-keepalive", "sessions", *S_TIME_BARE_SCENARIOS)


COMPARED = ("haproxy", "mta-ingress")


# A click-tracking-like path: no route but the default one matches it, on both proxies.
HTTP_PATH = "/click/abc?x=1"


HTTP_LARGE_PATH = "/1m/click/abc?x=1"  # the origin answers /1m... with 1 MiB


# Proxies below this CPU utilisation were not the bottleneck of their measurement.
SATURATED = 0.90


# Busy time outside the bench's processes (bench_runner.cpu_figures), as a fraction of one
# CPU, above which a measurement is flagged: something else was competing for the CPUs.
DISTURBED = 0.15


# Issue 21's targets: the ingress's figure over HAProxy's.  A handshake's CPU at most 1.1x
# HAProxy's is handshakes per CPU-second at least 1/1.1 of HAProxy's.
HANDSHAKE_TARGET = 1 / 1.1
TARGETS = {"sessions": 0.9, "bulk": 1.5, "http-keepalive": 0.95, "http-close": 1.0,
           "http-1mib": 2.0, "https-keepalive": 0.85,
           **dict.fromkeys(("https-handshake-ecdsa", "https-handshake-rsa", *S_TIME_SCENARIOS),
                           HANDSHAKE_TARGET)}


# http-latency: ingress p99 at most this multiple of HAProxy's, at half HAProxy's peak rate.
LATENCY_MAX_RATIO = 1.5


# Taken before the bench pins itself, which it does per run.
ALL_CPUS = frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True, slots=True)
class Layout:
    """Who runs where.  ``proxy`` None: the proxies may use every CPU."""

    load: set[int] | None
    proxy: set[int] | None

    def describe(self) -> str:
        if self.proxy is None:
            return "unpinned: proxy, load generator and backend share every CPU"
        return (f"proxy pinned to CPU {cpu_list(self.proxy)}; load generator and backend "
                f"pinned to CPU {cpu_list(self.load or set())}")


def cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


@dataclass(frozen=True, slots=True)
class Run:
    scenario: str
    workers: int
    layout: Layout
    concurrency: int = 0  # egress-sessions: clients in flight (one run per level)

    @property
    def key(self) -> str:
        key = self.scenario if self.workers == 1 else f"{self.scenario}-w{self.workers}"
        return f"{key}-c{self.concurrency}" if self.concurrency else key


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


def key_type(scenario: str) -> str:
    """The certificate key type of a TLS scenario: RSA where its name ends in -rsa."""
    return "rsa" if scenario.endswith("-rsa") else "ecdsa"


def key_name(scenario: str) -> str:
    return "RSA-2048" if key_type(scenario) == "rsa" else "ECDSA P-256"


def cost_unit(scenario: str) -> str | None:
    """What a scenario's proxy CPU is counted per (``proxy_us_per_<unit>`` in its details)."""
    if scenario == "sessions":
        return "session"
    if scenario in WRK_SCENARIOS:
        return "request"
    if scenario in S_TIME_SCENARIOS:
        return "handshake"
    return None


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
    origin = "nginx" if options.origin == "nginx" else "the stub origin"
    http = (f"{options.http_duration:g}s window after {options.warmup:g}s warm-up "
            f"(a separate wrk run), {origin}; {workers}")
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
        return (f"new TLS connections/s, {key_name(run.scenario)} certificate, one request "
                f"each (Connection: "
                f"close; wrk resumes each connection's TLS session: after the first, these "
                f"are resumed handshakes), wrk -t1 "
                f"-c{options.http_connections}, GET {HTTP_PATH}, {http}")
    if run.scenario in S_TIME_REQUEST_SCENARIOS:
        return (f"full TLS handshakes/s, {key_name(run.scenario)} certificate, finished, each "
                f"with one request answered by the proxy (GET {READINESS_PATH} HTTP/1.0): "
                f"{options.handshake_clients} parallel openssl s_time -new -www, "
                f"{options.http_duration:g}s window after {options.warmup:g}s warm-up "
                f"(separate s_time runs); {workers}")
    if run.scenario in S_TIME_SCENARIOS:
        return (f"full TLS handshakes/s, {key_name(run.scenario)} certificate, no request "
                f"(s_time resets each connection after its Finished, which HAProxy then "
                f"skips): {options.handshake_clients} parallel openssl s_time -new, "
                f"{options.http_duration:g}s window after {options.warmup:g}s warm-up "
                f"(separate s_time runs); {workers}")
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


def plan(options: argparse.Namespace) -> list[Run]:
    cpus = sorted(ALL_CPUS)
    pinned = (Layout({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 and not options.no_pin
              else Layout(None, None))
    unpinned = Layout(None, None)
    runs: list[Run] = []
    for scenario in options.scenarios:
        if scenario in EGRESS_SCENARIOS:
            # One worker against one HAProxy thread and Dante, each on the proxy core, whatever
            # --workers says: the comparison.
            levels = ((getattr(options, "egress_concurrency", None) or [16, 128])
                      if scenario == "egress-sessions" else [0])
            runs.extend(Run(scenario, 1, pinned, level) for level in levels)
        elif options.workers == 1:
            runs.append(Run(scenario, 1, pinned))
        else:
            # The contract comparison (one worker against one HAProxy thread, each with a core)
            # stays for sessions; the N-worker figure comes on top of it, unpinned.
            if scenario == "sessions":
                runs.append(Run(scenario, 1, pinned))
            runs.append(Run(scenario, options.workers, unpinned))
    return runs
