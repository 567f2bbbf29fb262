"""``mta-ingress certs status``: what the certificate directory holds, as an operator reads it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from tls import acme
from tls.settings import TlsConfig
from tls.store import CertificateError, candidate_files, load_certificate_file

# Exit statuses of `certs status` (1 is every command's invalid configuration, 2 argparse's
# usage error): a probe or a script can tell a refused file from having no certificate at all.
EXIT_OK = 0
EXIT_REFUSED = 3  # some file is refused; the others are served
EXIT_NONE_USABLE = 4  # no certificate is usable: HTTPS serves the self-signed fallback


@dataclass(frozen=True, slots=True)
class Report:
    text: str
    served: int
    refused: int

    @property
    def exit_code(self) -> int:
        if not self.served:
            return EXIT_NONE_USABLE
        return EXIT_REFUSED if self.refused else EXIT_OK


def report(tls: TlsConfig, now: datetime.datetime | None = None) -> Report:
    """One row per file, in the order the store loads them; a file the store would refuse is
    listed with the reason, since that is what an operator looking at this needs most."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory = Path(tls.cert_dir)
    fallback = "HTTPS serves the self-signed fallback"
    if not directory.exists():
        return Report(f"{directory}: the directory does not exist ({fallback})\n", 0, 0)
    if not directory.is_dir():
        return Report(f"{directory}: not a directory ({fallback})\n", 0, 0)
    try:
        names = candidate_files(directory)
    except OSError as error:
        return Report(f"{directory}: cannot read the directory: {error.strerror or error} "
                      f"({fallback})\n", 0, 0)
    if not names:
        what = ("the directory is empty (no certificate files)" if not any(directory.iterdir())
                else "no certificate files (only what the store skips: subdirectories, dot "
                     "files, *.key, *.issuer, *.ocsp, *.sctl)")
        return Report(f"{directory}: {what} ({fallback})\n", 0, 0)
    managed = (acme.certificate_file_name(tls.acme.domains)
               if tls.acme.enabled and tls.acme.domains else None)
    rows = [("FILE", "NAMES", "ISSUER", "EXPIRES", "DAYS LEFT", "NEXT RENEWAL")]
    refused = 0
    for name in names:
        try:
            certificate = load_certificate_file(directory, name)
        except CertificateError as error:
            rows.append((name, "-", "-", "-", "-", f"NOT SERVED: {error}"))
            refused += 1
            continue
        left = (certificate.not_after - now).total_seconds() / 86400
        if name == managed:
            due = acme.renewal_time(certificate.not_before, certificate.not_after)
            renewal = f"acme {_time(due)}" + (" (due now)" if due <= now else "")
        else:
            renewal = "- (written by another party)"
        rows.append((name, ",".join(certificate.names), _issuer_name(certificate.issuer),
                     _time(certificate.not_after), f"{left:.1f}", renewal))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    text = "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  " + row[-1] + "\n" for row in rows)
    served = len(names) - refused
    if not served:
        text += f"{directory}: every certificate file is refused ({fallback})\n"
    return Report(text, served, refused)


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _issuer_name(rfc4514: str) -> str:
    """The issuer's common name, which is how operators know their CAs (the whole name else)."""
    try:
        names = x509.Name.from_rfc4514_string(rfc4514).get_attributes_for_oid(
            NameOID.COMMON_NAME)
    except ValueError:
        return rfc4514
    return str(names[0].value) if names else rfc4514
