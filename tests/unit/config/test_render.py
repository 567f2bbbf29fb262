"""ingress.config.render: ``print-config``'s TOML loads back to the same configuration."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from ingress import config
from tests.unit.config.common import PRESET_LISTENERS

# --- printing ------------------------------------------------------------------------------------


def _assert_same(left: config.Config, right: config.Config) -> None:
    assert dict(left.listeners) == dict(right.listeners)
    assert list(left.listeners) == list(right.listeners)
    assert dict(left.backends) == dict(right.backends)
    assert left.timeouts == right.timeouts
    assert (left.workers, left.release, left.preset, left.log_format) == (
        right.workers, right.release, right.preset, right.log_format)
    assert left == right


def test_to_toml_of_default_is_valid_toml_and_loads_back(write: Any) -> None:
    effective = config.load(None, environ={})
    text = config.to_toml(effective)
    parsed = tomllib.loads(text)
    assert parsed["preset"] == "greenarrow"
    assert parsed["release"] == "ga1"
    assert list(parsed["listeners"]) == list(PRESET_LISTENERS)
    assert parsed["backends"]["mta-smtp"] == {"servers": ["ga1-ingress-mta:587"],
                                              "send_proxy": "v1", "check": True,
                                              "check_interval": "2s", "rise": 2, "fall": 3,
                                              "balance": "roundrobin", "dns_min_ttl": "1s",
                                              "dns_max_ttl": "5m", "dns_grace": "5m"}
    assert parsed["dns"] == {"nameservers": [], "timeout": "2s"}
    assert parsed["timeouts"] == {"connect": "5s", "tcp_idle": "5m", "proxy_header": "5s",
                                  "drain": "10s", "grace": "5m", "http_request": "10s",
                                  "http_keep_alive": "1m", "server": "1m",
                                  "socks_handshake": "10s"}
    _assert_same(config.load(write(text, "printed.toml"), environ={}), effective)


def test_to_toml_round_trip_of_a_changed_configuration(write: Any) -> None:
    path = write(
        'release = "prod"\nworkers = 3\nlog_format = "json"\n'
        '[timeouts]\nconnect = "1m30s"\ndrain = "0s"\nproxy_header = "250ms"\n'
        '[listeners.smtp587]\nbind = ["127.0.0.1:2587", "[::1]:2587"]\n'
        '[listeners.http-proxied]\nenabled = false\n'
        '[listeners."smtp.alt"]\nbind = [":2525"]\nbackend = "relay.v2"\n'
        'on_backend_down = "close"\nio_engine = "epoll"\n'
        '[backends."relay.v2"]\nservers = ["relay.example:25"]\nsend_proxy = "v2"\n',
    )
    effective = config.load(path, environ={})
    text = config.to_toml(effective)
    tomllib.loads(text)
    _assert_same(config.load(write(text, "printed.toml"), environ={}), effective)


def test_to_toml_round_trip_of_preset_none(write: Any) -> None:
    path = write('preset = "none"\n[listeners.web]\nbind = ["127.0.0.1:8080"]\nmode = "http"\n'
                 'routes = "web"\n[[routes.web]]\nreturn = "readiness"\n')
    effective = config.load(path, environ={})
    text = config.to_toml(effective)
    assert tomllib.loads(text)["preset"] == "none"
    assert "backend =" not in text
    _assert_same(config.load(write(text, "printed.toml"), environ={}), effective)


@pytest.mark.parametrize("connect", ["0.5ms", "1.5ms"])
def test_to_toml_round_trip_of_sub_millisecond_timeout(write: Any, connect: str) -> None:
    effective = config.load(write(f'[timeouts]\nconnect = "{connect}"\n'), environ={})
    text = config.to_toml(effective)
    _assert_same(config.load(write(text, "printed.toml"), environ={}), effective)
