"""The configuration's layers before they are merged: a file's tree, ``MTA_INGRESS_*`` variables,
``--set`` assignments; and the merge that remembers where each leaf came from."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any

from ingress.config.schema import Timeouts

ENV_PREFIX = "MTA_INGRESS_"

# --- layering ----------------------------------------------------------------------------------

Tree = dict[str, Any]


def merge(base: Tree, layer: Mapping[str, Any], source: str, origins: dict[str, str],
           prefix: str = "") -> None:
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value, source, origins, path + ".")
        else:
            base[key] = _copy(value)
            for sub in _leaf_paths(value, path):
                origins[sub] = source


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _leaf_paths(value: Any, path: str) -> Iterator[str]:
    yield path
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaf_paths(item, f"{path}.{key}")


def origin_of(origins: Mapping[str, str], path: str) -> str:
    probe = path.split("[", 1)[0]
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"


def _parse_value(text: str) -> Any:
    """A flag or variable value: TOML syntax when it parses (``true``, ``3``, ``["a", "b"]``),
    otherwise the text itself, so that ``--set release=ga2`` needs no quotes."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_path(tree: Tree, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[parts[-1]] = value


_ENV_TEXT = ("preset", "release", "kumomta_service", "log_format")
# Every timeout has its variable: taken from the type, so that a new one cannot be left out.
_TIMEOUT_KEYS = tuple(timeout.name for timeout in fields(Timeouts))


def environment_layer(environ: Mapping[str, str]) -> tuple[Tree, list[str]]:
    """``MTA_INGRESS_WORKERS=2``, ``MTA_INGRESS_TIMEOUTS_GRACE=30s``; ``MTA_INGRESS_SET`` holds
    ``key.path=value`` assignments separated by newlines or ``;`` for anything deeper."""
    layer: Tree = {}
    problems: list[str] = []
    for key in _ENV_TEXT:
        if (value := environ.get(f"{ENV_PREFIX}{key.upper()}")) is not None:
            layer[key] = value
    if (workers := environ.get(f"{ENV_PREFIX}WORKERS")) is not None:
        layer["workers"] = _parse_value(workers)
    for key in _TIMEOUT_KEYS:
        if (value := environ.get(f"{ENV_PREFIX}TIMEOUTS_{key.upper()}")) is not None:
            layer.setdefault("timeouts", {})[key] = value
    for assignment in re.split(r"[;\n]", environ.get(f"{ENV_PREFIX}SET", "")):
        if assignment.strip():
            dotted, sep, value = assignment.strip().partition("=")
            if not sep or not dotted.strip():
                problems.append(f"environment: {ENV_PREFIX}SET: {assignment.strip()!r}: "
                                "write key.path=value")
                continue
            _set_path(layer, dotted.strip(), _parse_value(value.strip()))
    return layer, problems


def assignments_layer(assignments: list[str]) -> tuple[Tree, list[str]]:
    layer: Tree = {}
    problems = []
    for assignment in assignments:
        dotted, sep, value = assignment.partition("=")
        if not sep or not dotted.strip():
            problems.append(f"--set: {assignment}: write key.path=value")
            continue
        _set_path(layer, dotted.strip(), _parse_value(value.strip()))
    return layer, problems
