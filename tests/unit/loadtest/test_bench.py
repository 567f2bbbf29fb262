"""loadtest/bench.py's command line: the --floor burns."""

from __future__ import annotations

import argparse

import pytest

from loadtest.bench import parse_burns


@pytest.mark.parametrize(("text", "burns"), [("0", [0.0]), ("0,8,16", [0.0, 8.0, 16.0]),
                                             ("2.5", [2.5])])
def test_floor_burns(text: str, burns: list[float]) -> None:
    assert parse_burns(text) == burns


@pytest.mark.parametrize("text", ["x", "-1", "8,8", "inf", "nan"])
def test_floor_burns_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_burns(text)
