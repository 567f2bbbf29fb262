"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Writes a configuration file (or any file) into the test's directory."""
    def write(text: str, name: str = "ingress.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
