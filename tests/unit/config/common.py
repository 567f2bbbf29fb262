"""What the configuration tests share: the preset's names, and the problems a load reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingress import config
from ingress.config import ConfigError

PRESET_LISTENERS = ("smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied", "http",
                    "http-proxied", "https", "https-proxied")
PRESET_BACKENDS = "event-tracker-http, event-tracker-smtp, mta-http, mta-smtp, tls-http"
TOP_KEYS = ("admin, backends, dns, kumomta_service, listeners, log_format, log_normal, preset, "
            "release, routes, timeouts, tls, workers")
LISTENER_KEYS = (
    "accept_proxy, allow_clients, backend, bind, deny_destinations, egress_ports, egress_sources, "
    "enabled, forwarded_for, forwarded_proto, io_engine, max_body, mode, on_backend_down, "
    "routes, tls, users_file")
WORKERS = "must be a whole number from 0 (one per CPU) to 1024, not"




def problems_of(path: Path | str | None = None, **kwargs: Any) -> list[str]:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as caught:
        config.load(path, **kwargs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems
