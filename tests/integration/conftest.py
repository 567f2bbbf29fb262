"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.origin import Cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """The three HTTP origins of the greenarrow preset, running."""
    nodes = Cluster()
    with nodes.mta, nodes.event_tracker, nodes.tls:
        yield nodes
