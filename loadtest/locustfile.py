"""The traffic of a GreenArrow cluster for locust, against mta-ingress (or any front end of the
same ports): ``locust -f loadtest/locustfile.py --host HOST ...``; see docs/loadtesting.md.

Five user classes, each with its own weight (``--weight-*``):

- ``TrackingUser``: clicks and opens, GET over HTTP and HTTPS, some clients on keep-alive
  connections and some on one connection per request, as mail clients and browsers do;
- ``SubmissionApiUser``: ``POST /api/v1/send.json`` with JSON bodies from ``--api-min-size`` to
  ``--api-max-size`` bytes;
- ``SmtpSubmissionUser``: a full SMTP session on 587 (EHLO, STARTTLS when offered and
  ``--smtp-starttls`` allows, AUTH with ``--smtp-user``, MAIL, RCPT, DATA of ``--smtp-size``
  bytes, QUIT), timed as one request (``587 message``) and its steps (``587 EHLO`` ...);
- ``InboundSmtpUser``: bounces and feedback-loop reports on 25 (``25 message``);
- ``EgressUser``: an MTA's outbound mail through the egress tier to an MX (``--egress-to``),
  each session asking for its source address by SOCKS5 BIND then CONNECT, by SOCKS5 CONNECT
  alone (the listener's default source) or by a PROXY v2 header (``socks5-bind message``, ...),
  then 1 to ``--egress-per-session`` messages; left out unless ``--egress-to`` is given.

Every request and message carries a unique id (``X-Loadtest-Id``, a header of the request or of
the message) and, with ``--ledger FILE``, its outcome is appended to FILE as one JSON line
(``loadtest/compare.py``): what the load test's comparison checks against the counting backends.
SMTP messages refused with 4xx, or whose connection failed, are retried with the same id for up
to ``--smtp-retry-for`` seconds, as an MTA's queue would; HTTP requests are not retried, except
a GET whose kept-alive connection turned out closed before any answer (what browsers do).  An
outbound message's ledger ``client`` is the source the MX must see, and a refused SOCKS5 step
is retried only when the refusal can pass (``traffic.egress_retryable``).

Sockets are gevent's: locust patches the standard library when it is imported, so ``smtplib``,
``socket`` and ``ssl`` yield to other users while they wait.
"""

from __future__ import annotations

import os
import random
import smtplib
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from locust import User, events, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingress.demo.egress_clients import Socks5RefusedError, proxy_header_connect, socks5_connect
from ingress.demo.egress_try import endpoint
from ingress.protocol import proxy_protocol
from loadtest import traffic
from loadtest.compare import Sent

T = TypeVar("T")


