"""The presets, above all ``greenarrow``: the drop-in for the KRA HAProxy ingress.

The expected tables are written out literally (not computed from the code under test): they are
the contract in /work/shared/docs/kra-ingress-contract.md and the issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingress import config, presets
from ingress.config import Address, BackendConfig, ListenerConfig, Timeouts

# name: (port, mode, accept_proxy, backend, tls) -- every listener binds 0.0.0.0 (every interface)
GREENARROW_LISTENERS: dict[str, tuple[int, str, bool, str | None, bool]] = {
    "smtp25": (10025, "tcp", False, "event-tracker-smtp", False),
    "smtp25-proxied": (11025, "tcp", True, "event-tracker-smtp", False),
    "smtp587": (10587, "tcp", False, "mta-smtp", False),
    "smtp587-proxied": (11587, "tcp", True, "mta-smtp", False),
    "http": (10080, "http", False, None, False),
    "http-proxied": (11080, "http", True, None, False),
    "https": (10443, "http", False, None, True),
    "https-proxied": (11443, "http", True, None, True),
}


def greenarrow_backends(release: str) -> dict[str, tuple[list[str], str]]:
    return {
        "mta-smtp": ([f"{release}-ingress-mta:587"], "v1"),
        "event-tracker-smtp": ([f"{release}-ingress-event-tracker:25"], "v1"),
        "mta-http": ([f"{release}-ingress-mta:80"], "none"),
        "event-tracker-http": ([f"{release}-ingress-event-tracker:80"], "none"),
        "tls-http": ([f"{release}-ingress-tls:80"], "none"),
    }


def expected_listeners() -> dict[str, ListenerConfig]:
    return {
        name: ListenerConfig(
            name=name,
            bind=(Address("0.0.0.0", port),),
            mode=mode,  # type: ignore[arg-type]
            accept_proxy=proxied,
            backend=backend,
            tls=tls,
            on_backend_down="smtp-421",
            enabled=True,
            routes="greenarrow" if mode == "http" else None,
        )
        for name, (port, mode, proxied, backend, tls) in GREENARROW_LISTENERS.items()
    }


def expected_backends(release: str) -> dict[str, BackendConfig]:
    result = {}
    for name, (servers, send_proxy) in greenarrow_backends(release).items():
        addresses = []
        for server in servers:
            host, _, port = server.rpartition(":")
            addresses.append(Address(host, int(port)))
        result[name] = BackendConfig(name=name, servers=tuple(addresses),
                                     send_proxy=send_proxy)  # type: ignore[arg-type]
    return result


DEFAULT_TIMEOUTS = Timeouts(connect=5.0, tcp_idle=300.0, proxy_header=5.0, drain=10.0,
                            grace=300.0)


@pytest.fixture
def write(tmp_path: Path) -> Any:
    def write(text: str, name: str = "ingress.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# --- the raw preset trees ------------------------------------------------------------------------


def test_preset_names() -> None:
    assert presets.NAMES == ("greenarrow", "none")
    assert config.DEFAULT_PRESET == "greenarrow"
    assert config.DEFAULT_RELEASE == "ga1"


@pytest.mark.parametrize("release", ["ga1", "prod"])
def test_greenarrow_tree_is_exactly_the_contract(release: str) -> None:
    listeners = {
        name: {"bind": [f"0.0.0.0:{port}"], "mode": mode, "accept_proxy": proxied}
        | ({"backend": backend} if backend else {})
        | ({"tls": True} if tls else {})
        | ({"routes": "greenarrow"} if mode == "http" else {})
        for name, (port, mode, proxied, backend, tls) in GREENARROW_LISTENERS.items()
    }
    backends = {name: {"servers": servers, "send_proxy": send_proxy}
                for name, (servers, send_proxy) in greenarrow_backends(release).items()}
    assert presets.build("greenarrow", release) == {
        "preset": "greenarrow",
        "release": release,
        "listeners": listeners,
        "backends": backends,
        "routes": {"greenarrow": CONTRACT_ROUTES},
    }


# The contract's routing, in order (first match wins); local answers before routes.
CONTRACT_ROUTES = [
    {"path_prefix": "/.kubernetes-readiness-probe", "return": "readiness"},
    {"path_prefix": "/greenarrowadmin/h/stats_", "return": "stats-unavailable"},
    {"path_prefix": "/ga/eui/disk_queue_summary", "return": "stats-unavailable"},
    {"path_prefix": "/ga/eui/dynamic_deliveries", "return": "stats-unavailable"},
    {"path_prefix": "/api/v1/send.json", "backend": "mta-http"},
    {"path_prefix": "/.lets_encrypt_challenge_preflight", "backend": "tls-http"},
    {"path_prefix": "/.well-known/acme-challenge/", "backend": "tls-http"},
    {"backend": "event-tracker-http"},
]


def test_none_tree_is_empty() -> None:
    assert presets.build("none", "ga7") == {
        "preset": "none", "release": "ga7", "listeners": {}, "backends": {}, "routes": {},
    }


def test_unknown_preset_raises_key_error() -> None:
    with pytest.raises(KeyError):
        presets.build("haproxy", "ga1")


def test_build_returns_a_fresh_tree_each_time() -> None:
    first = presets.build("greenarrow", "ga1")
    first["listeners"]["smtp25"]["bind"].append("127.0.0.1:1")
    first["backends"].clear()
    second = presets.build("greenarrow", "ga1")
    assert second["listeners"]["smtp25"]["bind"] == ["0.0.0.0:10025"]
    assert len(second["backends"]) == 5


# --- the effective configuration -----------------------------------------------------------------


def test_default_configuration_is_greenarrow_ga1() -> None:
    effective = config.load(None, environ={})
    assert effective.preset == "greenarrow"
    assert effective.release == "ga1"
    assert effective.workers == 0
    assert effective.log_format == "logfmt"
    assert effective.timeouts == DEFAULT_TIMEOUTS
    assert dict(effective.listeners) == expected_listeners()
    assert list(effective.listeners) == list(GREENARROW_LISTENERS)
    assert dict(effective.backends) == expected_backends("ga1")
    assert [listener.name for listener in effective.enabled_listeners] == list(
        GREENARROW_LISTENERS)


def test_default_backends_for_ga1_spelled_out() -> None:
    backends = config.load(None, environ={}).backends
    assert {name: ([str(a) for a in b.servers], b.send_proxy) for name, b in backends.items()} == {
        "mta-smtp": (["ga1-ingress-mta:587"], "v1"),
        "event-tracker-smtp": (["ga1-ingress-event-tracker:25"], "v1"),
        "mta-http": (["ga1-ingress-mta:80"], "none"),
        "event-tracker-http": (["ga1-ingress-event-tracker:80"], "none"),
        "tls-http": (["ga1-ingress-tls:80"], "none"),
    }


def test_contract_ports_and_proxy_flags() -> None:
    """The Service maps 25/587/80/443 to 100xx, or to 110xx when the load balancer sends PROXY."""
    listeners = config.load(None, environ={}).listeners
    by_port = {listener.bind[0].port: listener for listener in listeners.values()}
    assert sorted(by_port) == [10025, 10080, 10443, 10587, 11025, 11080, 11443, 11587]
    for port, listener in by_port.items():
        assert listener.bind == (Address("0.0.0.0", port),)
        assert listener.accept_proxy is (port >= 11000)
    for public in (25, 587):
        assert by_port[10000 + public].backend == by_port[11000 + public].backend
    assert by_port[10587].backend == "mta-smtp"
    assert by_port[10025].backend == "event-tracker-smtp"
    assert {port for port, listener in by_port.items() if listener.tls} == {10443, 11443}
    assert {port for port, listener in by_port.items() if listener.mode == "http"} == {
        10080, 11080, 10443, 11443}


@pytest.mark.parametrize("how", ["environment", "flags", "set", "file"])
def test_release_prod_renames_every_service(how: str, write: Any) -> None:
    path = write('release = "prod"\n') if how == "file" else None
    environ = {"MTA_INGRESS_RELEASE": "prod"} if how == "environment" else {}
    overrides = {"release": "prod"} if how == "flags" else None
    assignments = ["release=prod"] if how == "set" else None
    effective = config.load(path, environ=environ, overrides=overrides, assignments=assignments)
    assert effective.release == "prod"
    assert dict(effective.backends) == expected_backends("prod")
    assert str(effective.backends["mta-smtp"].servers[0]) == "prod-ingress-mta:587"
    assert dict(effective.listeners) == expected_listeners()


def test_file_servers_beat_the_release_derived_ones(write: Any) -> None:
    path = write('release = "prod"\n[backends.mta-smtp]\nservers = ["mta.example:2587"]\n')
    backends = config.load(path, environ={}).backends
    assert backends["mta-smtp"].servers == (Address("mta.example", 2587),)
    assert backends["mta-smtp"].send_proxy == "v1"
    assert backends["event-tracker-smtp"].servers == (Address("prod-ingress-event-tracker", 25),)


def test_preset_none_with_one_listener(write: Any) -> None:
    path = write(
        'preset = "none"\n'
        "[listeners.submission]\n"
        'bind = ["127.0.0.1:2587"]\n'
        'backend = "relay"\n'
        "[backends.relay]\n"
        'servers = ["relay.example:587"]\n'
        'send_proxy = "v2"\n'
    )
    effective = config.load(path, environ={})
    assert effective.preset == "none"
    assert dict(effective.listeners) == {
        "submission": ListenerConfig(
            name="submission", bind=(Address("127.0.0.1", 2587),), mode="tcp",
            accept_proxy=False, backend="relay", tls=False, on_backend_down="smtp-421",
            enabled=True),
    }
    assert dict(effective.backends) == {
        "relay": BackendConfig(name="relay", servers=(Address("relay.example", 587),),
                               send_proxy="v2"),
    }
    assert effective.timeouts == DEFAULT_TIMEOUTS


def test_preset_none_does_not_know_greenarrow_backends(write: Any) -> None:
    path = write('preset = "none"\n[listeners.smtp]\nbind = [":25"]\nbackend = "mta-smtp"\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    assert caught.value.problems == [
        f"{path}: listeners.smtp.backend: no backend named 'mta-smtp' (none are defined)"]


def test_preset_none_alone_has_nothing_to_serve(write: Any) -> None:
    path = write('preset = "none"\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    (problem,) = caught.value.problems
    assert problem.endswith(": listeners: no listener is enabled: there would be nothing to serve")


@pytest.mark.parametrize(
    ("environ", "overrides", "expected"),
    [
        ({"MTA_INGRESS_PRESET": "none"}, {"preset": "greenarrow"}, "greenarrow"),
        ({"MTA_INGRESS_PRESET": "greenarrow"}, None, "greenarrow"),
    ],
)
def test_later_layer_chooses_the_preset(
    write: Any, environ: dict[str, str], overrides: dict[str, Any] | None, expected: str,
) -> None:
    path = write('preset = "none"\n[listeners.extra]\nbind = ["127.0.0.1:2525"]\nmode = "http"\n'
                 'backend = "mta-http"\n')
    effective = config.load(path, environ=environ, overrides=overrides)
    assert effective.preset == expected
    assert set(effective.listeners) == set(GREENARROW_LISTENERS) | {"extra"}
