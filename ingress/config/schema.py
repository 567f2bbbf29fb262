"""The configuration's types: what the loader builds and everything else reads (frozen
dataclasses), with their defaults."""

from __future__ import annotations

import select
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ingress.config import presets
from routing.backends import Balance
from routing.discovery import DnsName
from routing.egress import DEFAULT_DENY_DESTINATIONS, DEFAULT_PORTS
from routing.table import Rule
from tls.settings import TlsConfig

DEFAULT_PRESET = "greenarrow"
DEFAULT_RELEASE = "ga1"
DEFAULT_KUMOMTA_SERVICE = presets.DEFAULT_KUMOMTA_SERVICE

Mode = Literal["tcp", "http", "socks5", "forward"]
IoEngine = Literal["uvloop", "epoll"]
# epoll is Linux's (the image, every supported host); elsewhere uvloop's transports
EPOLL_AVAILABLE = hasattr(select, "epoll")
DEFAULT_IO_ENGINE: IoEngine = "epoll" if EPOLL_AVAILABLE else "uvloop"
# The listener modes of the egress tier (docs/egress.md): no backend, a policy instead.
EGRESS_MODES = ("socks5", "forward")
SendProxy = Literal["v1", "v2", "none"]
BackendDown = Literal["smtp-421", "close"]
LogFormat = Literal["logfmt", "json"]
ForwardedFor = Literal["append", "replace"]


class ConfigError(Exception):
    """Every problem found in one load, each as ``source: key: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    bind: tuple[Address, ...]
    mode: Mode
    accept_proxy: bool
    backend: str | None
    tls: bool
    on_backend_down: BackendDown
    enabled: bool = True
    routes: str | None = None
    forwarded_for: ForwardedFor = "append"
    max_body: int | None = None
    forwarded_proto: bool = False
    # tcp and egress listeners: "epoll" (ingress/proxy/sockets.py) or "uvloop" (its transports)
    io_engine: IoEngine = DEFAULT_IO_ENGINE
    # Egress modes only (routing/egress.py says what each check refuses).
    egress_sources: tuple[str, ...] = ()
    egress_ports: tuple[int, ...] = DEFAULT_PORTS
    allow_clients: tuple[str, ...] = ()
    deny_destinations: tuple[str, ...] = DEFAULT_DENY_DESTINATIONS
    users_file: str | None = None
    # The users_file's table as loaded (user -> scrypt hash): read once, at load, so that
    # check-config reports its problems and every worker starts from the same table.
    users: Mapping[bytes, str] | None = field(default=None, compare=False)

    @property
    def egress(self) -> bool:
        return self.mode in EGRESS_MODES


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    servers: tuple[Address | DnsName, ...]  # DnsName: a dns+a:// or dns+srv:// server
    send_proxy: SendProxy
    check: bool = True
    check_interval: float = 2.0
    rise: int = 2
    fall: int = 3
    balance: Balance = "roundrobin"
    dns_min_ttl: float = 1.0
    dns_max_ttl: float = 300.0
    dns_grace: float = 300.0


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The resolver of dns+ servers (``[dns]``); no nameservers: the system's resolv.conf."""

    nameservers: tuple[Address, ...] = ()
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    tcp_idle: float
    proxy_header: float
    drain: float
    grace: float
    http_request: float = 10.0
    http_keep_alive: float = 60.0
    server: float = 60.0
    socks_handshake: float = 10.0


DEFAULT_ADMIN_PORT = 10081


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener (``[admin]``): /metrics, /livez, /readyz."""

    enabled: bool = True
    bind: tuple[Address, ...] = (Address("0.0.0.0", DEFAULT_ADMIN_PORT),)
    # prometheus_client's multiprocess files; none: a temporary directory of the run
    metrics_dir: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    preset: str
    release: str
    workers: int
    log_format: LogFormat
    listeners: Mapping[str, ListenerConfig]
    backends: Mapping[str, BackendConfig]
    timeouts: Timeouts
    routes: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    tls: TlsConfig = field(default_factory=TlsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    # The kumomta preset's Service name; kept (and printed) whatever the preset, like release.
    kumomta_service: str = DEFAULT_KUMOMTA_SERVICE
    # False: HAProxy's "option dontlog-normal", the access log's lines for errors only
    log_normal: bool = True
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def enabled_listeners(self) -> list[ListenerConfig]:
        return [listener for listener in self.listeners.values() if listener.enabled]
