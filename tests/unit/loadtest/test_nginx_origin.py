"""loadtest/nginx_origin.py: nginx's stub_status counters, read as the benchmark reads them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.nginx_origin import parse_stub_status

PAGE = ("Active connections: {active} \nserver accepts handled requests\n {accepts} {handled} "
        "{requests} \nReading: 0 Writing: 1 Waiting: 0 \n")


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 99))
def test_the_accepts_and_requests_of_any_page(accepts: int, handled: int, requests: int,
                                              active: int) -> None:
    page = PAGE.format(active=active, accepts=accepts, handled=handled, requests=requests)
    assert parse_stub_status(page) == {"accepts": accepts, "requests": requests}


@pytest.mark.parametrize("page", ["", "<html>404</html>", "server accepts handled requests\n"])
def test_anything_else_is_refused(page: str) -> None:
    with pytest.raises((ValueError, IndexError)):
        parse_stub_status(page)
