"""The per-request and per-connection modules, compiled to C with mypyc when asked.

Everything else about the package is in pyproject.toml, the list of these modules too
(``[tool.mta-ingress] compiled_modules``).  ``MTA_INGRESS_COMPILE=1`` turns them into C
extensions (mypyc, from their type hints, unchanged); without it the package is pure Python and
behaves the same, only slower (docs/benchmarks.md, "Compiled with mypyc").  Building compiled
needs mypy, setuptools, a C compiler and the Python headers in the building environment, hence
``--no-build-isolation``:

    MTA_INGRESS_COMPILE=1 pip install --no-build-isolation .      # the image (Dockerfile)
    MTA_INGRESS_COMPILE=1 python setup.py build_ext --inplace     # `make compile`, for tests
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from setuptools import setup

PROJECT = Path(__file__).resolve().parent


def _extensions() -> list[object]:
    if os.environ.get("MTA_INGRESS_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    with (PROJECT / "pyproject.toml").open("rb") as file:
        modules = tomllib.load(file)["tool"]["mta-ingress"]["compiled_modules"]
    # The runtime library mypyc shares between the modules goes inside the package
    # (ingress/_compiled__mypyc*.so): at the top level, an editable install would not find it.
    return list(mypycify(modules, opt_level="3", group_name="ingress._compiled"))


setup(ext_modules=_extensions())
