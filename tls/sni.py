"""Which certificate answers a TLS server name (pure).

Certificates are indexed by their names, normalised: lowercase, no trailing dot, wildcards kept
as ``*.example.org``. A client's SNI is looked up exactly first, then as the wildcard one label
up: ``*.example.org`` covers ``a.example.org`` but neither ``example.org`` nor
``a.b.example.org`` (RFC 6125 section 6.4.3, and what HAProxy does). No SNI, or no match,
gets the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def normalize(name: str | None) -> str | None:
    """The form names are indexed and looked up by; None for no usable name."""
    if not name:
        return None
    name = name.rstrip(".").lower()
    return name or None


def lookup_keys(server_name: str | None) -> tuple[str, ...]:
    """The index keys a server name may match, in the order they are tried."""
    name = normalize(server_name)
    if name is None:
        return ()
    label, dot, parent = name.partition(".")
    if not dot or not label or not parent or name.startswith("*"):
        return (name,)
    return (name, f"*.{parent}")


def select(index: Mapping[str, T], server_name: str | None, default: T) -> T:
    for key in lookup_keys(server_name):
        found = index.get(key)
        if found is not None:
            return found
    return default
