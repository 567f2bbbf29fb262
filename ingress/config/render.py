"""``print-config``: the effective configuration as TOML that loads back to the same ``Config``."""

from __future__ import annotations

import re

from ingress.config.schema import DEFAULT_KUMOMTA_SERVICE, Config
from ingress.config.validation import TIMEOUT_DEFAULTS
from ingress.config.values import format_duration
from routing.table import BUILTIN_ANSWERS, LocalAnswer

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
        f"log_normal = {_toml(config.log_normal)}",
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
                  f"mode = {_toml(listener.mode)}"]
        if listener.egress:
            lines += [f"egress_sources = {_toml(list(listener.egress_sources))}",
                      f"egress_ports = {_toml(list(listener.egress_ports))}",
                      f"allow_clients = {_toml(list(listener.allow_clients))}",
                      f"deny_destinations = {_toml(list(listener.deny_destinations))}"]
            if listener.users_file is not None:
                lines.append(f"users_file = {_toml(listener.users_file)}")
            lines.append(f"io_engine = {_toml(listener.io_engine)}")
            continue
        lines.append(f"accept_proxy = {_toml(listener.accept_proxy)}")
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
        if listener.mode == "tcp":
            lines.append(f"io_engine = {_toml(listener.io_engine)}")
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
