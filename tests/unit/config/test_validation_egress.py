"""Configuration of the egress listeners: the preset, every key, their problems (as ``source:
key: what is wrong``), the users file, and their printing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ingress import config
from ingress.config import ConfigError
from ingress.config.users import hash_password
from routing.egress import DEFAULT_DENY_DESTINATIONS

SOCKS = ('[listeners.out]\nbind = ["127.0.0.1:5000"]\nmode = "socks5"\n'
         'egress_sources = ["203.0.113.10", "2001:db8::10"]\nallow_clients = ["10.0.0.0/8"]\n')


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "ingress.toml"
    path.write_text(text)
    return config.load(path, environ={})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    prefix = f"{tmp_path / 'ingress.toml'}: "
    return [problem.removeprefix(prefix) for problem in caught.value.problems]


def test_the_egress_preset_needs_the_sources_and_clients(tmp_path: Path) -> None:
    found = problems(tmp_path, 'preset = "egress"\n')
    assert found == [
        f"preset egress: listeners.{name}.{key}: must list the {what} (none is assumed: an "
        "egress listener refuses by default)"
        for name in ("egress-socks", "egress-forward")
        for key, what in (("egress_sources", "IP addresses"),
                          ("allow_clients", "networks (CIDR, like 10.0.0.0/8)"))]


def test_the_egress_preset_as_the_issue_writes_it(tmp_path: Path) -> None:
    text = ('preset = "egress"\n'
            '[listeners.egress-socks]\nbind = ["0.0.0.0:5000"]\nmode = "socks5"\n'
            'egress_sources = ["203.0.113.10", "2001:db8::10"]\negress_ports = [25]\n'
            'allow_clients = ["10.0.0.0/8"]\n'
            '[listeners.egress-forward]\nbind = ["0.0.0.0:2526"]\nmode = "forward"\n'
            'egress_sources = ["203.0.113.10"]\negress_ports = [25]\n'
            'allow_clients = ["10.0.0.0/8"]\n')
    effective = load(tmp_path, text)
    assert sorted(effective.listeners) == ["egress-forward", "egress-socks"]
    socks = effective.listeners["egress-socks"]
    assert socks.egress
    assert socks.mode == "socks5"
    assert socks.backend is None
    assert socks.egress_sources == ("203.0.113.10", "2001:db8::10")
    assert socks.egress_ports == (25,)
    assert socks.allow_clients == ("10.0.0.0/8",)
    assert socks.deny_destinations == DEFAULT_DENY_DESTINATIONS
    assert socks.users_file is None
    assert socks.users is None
    assert effective.backends == {}


def test_defaults_of_a_socks_listener(tmp_path: Path) -> None:
    effective = load(tmp_path, 'preset = "none"\n' + SOCKS)
    assert effective.listeners["out"].egress_ports == (25,)
    assert effective.listeners["out"].io_engine == "epoll"
    assert effective.timeouts.socks_handshake == 10.0


@pytest.mark.parametrize("mode", ["socks5", "forward"])
def test_an_egress_listener_may_run_on_the_epoll_engine(tmp_path: Path, mode: str) -> None:
    text = SOCKS.replace('"socks5"', f'"{mode}"') + 'io_engine = "epoll"\n'
    assert load(tmp_path, 'preset = "none"\n' + text).listeners["out"].io_engine == "epoll"


@pytest.mark.parametrize(("extra", "expected"), [
    ('egress_ports = [25, 0]\n',
     ["listeners.out.egress_ports[1]: must be a port number from 1 to 65535, not 0"]),
    ('egress_ports = []\n', ["listeners.out.egress_ports: must be a non-empty list of port "
                             "numbers"]),
    ('deny_destinations = ["10.0.0.1/8"]\n',
     ["listeners.out.deny_destinations[0]: '10.0.0.1/8' has host bits set; the network is "
      "10.0.0.0/8"]),
    ('deny_destinations = ["nowhere"]\n',
     ["listeners.out.deny_destinations[0]: 'nowhere' is not a network in CIDR form like "
      "10.0.0.0/8"]),
    ('backend = "x"\n', ["listeners.out.backend: no backend named 'x' (none are defined)",
                         "listeners.out.backend: does not apply to a socks5 listener"]),
    ('io_engine = "io_uring"\n', ["listeners.out.io_engine: must be one of 'uvloop', 'epoll', "
                                  "not 'io_uring'"]),
    ('tls = true\n', ["listeners.out.tls: a socks5 listener relays the MTA's own STARTTLS end "
                      "to end"]),
    ('accept_proxy = true\n', ["listeners.out.accept_proxy: a socks5 listener takes no PROXY "
                               "header (its clients are the MTAs)"]),
    ('users_file = ""\n', ["listeners.out.users_file: must be the path of a users file"]),
])
def test_one_problem_each(tmp_path: Path, extra: str, expected: list[str]) -> None:
    assert problems(tmp_path, 'preset = "none"\n' + SOCKS + extra) == expected


def test_sources_must_be_addresses_listed_once(tmp_path: Path) -> None:
    text = SOCKS.replace('["203.0.113.10", "2001:db8::10"]',
                         '["203.0.113.10", "egress.example", "203.0.113.10", 7]')
    assert problems(tmp_path, 'preset = "none"\n' + text) == [
        "listeners.out.egress_sources[3]: must be a string, not a number",
        "listeners.out.egress_sources[1]: 'egress.example' is not an IP address",
        "listeners.out.egress_sources[2]: 203.0.113.10 is listed twice",
    ]


def test_egress_keys_on_an_ingress_listener_are_refused(tmp_path: Path) -> None:
    text = ('preset = "none"\n[listeners.smtp]\nbind = ["127.0.0.1:2525"]\nmode = "tcp"\n'
            'backend = "mta"\negress_sources = ["203.0.113.10"]\n'
            '[backends.mta]\nservers = ["127.0.0.1:25"]\n')
    assert problems(tmp_path, text) == [
        "listeners.smtp.egress_sources: applies to socks5 and forward listeners only"]


def test_a_forward_listener_takes_no_users_file(tmp_path: Path) -> None:
    text = 'preset = "none"\n' + SOCKS.replace('"socks5"', '"forward"') + 'users_file = "/x"\n'
    assert problems(tmp_path, text) == [
        "listeners.out.users_file: applies to socks5 listeners only: a PROXY header carries "
        "no credentials"]


def test_the_users_file_is_read_at_load(tmp_path: Path) -> None:
    users = tmp_path / "egress-users"
    users.write_text(f"kumo:{hash_password(b'pw', log2_n=10)}\n")
    listener = load(tmp_path, 'preset = "none"\n' + SOCKS
                    + f'users_file = "{users}"\n').listeners["out"]
    assert listener.users is not None
    assert list(listener.users) == [b"kumo"]


def test_a_bad_users_file_is_reported_under_its_key(tmp_path: Path) -> None:
    users = tmp_path / "egress-users"
    users.write_text("kumo:plaintext\n")
    found = problems(tmp_path, 'preset = "none"\n' + SOCKS + f'users_file = "{users}"\n')
    assert len(found) == 1
    assert found[0].startswith(f"listeners.out.users_file: {users}:1: ")
    assert "plaintext" not in found[0]
    missing = problems(tmp_path, 'preset = "none"\n' + SOCKS + 'users_file = "/nonexistent"\n')
    assert missing[0].startswith("listeners.out.users_file: /nonexistent: cannot read")


def test_print_config_loads_back_to_the_same_listener(tmp_path: Path) -> None:
    users = tmp_path / "egress-users"
    users.write_text(f"kumo:{hash_password(b'pw', log2_n=10)}\n")
    effective = load(tmp_path, 'preset = "none"\n' + SOCKS + 'egress_ports = [25, 2525]\n'
                     f'users_file = "{users}"\ndeny_destinations = ["192.0.2.0/24"]\n')
    printed = config.to_toml(effective)
    tomllib.loads(printed)
    again = load(tmp_path, printed)
    assert again.listeners == effective.listeners
    assert again.timeouts == effective.timeouts
