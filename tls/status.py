"""``mta-ingress certs status``: what the certificate directory holds, as an operator reads it."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ingress.config import TlsConfig
from tls import acme
from tls.store import CertificateError, candidate_files, load_certificate_file


def report(tls: TlsConfig, now: datetime.datetime | None = None) -> str:
    """One row per file, in the order the store loads them; a file the store would refuse is
    listed with the reason, since that is what an operator looking at this needs most."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory = Path(tls.cert_dir)
    managed = (acme.certificate_file_name(tls.acme.domains)
               if tls.acme.enabled and tls.acme.domains else None)
    rows = [("FILE", "NAMES", "ISSUER", "EXPIRES", "DAYS LEFT", "NEXT RENEWAL")]
    for name in candidate_files(directory):
        try:
            certificate = load_certificate_file(directory, name)
        except CertificateError as error:
            rows.append((name, "-", "-", "-", "-", f"NOT SERVED: {error}"))
            continue
        left = (certificate.not_after - now).total_seconds() / 86400
        if name == managed:
            due = acme.renewal_time(certificate.not_before, certificate.not_after)
            renewal = f"acme {_time(due)}" + (" (due now)" if due <= now else "")
        else:
            renewal = "- (written by another party)"
        rows.append((name, ",".join(certificate.names), _issuer_name(certificate.issuer),
                     _time(certificate.not_after), f"{left:.1f}", renewal))
    if len(rows) == 1:
        return f"{directory}: no certificate files (HTTPS serves the self-signed fallback)\n"
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  " + row[-1] + "\n" for row in rows)


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
