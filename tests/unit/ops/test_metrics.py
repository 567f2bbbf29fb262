"""The batching of per-request metrics: what flush() writes is what observe() per request would
have written (in a unit test, prometheus_client's single-process values)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.utils import floatToGoString

from ingress.ops import metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@settings(max_examples=30)
@given(st.lists(st.floats(min_value=0, max_value=120, allow_nan=False)
                # a value on a bound belongs to that bound's bucket
                | st.sampled_from(metrics.HTTP_BUCKETS), max_size=40),
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


@settings(max_examples=30)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000),
                          st.floats(min_value=0, max_value=4000, allow_nan=False),
                          st.sampled_from(["closed", "client-closed", "server-reset"])),
                max_size=30),
       st.integers(0, 5))
def test_flush_writes_what_each_connection_and_session_would(
        sessions: list[tuple[int, int, float, str]], still_open: int) -> None:
    """Connections opened (some still open) and SMTP sessions ended, batched: the counters, the
    active gauge, the byte counters, the session counts and the duration histogram move by
    what writing each event at once would have added."""
    registry = metrics.metrics()
    listener, backend = "tcp-batch-test", "b"
    names = {
        "opened": ("mta_ingress_connections_total", {"listener": listener}),
        "active": ("mta_ingress_connections_active", {"listener": listener}),
        "received": ("mta_ingress_received_bytes_total", {"listener": listener}),
        "sent": ("mta_ingress_sent_bytes_total", {"listener": listener}),
        "duration_sum": ("mta_ingress_tcp_session_duration_seconds_sum", {"listener": listener}),
    }
    registry.flush()
    before = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    ends = {end: sample("mta_ingress_tcp_sessions_total", listener=listener, backend=backend,
                        end=end) for end in ("closed", "client-closed", "server-reset")}
    buckets = {bound: sample("mta_ingress_tcp_session_duration_seconds_bucket",
                             listener=listener, le=floatToGoString(bound))
               for bound in (*metrics.TCP_BUCKETS, float("inf"))}
    for _ in range(still_open):
        registry.connection_opened(listener)
    for received, sent, seconds, end in sessions:
        registry.connection_opened(listener)
        registry.connection_closed(listener, received, sent)
        registry.tcp_session(listener, backend, end, seconds)
    registry.flush()
    after = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    assert after["opened"] == before["opened"] + len(sessions) + still_open
    assert after["active"] == before["active"] + still_open
    assert after["received"] == before["received"] + sum(s[0] for s in sessions)
    assert after["sent"] == before["sent"] + sum(s[1] for s in sessions)
    assert abs(after["duration_sum"] - before["duration_sum"] - sum(s[2] for s in sessions)) < 1e-6
    for end, count in ends.items():
        assert sample("mta_ingress_tcp_sessions_total", listener=listener, backend=backend,
                      end=end) == count + sum(1 for s in sessions if s[3] == end)
    for bound, count in buckets.items():
        assert sample("mta_ingress_tcp_session_duration_seconds_bucket", listener=listener,
                      le=floatToGoString(bound)) == count + sum(1 for s in sessions
                                                                if s[2] <= bound)
