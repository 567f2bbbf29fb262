"""Route table: the contract's rules in order, prefix and host edge cases, as a table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress import config
from routing.table import (
    READINESS,
    STATS_UNAVAILABLE,
    RouteTable,
    Rule,
    host_matches,
    normalize_host,
)


@pytest.fixture(scope="module")
def greenarrow() -> RouteTable:
    effective = config.load(None, environ={})
    return RouteTable(effective.routes["greenarrow"])


@pytest.mark.parametrize(("path", "expected"), [
    (b"/.kubernetes-readiness-probe", READINESS),
    (b"/.kubernetes-readiness-probe/anything", READINESS),
    (b"/greenarrowadmin/h/stats_summary", STATS_UNAVAILABLE),
    (b"/ga/eui/disk_queue_summary", STATS_UNAVAILABLE),
    (b"/ga/eui/dynamic_deliveries?x=1", STATS_UNAVAILABLE),
    (b"/api/v1/send.json", "mta-http"),
    (b"/api/v1/send.jsonX", "mta-http"),  # path_beg: a prefix, as HAProxy matches it
    (b"/api/v1/send.json/extra", "mta-http"),
    (b"/.lets_encrypt_challenge_preflight", "tls-http"),
    (b"/.well-known/acme-challenge/token123", "tls-http"),
    (b"/.well-known/acme-challenge", "event-tracker-http"),  # no trailing slash: not the prefix
    (b"/API/v1/send.json", "event-tracker-http"),  # case-sensitive
    (b"/api/v1/send%2Ejson", "event-tracker-http"),  # no percent-decoding
    (b"/api/v1/send.js", "event-tracker-http"),
    (b"/click/abc", "event-tracker-http"),
    (b"/", "event-tracker-http"),
    (b"*", "event-tracker-http"),
])
def test_contract_routing(greenarrow: RouteTable, path: bytes, expected: str) -> None:
    rule = greenarrow.match(path.split(b"?")[0], b"tracking.example.org")
    assert rule is not None
    assert (rule.answer.kind if rule.answer else rule.backend) == expected


@pytest.mark.parametrize(("raw", "normal"), [
    (b"Example.ORG", b"example.org"),
    (b"example.org:8080", b"example.org"),
    (b"example.org.", b"example.org"),
    (b"[2001:db8::1]:443", b"[2001:db8::1]"),
    (b"192.0.2.1:80", b"192.0.2.1"),
])
def test_normalize_host(raw: bytes, normal: bytes) -> None:
    assert normalize_host(raw) == normal


@pytest.mark.parametrize(("pattern", "host", "matches"), [
    (b"example.org", b"example.org", True),
    (b"example.org", b"www.example.org", False),
    (b"*.example.org", b"a.example.org", True),
    (b"*.example.org", b"a.b.example.org", False),
    (b"*.example.org", b"example.org", False),
    (b"*.example.org", b".example.org", False),
    (b"*.example.org", b"aexample.org", False),
])
def test_host_matching(pattern: bytes, host: bytes, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


def test_host_rule_and_first_match_wins() -> None:
    effective = config.load(None, environ={}, assignments=[
        'routes.custom=[{host = "api.example.org", path_prefix = "/api/", backend = "mta-http"},'
        ' {host = "*.example.org", backend = "tls-http"}, {backend = "event-tracker-http"}]',
    ])
    table = RouteTable(effective.routes["custom"])

    def backend(path: bytes, host: bytes | None) -> str | None:
        rule = table.match(path, host)
        return rule.backend if rule else None

    assert backend(b"/api/x", b"API.example.org:443") == "mta-http"
    assert backend(b"/other", b"api.example.org") == "tls-http"
    assert backend(b"/api/x", b"www.example.org") == "tls-http"
    assert backend(b"/api/x", None) == "event-tracker-http"
    assert backend(b"/api/x", b"example.com") == "event-tracker-http"


def test_no_rule_matches() -> None:
    table = RouteTable([])
    assert table.match(b"/", b"x") is None


@pytest.mark.parametrize(("rule", "problem"), [
    ('{path_prefix = "/x"}', "routes.bad[0]: a rule needs exactly one of backend and return"),
    ('{backend = "mta-http", return = "readiness"}',
     "routes.bad[0]: a rule needs exactly one of backend and return"),
    ('{path_prefix = "x", backend = "mta-http"}',
     "routes.bad[0].path_prefix: must be a path beginning with '/', in ASCII"),
    ('{backend = "nope"}', "routes.bad[0].backend: no backend named 'nope'"),
    ('{return = "teapot"}', "routes.bad[0].return: unknown answer 'teapot'"),
    ('{return = {status = 99}}', "routes.bad[0].return.status: must be an HTTP status"),
    ('{host = "bad host", backend = "mta-http"}', "routes.bad[0].host: must be a host name"),
])
def test_rule_problems(rule: str, problem: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={}, assignments=[f"routes.bad=[{rule}]"])
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_custom_answer() -> None:
    effective = config.load(None, environ={}, assignments=[
        'routes.x=[{return = {status = 404, content_type = "text/plain", body = "no\\n"}}]'])
    [rule] = effective.routes["x"]
    assert rule.answer is not None
    assert (rule.answer.status, rule.answer.content_type, rule.answer.body) == \
        (404, b"text/plain", b"no\n")


_PREFIXES = st.sampled_from([b"/", b"/a", b"/ab", b"/api/v1/send.json", b"/b/", b""])
_HOSTS = st.sampled_from([b"example.org", b"*.example.org", b"mail.test"])


@st.composite
def _rules(draw: st.DrawFn) -> list[Rule]:
    rules = []
    for index in range(draw(st.integers(0, 6))):
        prefix = draw(st.none() | _PREFIXES)
        host = draw(st.none() | _HOSTS) if draw(st.integers(0, 3)) == 0 else None
        rules.append(Rule(path_prefix=prefix, host=host, backend=f"b{index}", answer=None))
    return rules


@given(rules=_rules(),
       path=st.sampled_from([b"/", b"/a", b"/abc", b"/api/v1/send.jsonX", b"/b", b"/b/c", b"*"]),
       host=st.none() | st.sampled_from([b"example.org", b"a.example.org:80", b"MAIL.test."]))
def test_match_is_the_first_matching_rule(rules: list[Rule], path: bytes,
                                          host: bytes | None) -> None:
    """The prefix shortcut of RouteTable.match answers what trying every rule in order does."""
    expected = next((rule for rule in rules if rule.matches(path, host)), None)
    assert RouteTable(rules).match(path, host) is expected
