"""Configuration: presets, then a TOML file, then ``MTA_INGRESS_*`` environment, then flags.

Theory of operation
-------------------
Each layer is a plain nested ``dict`` (what ``tomllib`` returns).  The layers are deep-merged
over the preset chosen by the merged top-level ``preset`` key, so that a file table
``[listeners.smtp587]`` with only ``bind`` changes the bind address of the preset's listener and
keeps its backend.  While merging, every leaf remembers which layer set it, so a validation
problem is reported against the file, variable or flag the operator has to fix, as
``SOURCE: key: what is wrong``.  Validation collects every problem before failing: an operator
fixing a broken ConfigMap wants the whole list at once, not one error per restart.

The result is a frozen dataclass tree; nothing reads configuration anywhere else.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ingress.config import presets
from routing.backends import Balance, is_ip
from routing.discovery import DnsName, is_dns_name, is_dns_url, parse_dns_url
from routing.table import BUILTIN_ANSWERS, LocalAnswer, Rule
from tls.settings import ACME_DIRECTORY_ALIASES, DEFAULT_CERT_DIR, AcmeConfig, TlsConfig

ENV_PREFIX = "MTA_INGRESS_"
DEFAULT_PRESET = "greenarrow"
DEFAULT_RELEASE = "ga1"
DEFAULT_KUMOMTA_SERVICE = presets.DEFAULT_KUMOMTA_SERVICE

Mode = Literal["tcp", "http"]
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
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def enabled_listeners(self) -> list[ListenerConfig]:
        return [listener for listener in self.listeners.values() if listener.enabled]


# --- durations ---------------------------------------------------------------------------------

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"5s"``, ``"1m"``, ``"1h"``, ``"1m30s"`` -> seconds; HAProxy-style units."""
    text = text.strip()
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match["number"]) * _UNIT_SECONDS[match["unit"]]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration like 500ms, 5s, 1m or 1h")
    return total


_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>B|KiB|MiB|GiB)?")
_UNIT_BYTES = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match["number"]) == 0:
        raise ValueError(f"{text!r} is not a size like 512KiB, 10MiB or 1GiB")
    return int(match["number"]) * _UNIT_BYTES[match["unit"]]


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:.12g}ms"


# --- addresses ---------------------------------------------------------------------------------

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)


def parse_address(text: str, *, allow_hostname: bool) -> Address:
    """``host:port``, ``[v6]:port``; for binds also ``:port`` (every IPv4 interface, as HAProxy)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r}: an IPv6 address is written [address]:port")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port: write host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, [address]:port")
        if host == "":
            if allow_hostname:
                raise ValueError(f"{text!r} has no host")
            host = "0.0.0.0"
        if is_ip(host):
            host = str(ipaddress.ip_address(host))
        else:
            if not allow_hostname:
                raise ValueError(f"{text!r}: a listener binds an IP address, not {host!r}")
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{text!r}: {host!r} is not a valid host name")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Address(host, int(port_text))


def parse_nameserver(text: str) -> Address:
    """A DNS server: ``ip`` (port 53), ``ip:port``, ``v6`` or ``[v6]:port``."""
    if is_ip(text):
        return Address(str(ipaddress.ip_address(text)), 53)
    if text.startswith(":"):
        raise ValueError(f"{text!r}: write the nameserver's IP address, ip or ip:port")
    try:
        return parse_address(text, allow_hostname=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a nameserver address: write ip, ip:port or "
                         "[ipv6]:port") from None


# --- layering ----------------------------------------------------------------------------------

Tree = dict[str, Any]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _merge(base: Tree, layer: Mapping[str, Any], source: str, origins: dict[str, str],
           prefix: str = "") -> None:
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, source, origins, path + ".")
        else:
            base[key] = _copy(value)
            for sub in _leaf_paths(value, path):
                origins[sub] = source


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _leaf_paths(value: Any, path: str) -> Iterator[str]:
    yield path
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaf_paths(item, f"{path}.{key}")


def _origin(origins: Mapping[str, str], path: str) -> str:
    probe = path.split("[", 1)[0]
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"


def _parse_value(text: str) -> Any:
    """A flag or variable value: TOML syntax when it parses (``true``, ``3``, ``["a", "b"]``),
    otherwise the text itself, so that ``--set release=ga2`` needs no quotes."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_path(tree: Tree, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[parts[-1]] = value


