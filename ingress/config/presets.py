"""Presets: whole configurations that a file then adjusts.

``greenarrow`` is the drop-in for the HAProxy Deployment of GreenArrow's Kubernetes Reference
Architecture (docs/kra-ingress-contract.md in the shared docs): the same eight listeners, the same
backends behind the release's ClusterIP Services, PROXY v1 towards the SMTP services.

``kumomta`` fronts a KumoMTA (kumod) StatefulSet through its Service ``kumomta_service``: the same
listener ports, SMTP to kumod's ESMTP listener with a PROXY v2 header, HTTP and HTTPS to its HTTP
listener (the injection API); see "The kumomta preset" in docs/configuration.md.

``egress`` is the proxy tier that sends the MTAs' outbound mail from the host's public addresses:
a SOCKS5 listener (as KumoMTA's KumoProxy) and a PROXY-header forward listener (as HAProxy in
KumoMTA's and GreenArrow's proxy mode), no ingress listener; see docs/egress.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Tree = dict[str, Any]

DEFAULT_KUMOMTA_SERVICE = "kumod"
# The contract's readiness probe path; every preset answers it locally, so that one Deployment
# manifest (readinessProbe on port 10080) fits them all.
_READINESS = {"path_prefix": "/.kubernetes-readiness-probe", "return": "readiness"}


@dataclass(frozen=True, slots=True)
class Settings:
    """The top-level keys that shape a preset's tree (each preset reads only its own)."""

    release: str
    kumomta_service: str = DEFAULT_KUMOMTA_SERVICE


def _listener(port: int, mode: str, proxied: bool, **extra: Any) -> Tree:
    return {"bind": [f"0.0.0.0:{port}"], "mode": mode, "accept_proxy": proxied, **extra}


def _contract_listeners(*, smtp25: str, smtp587: str, routes: str) -> Tree:
    """The contract's eight listeners (every preset keeps its ports): SMTP 25 and 587, HTTP and
    HTTPS, each plain (100xx) and behind a PROXY-protocol load balancer (110xx)."""
    return {
        "smtp25": _listener(10025, "tcp", False, backend=smtp25),
        "smtp25-proxied": _listener(11025, "tcp", True, backend=smtp25),
        "smtp587": _listener(10587, "tcp", False, backend=smtp587),
        "smtp587-proxied": _listener(11587, "tcp", True, backend=smtp587),
        "http": _listener(10080, "http", False, routes=routes),
        "http-proxied": _listener(11080, "http", True, routes=routes),
        "https": _listener(10443, "http", False, tls=True, routes=routes),
        "https-proxied": _listener(11443, "http", True, tls=True, routes=routes),
    }


def _greenarrow(settings: Settings) -> Tree:
    release = settings.release
    mta = f"{release}-ingress-mta"
    event_tracker = f"{release}-ingress-event-tracker"
    tls_service = f"{release}-ingress-tls"

    return {
        "preset": "greenarrow",
        "release": release,
        "listeners": _contract_listeners(smtp25="event-tracker-smtp", smtp587="mta-smtp",
                                         routes="greenarrow"),
        "backends": {
            "mta-smtp": {"servers": [f"{mta}:587"], "send_proxy": "v1"},
            "event-tracker-smtp": {"servers": [f"{event_tracker}:25"], "send_proxy": "v1"},
            "mta-http": {"servers": [f"{mta}:80"], "send_proxy": "none"},
            "event-tracker-http": {"servers": [f"{event_tracker}:80"], "send_proxy": "none"},
            "tls-http": {"servers": [f"{tls_service}:80"], "send_proxy": "none"},
        },
        # The contract's order: local answers first, then routes, first match wins.
        "routes": {
            "greenarrow": [
                dict(_READINESS),
                {"path_prefix": "/greenarrowadmin/h/stats_", "return": "stats-unavailable"},
                {"path_prefix": "/ga/eui/disk_queue_summary", "return": "stats-unavailable"},
                {"path_prefix": "/ga/eui/dynamic_deliveries", "return": "stats-unavailable"},
                {"path_prefix": "/api/v1/send.json", "backend": "mta-http"},
                {"path_prefix": "/.lets_encrypt_challenge_preflight", "backend": "tls-http"},
                {"path_prefix": "/.well-known/acme-challenge/", "backend": "tls-http"},
                {"backend": "event-tracker-http"},
            ],
        },
    }


def _kumomta(settings: Settings) -> Tree:
    service = settings.kumomta_service
    # kumod has one ESMTP listener for relaying and submission alike (who may relay is its
    # relay_hosts and SMTP AUTH, decided on the address in the PROXY header), so both public SMTP
    # ports go to one backend. Port 25 is the Service's port; kumod itself may listen elsewhere
    # (2500 in the seed's demo chart) behind the Service's targetPort.
    return {
        "preset": "kumomta",
        "release": settings.release,
        "kumomta_service": service,
        "listeners": _contract_listeners(smtp25="kumod-smtp", smtp587="kumod-smtp",
                                         routes="kumomta"),
        "backends": {
            # v2: kumod's require_proxy_protocol reads v1 and v2, and v2 is the binary form
            # (no text parsing on kumod's side, room for TLVs later).
            "kumod-smtp": {"servers": [f"{service}:25"], "send_proxy": "v2"},
            "kumod-http": {"servers": [f"{service}:8000"], "send_proxy": "none"},
        },
        # No path is kept from kumod: its HTTP listener authenticates every request itself
        # (basic auth), so the ingress only answers its own readiness probe.
        "routes": {
            "kumomta": [dict(_READINESS), {"backend": "kumod-http"}],
        },
    }


def _egress(settings: Settings) -> Tree:
    # The sending addresses and the MTAs' networks are this host's and this cluster's: no
    # default could be right, so the file must name them (validation says so) and until it does
    # nothing is relayed. KumoProxy's customary port for SOCKS5; 2526 for the PROXY-header mode.
    return {
        "preset": "egress",
        "release": settings.release,
        "listeners": {
            "egress-socks": {"bind": ["0.0.0.0:5000"], "mode": "socks5"},
            "egress-forward": {"bind": ["0.0.0.0:2526"], "mode": "forward"},
        },
        "backends": {},
        "routes": {},
    }


def _none(settings: Settings) -> Tree:
    return {"preset": "none", "release": settings.release, "listeners": {}, "backends": {},
            "routes": {}}


_PRESETS: dict[str, Callable[[Settings], Tree]] = {
    "greenarrow": _greenarrow, "kumomta": _kumomta, "egress": _egress, "none": _none}
NAMES = tuple(_PRESETS)


def build(name: str, release: str, *, kumomta_service: str = DEFAULT_KUMOMTA_SERVICE) -> Tree:
    """A fresh tree for the preset; raises KeyError for an unknown name."""
    return _PRESETS[name](Settings(release=release, kumomta_service=kumomta_service))
