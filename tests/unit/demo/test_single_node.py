"""The demo's pure parts: the port block, its messages, its configuration and its guide."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ingress import config
from ingress.config import Address
from ingress.demo import single_node as demo

GUIDE_COMMANDS = ("curl", "swaks", "python3")


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
    ("event-tracker-smtp", "the event-tracker SMTP stub"), ("tls-http", "the tls HTTP stub")])
def test_describe(name: str, text: str) -> None:
    assert demo.describe(name) == text


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


def test_guide_names_every_port_and_prints_only_runnable_commands() -> None:
    ports = demo.Ports(30000)
    text = demo.guide_text(ports, Path("/tmp/x/tls/localhost.pem"))
    assert text.rstrip("\n").endswith(demo.GUIDE_LAST_LINE)
    assert "{" not in text.replace('{"message": {"to"', "").replace("}}", "")
    commands = guide_commands(text)
    assert commands
    for command in commands:
        assert shlex.split(command)[0] in GUIDE_COMMANDS, command
    joined = "\n".join(commands)
    for name in ("http", "https", "smtp25", "smtp587", "smtp587-proxied", "admin", "mta-http"):
        assert f"127.0.0.1:{ports[name]}" in joined, name
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
