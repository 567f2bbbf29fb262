"""Which build of mta-ingress the suite tests: compiled in place (`make compile`) or pure Python.

A compiled module older than its source would be tested instead of the edited code, silently:
the session refuses to start then.  ``MTA_INGRESS_EXPECT_BUILD`` (set by `make test` when
``COMPILE`` is 0 or 1) makes a build other than the one asked for an error too, so that CI
cannot pass on the wrong one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ingress.process.server  # noqa: F401  (loads the request path, whose build build_name reports)
from ingress.process.build import build_name, stale_extensions

ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_extensions(ROOT)
    if stale:
        names = ", ".join(str(path.relative_to(ROOT)) for path in stale)
        pytest.exit(f"compiled modules older than their source: {names}; "
                    "run `make compile` (or `make pure` to test pure Python)", returncode=4)
    expected = os.environ.get("MTA_INGRESS_EXPECT_BUILD")
    if expected and expected != build_name():
        pytest.exit(f"the {build_name()} build is loaded, and MTA_INGRESS_EXPECT_BUILD asks for "
                    f"{expected}", returncode=4)


def pytest_report_header() -> str:
    return f"mta-ingress build: {build_name()}"
