"""Validation of the merged tree: every problem collected as ``SOURCE: key: what is wrong``, and the
frozen ``Config`` built from what is valid."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, cast

from ingress.config.layers import Tree, origin_of
from ingress.config.schema import (
    DEFAULT_IO_ENGINE,
    DEFAULT_KUMOMTA_SERVICE,
    DEFAULT_PRESET,
    DEFAULT_RELEASE,
    EGRESS_MODES,
    EPOLL_AVAILABLE,
    Address,
    AdminConfig,
    BackendConfig,
    BackendDown,
    Config,
    DnsConfig,
    ForwardedFor,
    IoEngine,
    ListenerConfig,
    LogFormat,
    Mode,
    SendProxy,
    Timeouts,
)
from ingress.config.users import UsersFileError, load_users
from ingress.config.values import (
    HOSTNAME_RE,
    NAME_RE,
    format_duration,
    parse_address,
    parse_duration,
    parse_nameserver,
    parse_size,
)
from routing.backends import Balance, is_ip
from routing.discovery import DnsName, is_dns_url, parse_dns_url
from routing.egress import DEFAULT_DENY_DESTINATIONS, DEFAULT_PORTS, normalised, parse_network
from routing.table import BUILTIN_ANSWERS, LocalAnswer, Rule
from tls.settings import ACME_DIRECTORY_ALIASES, DEFAULT_CERT_DIR, AcmeConfig, TlsConfig


class _Checker:
    """Reads typed values out of the merged tree, recording problems against their source."""

    def __init__(self, origins: Mapping[str, str], problems: list[str]) -> None:
        self.origins = origins
        self.problems = problems

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{origin_of(self.origins, path)}: {path}: {message}")

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
            self.problem(f"{path}.{key}" if path else key,
                         f"must be true or false, not {_kind(value)}")
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


_TOP_KEYS = {"preset", "release", "kumomta_service", "workers", "log_format", "log_normal",
             "listeners", "backends", "timeouts", "routes", "tls", "dns", "admin"}
_ADMIN_KEYS = {"enabled", "bind", "metrics_dir"}
_DNS_KEYS = {"nameservers", "timeout"}
_TLS_KEYS = {"cert_dir", "default_cert", "poll_interval", "self_signed_names",
             "handshake_timeout", "acme"}
_ACME_KEYS = {"enabled", "directory", "email", "domains", "ca_bundle", "expected_addresses",
              "key_type", "retry_initial", "retry_max"}
_EGRESS_KEYS = {"egress_sources", "egress_ports", "allow_clients", "deny_destinations",
                "users_file"}
_LISTENER_KEYS = {"bind", "mode", "accept_proxy", "backend", "tls", "on_backend_down", "enabled",
                  "routes", "forwarded_for", "max_body", "forwarded_proto",
                  "io_engine"} | _EGRESS_KEYS
_RULE_KEYS = {"path_prefix", "host", "backend", "return"}
_ANSWER_KEYS = {"status", "content_type", "body"}
_BACKEND_KEYS = {"servers", "send_proxy", "check", "check_interval", "rise", "fall", "balance",
                 "dns_min_ttl", "dns_max_ttl", "dns_grace"}
TIMEOUT_DEFAULTS = {"connect": "5s", "tcp_idle": "5m", "proxy_header": "5s", "drain": "10s",
                    "grace": "5m", "http_request": "10s", "http_keep_alive": "1m", "server": "1m",
                    "socks_handshake": "10s"}


def validate(tree: Tree, origins: Mapping[str, str], problems: list[str]) -> Config | None:
    check = _Checker(origins, problems)
    check.table(tree, "", _TOP_KEYS)
    workers = tree.get("workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 1024:
        check.problem("workers", f"must be a whole number from 0 (one per CPU) to 1024, "
                                 f"not {workers!r}")
        workers = 0
    log_format = check.string(tree, "", "log_format", "logfmt", ("logfmt", "json"))
    log_normal = check.boolean(tree, "", "log_normal", True)

    timeouts = _validate_timeouts(check, tree.get("timeouts", {}))
    backends = _validate_backends(check, tree)
    routes = _validate_routes(check, tree.get("routes", {}), backends)
    release = tree.get("release", DEFAULT_RELEASE)
    tls = _validate_tls(check, tree.get("tls", {}),
                        release if isinstance(release, str) else DEFAULT_RELEASE)
    dns = _validate_dns(check, tree.get("dns", {}))

    listeners, seen_binds = _validate_listeners(check, tree, backends, routes)
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
        log_normal=log_normal,
        listeners=listeners,
        backends=backends,
        timeouts=timeouts,
        routes=routes,
        tls=tls,
        dns=dns,
        admin=_validate_admin(check, tree.get("admin", {}), seen_binds),
    )


def _validate_timeouts(check: _Checker, raw: Any) -> Timeouts:
    timeouts_tree = check.table(raw, "timeouts", set(TIMEOUT_DEFAULTS))
    return Timeouts(**{
        key: check.duration(timeouts_tree, "timeouts", key, default,
                            allow_zero=key in ("drain",))
        for key, default in TIMEOUT_DEFAULTS.items()
    })


def _validate_backends(check: _Checker, tree: Tree) -> dict[str, BackendConfig]:
    backends: dict[str, BackendConfig] = {}
    for name, raw in check.table(tree.get("backends", {}), "backends", _any_key(tree, "backends")
                                 ).items():
        path = f"backends.{name}"
        if not NAME_RE.fullmatch(name):
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
    return backends


def _validate_listeners(check: _Checker, tree: Tree, backends: Mapping[str, BackendConfig],
                        routes: Mapping[str, tuple[Rule, ...]]
                        ) -> tuple[dict[str, ListenerConfig], dict[Address, str]]:
    """The listeners, and which listener binds each address (the admin listener must not)."""
    listeners: dict[str, ListenerConfig] = {}
    seen_binds: dict[Address, str] = {}
    for name, raw in check.table(tree.get("listeners", {}), "listeners",
                                 _any_key(tree, "listeners")).items():
        path = f"listeners.{name}"
        if not NAME_RE.fullmatch(name):
            check.problem(path, "a listener name uses letters, digits, '-', '_' and '.'")
        body = check.table(raw, path, _LISTENER_KEYS)
        if not body and not isinstance(raw, Mapping):
            continue
        enabled = check.boolean(body, path, "enabled", True)
        before = len(check.problems)
        mode = cast(Mode, check.string(body, path, "mode", "tcp",
                                       ("tcp", "http", *EGRESS_MODES)))
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
        guess = enabled and len(check.problems) == before
        # A backend or route table that does not exist is wrong whatever else is: said even when
        # the mode is, so that one run of check-config lists both.
        if enabled and backend is not None and backend not in backends:
            known = ", ".join(sorted(backends)) or "none are defined"
            check.problem(f"{path}.backend", f"no backend named {backend!r} ({known})")
        if enabled and route_name is not None and route_name not in routes:
            known = ", ".join(sorted(routes)) or "none are defined"
            check.problem(f"{path}.routes", f"no route table named {route_name!r} ({known})")
        if guess and mode in EGRESS_MODES:
            _refuse_ingress_keys(check, body, path, mode)
        elif guess:
            for key in sorted(_EGRESS_KEYS & set(body)):
                check.problem(f"{path}.{key}", "applies to socks5 and forward listeners only")
            if backend is None and mode == "tcp":
                check.problem(f"{path}.backend", "a tcp listener needs a backend")
            elif route_name is not None and mode == "tcp":
                check.problem(f"{path}.routes", "routes apply to http listeners only")
            elif backend is None and route_name is None:
                check.problem(f"{path}.routes", "an http listener needs routes or a backend")
            elif mode != "tcp" and "io_engine" in body:
                check.problem(f"{path}.io_engine",
                              "applies to tcp, socks5 and forward listeners only")
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
            io_engine=_io_engine(check, body, path),
            **(_validate_egress(check, body, path, mode, enabled) if mode in EGRESS_MODES
               else {}),
        )
    return listeners, seen_binds


def _io_engine(check: _Checker, body: Mapping[str, Any], path: str) -> IoEngine:
    engine = cast(IoEngine, check.string(body, path, "io_engine", DEFAULT_IO_ENGINE,
                                         ("uvloop", "epoll")))
    if engine == "epoll" and not EPOLL_AVAILABLE:
        check.problem(f"{path}.io_engine", 'epoll is Linux\'s and this system has none: '
                                           'use "uvloop"')
    return engine


def _refuse_ingress_keys(check: _Checker, body: Mapping[str, Any], path: str, mode: str) -> None:
    """An egress listener has a policy, not a backend: the ingress keys would mean nothing."""
    for key in ("backend", "routes", "max_body", "forwarded_for", "forwarded_proto",
                "on_backend_down"):
        if key in body:
            check.problem(f"{path}.{key}", f"does not apply to a {mode} listener")
    if body.get("tls") is True:
        check.problem(f"{path}.tls", f"a {mode} listener relays the MTA's own STARTTLS end to end")
    if body.get("accept_proxy") is True:
        check.problem(f"{path}.accept_proxy",
                      "a forward listener reads its PROXY header by definition; a socks5 "
                      "listener takes none" if mode == "forward" else
                      "a socks5 listener takes no PROXY header (its clients are the MTAs)")
    if mode == "forward" and "users_file" in body:
        check.problem(f"{path}.users_file", "applies to socks5 listeners only: a PROXY header "
                                            "carries no credentials")


def _validate_egress(check: _Checker, body: Mapping[str, Any], path: str, mode: str,
                     enabled: bool) -> dict[str, Any]:
    """The egress keys, each checked; nothing about the host (whether a source is one of its
    addresses is a warning at start: ingress/proxy/egress.py, source_warnings)."""
    sources: list[str] = []
    for item_path, item in _text_list(check, body, path, "egress_sources", required=enabled,
                                      what="IP addresses"):
        address = normalised(item)
        if address is None:
            check.problem(item_path, f"{item!r} is not an IP address")
        elif str(address) in sources:
            check.problem(item_path, f"{item} is listed twice")
        else:
            sources.append(str(address))
    ports: list[int] = []
    raw_ports = body.get("egress_ports", list(DEFAULT_PORTS))
    if not isinstance(raw_ports, list) or not raw_ports:
        check.problem(f"{path}.egress_ports", "must be a non-empty list of port numbers")
        raw_ports = []
    for index, port in enumerate(raw_ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            check.problem(f"{path}.egress_ports[{index}]",
                          f"must be a port number from 1 to 65535, not {port!r}")
        elif port not in ports:
            ports.append(port)
    clients = _networks(check, body, path, "allow_clients", required=enabled,
                        default=None)
    denied = _networks(check, body, path, "deny_destinations", required=False,
                       default=DEFAULT_DENY_DESTINATIONS)
    users_file = body.get("users_file")
    users: dict[bytes, str] | None = None
    if users_file is not None:
        if not isinstance(users_file, str) or not users_file:
            check.problem(f"{path}.users_file", "must be the path of a users file")
            users_file = None
        elif enabled and mode == "socks5":
            try:
                users = load_users(users_file)
            except UsersFileError as error:
                for problem in error.problems:
                    check.problem(f"{path}.users_file", problem)
    return {"egress_sources": tuple(sources), "egress_ports": tuple(ports),
            "allow_clients": clients, "deny_destinations": denied,
            "users_file": users_file if isinstance(users_file, str) else None, "users": users}


def _text_list(check: _Checker, body: Mapping[str, Any], path: str, key: str, *,
               required: bool, what: str) -> list[tuple[str, str]]:
    value = body.get(key)
    full = f"{path}.{key}"
    if value is None:
        if required:
            check.problem(full, f"must list the {what} (none is assumed: an egress listener "
                                "refuses by default)")
        return []
    if not isinstance(value, list) or (required and not value):
        check.problem(full, f"must be a non-empty list of {what}")
        return []
    result = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            check.problem(f"{full}[{index}]", f"must be a string, not {_kind(item)}")
            continue
        result.append((f"{full}[{index}]", item))
    return result


def _networks(check: _Checker, body: Mapping[str, Any], path: str, key: str, *,
              required: bool, default: tuple[str, ...] | None) -> tuple[str, ...]:
    if key not in body and default is not None:
        return default
    networks: list[str] = []
    for item_path, item in _text_list(check, body, path, key, required=required,
                                      what="networks (CIDR, like 10.0.0.0/8)"):
        try:
            networks.append(str(parse_network(item)))
        except ValueError as error:
            check.problem(item_path, str(error))
    return tuple(networks)


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
            isinstance(name, str) and HOSTNAME_RE.fullmatch(name) for name in names):
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
            isinstance(d, str) and HOSTNAME_RE.fullmatch(d) and not d.startswith("*")
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
                             or not HOSTNAME_RE.fullmatch(host.removeprefix("*."))):
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
