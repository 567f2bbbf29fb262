"""The tree's import rules (docs/architecture.md, "The tree"), held against every import.

A folder may import only the folders its line in the docs names; an import that runs back up
(tls/ taking a type from ingress/, protocol/ reaching for a socket shell) or a new loop fails
here, with the file and the import, before a reviewer has to find it in a picture.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("protocol", "proxy", "process", "config", "ops", "demo")
# What each folder may import besides itself: docs/architecture.md, "The tree".
ALLOWED: dict[str, frozenset[str]] = {
    "ingress": frozenset({"ingress/" + role for role in ROLES} | {"tls", "routing"}),
    "ingress/protocol": frozenset(),
    "ingress/proxy": frozenset({"ingress/protocol", "ingress/ops", "ingress/config", "routing",
                                "tls"}),
    "ingress/process": frozenset({"ingress/proxy", "ingress/protocol", "ingress/ops",
                                  "ingress/config", "routing", "tls"}),
    "ingress/config": frozenset({"routing", "tls"}),
    "ingress/ops": frozenset(),
    "ingress/demo": frozenset({"ingress/protocol", "ingress/ops", "ingress/config", "tls"}),
    "tls": frozenset({"routing"}),
    "routing": frozenset(),
}
# Modules that pure protocol code must not import: it gets bytes and returns values. ``socket``
# stays allowed for its address families and inet_pton/inet_ntop, the PROXY codec's vocabulary;
# making a socket is refused by the test below.
IO_MODULES = frozenset({"asyncio", "ssl", "selectors", "uvloop", "time", "threading"})
SOCKET_MAKERS = frozenset({"socket", "create_connection", "create_server", "socketpair",
                           "fromfd"})


def folder_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "ingress" and len(parts) > 1 and parts[1] in ROLES:
        return f"ingress/{parts[1]}"
    return parts[0]


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of the file, the function-level ones included; for
    ``from package import name`` both the package and ``package.name``, which may be a module
    (``from ingress.config import presets``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def sources() -> list[Path]:
    return sorted(path for package in ("ingress", "tls", "routing")
                  for path in (ROOT / package).rglob("*.py"))


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", sources(), ids=lambda path: str(path.relative_to(ROOT)))
def test_a_folder_imports_only_what_its_rule_allows(path: Path) -> None:
    here = folder_of(module_of(path))
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: imports {module} ({folder_of(module)})"
        for line, module in imports(path)
        # ``ingress`` itself is the package face: __version__, importing nothing.
        if module != "ingress" and folder_of(module) in ALLOWED and folder_of(module) != here
        and folder_of(module) not in ALLOWED[here]
    ]
    assert wrong == []


@pytest.mark.parametrize("path", sorted((ROOT / "ingress" / "protocol").rglob("*.py")),
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_protocol_code_does_no_io(path: Path) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
             for line, module in imports(path) if module.split(".")[0] in IO_MODULES]
    wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: makes a socket"
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "socket" and node.attr in SOCKET_MAKERS]
    assert wrong == []


def test_no_import_loop_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    known = {module_of(path).removesuffix(".__init__"): path for path in sources()}
    for name, path in known.items():
        named = {module for _, module in imports(path)}
        # ``from ingress.config import presets`` imports the module, not the package's face.
        graph[name] = {module for module in named if module in known
                       and not any(other.startswith(module + ".") for other in named
                                   if other in known)} - {name}

    loops: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            # A package face importing its own modules is how the package is built, not a loop.
            if name == target.rsplit(".", 1)[0]:
                continue
            if state.get(target) == 1:
                loops.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert loops == []
