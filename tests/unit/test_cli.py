"""The command line: ``mta-ingress run | check-config | print-config``, ``--version``."""

from __future__ import annotations

import getpass
import io
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress import __version__, config
from ingress.cli import main
from ingress.config.users import parse_users, verify_password

BROKEN = (
    "workers = -1\n"
    "[timeouts]\n"
    'connect = "5 parsecs"\n'
    "[listeners.smtp25]\n"
    'bind = ["localhost:25"]\n'
    "[backends.mta-smtp]\n"
    'send_proxy = "v3"\n'
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads os.environ: no MTA_INGRESS_* of the test run may leak in; and main()
    reconfigures the "mta_ingress" logger, which is put back afterwards."""
    for name in list(os.environ):
        if name.startswith("MTA_INGRESS_"):
            monkeypatch.delenv(name)
    logger = logging.getLogger("mta_ingress")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def write(tmp_path: Path, text: str, name: str = "ingress.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def lines(text: str) -> list[str]:
    return text.splitlines()


# --- --version and usage -------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"mta-ingress {__version__}\n"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_workers_flag_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check-config", "--workers", "many"])
    assert caught.value.code == 2
    assert "--workers" in capsys.readouterr().err


# --- check-config --------------------------------------------------------------------------------


def test_check_config_default_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "configuration ok\n"
    # every listener of the preset is served now, TLS ones included: nothing to warn about
    assert captured.err == ""


def test_check_config_file_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[listeners.smtp587]\nbind = ["127.0.0.1:2587"]\n')
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out == "configuration ok\n"


def test_check_config_lists_every_problem(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BROKEN)
    assert main(["check-config", "--config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert sorted(lines(captured.err)) == sorted([
        f"{path}: workers: must be a whole number from 0 (one per CPU) to 1024, not -1",
        f"{path}: timeouts.connect: '5 parsecs' is not a duration like 500ms, 5s, 1m or 1h",
        f"{path}: listeners.smtp25.bind[0]: 'localhost:25': a listener binds an IP address, "
        "not 'localhost'",
        f"{path}: backends.mta-smtp.send_proxy: must be one of 'v1', 'v2', 'none', not 'v3'",
    ])


def test_check_config_lists_an_unknown_backend_beside_an_invalid_mode(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[listeners.smtp25]\nmode = "udp"\nbackend = "mta"\n')
    assert main(["check-config", "--config", str(path)]) == 1
    assert lines(capsys.readouterr().err) == [
        f"{path}: listeners.smtp25.mode: must be one of 'tcp', 'http', 'socks5', 'forward', "
        "not 'udp'",
        f"{path}: listeners.smtp25.backend: no backend named 'mta' (event-tracker-http, "
        "event-tracker-smtp, mta-http, mta-smtp, tls-http)",
    ]


def test_check_config_names_environment_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MTA_INGRESS_TIMEOUTS_GRACE", "0s")
    monkeypatch.setenv("MTA_INGRESS_CONFIG", str(write(tmp_path, "workers = 2000\n")))
    assert main(["check-config", "--preset", "bogus", "--set", "log_format=xml",
                 "--set", "broken"]) == 1
    assert sorted(lines(capsys.readouterr().err)) == sorted([
        "--set: broken: write key.path=value",
        "flags: preset: unknown preset 'bogus'; choose one of greenarrow, kumomta, egress, none",
        f"{tmp_path / 'ingress.toml'}: workers: must be a whole number from 0 (one per CPU) "
        "to 1024, not 2000",
        "environment: timeouts.grace: must be longer than zero",
        "flags: log_format: must be one of 'logfmt', 'json', not 'xml'",
    ])


def test_check_config_negative_workers_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--workers", "-1"]) == 1
    assert lines(capsys.readouterr().err) == [
        "flags: workers: must be a whole number from 0 (one per CPU) to 1024, not -1"]


def test_check_config_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "workers = = 2\n")
    assert main(["check-config", "--config", str(path)]) == 1
    (line,) = lines(capsys.readouterr().err)
    assert line.startswith(f"{path}: not valid TOML: ")


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check-config", "--config", str(path)]) == 1
    assert lines(capsys.readouterr().err) == [f"{path}: cannot read: No such file or directory"]


def test_run_with_broken_configuration_does_not_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, BROKEN)
    assert main(["run", "--config", str(path)]) == 1
    assert len(lines(capsys.readouterr().err)) == 4


# --- print-config --------------------------------------------------------------------------------


def test_print_config_default_loads_back_equal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["print-config"]) == 0
    text = capsys.readouterr().out
    parsed = tomllib.loads(text)
    assert parsed["preset"] == "greenarrow"
    assert parsed["release"] == "ga1"
    printed = config.load(write(tmp_path, text, "printed.toml"), environ={})
    expected = config.load(None, environ={})
    assert dict(printed.listeners) == dict(expected.listeners)
    assert dict(printed.backends) == dict(expected.backends)
    assert printed.timeouts == expected.timeouts
    assert (printed.workers, printed.release) == (expected.workers, expected.release)
    assert printed == expected


def test_print_config_applies_file_environment_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(tmp_path, 'workers = 1\nrelease = "from-file"\n[timeouts]\nconnect = "2s"\n')
    monkeypatch.setenv("MTA_INGRESS_TIMEOUTS_GRACE", "30s")
    monkeypatch.setenv("MTA_INGRESS_WORKERS", "2")
    assert main(["print-config", "--config", str(path), "--release", "prod", "--workers", "3",
                 "--set", 'listeners.smtp587.bind=["127.0.0.1:2587"]',
                 "--set", "listeners.https-proxied.enabled=false"]) == 0
    parsed = tomllib.loads(capsys.readouterr().out)
    assert parsed["release"] == "prod"
    assert parsed["workers"] == 3
    assert parsed["timeouts"] == {"connect": "2s", "tcp_idle": "5m", "proxy_header": "5s",
                                  "drain": "10s", "grace": "30s", "http_request": "10s",
                                  "http_keep_alive": "1m", "server": "1m",
                                  "socks_handshake": "10s"}
    assert parsed["listeners"]["smtp587"] == {
        "enabled": True, "bind": ["127.0.0.1:2587"], "mode": "tcp", "accept_proxy": False,
        "backend": "mta-smtp", "tls": False, "on_backend_down": "smtp-421",
        "forwarded_for": "append", "forwarded_proto": False, "io_engine": "epoll"}
    assert parsed["listeners"]["https-proxied"]["enabled"] is False
    assert parsed["backends"]["mta-smtp"] == {"servers": ["prod-ingress-mta:587"],
                                              "send_proxy": "v1", "check": True,
                                              "check_interval": "2s", "rise": 2, "fall": 3,
                                              "balance": "roundrobin", "dns_min_ttl": "1s",
                                              "dns_max_ttl": "5m", "dns_grace": "5m"}
    assert parsed["dns"] == {"nameservers": [], "timeout": "2s"}
    assert parsed["backends"]["tls-http"]["servers"] == ["prod-ingress-tls:80"]


def test_print_config_round_trip_with_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, 'log_format = "json"\n[listeners.smtp25]\nbind = ["[::]:2525"]\n'
                           '[backends.event-tracker-smtp]\nsend_proxy = "v2"\n')
    argv = ["--config", str(path), "--release", "prod", "--set", "timeouts.drain=0s"]
    assert main(["print-config", *argv]) == 0
    printed = write(tmp_path, capsys.readouterr().out, "printed.toml")
    expected = config.load(path, environ={}, overrides={"release": "prod"},
                           assignments=["timeouts.drain=0s"])
    assert config.load(printed, environ={}) == expected
    assert main(["check-config", "--config", str(printed)]) == 0


def test_print_config_with_broken_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["print-config", "--set", "workers=-1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err) == [
        "flags: workers: must be a whole number from 0 (one per CPU) to 1024, not -1"]


# --- hash-password -------------------------------------------------------------------------------


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Standard input from a pipe, as ``printf ... | mta-ingress hash-password``."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_hash_password_from_stdin(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, "s3cret p\u00e4ss\nnot this line\n".encode())
    assert main(["hash-password"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    (line,) = lines(captured.out)
    assert line.startswith("scrypt$15$8$1$")
    assert verify_password(line, "s3cret p\u00e4ss".encode())
    assert not verify_password(line, "s3cret p\u00e4ss\n".encode())


def test_hash_password_without_a_final_newline(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"s3cret\r\n")
    assert main(["hash-password"]) == 0
    assert verify_password(capsys.readouterr().out.strip(), b"s3cret")
    stdin(monkeypatch, b"s3cret")
    assert main(["hash-password"]) == 0
    assert verify_password(capsys.readouterr().out.strip(), b"s3cret")


def test_hash_password_user_prints_a_users_file_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"s3cret\n")
    assert main(["hash-password", "--user", "mta-1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mta-1:scrypt$")
    (stored,) = parse_users(out, "stdout").values()
    assert parse_users(out, "stdout") == {b"mta-1": stored}
    assert verify_password(stored, b"s3cret")


@pytest.mark.parametrize("data", [b"", b"\n", b"\nsecond line\n"])
def test_hash_password_refuses_an_empty_password(
        data: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, data)
    assert main(["hash-password", "--user", "mta-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err) == ["hash-password: the password is empty"]


def test_hash_password_refuses_what_rfc_1929_cannot_carry(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"x" * 256 + b"\n")
    assert main(["hash-password"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err) == [
        "hash-password: the password has 256 bytes; RFC 1929 carries at most 255"]


@pytest.mark.parametrize(("user", "problem"), [
    ("", "empty user name"),
    ("a:b", "a user name cannot hold ':' (it ends the name)"),
    ("#mta", "a user name cannot start with '#' (the line would be a comment)"),
    ("x" * 256, "the user name has 256 bytes; RFC 1929 carries at most 255"),
])
def test_hash_password_refuses_a_user_the_file_could_not_hold(
        user: str, problem: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"s3cret\n")
    assert main(["hash-password", "--user", user]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err) == [f"hash-password: --user: {problem}"]


def test_hash_password_asks_twice_on_a_terminal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prompts: list[str] = []
    answers = iter(["s3cret", "s3cret", "s3cret", "s3creT"])

    def typed(prompt: str = "Password: ") -> str:
        prompts.append(prompt)
        return next(answers)

    stdin(monkeypatch, b"")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", typed)
    assert main(["hash-password", "--user", "mta-1"]) == 0
    assert prompts == ["Password: ", "Password again: "]
    user, stored = capsys.readouterr().out.strip().split(":", 1)
    assert user == "mta-1"
    assert verify_password(stored, b"s3cret")

    assert main(["hash-password"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err) == ["hash-password: the two passwords differ"]


def test_hash_password_help_names_the_users_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["hash-password", "--help"])
    assert caught.value.code == 0
    assert "users_file" in " ".join(capsys.readouterr().out.split())


# --- the installed entry points, in a real process -------------------------------------------


def test_console_script_and_module(tmp_path: Path) -> None:
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("MTA_INGRESS_")}
    script = Path(sys.executable).parent / "mta-ingress"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             env=environ, timeout=60, check=False)
    assert (version.returncode, version.stdout) == (0, f"mta-ingress {__version__}\n")

    broken = write(tmp_path, BROKEN, "broken.toml")
    check = subprocess.run([sys.executable, "-m", "ingress", "check-config", "--config",
                            str(broken)], capture_output=True, text=True, env=environ,
                           timeout=60, check=False)
    assert check.returncode == 1
    assert check.stdout == ""
    problems = lines(check.stderr)
    assert len(problems) == 4
    assert all(problem.startswith(f"{broken}: ") for problem in problems)


def test_hash_password_in_a_real_process() -> None:
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("MTA_INGRESS_")}
    script = Path(sys.executable).parent / "mta-ingress"
    done = subprocess.run([str(script), "hash-password", "--user", "mta-1"],
                          input=b"s3cret\n", capture_output=True, env=environ, timeout=60,
                          check=False)
    assert (done.returncode, done.stderr) == (0, b"")
    (stored,) = parse_users(done.stdout.decode(), "stdout").values()
    assert verify_password(stored, b"s3cret")
