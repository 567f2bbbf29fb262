"""The demo's pure parts: the port block, its messages, its configuration and its guide."""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path

import pytest

from ingress import config
from ingress.config import Address
from ingress.demo import single_node as demo
from ingress.proxy.egress import policy_of
from routing.egress import DEFAULT_DENY_DESTINATIONS

PYTHON = "/opt/demo venv/bin/python"  # the interpreter the guide names for its own client
GUIDE_COMMANDS = ("curl", "swaks", "python3", "printf", PYTHON)


def guide_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("  ")]


def test_ports_are_distinct_and_inside_the_port_range() -> None:
    for base in (demo.MIN_BASE_PORT, demo.DEFAULT_BASE_PORT, demo.MAX_BASE_PORT):
        ports = demo.Ports(base)
        numbers = [port for _, port in ports.all()]
        assert numbers == sorted(numbers)
        assert len(set(numbers)) == len(demo.OFFSETS)
        assert min(numbers) > base
        assert max(numbers) <= 65535


def test_listener_ports_keep_the_last_digits_of_the_kra_ports() -> None:
    ports = demo.Ports(20000)
    assert [ports[name] for name in demo.LISTENERS] == [
        20025, 20587, 20080, 20443, 21025, 21587, 21080, 21443]
    assert ports["admin"] == 20081


@pytest.mark.parametrize(("base", "ok"), [
    (1023, False), (1024, True), (20000, True), (demo.MAX_BASE_PORT, True),
    (demo.MAX_BASE_PORT + 1, False), (0, False), (-5, False)])
def test_base_port_bounds(base: int, ok: bool) -> None:
    problem = demo.base_port_problem(base)
    assert (problem is None) == ok
    if problem is not None:
        assert "--base-port" in problem
        assert "\n" not in problem


@pytest.mark.parametrize("base", [20000, demo.MAX_BASE_PORT - 100, demo.MAX_BASE_PORT])
def test_port_in_use_message_is_one_line_naming_the_port_and_the_option(base: int) -> None:
    port = base + 587
    message = demo.port_in_use_message("smtp587", port, base)
    assert "\n" not in message
    assert str(port) in message
    assert "smtp587 listener" in message
    suggestion = int(message.rsplit("--base-port ", 1)[1])
    assert suggestion != base
    assert demo.base_port_problem(suggestion) is None


@pytest.mark.parametrize(("name", "text"), [
    ("admin", "the admin listener"), ("https-proxied", "the https-proxied listener"),
    ("event-tracker-smtp", "the event-tracker SMTP stub"), ("tls-http", "the tls HTTP stub"),
    ("egress-socks", "the egress-socks listener"),
    ("egress-admin", "the egress tier's admin listener"), ("mx-smtp", "the MX SMTP stub")])
def test_describe(name: str, text: str) -> None:
    assert demo.describe(name) == text


def test_every_port_but_the_mx_stubs_is_on_127_0_0_1() -> None:
    hosts = {name: demo.host_of(name) for name in demo.OFFSETS}
    assert hosts.pop(demo.SINK) == demo.SINK_HOST == "127.0.0.250"
    assert set(hosts.values()) == {"127.0.0.1"}
    message = demo.port_in_use_message(demo.SINK, 25025, 20000)
    assert "127.0.0.250" in message
    assert "MX SMTP stub" in message


def test_egress_ports_keep_the_last_digits_of_the_egress_preset() -> None:
    ports = demo.Ports(20000)
    assert [ports[name] for name in demo.EGRESS_LISTENERS] == [25000, 22526]
    assert demo.MAX_BASE_PORT == 65535 - 5081


def _loaded(tmp_path: Path, base: int = 20000) -> config.Config:
    path = tmp_path / "demo.toml"
    path.write_text(demo.demo_config_text(demo.Ports(base), tmp_path / "tls dir \"x\""))
    return config.load(path, environ={})