_ENV_TEXT = ("preset", "release", "kumomta_service", "log_format")
_TIMEOUT_KEYS = ("connect", "tcp_idle", "proxy_header", "drain", "grace", "http_request",
                 "http_keep_alive", "server")


def environment_layer(environ: Mapping[str, str]) -> tuple[Tree, list[str]]:
    """``MTA_INGRESS_WORKERS=2``, ``MTA_INGRESS_TIMEOUTS_GRACE=30s``; ``MTA_INGRESS_SET`` holds
    ``key.path=value`` assignments separated by newlines or ``;`` for anything deeper."""
    layer: Tree = {}
    problems: list[str] = []
    for key in _ENV_TEXT:
        if (value := environ.get(f"{ENV_PREFIX}{key.upper()}")) is not None:
            layer[key] = value
    if (workers := environ.get(f"{ENV_PREFIX}WORKERS")) is not None:
        layer["workers"] = _parse_value(workers)
    for key in _TIMEOUT_KEYS:
        if (value := environ.get(f"{ENV_PREFIX}TIMEOUTS_{key.upper()}")) is not None:
            layer.setdefault("timeouts", {})[key] = value
    for assignment in re.split(r"[;\n]", environ.get(f"{ENV_PREFIX}SET", "")):
        if assignment.strip():
            dotted, sep, value = assignment.strip().partition("=")
            if not sep or not dotted.strip():
                problems.append(f"environment: {ENV_PREFIX}SET: {assignment.strip()!r}: "
                                "write key.path=value")
                continue
            _set_path(layer, dotted.strip(), _parse_value(value.strip()))
    return layer, problems


def assignments_layer(assignments: list[str]) -> tuple[Tree, list[str]]:
    layer: Tree = {}
    problems = []
    for assignment in assignments:
        dotted, sep, value = assignment.partition("=")
        if not sep or not dotted.strip():
            problems.append(f"--set: {assignment}: write key.path=value")
            continue
        _set_path(layer, dotted.strip(), _parse_value(value.strip()))
    return layer, problems


