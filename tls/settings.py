"""What the certificate store and the ACME client are told: ``[tls]`` and ``[tls.acme]``.

The configuration loader (ingress.config) validates these tables and builds these types; they live
here, with the code that reads them, so that nothing in tls/ imports from ingress/.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the KRA chart mounts the TLS pod's certificates for HAProxy (``ssl crt``).
DEFAULT_CERT_DIR = "/mnt/tls/haproxy"


ACME_DIRECTORY_ALIASES = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """Certificates obtained by the ingress itself (``[tls.acme]``), where no TLS pod exists."""

    enabled: bool = False
    directory: str = ACME_DIRECTORY_ALIASES["production"]
    email: str | None = None
    domains: tuple[str, ...] = ()
    ca_bundle: str | None = None  # CA file for a private ACME server's HTTPS
    expected_addresses: tuple[str, ...] = ()
    key_type: str = "ecdsa"
    retry_initial: float = 60.0
    retry_max: float = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The certificate store shared by every TLS listener (``[tls]``)."""

    cert_dir: str = DEFAULT_CERT_DIR
    default_cert: str | None = None  # a file name in cert_dir; else the first file loaded
    poll_interval: float = 5.0
    # Names of the self-signed certificate served while cert_dir holds none; the loaded
    # configuration always has some (default_self_signed_names when none are configured).
    self_signed_names: tuple[str, ...] = ()
    handshake_timeout: float = 10.0
    acme: AcmeConfig = AcmeConfig()
