"""The presets, above all ``greenarrow``: the drop-in for the KRA HAProxy ingress.

The expected tables are written out literally (not computed from the code under test): they are
the contract in /work/shared/docs/kra-ingress-contract.md and the issue.
"""

from __future__ import annotations

import logging
import os
import tomllib
from typing import Any

import pytest

from ingress import config
from ingress.cli import main
from ingress.config import Address, BackendConfig, ListenerConfig, Timeouts, presets
from routing.discovery import is_dns_name

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




# --- the raw preset trees ------------------------------------------------------------------------


def test_preset_names() -> None:
    assert presets.NAMES == ("greenarrow", "kumomta", "egress", "none")
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


# --- kumomta -------------------------------------------------------------------------------------

# The greenarrow preset's ports and PROXY flags, every SMTP port to kumod's one ESMTP listener and
# every HTTP(S) port through the kumomta routes.
KUMOMTA_LISTENERS: dict[str, tuple[int, str, bool, str | None, bool]] = {
    "smtp25": (10025, "tcp", False, "kumod-smtp", False),
    "smtp25-proxied": (11025, "tcp", True, "kumod-smtp", False),
    "smtp587": (10587, "tcp", False, "kumod-smtp", False),
    "smtp587-proxied": (11587, "tcp", True, "kumod-smtp", False),
    "http": (10080, "http", False, None, False),
    "http-proxied": (11080, "http", True, None, False),
    "https": (10443, "http", False, None, True),
    "https-proxied": (11443, "http", True, None, True),
}
KUMOMTA_ROUTES = [
    {"path_prefix": "/.kubernetes-readiness-probe", "return": "readiness"},
    {"backend": "kumod-http"},
]


@pytest.mark.parametrize("service", ["kumod", "kumomta.mail.svc.cluster.local"])
def test_kumomta_tree_is_exactly_the_spec(service: str) -> None:
    listeners = {
        name: {"bind": [f"0.0.0.0:{port}"], "mode": mode, "accept_proxy": proxied}
        | ({"backend": backend} if backend else {})
        | ({"tls": True} if tls else {})
        | ({"routes": "kumomta"} if mode == "http" else {})
        for name, (port, mode, proxied, backend, tls) in KUMOMTA_LISTENERS.items()
    }
    assert presets.build("kumomta", "ga1", kumomta_service=service) == {
        "preset": "kumomta",
        "release": "ga1",
        "kumomta_service": service,
        "listeners": listeners,
        "backends": {
            "kumod-smtp": {"servers": [f"{service}:25"], "send_proxy": "v2"},
            "kumod-http": {"servers": [f"{service}:8000"], "send_proxy": "none"},
        },
        "routes": {"kumomta": KUMOMTA_ROUTES},
    }


def test_kumomta_default_service_is_kumod() -> None:
    tree = presets.build("kumomta", "ga1")
    assert tree["kumomta_service"] == "kumod" == config.DEFAULT_KUMOMTA_SERVICE
    assert tree["backends"]["kumod-http"]["servers"] == ["kumod:8000"]


def test_kumomta_listeners_match_the_greenarrow_ports() -> None:
    """One LoadBalancer Service and readiness probe fit both presets."""
    def shape(name: str) -> dict[str, tuple[Any, ...]]:
        return {key: (tuple(body["bind"]), body["mode"], body["accept_proxy"],
                      body.get("tls", False))
                for key, body in presets.build(name, "ga1")["listeners"].items()}

    assert shape("kumomta") == shape("greenarrow")
    routes = presets.build("kumomta", "ga1")["routes"]["kumomta"]
    assert routes[0] == CONTRACT_ROUTES[0]


def test_kumomta_effective_configuration(write: Any) -> None:
    effective = config.load(write('preset = "kumomta"\n'), environ={})
    assert (effective.preset, effective.release, effective.kumomta_service) == (
        "kumomta", "ga1", "kumod")
    assert {name: (listener.bind, listener.mode, listener.accept_proxy, listener.backend,
                   listener.tls, listener.routes)
            for name, listener in effective.listeners.items()} == {
        name: ((Address("0.0.0.0", port),), mode, proxied, backend, tls,
               "kumomta" if mode == "http" else None)
        for name, (port, mode, proxied, backend, tls) in KUMOMTA_LISTENERS.items()
    }
    assert dict(effective.backends) == {
        "kumod-smtp": BackendConfig(name="kumod-smtp", servers=(Address("kumod", 25),),
                                    send_proxy="v2"),
        "kumod-http": BackendConfig(name="kumod-http", servers=(Address("kumod", 8000),),
                                    send_proxy="none"),
    }
    readiness, fallback = effective.routes["kumomta"]
    assert (readiness.path_prefix, readiness.backend) == (b"/.kubernetes-readiness-probe", None)
    assert readiness.answer is not None
    assert readiness.answer.kind == "readiness"
    assert (fallback.path_prefix, fallback.host, fallback.backend, fallback.answer) == (
        None, None, "kumod-http", None)
    assert list(effective.routes) == ["kumomta"]