# --- loading -----------------------------------------------------------------------------------


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> Config:
    """Build the effective configuration, or raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Tree]] = []
    problems: list[str] = []
    if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        path = environ[f"{ENV_PREFIX}CONFIG"]
    if path is not None:
        try:
            with open(path, "rb") as handle:
                layers.append((str(path), tomllib.load(handle)))
        except OSError as error:
            raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([f"{path}: not valid TOML: {error}"]) from None
    env_layer, env_problems = environment_layer(environ)
    problems += env_problems
    if env_layer:
        layers.append(("environment", env_layer))
    flag_layer: Tree = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            flag_layer[key] = value
    set_layer, set_problems = assignments_layer(assignments or [])
    problems += set_problems
    _merge(flag_layer, set_layer, "--set", {})
    if flag_layer:
        layers.append(("flags", flag_layer))

    top: Tree = {}
    for _, layer in layers:
        top.update({k: v for k, v in layer.items()
                    if k in ("preset", "release", "kumomta_service")})
    preset = top.get("preset", DEFAULT_PRESET)
    release = top.get("release", DEFAULT_RELEASE)
    kumomta_service = top.get("kumomta_service", DEFAULT_KUMOMTA_SERVICE)
    origins: dict[str, str] = {}
    if not isinstance(release, str) or not _NAME.fullmatch(release):
        release_source = _source_of(layers, "release")
        problems.append(f"{release_source}: release: must be a name like ga1, not {release!r}")
        release = DEFAULT_RELEASE
    if not isinstance(kumomta_service, str) or not is_dns_name(kumomta_service):
        service_source = _source_of(layers, "kumomta_service")
        problems.append(f"{service_source}: kumomta_service: must be a DNS name like kumod or "
                        f"kumod.mail.svc.cluster.local, not {kumomta_service!r}")
        kumomta_service = DEFAULT_KUMOMTA_SERVICE
    try:
        if not isinstance(preset, str):
            raise KeyError(preset)
        tree = presets.build(preset, release, kumomta_service=kumomta_service)
    except KeyError:
        preset_source = _source_of(layers, "preset")
        problems.append(
            f"{preset_source}: preset: unknown preset {preset!r}; "
            f"choose one of {', '.join(presets.NAMES)}"
        )
        preset = "none"
        tree = presets.build(preset, release, kumomta_service=kumomta_service)
    _merge({}, tree, f"preset {preset}", origins)
    for source, layer in layers:
        _merge(tree, layer, source, origins)
    config = _validate(tree, origins, problems)
    if problems:
        raise ConfigError(problems)
    if config is None:
        raise ConfigError(["configuration: invalid"])
    return config


def _source_of(layers: list[tuple[str, Tree]], key: str) -> str:
    source = "defaults"
    for name, layer in layers:
        if key in layer:
            source = name
    return source


class _Checker:
    """Reads typed values out of the merged tree, recording problems against their source."""

    def __init__(self, origins: Mapping[str, str], problems: list[str]) -> None:
        self.origins = origins
        self.problems = problems

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{_origin(self.origins, path)}: {path}: {message}")

    def table(self, tree: Mapping[str, Any], path: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(tree, Mapping):
            self.problem(path, f"must be a table, not {_kind(tree)}")
            return {}
        for key in tree:
            if key not in allowed:
                self.problem(f"{path}.{key}" if path else key,
                             f"unknown key; known keys here: {', '.join(sorted(allowed))}")
        return tree

    def string(self, tree: Mapping[str, Any], path: str, key: str, default: str,
               choices: tuple[str, ...] = ()) -> str:
        value = tree.get(key, default)
        full = f"{path}.{key}" if path else key
        if not isinstance(value, str):
            self.problem(full, f"must be a string, not {_kind(value)}")
            return default
        if choices and value not in choices:
            self.problem(full, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
            return default
        return value

    def boolean(self, tree: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
        value = tree.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{path}.{key}", f"must be true or false, not {_kind(value)}")
            return default
        return value

    def size(self, tree: Mapping[str, Any], path: str, key: str) -> int | None:
        """A byte count: a number, or text like "512KiB", "10MiB", "1GiB"; absent = no limit."""
        value = tree.get(key)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError as error:
                self.problem(f"{path}.{key}", str(error))
                return None
        self.problem(f"{path}.{key}", f"must be a positive byte count or text like \"10MiB\", "
                                      f"not {value!r}")
        return None

    def count(self, tree: Mapping[str, Any], path: str, key: str, default: int) -> int:
        value = tree.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            self.problem(f"{path}.{key}", f"must be a whole number from 1 to 100, not {value!r}")
            return default
        return value

    def duration(self, tree: Mapping[str, Any], path: str, key: str, default: str,
                 *, allow_zero: bool = False) -> float:
        value = tree.get(key, default)
        full = f"{path}.{key}"
        if not isinstance(value, str):
            self.problem(full, f"must be a duration string like \"5s\", not {_kind(value)}")
            return parse_duration(default)
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            self.problem(full, str(error))
            return parse_duration(default)
        if seconds == 0 and not allow_zero:
            self.problem(full, "must be longer than zero")
            return parse_duration(default)
        return seconds

    def addresses(self, tree: Mapping[str, Any], path: str, key: str, *,
                  allow_hostname: bool) -> tuple[Address, ...]:
        result = []
        for item_path, item in self._address_texts(tree, path, key):
            try:
                result.append(parse_address(item, allow_hostname=allow_hostname))
            except ValueError as error:
                self.problem(item_path, str(error))
        return tuple(result)

    def servers(self, tree: Mapping[str, Any], path: str, key: str
                ) -> tuple[Address | DnsName, ...]:
        """Backend servers: "host:port", or a dns+a:// or dns+srv:// URL (found through DNS)."""
        result: list[Address | DnsName] = []
        for item_path, item in self._address_texts(tree, path, key):
            try:
                result.append(parse_dns_url(item) if is_dns_url(item)
                              else parse_address(item, allow_hostname=True))
            except ValueError as error:
                self.problem(item_path, str(error))
        return tuple(result)

    def _address_texts(self, tree: Mapping[str, Any], path: str, key: str
                       ) -> list[tuple[str, str]]:
        value = tree.get(key)
        full = f"{path}.{key}"
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.problem(full, "must be a non-empty list of \"host:port\" strings")
            return []
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{full}[{index}]",
                             f"must be a \"host:port\" string, not {_kind(item)}")
                continue
            result.append((f"{full}[{index}]", item))
        return result


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


_TOP_KEYS = {"preset", "release", "kumomta_service", "workers", "log_format", "listeners",
             "backends", "timeouts", "routes", "tls", "dns", "admin"}
_ADMIN_KEYS = {"enabled", "bind", "metrics_dir"}
_DNS_KEYS = {"nameservers", "timeout"}
_TLS_KEYS = {"cert_dir", "default_cert", "poll_interval", "self_signed_names",
             "handshake_timeout", "acme"}
