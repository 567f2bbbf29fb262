"""Route table: which backend, or which local answer, an HTTP request gets.  Pure.

Rules are tried in order and the first match wins, as HAProxy's ``use_backend`` lines and
``http-request return`` rules are.  A rule matches on

- ``path_prefix``: the raw request path (the bytes of the target before ``?``), compared
  byte for byte, case-sensitive, without percent-decoding, like HAProxy's ``path_beg``;
- ``host``: the Host header, case-insensitive, port and trailing dot ignored; ``*.example.org``
  matches one label deep (``a.example.org``, not ``a.b.example.org`` nor ``example.org``).

A rule with neither matches every request.  A matching rule either names a backend or carries a
local answer; local answers are placed before routes by the configuration (readiness and
blocked paths must never reach a backend), which is what HAProxy's ordering of ``http-request``
rules before ``use_backend`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

READINESS = "readiness"
STATS_UNAVAILABLE = "stats-unavailable"

STATS_UNAVAILABLE_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Statistics unavailable</title></head>\n"
    b"<body><p>Per-instance statistics are not available in a cluster: each GreenArrow "
    b"instance sees only part of the traffic. Use Event Delivery and the Prometheus or StatsD "
    b"integration instead.</p></body></html>\n"
)


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A response the ingress gives itself.  ``kind`` READINESS turns into 503 while draining."""

    kind: str
    status: int
    content_type: bytes
    body: bytes


BUILTIN_ANSWERS = {
    READINESS: LocalAnswer(READINESS, 200, b"text/plain", b"ready\n"),
    STATS_UNAVAILABLE: LocalAnswer(STATS_UNAVAILABLE, 200, b"text/html", STATS_UNAVAILABLE_PAGE),
}


@dataclass(frozen=True, slots=True)
class Rule:
    path_prefix: bytes | None
    host: bytes | None
    backend: str | None
    answer: LocalAnswer | None
    # How metrics name the rule: its path prefix, else its host, else "*" (from the
    # configuration, so the number of labels is bounded whatever the traffic).
    label: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        label = (self.path_prefix or self.host or b"*").decode("latin-1")
        if self.path_prefix is not None and self.host is not None:
            label = f"{self.host.decode('latin-1')}{label}"
        object.__setattr__(self, "label", label)

    def matches(self, path: bytes, host: bytes | None) -> bool:
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.host is None:
            return True
        if host is None:
            return False
        return host_matches(self.host, normalize_host(host))


def normalize_host(host: bytes) -> bytes:
    """Host header value -> lowercase name without port or trailing dot."""
    if host.startswith(b"["):
        end = host.find(b"]")
        name = host[: end + 1] if end >= 0 else host
    else:
        name = host.rpartition(b":")[0] if b":" in host else host
    return name.rstrip(b".").lower()


def host_matches(pattern: bytes, host: bytes) -> bool:
    if pattern.startswith(b"*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and b"." not in host[: -len(suffix)] and \
            len(host) > len(suffix)
    return host == pattern


class RouteTable:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        # A shortcut for the usual table, path prefixes followed by a default: a path that
        # starts with none of the prefixes before the first rule matching everything gets that
        # rule, found with one startswith() in C instead of a call per rule. Only when no rule
        # before it looks at Host (a rule with a host could match such a path).
        self._prefixes: tuple[bytes, ...] | None = None
        self._default: Rule | None = None
        prefixes: list[bytes] = []
        for rule in self.rules:
            if rule.host is not None:
                return
            if rule.path_prefix is None:
                self._default = rule
                break
            prefixes.append(rule.path_prefix)
        self._prefixes = tuple(prefixes)

    def match(self, path: bytes, host: bytes | None) -> Rule | None:
        if self._prefixes is not None and not path.startswith(self._prefixes):
            return self._default
        for rule in self.rules:
            if rule.matches(path, host):
                return rule
        return None