@pytest.mark.parametrize("how", ["file", "environment", "set"])
def test_kumomta_service_names_the_servers(how: str, write: Any) -> None:
    service = "kumod.mail.svc.cluster.local"
    path = write('preset = "kumomta"\n'
                 + (f'kumomta_service = "{service}"\n' if how == "file" else ""))
    environ = {"MTA_INGRESS_KUMOMTA_SERVICE": service} if how == "environment" else {}
    assignments = [f"kumomta_service={service}"] if how == "set" else None
    effective = config.load(path, environ=environ, assignments=assignments)
    assert effective.kumomta_service == service
    assert {name: backend.servers for name, backend in effective.backends.items()} == {
        "kumod-smtp": (Address(service, 25),), "kumod-http": (Address(service, 8000),)}


def test_kumomta_file_servers_beat_the_service_derived_ones(write: Any) -> None:
    path = write('preset = "kumomta"\nkumomta_service = "mta"\n[backends.kumod-http]\n'
                 'servers = ["dns+a://kumod-headless.mail.svc.cluster.local:8000"]\n')
    backends = config.load(path, environ={}).backends
    assert [str(server) for server in backends["kumod-http"].servers] == [
        "dns+a://kumod-headless.mail.svc.cluster.local:8000"]
    assert backends["kumod-smtp"].servers == (Address("mta", 25),)


@pytest.mark.parametrize("value", [
    '"kumo_d"', '"-kumod"', '"kumod-"', '"kumod..mail"', '""', '"10.0.0.5"', '"kumod:25"',
    '"kumod.mail svc"', f'"{"a" * 64}"', "42", '["kumod"]',
])
def test_kumomta_service_must_be_a_dns_name(write: Any, value: str) -> None:
    path = write(f'preset = "kumomta"\nkumomta_service = {value}\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: kumomta_service: must be a DNS name like kumod or "
                              "kumod.mail.svc.cluster.local, not ")


def test_kumomta_service_problem_names_the_environment() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={"MTA_INGRESS_PRESET": "kumomta",
                                   "MTA_INGRESS_KUMOMTA_SERVICE": "bad_name"})
    assert caught.value.problems == [
        "environment: kumomta_service: must be a DNS name like kumod or "
        "kumod.mail.svc.cluster.local, not 'bad_name'"]


@pytest.mark.parametrize("name", ["kumod", "KUMOD", "k", "kumod-0.kumod-headless.mail.svc.",
                                  "a" * 63, ".".join(["a" * 63] * 3) + "." + "b" * 61])
def test_dns_names_accepted(name: str) -> None:
    assert is_dns_name(name)


def test_release_plays_no_part_in_kumomta(write: Any) -> None:
    plain = config.load(write('preset = "kumomta"\n'), environ={})
    prod = config.load(write('preset = "kumomta"\nrelease = "prod"\n', "prod.toml"), environ={})
    assert prod.release == "prod"
    assert dict(prod.backends) == dict(plain.backends)
    assert dict(prod.listeners) == dict(plain.listeners)


@pytest.mark.parametrize("text", [
    'preset = "kumomta"\n',
    'preset = "kumomta"\nrelease = "prod"\nkumomta_service = "kumod.mail.svc.cluster.local"\n'
    "[listeners.https-proxied]\nenabled = false\n"
    '[backends.kumod-smtp]\nservers = ["dns+a://kumod-headless:2500"]\nbalance = "leastconn"\n',
])
def test_kumomta_print_config_round_trips(write: Any, text: str) -> None:
    effective = config.load(write(text), environ={})
    printed = config.to_toml(effective)
    parsed = tomllib.loads(printed)
    assert (parsed["preset"], parsed["release"], parsed["kumomta_service"]) == (
        "kumomta", effective.release, effective.kumomta_service)
    again = config.load(write(printed, "printed.toml"), environ={})
    assert again == effective
    assert again.kumomta_service == effective.kumomta_service
    assert config.to_toml(again) == printed


def test_greenarrow_printout_carries_kumomta_service_only_when_set(write: Any) -> None:
    assert "kumomta_service" not in config.to_toml(config.load(None, environ={}))
    effective = config.load(write('kumomta_service = "mta"\n'), environ={})
    assert effective.preset == "greenarrow"
    printed = config.to_toml(effective)
    assert tomllib.loads(printed)["kumomta_service"] == "mta"
    assert config.load(write(printed, "printed.toml"), environ={}) == effective


def test_check_config_accepts_kumomta(write: Any, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MTA_INGRESS_"):
            monkeypatch.delenv(name)
    # main() configures the "mta_ingress" logger; other tests must find it as it was.
    logger = logging.getLogger("mta_ingress")
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    path = write('preset = "kumomta"\nkumomta_service = "kumod.mail.svc.cluster.local"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    assert main(["check-config", "--preset", "kumomta", "--set", "kumomta_service=bad_"]) == 1
    assert "flags: kumomta_service: must be a DNS name" in capsys.readouterr().err
