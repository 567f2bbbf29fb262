"""``mta-ingress certs status``: one row per file, refused files with their reason."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingress.cli import main
from tls import selfsigned, status
from tls.settings import AcmeConfig, TlsConfig


def test_rows_for_served_refused_and_acme_files(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)  # the certificates below are made from now
    (tmp_path / "a.pem").write_bytes(selfsigned.generate(("a.mail.test", "b.mail.test")))
    (tmp_path / "acme-track.mail.test.pem").write_bytes(selfsigned.generate(
        ("track.mail.test",), validity=datetime.timedelta(days=90)))
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    (tmp_path / ".hidden.pem").write_bytes(b"skipped by the store's rules")
    tls = TlsConfig(cert_dir=str(tmp_path), acme=AcmeConfig(
        enabled=True, domains=("track.mail.test",)))
    result = status.report(tls, now)
    assert (result.served, result.refused, result.exit_code) == (2, 1, status.EXIT_REFUSED)
    lines = result.text.splitlines()
    assert lines[0].split() == ["FILE", "NAMES", "ISSUER", "EXPIRES", "DAYS", "LEFT", "NEXT",
                                "RENEWAL"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"a.pem", "acme-track.mail.test.pem", "broken.pem"}
    assert "a.mail.test,b.mail.test" in rows["a.pem"]
    assert "written by another party" in rows["a.pem"]
    # renewal when a third of the lifetime (90 days and the hour it was back-dated) is left
    expected = now + datetime.timedelta(days=60) - datetime.timedelta(hours=1) / 3
    shown = datetime.datetime.strptime(rows["acme-track.mail.test.pem"].split("acme ")[-1],
                                       "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs(shown - expected) < datetime.timedelta(minutes=1)
    assert " 90.0 " in rows["acme-track.mail.test.pem"]
    assert "NOT SERVED" in rows["broken.pem"]


def test_missing_and_empty_directories_are_told_apart(tmp_path: Path) -> None:
    missing = status.report(TlsConfig(cert_dir=str(tmp_path / "none")))
    assert missing.text == (f"{tmp_path / 'none'}: the directory does not exist (HTTPS serves "
                            "the self-signed fallback)\n")
    assert missing.exit_code == status.EXIT_NONE_USABLE
    empty = status.report(TlsConfig(cert_dir=str(tmp_path)))
    assert empty.text == (f"{tmp_path}: the directory is empty (no certificate files) (HTTPS "
                          "serves the self-signed fallback)\n")
    assert empty.exit_code == status.EXIT_NONE_USABLE
    (tmp_path / "a.pem.key").write_bytes(b"a key without its certificate")
    (tmp_path / ".acme").mkdir()
    skipped = status.report(TlsConfig(cert_dir=str(tmp_path)))
    assert skipped.text.startswith(f"{tmp_path}: no certificate files (only what the store "
                                   "skips: ")
    assert skipped.exit_code == status.EXIT_NONE_USABLE


def test_every_file_refused_means_no_certificate_is_usable(tmp_path: Path) -> None:
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    result = status.report(TlsConfig(cert_dir=str(tmp_path)))
    assert (result.served, result.refused, result.exit_code) == (0, 1, status.EXIT_NONE_USABLE)
    assert "NOT SERVED" in result.text
    assert result.text.endswith(f"{tmp_path}: every certificate file is refused (HTTPS serves "
                                "the self-signed fallback)\n")


def test_cli_takes_the_usual_configuration_options(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.pem").write_bytes(selfsigned.generate(("a.mail.test",)))
    assert main(["certs", "status", "--set", f'tls.cert_dir="{tmp_path}"']) == 0
    out = capsys.readouterr().out
    assert "a.pem" in out


def run_status(cert_dir: Path) -> subprocess.CompletedProcess[str]:
    """``mta-ingress certs status`` in a real process: the exit status is what probes see."""
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("MTA_INGRESS_")}
    return subprocess.run(
        [sys.executable, "-m", "ingress", "certs", "status", "--set",
         f'tls.cert_dir="{cert_dir}"'], capture_output=True, text=True, env=environ,
        timeout=60, check=False)


def test_exit_status_says_whether_every_file_is_served(tmp_path: Path) -> None:
    missing = run_status(tmp_path / "none")
    assert (missing.returncode, missing.stderr) == (status.EXIT_NONE_USABLE, "")
    assert "does not exist" in missing.stdout
    empty = run_status(tmp_path)
    assert empty.returncode == status.EXIT_NONE_USABLE
    assert "is empty (no certificate files)" in empty.stdout
    (tmp_path / "a.pem").write_bytes(selfsigned.generate(("a.mail.test",)))
    assert run_status(tmp_path).returncode == status.EXIT_OK
    (tmp_path / "b.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    refused = run_status(tmp_path)
    assert refused.returncode == status.EXIT_REFUSED
    assert "b.pem" in refused.stdout
    assert "NOT SERVED" in refused.stdout
    (tmp_path / "a.pem").unlink()
    assert run_status(tmp_path).returncode == status.EXIT_NONE_USABLE
    bad = subprocess.run([sys.executable, "-m", "ingress", "certs", "status", "--set",
                          "workers=-1"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 1  # as every command with an invalid configuration


def test_help_gives_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["certs", "status", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for code, meaning in ((status.EXIT_OK, "every certificate file is served"),
                          (1, "the configuration is invalid"),
                          (status.EXIT_REFUSED, "some file is refused"),
                          (status.EXIT_NONE_USABLE, "no certificate is usable")):
        assert f"{code} {meaning}" in text
