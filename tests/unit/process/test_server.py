"""ingress.process.server: how many workers the CPU limit and affinity allow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingress import config
from ingress.process import server

# --- CPU limit -----------------------------------------------------------------------------------


@pytest.fixture
def four_cpus(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    return 4


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", 4), ("150000 100000\n", 2), ("50000 100000\n", 1), ("1000 100000\n", 1),
     ("400000 100000\n", 4), ("800000 100000\n", 4), ("300001 100000\n", 4),
     ("200000 100000\n", 2), ("garbage\n", 4), ("", 4)],
)
def test_cpu_limit(tmp_path: Path, four_cpus: int, cpu_max: str, expected: int) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert server.cpu_limit(tmp_path) == expected


def test_cpu_limit_without_cgroup_file(tmp_path: Path, four_cpus: int) -> None:
    assert server.cpu_limit(tmp_path) == four_cpus


def test_cpu_limit_is_capped_by_affinity(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert server.cpu_limit(tmp_path) == 1


def test_cpu_limit_real_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert server.cpu_limit(tmp_path) == len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert server.cpu_limit(tmp_path) == min(len(os.sched_getaffinity(0)), 2)


def test_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "cpu_limit", lambda: 6)
    assert server.worker_count(config.load(None, environ={})) == 6
    assert server.worker_count(config.load(None, environ={"MTA_INGRESS_WORKERS": "3"})) == 3