_ACME_KEYS = {"enabled", "directory", "email", "domains", "ca_bundle", "expected_addresses",
              "key_type", "retry_initial", "retry_max"}
_LISTENER_KEYS = {"bind", "mode", "accept_proxy", "backend", "tls", "on_backend_down", "enabled",
                  "routes", "forwarded_for", "max_body", "forwarded_proto"}
_RULE_KEYS = {"path_prefix", "host", "backend", "return"}
_ANSWER_KEYS = {"status", "content_type", "body"}
_BACKEND_KEYS = {"servers", "send_proxy", "check", "check_interval", "rise", "fall", "balance",
                 "dns_min_ttl", "dns_max_ttl", "dns_grace"}
TIMEOUT_DEFAULTS = {"connect": "5s", "tcp_idle": "5m", "proxy_header": "5s", "drain": "10s",
                    "grace": "5m", "http_request": "10s", "http_keep_alive": "1m", "server": "1m"}


def _validate(tree: Tree, origins: Mapping[str, str], problems: list[str]) -> Config | None:
    check = _Checker(origins, problems)
    check.table(tree, "", _TOP_KEYS)
    workers = tree.get("workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 1024:
        check.problem("workers", f"must be a whole number from 0 (one per CPU) to 1024, "
                                 f"not {workers!r}")
        workers = 0
    log_format = check.string(tree, "", "log_format", "logfmt", ("logfmt", "json"))

    timeouts_tree = check.table(tree.get("timeouts", {}), "timeouts", set(TIMEOUT_DEFAULTS))
    timeouts = Timeouts(**{
        key: check.duration(timeouts_tree, "timeouts", key, default,
                            allow_zero=key in ("drain",))
        for key, default in TIMEOUT_DEFAULTS.items()
    })

    backends: dict[str, BackendConfig] = {}
    for name, raw in check.table(tree.get("backends", {}), "backends", _any_key(tree, "backends")
                                 ).items():
        path = f"backends.{name}"
        if not _NAME.fullmatch(name):
            check.problem(path, "a backend name uses letters, digits, '-', '_' and '.'")
        body = check.table(raw, path, _BACKEND_KEYS)
        if not body and not isinstance(raw, Mapping):
            continue
        min_ttl = check.duration(body, path, "dns_min_ttl", "1s")
        max_ttl = check.duration(body, path, "dns_max_ttl", "5m")
        if min_ttl > max_ttl:
            check.problem(f"{path}.dns_max_ttl", f"must not be shorter than dns_min_ttl "
                                                 f"({format_duration(min_ttl)})")
        backends[name] = BackendConfig(
            name=name,
            servers=check.servers(body, path, "servers"),
            send_proxy=cast(SendProxy, check.string(body, path, "send_proxy", "none",
                                                    ("v1", "v2", "none"))),
            check=check.boolean(body, path, "check", True),
            check_interval=check.duration(body, path, "check_interval", "2s"),
            rise=check.count(body, path, "rise", 2),
            fall=check.count(body, path, "fall", 3),
            balance=cast(Balance, check.string(body, path, "balance", "roundrobin",
                                               ("roundrobin", "leastconn"))),
            dns_min_ttl=min_ttl,
            dns_max_ttl=max_ttl,
            dns_grace=check.duration(body, path, "dns_grace", "5m", allow_zero=True),
        )

    routes = _validate_routes(check, tree.get("routes", {}), backends)
    release = tree.get("release", DEFAULT_RELEASE)
    tls = _validate_tls(check, tree.get("tls", {}),
                        release if isinstance(release, str) else DEFAULT_RELEASE)
    dns = _validate_dns(check, tree.get("dns", {}))

    listeners: dict[str, ListenerConfig] = {}
    seen_binds: dict[Address, str] = {}
    for name, raw in check.table(tree.get("listeners", {}), "listeners",
                                 _any_key(tree, "listeners")).items():
        path = f"listeners.{name}"
        if not _NAME.fullmatch(name):
            check.problem(path, "a listener name uses letters, digits, '-', '_' and '.'")
        body = check.table(raw, path, _LISTENER_KEYS)
        if not body and not isinstance(raw, Mapping):
            continue
        enabled = check.boolean(body, path, "enabled", True)
        before = len(problems)
        mode = cast(Mode, check.string(body, path, "mode", "tcp", ("tcp", "http")))
        binds = check.addresses(body, path, "bind", allow_hostname=False)
        backend = body.get("backend")
        if backend is not None and not isinstance(backend, str):
            check.problem(f"{path}.backend", f"must be a backend name, not {_kind(backend)}")
            backend = None
        route_name = body.get("routes")
        if route_name is not None and not isinstance(route_name, str):
            check.problem(f"{path}.routes", f"must be a route table name, not {_kind(route_name)}")
            route_name = None
        # A listener whose mode or backend is already reported gets no follow-up guess about it.
        guess = enabled and len(problems) == before
        # A backend or route table that does not exist is wrong whatever else is: said even when
        # the mode is, so that one run of check-config lists both.
        if enabled and backend is not None and backend not in backends:
            known = ", ".join(sorted(backends)) or "none are defined"
            check.problem(f"{path}.backend", f"no backend named {backend!r} ({known})")
        if enabled and route_name is not None and route_name not in routes:
            known = ", ".join(sorted(routes)) or "none are defined"
            check.problem(f"{path}.routes", f"no route table named {route_name!r} ({known})")
        if guess:
            if backend is None and mode == "tcp":
                check.problem(f"{path}.backend", "a tcp listener needs a backend")
            elif route_name is not None and mode == "tcp":
                check.problem(f"{path}.routes", "routes apply to http listeners only")
            elif backend is None and route_name is None:
                check.problem(f"{path}.routes", "an http listener needs routes or a backend")
            elif mode == "tcp" and body.get("tls") is True:
                check.problem(f"{path}.tls", "TLS is terminated on http listeners only; a tcp "
                                             "listener relays TLS (STARTTLS) end to end")
        if enabled:
            for index, address in enumerate(binds):
                if address in seen_binds:
                    check.problem(f"{path}.bind[{index}]",
                                  f"{address} is already bound by listener {seen_binds[address]!r}")
                seen_binds[address] = name
        listeners[name] = ListenerConfig(
            name=name,
            bind=binds,
            mode=mode,
            accept_proxy=check.boolean(body, path, "accept_proxy", False),
            backend=backend,
            tls=check.boolean(body, path, "tls", False),
            on_backend_down=cast(BackendDown, check.string(
                body, path, "on_backend_down", "smtp-421", ("smtp-421", "close"))),
            enabled=enabled,
            routes=route_name,
            forwarded_for=cast(ForwardedFor, check.string(
                body, path, "forwarded_for", "append", ("append", "replace"))),
            max_body=check.size(body, path, "max_body"),
            forwarded_proto=check.boolean(body, path, "forwarded_proto", False),
        )
    if not problems and not any(listener.enabled for listener in listeners.values()):
        check.problem("listeners", "no listener is enabled: there would be nothing to serve")

    preset = tree.get("preset", DEFAULT_PRESET)
    release = tree.get("release", DEFAULT_RELEASE)
    # Already checked by load(), which built the preset from it.
    kumomta_service = tree.get("kumomta_service", DEFAULT_KUMOMTA_SERVICE)
    return Config(
        preset=preset if isinstance(preset, str) else DEFAULT_PRESET,
        release=release if isinstance(release, str) else DEFAULT_RELEASE,
        kumomta_service=(kumomta_service if isinstance(kumomta_service, str)
                         else DEFAULT_KUMOMTA_SERVICE),
        workers=workers,
        log_format=cast(LogFormat, log_format),
        listeners=listeners,
        backends=backends,
        timeouts=timeouts,
        routes=routes,
        tls=tls,
        dns=dns,
        admin=_validate_admin(check, tree.get("admin", {}), seen_binds),
    )


def _validate_admin(check: _Checker, raw: Any, listener_binds: Mapping[Address, str]
                    ) -> AdminConfig:
    body = check.table(raw, "admin", _ADMIN_KEYS)
    enabled = check.boolean(body, "admin", "enabled", True)
    bind = (check.addresses(body, "admin", "bind", allow_hostname=False)
            if "bind" in body else AdminConfig().bind)
    for index, address in enumerate(bind):
        taken = listener_binds.get(address)
        if enabled and taken is not None:
            check.problem(f"admin.bind[{index}]",
                          f"{address} is already bound by listener {taken!r}")
    metrics_dir = body.get("metrics_dir")
    if metrics_dir is not None and (not isinstance(metrics_dir, str) or not metrics_dir):
        check.problem("admin.metrics_dir", "must name a directory")
        metrics_dir = None
    return AdminConfig(enabled=enabled, bind=bind, metrics_dir=metrics_dir)


def _validate_dns(check: _Checker, raw: Any) -> DnsConfig:
    body = check.table(raw, "dns", _DNS_KEYS)
    value = body.get("nameservers", [])
    if isinstance(value, str):
        value = [value]
    nameservers: list[Address] = []
    if not isinstance(value, list):
        check.problem("dns.nameservers", f"must be a list of \"ip\" or \"ip:port\" strings, "
                                         f"not {_kind(value)}")
        value = []
    for index, item in enumerate(value):
        try:
            if not isinstance(item, str):
                raise ValueError(f"must be an \"ip\" or \"ip:port\" string, not {_kind(item)}")
            nameservers.append(parse_nameserver(item))
        except ValueError as error:
            check.problem(f"dns.nameservers[{index}]", str(error))
    return DnsConfig(nameservers=tuple(nameservers),
                     timeout=check.duration(body, "dns", "timeout", "2s"))


def default_self_signed_names(release: str) -> tuple[str, ...]:
    """The self-signed fallback's names when none are configured (docs/configuration.md)."""
    return (f"{release}-ingress", "localhost")


def _validate_tls(check: _Checker, raw: Any, release: str) -> TlsConfig:
    body = check.table(raw, "tls", _TLS_KEYS)
    cert_dir = check.string(body, "tls", "cert_dir", DEFAULT_CERT_DIR)
    if not cert_dir:
        check.problem("tls.cert_dir", "must name a directory")
    default_cert = body.get("default_cert")
    if default_cert is not None and (not isinstance(default_cert, str) or not default_cert
                                     or "/" in default_cert):
        check.problem("tls.default_cert", "must be the name of a file in tls.cert_dir")
        default_cert = None
    names = body.get("self_signed_names", [])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(
            isinstance(name, str) and _HOSTNAME.fullmatch(name) for name in names):
        check.problem("tls.self_signed_names", "must be a list of DNS names")
        names = []
    return TlsConfig(
        cert_dir=cert_dir,
        default_cert=default_cert,
        poll_interval=check.duration(body, "tls", "poll_interval", "5s"),
        # Resolved here rather than where the certificate is made, so that print-config shows
        # the names served; an empty list (what print-config used to print) is the default too.
        self_signed_names=tuple(names) or default_self_signed_names(release),
        handshake_timeout=check.duration(body, "tls", "handshake_timeout", "10s"),
        acme=_validate_acme(check, body.get("acme", {})),
    )


def _validate_acme(check: _Checker, raw: Any) -> AcmeConfig:
    path = "tls.acme"
    body = check.table(raw, path, _ACME_KEYS)
    enabled = check.boolean(body, path, "enabled", False)
    directory = check.string(body, path, "directory", "production")
    directory = ACME_DIRECTORY_ALIASES.get(directory, directory)
    if not directory.startswith("https://"):
        check.problem(f"{path}.directory", "must be \"production\", \"staging\" or the https:// "
                                           "URL of an ACME directory (RFC 8555 requires HTTPS)")
    email = body.get("email")
    if email is not None and (not isinstance(email, str) or "@" not in email
                              or any(c.isspace() for c in email)):
        check.problem(f"{path}.email", "must be an e-mail address")
        email = None
    domains = body.get("domains", [])
    if isinstance(domains, str):
        domains = [domains]
    if not isinstance(domains, list) or not all(
            isinstance(d, str) and _HOSTNAME.fullmatch(d) and not d.startswith("*")
            for d in domains):
        check.problem(f"{path}.domains", "must be a list of DNS names (no wildcards: HTTP-01 "
                                         "cannot validate them)")
        domains = []
    if enabled and not domains:
        check.problem(f"{path}.domains", "is needed when tls.acme.enabled is true")
    if len({d.lower() for d in domains}) != len(domains):
        check.problem(f"{path}.domains", "lists a name twice")
    ca_bundle = body.get("ca_bundle")
    if ca_bundle is not None and (not isinstance(ca_bundle, str) or not ca_bundle):
        check.problem(f"{path}.ca_bundle", "must be the path of a PEM file of CA certificates")
        ca_bundle = None
    expected = body.get("expected_addresses", [])
    if isinstance(expected, str):
        expected = [expected]
    valid_expected = isinstance(expected, list) and all(
        isinstance(a, str) and is_ip(a) for a in expected)
    if not valid_expected:
        check.problem(f"{path}.expected_addresses", "must be a list of IP addresses")
        expected = []
    return AcmeConfig(
        enabled=enabled, directory=directory, email=email,
        domains=tuple(d.lower().rstrip(".") for d in domains), ca_bundle=ca_bundle,
        expected_addresses=tuple(str(ipaddress.ip_address(a)) for a in expected),
        key_type=check.string(body, path, "key_type", "ecdsa", ("ecdsa", "rsa")),
        retry_initial=check.duration(body, path, "retry_initial", "1m"),
        retry_max=check.duration(body, path, "retry_max", "6h"),
    )


def _validate_routes(check: _Checker, raw: Any, backends: Mapping[str, BackendConfig]
                     ) -> dict[str, tuple[Rule, ...]]:
    tables: dict[str, tuple[Rule, ...]] = {}
    if not isinstance(raw, Mapping):
        check.problem("routes", f"must be a table of rule lists, not {_kind(raw)}")
        return tables
    for name, rules in raw.items():
        path = f"routes.{name}"
        if not isinstance(rules, list) or not all(isinstance(r, Mapping) for r in rules):
            check.problem(path, "must be a list of rules: write [[routes.NAME]] tables")
            continue
        parsed: list[Rule] = []
        for index, body in enumerate(rules):
            rule = _validate_rule(check, f"{path}[{index}]", body, backends)
            if rule is not None:
                parsed.append(rule)
        tables[name] = tuple(parsed)
    return tables


def _validate_rule(check: _Checker, path: str, body: Mapping[str, Any],
                   backends: Mapping[str, BackendConfig]) -> Rule | None:
    check.table(body, path, _RULE_KEYS)
    before = len(check.problems)
    prefix = body.get("path_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")
                               or not prefix.isascii() or not prefix.isprintable()):
        check.problem(f"{path}.path_prefix", "must be a path beginning with '/', in ASCII")
    host = body.get("host")
    if host is not None and (not isinstance(host, str)
                             or not _HOSTNAME.fullmatch(host.removeprefix("*."))):
        check.problem(f"{path}.host", "must be a host name, optionally beginning with '*.'")
    backend = body.get("backend")
    answer_raw = body.get("return")
    if (backend is None) == (answer_raw is None):
        check.problem(path, "a rule needs exactly one of backend and return")
    elif backend is not None and (not isinstance(backend, str) or backend not in backends):
        known = ", ".join(sorted(backends)) or "none are defined"
        check.problem(f"{path}.backend", f"no backend named {backend!r} ({known})")
    answer = None
    if isinstance(answer_raw, str):
        answer = BUILTIN_ANSWERS.get(answer_raw)
        if answer is None:
            check.problem(f"{path}.return", f"unknown answer {answer_raw!r}; use one of "
                          f"{', '.join(BUILTIN_ANSWERS)} or a table {{status, content_type, "
                          "body}")
    elif isinstance(answer_raw, Mapping):
        check.table(answer_raw, f"{path}.return", _ANSWER_KEYS)
        status = answer_raw.get("status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            check.problem(f"{path}.return.status", "must be an HTTP status from 200 to 599")
            status = 200
        content_type = check.string(answer_raw, f"{path}.return", "content_type", "text/plain")
        text = check.string(answer_raw, f"{path}.return", "body", "")
        answer = LocalAnswer("custom", status, content_type.encode(), text.encode())
    elif answer_raw is not None:
        check.problem(f"{path}.return", f"must be an answer name or table, not {_kind(answer_raw)}")
    if len(check.problems) != before:
        return None
    return Rule(
        path_prefix=prefix.encode() if isinstance(prefix, str) else None,
        host=host.lower().rstrip(".").encode() if isinstance(host, str) else None,
        backend=backend if isinstance(backend, str) else None,
        answer=answer,
    )


def _any_key(tree: Mapping[str, Any], section: str) -> set[str]:
    value = tree.get(section, {})
    return set(value) if isinstance(value, Mapping) else set()


# --- printing ----------------------------------------------------------------------------------


def to_toml(config: Config) -> str:
    """The effective configuration in the file format, loadable with ``preset = "none"``."""
    lines = [
        f"preset = {_toml(config.preset)}",
        f"release = {_toml(config.release)}",
    ]
    # Printed where it matters, so a greenarrow printout carries no KumoMTA setting.
    if config.preset == "kumomta" or config.kumomta_service != DEFAULT_KUMOMTA_SERVICE:
        lines.append(f"kumomta_service = {_toml(config.kumomta_service)}")
    lines += [
        f"workers = {config.workers}",
        f"log_format = {_toml(config.log_format)}",
        "",
        "[timeouts]",
    ]
    for key in TIMEOUT_DEFAULTS:
        lines.append(f"{key} = {_toml(format_duration(getattr(config.timeouts, key)))}")
    lines += ["", "[dns]",
              f"nameservers = {_toml([str(a) for a in config.dns.nameservers])}",
              f"timeout = {_toml(format_duration(config.dns.timeout))}"]
    tls = config.tls
    lines += ["", "[tls]", f"cert_dir = {_toml(tls.cert_dir)}"]
    if tls.default_cert is not None:
        lines.append(f"default_cert = {_toml(tls.default_cert)}")
    lines += [f"poll_interval = {_toml(format_duration(tls.poll_interval))}",
              f"self_signed_names = {_toml(list(tls.self_signed_names))}",
              f"handshake_timeout = {_toml(format_duration(tls.handshake_timeout))}"]
    acme = tls.acme
    lines += ["", "[tls.acme]", f"enabled = {_toml(acme.enabled)}",
              f"directory = {_toml(acme.directory)}"]
    if acme.email is not None:
        lines.append(f"email = {_toml(acme.email)}")
    lines.append(f"domains = {_toml(list(acme.domains))}")
    if acme.ca_bundle is not None:
        lines.append(f"ca_bundle = {_toml(acme.ca_bundle)}")
    lines += [f"expected_addresses = {_toml(list(acme.expected_addresses))}",
              f"key_type = {_toml(acme.key_type)}",
              f"retry_initial = {_toml(format_duration(acme.retry_initial))}",
              f"retry_max = {_toml(format_duration(acme.retry_max))}"]
    admin = config.admin
    lines += ["", "[admin]", f"enabled = {_toml(admin.enabled)}",
              f"bind = {_toml([str(a) for a in admin.bind])}"]
    if admin.metrics_dir is not None:
        lines.append(f"metrics_dir = {_toml(admin.metrics_dir)}")
    for listener in config.listeners.values():
        lines += ["", f"[listeners.{_toml_key(listener.name)}]",
                  f"enabled = {_toml(listener.enabled)}",
                  f"bind = {_toml([str(a) for a in listener.bind])}",
                  f"mode = {_toml(listener.mode)}",
                  f"accept_proxy = {_toml(listener.accept_proxy)}"]
        if listener.backend is not None:
            lines.append(f"backend = {_toml(listener.backend)}")
        if listener.routes is not None:
            lines.append(f"routes = {_toml(listener.routes)}")
        lines += [f"tls = {_toml(listener.tls)}",
                  f"on_backend_down = {_toml(listener.on_backend_down)}",
                  f"forwarded_for = {_toml(listener.forwarded_for)}"]
        if listener.max_body is not None:
            lines.append(f"max_body = {listener.max_body}")
        lines.append(f"forwarded_proto = {_toml(listener.forwarded_proto)}")
    for backend in config.backends.values():
        lines += ["", f"[backends.{_toml_key(backend.name)}]",
                  f"servers = {_toml([str(a) for a in backend.servers])}",
                  f"send_proxy = {_toml(backend.send_proxy)}",
                  f"check = {_toml(backend.check)}",
                  f"check_interval = {_toml(format_duration(backend.check_interval))}",
                  f"rise = {backend.rise}",
                  f"fall = {backend.fall}",
                  f"balance = {_toml(backend.balance)}",
                  f"dns_min_ttl = {_toml(format_duration(backend.dns_min_ttl))}",
                  f"dns_max_ttl = {_toml(format_duration(backend.dns_max_ttl))}",
                  f"dns_grace = {_toml(format_duration(backend.dns_grace))}"]
    for name, rules in config.routes.items():
        for rule in rules:
            lines += ["", f"[[routes.{_toml_key(name)}]]"]
            if rule.path_prefix is not None:
                lines.append(f"path_prefix = {_toml(rule.path_prefix.decode())}")
            if rule.host is not None:
                lines.append(f"host = {_toml(rule.host.decode())}")
            if rule.backend is not None:
                lines.append(f"backend = {_toml(rule.backend)}")
            if rule.answer is not None:
                lines.append(f"return = {_answer_toml(rule.answer)}")
    return "\n".join(lines) + "\n"


def _answer_toml(answer: LocalAnswer) -> str:
    if answer.kind in BUILTIN_ANSWERS:
        return _toml(answer.kind)
    return (f"{{ status = {answer.status}, content_type = {_toml(answer.content_type.decode())}, "
            f"body = {_toml(answer.body.decode())} }}")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml(name)
