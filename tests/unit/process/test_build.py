"""ingress.process.build: which build runs, and stale in-place extensions."""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path

import ingress.process.server  # noqa: F401  (loads the request path)
from ingress.process.build import PACKAGES, build_name, is_compiled, stale_extensions

ROOT = Path(__file__).resolve().parents[3]


def compiled_module_paths() -> list[str]:
    """What setup.py compiles: source files relative to the project root."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        modules: list[str] = tomllib.load(file)["tool"]["mta-ingress"]["compiled_modules"]
    return modules


def test_every_listed_module_is_a_package_source() -> None:
    modules = compiled_module_paths()
    assert modules
    for path in modules:
        assert (ROOT / path).is_file(), path
        assert path.split("/")[0] in PACKAGES


def test_the_build_name_says_what_every_listed_module_is() -> None:
    names = [path.removesuffix(".py").replace("/", ".") for path in compiled_module_paths()]
    for name in names:
        importlib.import_module(name)
    compiled = [is_compiled(name) for name in names]
    # All or nothing: a half-compiled tree would be a build that no command makes.
    assert compiled == [build_name() == "compiled"] * len(compiled)


def test_an_extension_older_than_its_source_is_stale(tmp_path: Path) -> None:
    package = tmp_path / "ingress"
    package.mkdir()
    for name in ("fresh", "stale"):
        (package / f"{name}.py").write_text("")
        (package / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    # the shared runtime library has no source of its own
    (package / "_compiled__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    os.utime(package / "stale.cpython-311-x86_64-linux-gnu.so", (1_000_000, 1_000_000))
    os.utime(package / "fresh.py", (1_000_000, 1_000_000))
    assert stale_extensions(tmp_path) == [package / "stale.cpython-311-x86_64-linux-gnu.so"]


def test_a_module_never_imported_is_not_compiled() -> None:
    assert not is_compiled("ingress.no_such_module")
