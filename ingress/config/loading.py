"""Configuration: presets, then a TOML file, then ``MTA_INGRESS_*`` environment, then flags.

Theory of operation
-------------------
Each layer is a plain nested ``dict`` (what ``tomllib`` returns).  The layers are deep-merged
over the preset chosen by the merged top-level ``preset`` key, so that a file table
``[listeners.smtp587]`` with only ``bind`` changes the bind address of the preset's listener and
keeps its backend.  While merging, every leaf remembers which layer set it, so a validation
problem is reported against the file, variable or flag the operator has to fix, as
``SOURCE: key: what is wrong``.  Validation collects every problem before failing: an operator
fixing a broken ConfigMap wants the whole list at once, not one error per restart.

The result is a frozen dataclass tree; nothing reads configuration anywhere else.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingress.config import presets
from ingress.config.layers import ENV_PREFIX, Tree, assignments_layer, environment_layer, merge
from ingress.config.schema import (
    DEFAULT_KUMOMTA_SERVICE,
    DEFAULT_PRESET,
    DEFAULT_RELEASE,
    Config,
    ConfigError,
)
from ingress.config.validation import validate
from ingress.config.values import NAME_RE
from routing.discovery import is_dns_name

# --- loading -----------------------------------------------------------------------------------


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> Config:
    """Build the effective configuration, or raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Tree]] = []
    problems: list[str] = []
    if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        path = environ[f"{ENV_PREFIX}CONFIG"]
    if path is not None:
        try:
            with open(path, "rb") as handle:
                layers.append((str(path), tomllib.load(handle)))
        except OSError as error:
            raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([f"{path}: not valid TOML: {error}"]) from None
    env_layer, env_problems = environment_layer(environ)
    problems += env_problems
    if env_layer:
        layers.append(("environment", env_layer))
    flag_layer: Tree = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            flag_layer[key] = value
    set_layer, set_problems = assignments_layer(assignments or [])
    problems += set_problems
    merge(flag_layer, set_layer, "--set", {})
    if flag_layer:
        layers.append(("flags", flag_layer))

    top: Tree = {}
    for _, layer in layers:
        top.update({k: v for k, v in layer.items()
                    if k in ("preset", "release", "kumomta_service")})
    preset = top.get("preset", DEFAULT_PRESET)
    release = top.get("release", DEFAULT_RELEASE)
    kumomta_service = top.get("kumomta_service", DEFAULT_KUMOMTA_SERVICE)
    origins: dict[str, str] = {}
    if not isinstance(release, str) or not NAME_RE.fullmatch(release):
        release_source = _source_of(layers, "release")
        problems.append(f"{release_source}: release: must be a name like ga1, not {release!r}")
        release = DEFAULT_RELEASE
    if not isinstance(kumomta_service, str) or not is_dns_name(kumomta_service):
        service_source = _source_of(layers, "kumomta_service")
        problems.append(f"{service_source}: kumomta_service: must be a DNS name like kumod or "
                        f"kumod.mail.svc.cluster.local, not {kumomta_service!r}")
        kumomta_service = DEFAULT_KUMOMTA_SERVICE
    try:
        if not isinstance(preset, str):
            raise KeyError(preset)
        tree = presets.build(preset, release, kumomta_service=kumomta_service)
    except KeyError:
        preset_source = _source_of(layers, "preset")
        problems.append(
            f"{preset_source}: preset: unknown preset {preset!r}; "
            f"choose one of {', '.join(presets.NAMES)}"
        )
        preset = "none"
        tree = presets.build(preset, release, kumomta_service=kumomta_service)
    merge({}, tree, f"preset {preset}", origins)
    for source, layer in layers:
        merge(tree, layer, source, origins)
    config = validate(tree, origins, problems)
    if problems:
        raise ConfigError(problems)
    if config is None:
        raise ConfigError(["configuration: invalid"])
    return config


def _source_of(layers: list[tuple[str, Tree]], key: str) -> str:
    source = "defaults"
    for name, layer in layers:
        if key in layer:
            source = name
    return source
