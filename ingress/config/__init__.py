"""The configuration: presets, a TOML file, ``MTA_INGRESS_*`` variables and flags, layered,
validated, and frozen into ``Config`` (theory of operation in ``loading``).

The modules, each importing only those listed before it: ``presets`` (the built-in trees),
``schema`` (the frozen types and their defaults), ``values`` (durations, sizes, addresses),
``layers`` (the layers and their merge), ``validation`` (the merged tree checked and built),
``loading`` (``load``: the whole sequence), ``render`` (``print-config``'s TOML). The rest of the
program imports the names below from here.
"""

from __future__ import annotations

from ingress.config.loading import load
from ingress.config.render import to_toml
from ingress.config.schema import (
    DEFAULT_KUMOMTA_SERVICE,
    DEFAULT_PRESET,
    DEFAULT_RELEASE,
    Address,
    AdminConfig,
    BackendConfig,
    Config,
    ConfigError,
    DnsConfig,
    ListenerConfig,
    Timeouts,
)
from ingress.config.validation import TIMEOUT_DEFAULTS
from ingress.config.values import (
    format_duration,
    parse_address,
    parse_duration,
    parse_nameserver,
    parse_size,
)

__all__ = [
    "DEFAULT_KUMOMTA_SERVICE",
    "DEFAULT_PRESET",
    "DEFAULT_RELEASE",
    "TIMEOUT_DEFAULTS",
    "Address",
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "DnsConfig",
    "ListenerConfig",
    "Timeouts",
    "format_duration",
    "load",
    "parse_address",
    "parse_duration",
    "parse_nameserver",
    "parse_size",
    "to_toml",
]