def _options(parser: Any) -> None:
    group = parser.add_argument_group("mta-ingress traffic")
    group.add_argument("--weight-tracking", type=int, default=70, help="clicks and opens")
    group.add_argument("--weight-api", type=int, default=10, help="send.json submissions")
    group.add_argument("--weight-smtp", type=int, default=15, help="SMTP injection on 587")
    group.add_argument("--weight-inbound", type=int, default=5, help="bounces and FBL on 25")
    group.add_argument("--weight-egress", type=int, default=10,
                       help="outbound mail through the egress tier (with --egress-to)")
    for name, default in (("http", 80), ("https", 443), ("smtp", 587), ("inbound", 25)):
        group.add_argument(f"--{name}-port", type=int, default=default)
        group.add_argument(f"--{name}-proxied-port", type=int, default=0,
                           help="the -proxied listener (PROXY header first); 0: not used")
    group.add_argument("--proxied-share", type=float, default=0.5,
                       help="share of clients on -proxied ports (when their port is set)")
    group.add_argument("--ipv6-share", type=float, default=0.3,
                       help="share of proxied clients with an IPv6 address")
    group.add_argument("--https-share", type=float, default=0.5)
    group.add_argument("--keepalive-share", type=float, default=0.5,
                       help="share of HTTP clients keeping connections open")
    group.add_argument("--max-wait", type=float, default=0.1,
                       help="each user waits up to this many seconds between tasks")
    group.add_argument("--api-min-size", type=int, default=2_000)
    group.add_argument("--api-max-size", type=int, default=300_000)
    group.add_argument("--api-connection-close", action="store_true",
                       help="every one-shot API client sends Connection: close with its POST "
                            "(by default half of them do)")
    group.add_argument("--smtp-size", type=int, default=10_000, help="bytes of a 587 message")
    group.add_argument("--inbound-size", type=int, default=3_000, help="bytes of a bounce/FBL")
    group.add_argument("--smtp-starttls", choices=("auto", "never", "always"), default="auto",
                       help="auto: when the server offers it")
    group.add_argument("--smtp-user", default="", help="AUTH on 587 when set")
    group.add_argument("--smtp-password", default="", help="with --smtp-user")
    group.add_argument("--smtp-retry-for", type=float, default=30.0,
                       help="seconds a message is retried after 4xx or a connection failure")
    group.add_argument("--request-timeout", type=float, default=15.0)
    group.add_argument("--tls-verify", action="store_true",
                       help="verify the server certificate (off: the demo's is self-signed)")
    group.add_argument("--tls-ca", default="", help="CA file for --tls-verify")
    group.add_argument("--tls-server-name", default="",
                       help="SNI and name to verify; default: the host when it is a name")
    group.add_argument("--egress-to", default="",
                       help="HOST:PORT of the MX the egress users send to; empty: no egress users")
    group.add_argument("--egress-host", default="",
                       help="the egress listeners' host (default: --host)")
    group.add_argument("--egress-socks-port", type=int, default=0,
                       help="the socks5 listener; 0: no socks5-* sessions")
    group.add_argument("--egress-forward-port", type=int, default=0,
                       help="the forward listener; 0: no forward-* sessions")
    group.add_argument("--egress-sources", default="127.0.0.5,127.0.0.7,127.0.0.8",
                       help="the listeners' egress_sources, their default first")
    group.add_argument("--egress-modes", default=",".join(traffic.DEFAULT_EGRESS_MODES),
                       help=f"how sessions ask for a source: {', '.join(traffic.EGRESS_MODES)}")
    group.add_argument("--egress-per-session", type=int, default=3,
                       help="each egress session delivers 1 to this many messages")
    group.add_argument("--egress-size", type=int, default=5_000,
                       help="bytes of an outbound message")
    group.add_argument("--egress-user", default="", help="RFC 1929 user for the socks5 listener")
    group.add_argument("--egress-password", default="", help="with --egress-user")
    group.add_argument("--ledger", default="", help="append every outcome to this JSON-lines file")
    group.add_argument("--seed", type=int, default=0, help="0: a random run")


@dataclass(frozen=True, slots=True)
class EgressSettings:
    """What ``--egress-*`` say, checked: the MX, the sources, the modes that have a port."""

    host: str
    mx: tuple[str, int]
    ports: dict[str, int]  # by listener: "socks5", "forward"
    sources: tuple[str, ...]
    modes: tuple[str, ...]
    credentials: tuple[bytes, bytes] | None

    @classmethod
    def from_options(cls, options: Any, host: str) -> EgressSettings | None:
        """None when there are no egress users (no --egress-to, or no mode with a port)."""
        if not options.egress_to:
            return None
        ports = {"socks5": options.egress_socks_port, "forward": options.egress_forward_port}
        modes = tuple(mode for mode in traffic.egress_modes(options.egress_modes)
                      if ports[traffic.listener_of(mode)])
        if not modes or options.egress_per_session < 1:
            return None
        credentials = ((options.egress_user.encode(), options.egress_password.encode())
                       if options.egress_user else None)
        return cls(options.egress_host or host, endpoint(options.egress_to), ports,
                   traffic.egress_sources(options.egress_sources), modes, credentials)


@dataclass(slots=True)
class Settings:
    host: str
    options: Any
    tls: ssl.SSLContext
    server_name: str | None
    loopback: bool
    rng: random.Random
    egress: EgressSettings | None = None
    ids: traffic.IdSource = field(default_factory=traffic.IdSource)


_settings: Settings | None = None
# Set when locust begins to stop: no new request or message is started after it, so that none
# is cut in the middle (locust kills users that it finds between tasks).
_stopping = False
_ledger_fd: int | None = None
_ledger_lock = threading.Lock()


def settings(environment: Environment) -> Settings:
    global _settings
    if _settings is None:
        options = environment.parsed_options
        assert options is not None
        host = traffic.parse_host(environment.host)
        tls = ssl.create_default_context(cafile=options.tls_ca or None)
        if not options.tls_verify:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        name = options.tls_server_name or (None if _is_ip(host) else host)
        seed = options.seed or random.SystemRandom().randrange(1, 1 << 62)
        _settings = Settings(host, options, tls, name, traffic.is_loopback(host),
                             random.Random(seed), EgressSettings.from_options(options, host))
    return _settings


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    egress = settings(environment).egress
    weights: dict[type[User], int] = {
        TrackingUser: options.weight_tracking, SubmissionApiUser: options.weight_api,
        SmtpSubmissionUser: options.weight_smtp, InboundSmtpUser: options.weight_inbound,
        EgressUser: options.weight_egress if egress is not None else 0}
    for cls, weight in weights.items():
        cls.weight = weight
    # A weight of 0 leaves a class out: locust would otherwise still start one user of it.
    environment.user_classes = [cls for cls in environment.user_classes
                                if weights.get(cls, 1) > 0]
    global _ledger_fd
    if options.ledger:
        # One write() per record on an O_APPEND descriptor: lines never interleave, even with
        # several locust processes on one file.
        _ledger_fd = os.open(options.ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _on_stopping(**_: Any) -> None:
    global _stopping
    _stopping = True


def record(sent: Sent) -> None:
    if _ledger_fd is None:
        return
    import json

    line = (json.dumps(sent.to_json()) + "\n").encode()
    with _ledger_lock:
        os.write(_ledger_fd, line)


def _connect(host: str, port: int, plan: traffic.ClientPlan, timeout: float,
             rng: random.Random) -> socket.socket:
    sock = socket.create_connection((host, port), timeout,
                                    (plan.source, 0) if plan.source else None)
    # As HTTP client libraries do: the last part of a body is not held back waiting for the
    # server's (delayed) acknowledgement of the part before.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if plan.proxied:
        assert plan.client is not None
        v6 = ":" in plan.client
        source = (plan.client, rng.randrange(1024, 65536))
        destination = (traffic.PROXY_DESTINATION_V6 if v6 else traffic.PROXY_DESTINATION_V4,
                       port)
        header = (proxy_protocol.encode_v1(source, destination) if plan.proxy_version == 1
                  else proxy_protocol.encode_v2(source, destination))
        sock.sendall(header)
    return sock


class LoadtestUser(User):
    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.settings = settings(environment)
        self.rng = random.Random(self.settings.rng.getrandbits(64))
        options = self.settings.options
        self.plan = traffic.plan_client(self.rng, proxied_share=self.proxied_share(),
                                        ipv6_share=options.ipv6_share,
                                        loopback=self.settings.loopback)

    def wait_time(self) -> float:
        return self.rng.uniform(0.0, float(self.settings.options.max_wait))

    def proxied_share(self) -> float:
        return float(self.settings.options.proxied_share)

    def fire(self, request_type: str, name: str, started: float, length: int,
             exception: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name,
            response_time=(time.perf_counter() - started) * 1000.0, response_length=length,
            exception=exception, context={})

    def smtp_step(self, label: str, name: str, call: Callable[[], T]) -> T:
        """``call()``, fired as the SMTP step "``label`` ``name``" (its time, and its exception,
        which is raised again)."""
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:
            self.fire("SMTP step", f"{label} {name}", started, 0, exc)
            raise
        self.fire("SMTP step", f"{label} {name}", started, 0, None)
        return result


# --- HTTP ---------------------------------------------------------------------------------------


class HttpError(Exception):
    pass


class StaleConnectionError(HttpError):
    """A kept-alive connection closed before any byte of the answer."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    keep_alive: bool


class HttpConnection:
    """One client connection: HTTP/1.1 by hand, since no client library sends a PROXY header
    before TLS or binds a chosen source address per connection."""

    def __init__(self, host: str, port: int, plan: traffic.ClientPlan,
                 tls: ssl.SSLContext | None, server_name: str | None, timeout: float) -> None:
        sock = _connect(host, port, plan, timeout, random.Random())
        try:
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_name)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.used = False

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def request(self, head: bytes, body: bytes) -> Response:
        reused = self.used
        self.used = True
        try:
            self.sock.sendall(head + body)
            status_line = self.reader.readline(8192)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if reused:
                raise StaleConnectionError(str(exc)) from exc
            raise
        if not status_line:
            if reused:
                raise StaleConnectionError("connection closed before the answer")
            raise HttpError("connection closed before the answer")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep_alive = parts[0] == b"HTTP/1.1"
        while True:
            line = self.reader.readline(65536)
            if not line:
                raise HttpError("connection closed in the answer's head")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection":
                keep_alive = value.lower() != b"close"
        if chunked:
            data = bytearray()
            while True:
                size = int(self.reader.readline(1024).split(b";")[0], 16)
                if size == 0:
                    while self.reader.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self._read(size)
                self._read(2)
            payload = bytes(data)
        elif length is not None:
            payload = self._read(length)
        else:
            payload = self.reader.read()
            keep_alive = False
        return Response(status, payload, keep_alive)

    def _read(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise HttpError("connection closed in the answer's body")
        return data


class HttpClientUser(LoadtestUser):
    abstract = True
    service = "event-tracker"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = self.settings.options
        self.https = self.rng.random() < options.https_share
        self.keepalive = self.rng.random() < options.keepalive_share
        self.scheme = "https" if self.https else "http"
        proxied_port = options.https_proxied_port if self.https else options.http_proxied_port
        self.port = (proxied_port if self.plan.proxied
                     else options.https_port if self.https else options.http_port)
        self.connection: HttpConnection | None = None
        # A mail client keeps a connection for a few requests (the images of one message).
        self.requests_left = 0

    def proxied_share(self) -> float:
        options = self.settings.options
        if not (options.http_proxied_port and options.https_proxied_port):
            return 0.0
        return float(options.proxied_share)

    def on_stop(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def exchange(self, method: str, path: str, name: str, headers: list[tuple[str, str]],
                 body: bytes = b"") -> None:
        if _stopping:
            return
        options = self.settings.options
        ident = self.settings.ids.next("http")
        host = self.settings.server_name or self.settings.host
        if self.keepalive and self.requests_left <= 0:
            self._drop()
            self.requests_left = self.rng.randrange(2, 12)
        keep = self.keepalive and self.requests_left > 1
        self.requests_left -= 1
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}",
                 f"{traffic.ID_HEADER}: {ident}", *(f"{k}: {v}" for k, v in headers)]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        if not keep and (not body or options.api_connection_close or self.rng.random() < 0.5):
            # One-shot API clients come both ways: curl just closes after the answer, many
            # SDKs announce Connection: close first.
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        started = time.perf_counter()
        t0 = time.time()
        attempts = 0
        error: BaseException | None = None
        length = 0
        try:
            while True:
                attempts += 1
                fresh = self.connection is None
                try:
                    if self.connection is None:
                        self.connection = HttpConnection(
                            self.settings.host, self.port, self.plan,
                            self.settings.tls if self.https else None,
                            self.settings.server_name, options.request_timeout)
                    response = self.connection.request(head, body)
                except StaleConnectionError:
                    self._drop()
                    if method != "GET" or fresh or attempts > 1:
                        raise
                    continue
                except BaseException:
                    self._drop()
                    raise
                break
            length = len(response.body)
            if not (keep and response.keep_alive):
                self._drop()
            if response.status != 200:
                raise HttpError(f"status {response.status}")
        except Exception as exc:
            error = exc
        except BaseException as exc:  # locust stopping us: the id is settled as a failure
            record(Sent(ident, "http", self.service, self.plan.client, False, t0, time.time(),
                        name, attempts, False, f"abandoned: {type(exc).__name__}"))
            raise
        self.fire(method, name, started, length, error)
        record(Sent(ident, "http", self.service, self.plan.client, error is None, t0,
                    time.time(), name, attempts, False,
                    None if error is None else f"{type(error).__name__}: {error}"))


class TrackingUser(HttpClientUser):
    """Clicks and opens: small GETs, answered by the Event Tracker."""

    weight = 70
    service = "event-tracker"

    @task(3)
    def click(self) -> None:
        headers = [("User-Agent", "Mozilla/5.0 (loadtest)"), ("Accept", "text/html")]
        if not self.plan.proxied and self.rng.random() < 0.2:
            # A client's own X-Forwarded-For must not be taken for its address: the ingress
            # appends the real one, and the backend must read that.
            headers.append(("X-Forwarded-For", "192.0.2.66"))
        self.exchange("GET", traffic.tracking_path(self.rng, "click"), f"click {self.scheme}",
                      headers)

    @task(7)
    def open(self) -> None:
        self.exchange("GET", traffic.tracking_path(self.rng, "open"), f"open {self.scheme}",
                      [("User-Agent", "Mozilla/5.0 (loadtest)"), ("Accept", "image/*")])


class SubmissionApiUser(HttpClientUser):
    """The HTTP Submission API: JSON posts, answered by the MTA."""

    weight = 10
    service = "mta"

    @task
    def send_json(self) -> None:
        options = self.settings.options
        size = traffic.log_uniform(self.rng, options.api_min_size, options.api_max_size)
        body = traffic.send_json_body(self.rng, self.settings.ids.next("body"), size)
        self.exchange("POST", "/api/v1/send.json", f"send.json {self.scheme}",
                      [("Content-Type", "application/json")], body)


# --- SMTP ---------------------------------------------------------------------------------------


def _retry_after_pause(retry: bool, attempts: int, deadline: float) -> bool:
    """An MTA's retry after its failed attempt number ``attempts``: a pause of 0.5 s, doubling
    up to 4 s, then True; False at once when the failure is not worth retrying (``retry``) or
    the pause would end past ``deadline`` (``time.monotonic()``)."""
    pause = min(4.0, 0.25 * 2 ** attempts)
    if not retry or time.monotonic() + pause > deadline:
        return False
    time.sleep(pause)  # gevent's sleep: the user yields
    return True


class RoutedSMTP(smtplib.SMTP):
    """smtplib with the client plan applied to its socket (source address, PROXY header)."""

    def __init__(self, plan: traffic.ClientPlan, timeout: float, rng: random.Random) -> None:
        self._plan = plan
        self._rng = rng
        super().__init__(timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return _connect(host, port, self._plan, timeout, self._rng)


class SmtpUser(LoadtestUser):
    abstract = True
    label = "587"
    service = "mta"
    kind_of_port = "smtp"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = self.settings.options
        proxied = getattr(options, f"{self.kind_of_port}_proxied_port")
        self.port = proxied if self.plan.proxied else getattr(options, f"{self.kind_of_port}_port")

    def proxied_share(self) -> float:
        options = self.settings.options
        if not getattr(options, f"{self.kind_of_port}_proxied_port"):
            return 0.0
        return float(options.proxied_share)

    def envelope(self, ident: str) -> tuple[str, str, bytes]:
        """Sender, recipient and message of one session: by default an application's message
        injected on 587."""
        return ("news@example.com", "reader@example.org",
                traffic.submission_message(ident, self.settings.options.smtp_size))

    def step(self, name: str, call: Callable[[], T]) -> T:
        return self.smtp_step(self.label, name, call)

    @task
    def send_message(self) -> None:
        if _stopping:
            return
        options = self.settings.options
        ident = self.settings.ids.next("smtp")
        mail_from, rcpt_to, message = self.envelope(ident)
        name = f"{self.label} message"
        started = time.perf_counter()
        t0 = time.time()
        deadline = time.monotonic() + options.smtp_retry_for
        attempts = 0
        ambiguous = False
        error: BaseException | None = None
        try:
            while True:
                attempts += 1
                attempt_started = time.perf_counter()
                outcome = self._attempt(mail_from, rcpt_to, message)
                if outcome is None:
                    error = None
                    break
                retry, error, body_sent = outcome
                ambiguous = ambiguous or body_sent
                self.fire("SMTP", f"{self.label} attempt", attempt_started, 0, error)
                if not _retry_after_pause(retry, attempts, deadline):
                    break
        except BaseException as exc:
            record(Sent(ident, "smtp", self.service, self.plan.client, False, t0, time.time(),
                        name, attempts, True, f"abandoned: {type(exc).__name__}"))
            raise
        self.fire("SMTP", name, started, len(message), error)
        record(Sent(ident, "smtp", self.service, self.plan.client, error is None, t0,
                    time.time(), name, attempts, ambiguous,
                    None if error is None else f"{type(error).__name__}: {error}"))

    def _attempt(self, mail_from: str, rcpt_to: str,
                 message: bytes) -> tuple[bool, BaseException, bool] | None:
        """One session; None when the message was accepted, else (worth retrying, the error,
        whether the whole DATA was sent without a reply read: the server may have it)."""
        options = self.settings.options
        smtp = RoutedSMTP(self.plan, options.request_timeout, self.rng)
        body_sent = False
        try:
            code, reply = self.step("connect",
                                    lambda: smtp.connect(self.settings.host, self.port))
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            self.step("EHLO", lambda: _expect(smtp.ehlo("loadtest.example"), 250))
            if options.smtp_starttls != "never" and smtp.has_extn("starttls"):
                self.step("STARTTLS", lambda: smtp.starttls(
                    context=self.settings.tls))
                self.step("EHLO", lambda: _expect(smtp.ehlo("loadtest.example"), 250))
            elif options.smtp_starttls == "always":
                raise smtplib.SMTPNotSupportedError("STARTTLS not offered")
            if options.smtp_user and self.label == "587":
                self.step("AUTH", lambda: smtp.login(options.smtp_user, options.smtp_password))
            self.step("MAIL", lambda: _expect(smtp.mail(mail_from), 250))
            self.step("RCPT", lambda: _expect(smtp.rcpt(rcpt_to), 250))
            self.step("DATA", lambda: _expect(smtp.docmd("DATA"), 354))

            def send_body() -> None:
                nonlocal body_sent
                smtp.send(message + b".\r\n")
                body_sent = True
                _expect(smtp.getreply(), 250)
                body_sent = False  # answered: no doubt left

            self.step("message", send_body)
            try:
                self.step("QUIT", smtp.quit)
            except (smtplib.SMTPException, OSError):
                pass  # the message is accepted; a lost 221 changes nothing
            return None
        except smtplib.SMTPResponseException as exc:
            return 400 <= exc.smtp_code < 500, exc, body_sent
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            return True, exc, body_sent
        except smtplib.SMTPException as exc:
            return False, exc, body_sent
        finally:
            if smtp.sock is not None:
                smtp.close()


def _expect(reply: tuple[int, bytes], code: int) -> None:
    if reply[0] != code:
        raise smtplib.SMTPResponseException(reply[0], reply[1])


class SmtpSubmissionUser(SmtpUser):
    """Message injection on 587 by an application, to the MTA."""

    weight = 15


class InboundSmtpUser(SmtpUser):
    """Bounces and feedback-loop reports arriving on 25, to the Event Tracker."""

    weight = 5
    label = "25"
    service = "event-tracker"
    kind_of_port = "inbound"

    def envelope(self, ident: str) -> tuple[str, str, bytes]:
        size = self.settings.options.inbound_size
        if self.rng.random() < 0.8:
            return "", f"bounce-{ident}@return.example.com", traffic.bounce_message(ident, size)
        return ("fbl@isp.example.net", f"fbl-{ident}@return.example.com",
                traffic.feedback_report(ident, size))


# --- egress ------------------------------------------------------------------------------------


class EgressSMTP(smtplib.SMTP):
    """smtplib through an egress listener: ``connect(mx_host, mx_port)`` opens the listener,
    asks for the plan's source and the MX (SOCKS5 or a PROXY header), then reads the MX's
    banner, which follows on the same connection."""

    def __init__(self, egress: EgressSettings, plan: traffic.EgressPlan, timeout: float) -> None:
        self._egress = egress
        self._plan = plan
        super().__init__(timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        egress, plan = self._egress, self._plan
        sock = socket.create_connection((egress.host, egress.ports[plan.listener]), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if plan.listener == "socks5":
                socks5_connect(sock, (host, port), source=plan.requested,
                               credentials=egress.credentials)
            else:
                assert plan.requested is not None
                proxy_header_connect(sock, plan.requested, (host, port),
                                     version=plan.proxy_version)
        except BaseException:
            sock.close()
            raise
        return sock


@dataclass(slots=True)
class Outbound:
    """One message of an egress session, until it is settled."""

    ident: str
    message: bytes
    t0: float
    # perf_counter when a session first came to it, for locust's response time: the first
    # message's time has the connection and the negotiation in it, a later one's starts at its
    # MAIL, after the pause (retries are in both).
    started: float = -1.0
    attempts: int = 0
    ambiguous: bool = False

    def attempting(self) -> None:
        self.attempts += 1
        if self.started < 0:
            self.started = time.perf_counter()


class EgressUser(LoadtestUser):
    """An MTA's outbound mail through the egress tier: a session asks for its source (the
    plan's mode), delivers 1 to --egress-per-session messages to the MX with a pause of up to
    --max-wait between them (a kept connection waiting for the queue's next message), and
    quits.  A failed session is retried from the first message not yet accepted, with the same
    ids, the same mode and the same source, for up to --smtp-retry-for seconds."""

    weight = 10
    service = "mx"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        egress = self.settings.egress
        assert egress is not None  # the class is left out without it
        self.egress = egress

    def proxied_share(self) -> float:
        return 0.0  # the MTA is the egress tier's client: 127.0.0.1, allow_clients

    def _settle(self, plan: traffic.EgressPlan, message: Outbound,
                error: BaseException | None) -> None:
        """Accepted (``error`` None) or given up on: locust's statistics and the ledger."""
        name = f"{plan.mode} message"
        started = message.started if message.started >= 0 else time.perf_counter()
        self.fire("SMTP", name, started, len(message.message), error)
        record(Sent(message.ident, "smtp", self.service, plan.expected, error is None,
                    message.t0, time.time(), name, message.attempts, message.ambiguous,
                    None if error is None else f"{type(error).__name__}: {error}"))

    @task
    def send_session(self) -> None:
        if _stopping:
            return
        options = self.settings.options
        plan = traffic.plan_egress(self.rng, self.egress.modes, self.egress.sources)
        pending = []
        for _ in range(self.rng.randint(1, options.egress_per_session)):
            ident = self.settings.ids.next("smtp")
            pending.append(Outbound(ident, traffic.egress_message(ident, plan.expected,
                                                                  options.egress_size),
                                    time.time()))
        deadline = time.monotonic() + options.smtp_retry_for
        sessions = 0
        error: BaseException | None = None
        try:
            while pending:
                sessions += 1
                attempt_started = time.perf_counter()
                outcome = self._session(plan, pending)
                if outcome is None:
                    break
                retry, error = outcome
                self.fire("SMTP", f"{plan.mode} attempt", attempt_started, 0, error)
                if not _retry_after_pause(retry, sessions, deadline):
                    break
        except BaseException as exc:
            for message in pending:
                record(Sent(message.ident, "smtp", self.service, plan.expected, False,
                            message.t0, time.time(), f"{plan.mode} message", message.attempts,
                            True, f"abandoned: {type(exc).__name__}"))
            raise
        for message in pending:  # given up on
            self._settle(plan, message, error or RuntimeError("not sent"))

    def _session(self, plan: traffic.EgressPlan, pending: list[Outbound]
                 ) -> tuple[bool, BaseException] | None:
        """One session for the messages of ``pending``, which loses each one the MX accepts
        (settled then); None when all were, else (worth retrying, the error)."""
        options = self.settings.options
        label = plan.mode
        smtp = EgressSMTP(self.egress, plan, options.request_timeout)
        current = pending[0]
        current.attempting()
        body_sent = False
        try:
            code, reply = self.smtp_step(label, "connect", lambda: smtp.connect(*self.egress.mx))
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            self.smtp_step(label, "EHLO", lambda: _expect(smtp.ehlo("egress.loadtest"), 250))
            first = True
            while pending:
                current = pending[0]
                if not first:
                    time.sleep(self.rng.uniform(0.0, float(options.max_wait)))
                    current.attempting()
                first = False
                self.smtp_step(label, "MAIL", lambda: _expect(smtp.mail("news@example.com"), 250))
                self.smtp_step(label, "RCPT", lambda: _expect(smtp.rcpt("reader@example.net"), 250))
                self.smtp_step(label, "DATA", lambda: _expect(smtp.docmd("DATA"), 354))

                def send_body(message: bytes = current.message) -> None:
                    nonlocal body_sent
                    smtp.send(message + b".\r\n")
                    body_sent = True
                    _expect(smtp.getreply(), 250)
                    body_sent = False  # answered: no doubt left

                self.smtp_step(label, "message", send_body)
                self._settle(plan, pending.pop(0), None)
            try:
                self.smtp_step(label, "QUIT", smtp.quit)
            except (smtplib.SMTPException, OSError):
                pass  # every message is accepted; a lost 221 changes nothing
            return None
        except smtplib.SMTPResponseException as exc:
            return 400 <= exc.smtp_code < 500, exc
        except Socks5RefusedError as exc:
            return traffic.egress_retryable(exc.step, exc.code), exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            return True, exc
        except smtplib.SMTPException as exc:
            return False, exc
        finally:
            if body_sent:
                current.ambiguous = True
            if smtp.sock is not None:
                smtp.close()


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_stopping.add_listener(_on_stopping)  # type: ignore[no-untyped-call]
