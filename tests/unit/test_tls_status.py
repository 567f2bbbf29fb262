"""``mta-ingress certs status``: one row per file, refused files with their reason."""

from __future__ import annotations

import datetime
from pathlib import Path

from ingress.cli import main
from ingress.config import AcmeConfig, TlsConfig
from tls import selfsigned, status


def test_rows_for_served_refused_and_acme_files(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)  # the certificates below are made from now
    (tmp_path / "a.pem").write_bytes(selfsigned.generate(("a.mail.test", "b.mail.test")))
    (tmp_path / "acme-track.mail.test.pem").write_bytes(selfsigned.generate(
        ("track.mail.test",), validity=datetime.timedelta(days=90)))
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    (tmp_path / ".hidden.pem").write_bytes(b"skipped by the store's rules")
    tls = TlsConfig(cert_dir=str(tmp_path), acme=AcmeConfig(
        enabled=True, domains=("track.mail.test",)))
    lines = status.report(tls, now).splitlines()
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


def test_empty_directory_says_self_signed(tmp_path: Path) -> None:
    assert "self-signed fallback" in status.report(TlsConfig(cert_dir=str(tmp_path / "none")))


def test_cli_takes_the_usual_configuration_options(tmp_path: Path,
                                                   capsys: object) -> None:
    (tmp_path / "a.pem").write_bytes(selfsigned.generate(("a.mail.test",)))
    assert main(["certs", "status", "--set", f'tls.cert_dir="{tmp_path}"']) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "a.pem" in out
