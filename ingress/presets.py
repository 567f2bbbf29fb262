"""Presets: whole configurations that a file then adjusts.

``greenarrow`` is the drop-in for the HAProxy Deployment of GreenArrow's Kubernetes Reference
Architecture (docs/kra-ingress-contract.md in the shared docs): the same eight listeners, the same
backends behind the release's ClusterIP Services, PROXY v1 towards the SMTP services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Tree = dict[str, Any]


def _greenarrow(release: str) -> Tree:
    mta = f"{release}-ingress-mta"
    event_tracker = f"{release}-ingress-event-tracker"
    tls_service = f"{release}-ingress-tls"

    def listener(port: int, mode: str, proxied: bool, **extra: Any) -> Tree:
        return {"bind": [f"0.0.0.0:{port}"], "mode": mode, "accept_proxy": proxied, **extra}

    return {
        "preset": "greenarrow",
        "release": release,
        "listeners": {
            "smtp25": listener(10025, "tcp", False, backend="event-tracker-smtp"),
            "smtp25-proxied": listener(11025, "tcp", True, backend="event-tracker-smtp"),
            "smtp587": listener(10587, "tcp", False, backend="mta-smtp"),
            "smtp587-proxied": listener(11587, "tcp", True, backend="mta-smtp"),
            "http": listener(10080, "http", False, routes="greenarrow"),
            "http-proxied": listener(11080, "http", True, routes="greenarrow"),
            "https": listener(10443, "http", False, tls=True, routes="greenarrow"),
            "https-proxied": listener(11443, "http", True, tls=True, routes="greenarrow"),
        },
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
                {"path_prefix": "/.kubernetes-readiness-probe", "return": "readiness"},
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


def _none(release: str) -> Tree:
    return {"preset": "none", "release": release, "listeners": {}, "backends": {}, "routes": {}}


_PRESETS: dict[str, Callable[[str], Tree]] = {"greenarrow": _greenarrow, "none": _none}
NAMES = tuple(_PRESETS)


def build(name: str, release: str) -> Tree:
    """A fresh tree for the preset; raises KeyError for an unknown name."""
    return _PRESETS[name](release)
