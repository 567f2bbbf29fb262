"""Configuration of DNS discovery and balancing: dns+ servers, the per-backend DNS keys and
``balance``, the ``[dns]`` table, their problems and their printing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress import config
from ingress.config import Address, ConfigError, DnsConfig, parse_nameserver
from routing.discovery import DnsName

BASE = ('preset = "none"\n[listeners.web]\nbind = ["127.0.0.1:8080"]\nmode = "http"\n'
        'backend = "pods"\n[backends.pods]\n')


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "ingress.toml"
    path.write_text(text)
    return config.load(path, environ={})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.problems


def test_defaults(tmp_path: Path) -> None:
    effective = load(tmp_path, BASE + 'servers = ["10.0.0.1:80"]\n')
    backend = effective.backends["pods"]
    assert (backend.balance, backend.dns_min_ttl, backend.dns_max_ttl, backend.dns_grace) == (
        "roundrobin", 1.0, 300.0, 300.0)
    assert effective.dns == DnsConfig((), 2.0)


def test_dns_servers_mix_with_plain_ones(tmp_path: Path) -> None:
    effective = load(tmp_path, BASE + (
        'servers = ["10.0.0.1:80", "dns+a://Pods.Mail.Test:8080", "dns+srv://_http._tcp.mail.test",'
        ' "mta:80"]\nbalance = "leastconn"\ndns_min_ttl = "5s"\ndns_max_ttl = "1m"\n'
        'dns_grace = "0s"\n[dns]\nnameservers = ["10.96.0.10", "127.0.0.1:5353", "[::1]:53",'
        ' "fd00::10"]\ntimeout = "500ms"\n'))
    backend = effective.backends["pods"]
    assert backend.servers == (Address("10.0.0.1", 80), DnsName("a", "pods.mail.test", 8080),
                               DnsName("srv", "_http._tcp.mail.test"), Address("mta", 80))
    assert (backend.balance, backend.dns_min_ttl, backend.dns_max_ttl, backend.dns_grace) == (
        "leastconn", 5.0, 60.0, 0.0)
    assert effective.dns == DnsConfig((Address("10.96.0.10", 53), Address("127.0.0.1", 5353),
                                       Address("::1", 53), Address("fd00::10", 53)), 0.5)


@pytest.mark.parametrize(("body", "problem"), [
    ('servers = ["dns+a://pods.mail.test"]\n',
     "backends.pods.servers[0]: 'dns+a://pods.mail.test': dns+a needs a port: "
     "dns+a://name:port"),
    ('servers = ["10.0.0.1:80", "dns+srv://_smtp._tcp.mail.test:25"]\n',
     "backends.pods.servers[1]: 'dns+srv://_smtp._tcp.mail.test:25': dns+srv takes its ports "
     "from the SRV records; write no port"),
    ('servers = ["dns+a://pods_1.mail.test:25"]\n',
     "backends.pods.servers[0]: 'dns+a://pods_1.mail.test:25': 'pods_1.mail.test' is not a host "
     "name (letters, digits and '-' in dot-separated labels)"),
    ('servers = ["dns+txt://mail.test"]\n',
     "backends.pods.servers[0]: 'dns+txt://mail.test': write dns+a://name:port or "
     "dns+srv://_service._tcp.name"),
    ('servers = ["10.0.0.1:80"]\nbalance = "random"\n',
     "backends.pods.balance: must be one of 'roundrobin', 'leastconn', not 'random'"),
    ('servers = ["10.0.0.1:80"]\ndns_min_ttl = "10m"\n',
     "backends.pods.dns_max_ttl: must not be shorter than dns_min_ttl (10m)"),
    ('servers = ["10.0.0.1:80"]\ndns_min_ttl = "0s"\n',
     "backends.pods.dns_min_ttl: must be longer than zero"),
    ('servers = ["10.0.0.1:80"]\ndns_grace = 5\n',
     "backends.pods.dns_grace: must be a duration string like \"5s\", not a number"),
    ('servers = ["10.0.0.1:80"]\n[dns]\nnameservers = ["ns.mail.test"]\n',
     "dns.nameservers[0]: 'ns.mail.test' is not a nameserver address: write ip, ip:port or "
     "[ipv6]:port"),
    ('servers = ["10.0.0.1:80"]\n[dns]\nnameservers = [53]\n',
     "dns.nameservers[0]: must be an \"ip\" or \"ip:port\" string, not a number"),
    ('servers = ["10.0.0.1:80"]\n[dns]\nnameservers = {a = 1}\n',
     "dns.nameservers: must be a list of \"ip\" or \"ip:port\" strings, not a table"),
    ('servers = ["10.0.0.1:80"]\n[dns]\ntimeout = "0s"\n',
     "dns.timeout: must be longer than zero"),
    ('servers = ["10.0.0.1:80"]\n[dns]\nsearch = ["mail.test"]\n',
     "dns.search: unknown key; known keys here: nameservers, timeout"),
])
def test_problems_name_the_file_and_key(tmp_path: Path, body: str, problem: str) -> None:
    assert problems(tmp_path, BASE + body) == [f"{tmp_path / 'ingress.toml'}: {problem}"]


def test_to_toml_prints_the_new_keys_and_loads_back(tmp_path: Path) -> None:
    effective = load(tmp_path, BASE + (
        'servers = ["dns+a://pods.mail.test:8080", "dns+srv://_http._tcp.mail.test"]\n'
        'balance = "leastconn"\ndns_min_ttl = "2s"\ndns_max_ttl = "90s"\ndns_grace = "0s"\n'
        '[dns]\nnameservers = ["127.0.0.1:5353", "::1"]\ntimeout = "1500ms"\n'))
    text = config.to_toml(effective)
    assert 'servers = ["dns+a://pods.mail.test:8080", "dns+srv://_http._tcp.mail.test"]' in text
    assert 'balance = "leastconn"' in text
    assert 'dns_max_ttl = "90s"' in text
    assert '[dns]\nnameservers = ["127.0.0.1:5353", "[::1]:53"]\ntimeout = "1500ms"' in text
    assert load(tmp_path, text) == effective


@given(ip=st.ip_addresses(), port=st.one_of(st.none(), st.integers(min_value=1,
                                                                    max_value=65535)))
def test_nameserver_parser_round_trips(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                       port: int | None) -> None:
    with_port = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    text = str(ip) if port is None else with_port
    parsed = parse_nameserver(text)
    assert parsed == Address(str(ip), 53 if port is None else port)
    assert parse_nameserver(str(parsed)) == parsed


@given(text=st.text(max_size=40))
def test_nameserver_parser_accepts_or_says_why(text: str) -> None:
    try:
        parsed = parse_nameserver(text)
    except ValueError as error:
        message = str(error)
    else:
        assert parse_nameserver(str(parsed)) == parsed
        return
    assert repr(text) in message
