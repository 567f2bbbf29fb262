"""Which build is running: the hot-path modules compiled with mypyc, or pure Python.

The list of modules to compile is ``[tool.mta-ingress] compiled_modules`` in pyproject.toml
(setup.py compiles it when ``MTA_INGRESS_COMPILE=1``).  At run time the answer comes from the
modules themselves: one loaded from a C extension is compiled.  The ``ready`` log line says
which build runs, since a pure-Python install is correct but about half as fast per request
(docs/benchmarks.md, "Compiled with mypyc").
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

PACKAGES = ("ingress", "routing", "tls")
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def is_compiled(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None) or ""
    return origin.endswith(_EXTENSION_SUFFIXES)


def build_name() -> str:
    """``compiled`` when the request path's modules were loaded from C extensions, else
    ``python``; meaningful once the server (which imports them) is loaded."""
    request_path = ("ingress.proxy.http", "ingress.protocol.http1.parser", "ingress.proxy.tcp")
    return "compiled" if all(is_compiled(name) for name in request_path) else "python"


def stale_extensions(root: Path) -> list[Path]:
    """C extensions in a source tree (``make compile``) older than their source: Python would
    import them instead of the edited ``.py``."""
    stale = []
    for package in PACKAGES:
        for extension in (root / package).rglob("*.so"):
            source = extension.parent / (extension.name.split(".", 1)[0] + ".py")
            if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
                stale.append(extension)
    return sorted(stale)