def test_config_is_the_greenarrow_preset_on_loopback(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    ports = demo.Ports(20000)
    assert loaded.preset == "greenarrow"
    assert loaded.workers == 1
    assert loaded.timeouts.drain == 0
    enabled = {listener.name: listener for listener in loaded.enabled_listeners}
    assert set(enabled) == set(demo.LISTENERS)
    for name, listener in enabled.items():
        assert listener.bind == (Address("127.0.0.1", ports[name]),)
    assert enabled["https"].tls
    assert enabled["https-proxied"].tls
    assert enabled["https-proxied"].accept_proxy
    assert not enabled["smtp587"].accept_proxy
    for name in demo.STUBS:
        assert loaded.backends[name].servers == (Address("127.0.0.1", ports[name]),)
    assert loaded.backends["mta-smtp"].send_proxy == "v1"
    assert loaded.backends["event-tracker-smtp"].send_proxy == "v1"
    assert loaded.tls.cert_dir == str(tmp_path / "tls dir \"x\"")
    assert loaded.admin.bind == (Address("127.0.0.1", ports["admin"]),)


@pytest.mark.parametrize(("path", "backend"), [
    (b"/click/demo/42", "event-tracker-http"),
    (b"/api/v1/send.json", "mta-http"),
    (b"/.well-known/acme-challenge/demo-token", "tls-http"),
])
def test_the_guide_paths_take_the_routes_it_promises(tmp_path: Path, path: bytes,
                                                     backend: str) -> None:
    loaded = _loaded(tmp_path)
    listener = next(x for x in loaded.enabled_listeners if x.name == "http")
    assert listener.routes is not None
    rule = next(rule for rule in loaded.routes[listener.routes] if rule.matches(path, None))
    assert rule.backend == backend
    assert path.decode() in demo.guide_text(demo.Ports(20000), Path("/c.pem"))


def _egress_loaded(tmp_path: Path, base: int = 20000) -> config.Config:
    path = tmp_path / "egress.toml"
    path.write_text(demo.egress_config_text(demo.Ports(base)))
    return config.load(path, environ={})


def test_egress_config_is_the_egress_preset_on_loopback(tmp_path: Path) -> None:
    loaded = _egress_loaded(tmp_path)
    ports = demo.Ports(20000)
    assert loaded.preset == "egress"
    assert loaded.workers == 1
    assert loaded.timeouts.drain == 0
    enabled = {listener.name: listener for listener in loaded.enabled_listeners}
    assert set(enabled) == set(demo.EGRESS_LISTENERS)
    assert enabled["egress-socks"].mode == "socks5"
    assert enabled["egress-forward"].mode == "forward"
    for name, listener in enabled.items():
        assert listener.bind == (Address("127.0.0.1", ports[name]),)
        assert listener.egress_sources == ("127.0.0.51", "127.0.0.52")
        assert listener.egress_ports == (ports[demo.SINK],)
        assert listener.users_file is None
    assert loaded.admin.bind == (Address("127.0.0.1", ports["egress-admin"]),)


@pytest.mark.parametrize("name", list(demo.EGRESS_LISTENERS))
def test_egress_policy_reaches_the_mx_stub_and_nothing_else(tmp_path: Path, name: str) -> None:
    listener = next(x for x in _egress_loaded(tmp_path).enabled_listeners if x.name == name)
    policy = policy_of(listener)
    sink = demo.Ports(20000)[demo.SINK]
    assert policy.client_allowed("127.0.0.1")
    assert not policy.client_allowed("127.0.0.3")
    assert policy.destination_refusal(demo.SINK_HOST, sink) is None
    assert policy.destination_refusal(demo.SINK_HOST, 25) == "port-not-allowed"
    # The client's own address, and the private and link-local ranges, stay denied.
    for denied in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.1.1"):
        assert policy.destination_refusal(denied, sink) == "destination-denied", denied
    assert policy.source_for(None, 4).address == "127.0.0.51"
    assert policy.source_for("127.0.0.52", 4).address == "127.0.0.52"
    assert policy.source_for("127.0.0.53", 4).refusal == "source-not-allowed"
    # The default list but loopback: nothing else is opened for the demo.
    not_loopback = tuple(network for network in DEFAULT_DENY_DESTINATIONS
                         if not ipaddress.ip_network(network).is_loopback)
    assert not_loopback == demo.DEMO_DENY_DESTINATIONS


def test_guide_names_every_port_and_prints_only_runnable_commands() -> None:
    ports = demo.Ports(30000)
    text = demo.guide_text(ports, Path("/tmp/x/tls/localhost.pem"),
                           Path("/tmp/x/message.eml"), PYTHON)
    assert text.rstrip("\n").endswith(demo.GUIDE_LAST_LINE)
    assert "{" not in text.replace('{"message": {"to"', "").replace("}}", "")
    commands = guide_commands(text)
    assert commands
    for command in commands:
        assert shlex.split(command)[0] in GUIDE_COMMANDS, command
    joined = "\n".join(commands)
    for name in ("http", "https", "smtp25", "smtp587", "smtp587-proxied", "admin", "mta-http",
                 "egress-socks"):
        assert f"127.0.0.1:{ports[name]}" in joined, name
    assert f"nc 127.0.0.1 {ports['egress-forward']}" in joined
    assert f"127.0.0.250:{ports[demo.SINK]}" in joined
    assert f'"127.0.0.1", {ports["smtp587"]}' in joined  # the smtplib line
    assert f"curl -sk https://127.0.0.1:{ports['https']}/api/v1/send.json" in joined
    assert f"http://127.0.0.1:{ports['admin']}/metrics" in joined
    assert "/tmp/x/tls/localhost.pem" in text


def test_guide_smtplib_line_is_valid_python() -> None:
    text = demo.guide_text(demo.Ports(20000), Path("/c.pem"))
    line = next(c for c in guide_commands(text) if c.startswith("python3 -c"))
    code = shlex.split(line)[2]
    compile(code, "<guide>", "exec")
    assert "\\n" in code  # the message's line ends reach Python as escapes, not raw newlines


def _egress_commands(text: str) -> list[list[str]]:
    return [shlex.split(c) for c in guide_commands(text)
            if "--socks5" in c or "egress_try" in c or c.startswith("printf")]


def test_guide_egress_commands_show_both_sources() -> None:
    ports = demo.Ports(20000)
    text = demo.guide_text(ports, Path("/c.pem"), Path("/tmp/d x/message.eml"), PYTHON)
    curl, bind, raw, forward = _egress_commands(text)
    # curl's SOCKS5 is CONNECT alone: the default source; the others name the other one.
    assert curl[:2] == ["curl", "-sv"]
    assert curl[curl.index("--socks5") + 1] == f"127.0.0.1:{ports['egress-socks']}"
    assert f"smtp://127.0.0.250:{ports[demo.SINK]}" in curl
    assert curl[curl.index("--upload-file") + 1] == "/tmp/d x/message.eml"
    assert bind[:3] == [PYTHON, "-m", "ingress.demo.egress_try"]
    assert bind[bind.index("--source") + 1] == demo.EGRESS_SOURCES[1]
    assert forward[forward.index("--forward") + 1] == f"127.0.0.1:{ports['egress-forward']}"
    assert forward[forward.index("--source") + 1] == demo.EGRESS_SOURCES[1]
    # The printf line's format reaches printf with its escapes, and is the v1 header's form.
    assert raw[0] == "printf"
    assert raw[1] == (f"PROXY TCP4 127.0.0.52 127.0.0.250 40000 {ports[demo.SINK]}"
                      "\\r\\nQUIT\\r\\n")
    assert raw[2:] == ["|", "nc", "127.0.0.1", str(ports["egress-forward"])]


def test_demo_message_is_crlf_text() -> None:
    assert demo.MESSAGE.endswith(b"\r\n")
    assert b"\n" not in demo.MESSAGE.replace(b"\r\n", b"")
