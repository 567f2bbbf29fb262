"""The batching of per-request metrics: what flush() writes is what observe() per request would
have written (in a unit test, prometheus_client's single-process values)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.utils import floatToGoString

from ingress import metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@settings(max_examples=30)
@given(st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=40),
       st.sampled_from([200, 204, 302, 404, 503, 0]))
def test_flush_writes_what_observing_each_request_would(durations: list[float],
                                                        status: int) -> None:
    registry = metrics.metrics()
    listener, route, backend = "batch-test", "/r", "b"
    code = metrics.status_class(status)
    before_count = sample("mta_ingress_http_requests_total", listener=listener, route=route,
                          backend=backend, code=code)
    before_buckets = {bound: sample("mta_ingress_http_request_duration_seconds_bucket",
                                    listener=listener, le=floatToGoString(bound))
                      for bound in (*metrics.HTTP_BUCKETS, float("inf"))}
    before_sum = sample("mta_ingress_http_request_duration_seconds_sum", listener=listener)
    for seconds in durations:
        registry.http_request(listener, route, backend, status, seconds)
    registry.flush()
    assert sample("mta_ingress_http_requests_total", listener=listener, route=route,
                  backend=backend, code=code) == before_count + len(durations)
    for bound, before in before_buckets.items():
        # buckets are cumulative in the exposition: every value at or below the bound
        expected = before + sum(1 for seconds in durations if seconds <= bound)
        assert sample("mta_ingress_http_request_duration_seconds_bucket", listener=listener,
                      le=floatToGoString(bound)) == expected
    assert abs(sample("mta_ingress_http_request_duration_seconds_sum", listener=listener)
               - before_sum - sum(durations)) < 1e-6


def test_flush_with_nothing_pending_changes_nothing() -> None:
    registry = metrics.metrics()
    registry.flush()
    before = REGISTRY.get_sample_value("mta_ingress_http_request_duration_seconds_count",
                                       {"listener": "batch-test"})
    registry.flush()
    assert REGISTRY.get_sample_value("mta_ingress_http_request_duration_seconds_count",
                                     {"listener": "batch-test"}) == before
