"""The certificate served while the certificate directory holds none.

GreenArrow's chart mounts an empty directory when no volume claim is configured, and HTTPS must
still answer (with a certificate no browser trusts, which is the honest state of affairs).
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

VALIDITY = datetime.timedelta(days=365)


def generate(names: tuple[str, ...], now: datetime.datetime | None = None, *,
             key_type: str = "ecdsa", validity: datetime.timedelta = VALIDITY) -> bytes:
    """A self-signed certificate for ``names`` (the first is the CN), followed by its private
    key, in PEM: the one-file format of the certificate directory. ``key_type``: "ecdsa"
    (P-256) or "rsa" (2048 bits, for the benchmark's RSA handshakes)."""
    if not names:
        raise ValueError("a self-signed certificate needs at least one name")
    now = now or datetime.datetime.now(datetime.UTC)
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(65537, 2048) if key_type == "rsa"
        else ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mta-ingress self-signed")])
    alternative: list[x509.GeneralName] = []
    for name in names:
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative.append(x509.DNSName(name))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # a little in the past: clients whose clocks are slightly behind still accept it
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
