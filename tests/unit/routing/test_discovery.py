"""DNS discovery's pure parts: the dns+ URL parser, answers to server sets, TTLs and grace, and
the balancing of the backend the sets feed.  The I/O is tested end to end with a real DNS
server in tests/integration/test_dns_discovery.py."""

from __future__ import annotations

import collections
import logging
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.backends import Backend, Balancer, Endpoint, Group, Resolver, Target, make_groups
from routing.discovery import (
    MAX_RETRY,
    Addresses,
    Discovery,
    DnsName,
    Failed,
    Found,
    SrvAnswer,
    SrvRecord,
    State,
    TtlPolicy,
    address_outcome,
    advance,
    clamp_ttl,
    is_dns_url,
    make_resolver,
    parse_dns_url,
    retry_delay,
    srv_outcome,
)

# --- the dns+ URL parser -------------------------------------------------------------------------

LDH = string.ascii_lowercase + string.digits
# RFC 1123 labels: a letter or digit at both ends (a one-character label has only the first).
labels = st.builds(
    lambda first, middle, last: first + middle + last if last else first,
    st.sampled_from(LDH), st.text(LDH + "-", max_size=20), st.sampled_from(["", *LDH]))
host_names = st.lists(labels, min_size=1, max_size=5).map(".".join).filter(
    lambda name: not name.replace(".", "").isdigit())
ports = st.integers(min_value=1, max_value=65535)


@given(name=host_names, port=ports, absolute=st.booleans(), upper=st.booleans())
def test_dns_a_round_trips(name: str, port: int, absolute: bool, upper: bool) -> None:
    name += "." if absolute else ""
    text = f"dns+a://{name.upper() if upper else name}:{port}"
    parsed = parse_dns_url(text)
    assert parsed == DnsName("a", name, port)
    assert str(parsed) == f"dns+a://{name}:{port}"
    assert parse_dns_url(str(parsed)) == parsed


@given(service=labels, name=host_names)
def test_dns_srv_round_trips(service: str, name: str) -> None:
    parsed = parse_dns_url(f"DNS+SRV://_{service}._tcp.{name}")
    assert parsed == DnsName("srv", f"_{service}._tcp.{name}")
    assert parse_dns_url(str(parsed)) == parsed


@given(text=st.text(max_size=60))
def test_parser_accepts_or_says_why(text: str) -> None:
    try:
        parsed = parse_dns_url(text)
    except ValueError as error:
        message = str(error)
    else:
        assert parse_dns_url(str(parsed)) == parsed
        return
    assert message.startswith(repr(text))


@given(name=host_names, port=ports)
def test_dns_srv_with_a_port_is_rejected(name: str, port: int) -> None:
    with pytest.raises(ValueError, match="dns\\+srv takes its ports from the SRV records"):
        parse_dns_url(f"dns+srv://_smtp._tcp.{name}:{port}")


@given(name=host_names)
def test_dns_a_without_a_port_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="dns\\+a needs a port"):
        parse_dns_url(f"dns+a://{name}")


@pytest.mark.parametrize(("text", "message"), [
    ("dns+a://pods_x.mail.test:25", "is not a host name"),
    ("dns+a://-pods.mail.test:25", "is not a host name"),
    ("dns+a://pods..mail.test:25", "is not a host name"),
    ("dns+a://:25", "is not a host name"),
    ("dns+a://10.0.0.1:25", "is an IP address"),
    ("dns+a://[::1]:25", "is not a host name"),
    ("dns+a://pods.mail.test:0", "the port must be a number from 1 to 65535"),
    ("dns+a://pods.mail.test:x", "the port must be a number from 1 to 65535"),
    ("dns+a://user@pods.mail.test:25", "is not a host name"),
    ("dns+a://pods.mail.test/x:25", "is not a host name"),
    ("dns+a://" + "a" * 64 + ".test:25", "is not a host name"),
    ("dns+aaaa://pods.mail.test:25", "write dns+a://name:port or dns+srv://"),
    ("dns+a:pods.mail.test:25", "write dns+a://name:port or dns+srv://"),
    ("dns+srv://smtp._tcp.mail.test", "write dns+srv://_service._tcp.name"),
    ("dns+srv://_smtp.mail.test", "only _tcp services"),
    ("dns+srv://_smtp._udp.mail.test", "only _tcp services"),
    ("dns+srv://_smtp._tcp.", "write dns+srv://_service._tcp.name"),
    ("dns+srv://_smtp._tcp.bad_name.test", "is not a host name"),
])
def test_malformed_urls_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", "\\+")):
        parse_dns_url(text)


def test_is_dns_url() -> None:
    assert is_dns_url("dns+a://x:1")
    assert is_dns_url("DNS+srv://_a._tcp.x")
    assert not is_dns_url("dns.example:25")
    assert not is_dns_url("10.0.0.1:25")


# --- answers to server sets ----------------------------------------------------------------------


def test_a_and_aaaa_make_one_set_ipv4_first_sorted_with_the_shorter_ttl() -> None:
    outcome = address_outcome(Addresses(("10.0.0.9", "10.0.0.10"), 30.0),
                              Addresses(("2001:db8::1",), 20.0), 587)
    assert outcome == Found((Target(0, "10.0.0.9", 587), Target(0, "10.0.0.10", 587),
                             Target(0, "2001:db8::1", 587)), 20.0)


def test_record_order_does_not_matter() -> None:
    one = address_outcome(Addresses(("10.0.0.2", "10.0.0.1"), 5.0), Addresses((), 0.0), 25)
    other = address_outcome(Addresses(("10.0.0.1", "10.0.0.2"), 5.0), Addresses((), 0.0), 25)
    assert one == other


@pytest.mark.parametrize(("a", "aaaa", "expected"), [
    (Failed("nxdomain"), Failed("nxdomain"), "nxdomain"),
    (Addresses((), 5.0), Addresses((), 5.0), "nodata"),
    (Addresses(("10.0.0.1",), 5.0), Failed("timeout"), "timeout"),
    (Failed("servfail"), Addresses(("2001:db8::1",), 5.0), "servfail"),
    (Failed("nxdomain"), Addresses((), 5.0), "nxdomain"),
])
def test_failed_address_lookups(a: Addresses | Failed, aaaa: Addresses | Failed,
                                expected: str) -> None:
    outcome = address_outcome(a, aaaa, 25)
    assert isinstance(outcome, Failed)
    assert outcome.problem == expected


def test_srv_records_take_their_port_priority_and_weight() -> None:
    srv = SrvAnswer((SrvRecord(20, 1, 2525, "c.test."), SrvRecord(10, 3, 25, "a.test."),
                     SrvRecord(10, 1, 26, "b.test.")), 60.0)
    targets = {
        "a.test.": Found((Target(0, "10.0.0.1", 0),), 30.0),
        "b.test.": Found((Target(0, "10.0.0.2", 0),), 60.0),
        "c.test.": Found((Target(0, "10.0.0.3", 0),), 60.0),
    }
    assert srv_outcome(srv, targets) == Found((
        Target(10, "10.0.0.1", 25, 3), Target(10, "10.0.0.2", 26, 1),
        Target(20, "10.0.0.3", 2525, 1)), 30.0)


def test_srv_target_that_does_not_exist_is_left_out_but_a_timeout_fails_all() -> None:
    srv = SrvAnswer((SrvRecord(10, 1, 25, "a.test."), SrvRecord(10, 1, 25, "gone.test.")),
                    60.0)
    found = Found((Target(0, "10.0.0.1", 0),), 60.0)
    assert srv_outcome(srv, {"a.test.": found, "gone.test.": Failed("nxdomain")}) == Found(
        (Target(10, "10.0.0.1", 25, 1),), 60.0)
    failed = srv_outcome(srv, {"a.test.": found, "gone.test.": Failed("timeout", "t")})
    assert isinstance(failed, Failed)
    assert failed.problem == "timeout"


def test_srv_dot_target_means_no_service() -> None:
    outcome = srv_outcome(SrvAnswer((SrvRecord(0, 0, 0, "."),), 60.0), {})
    assert outcome == Failed("nodata", "no SRV records with a target")


def test_one_address_in_two_srv_records_is_used_once_at_the_lowest_priority() -> None:
    srv = SrvAnswer((SrvRecord(20, 1, 25, "a.test."), SrvRecord(10, 5, 25, "a.test.")), 60.0)
    outcome = srv_outcome(srv, {"a.test.": Found((Target(0, "10.0.0.1", 0),), 60.0)})
    assert outcome == Found((Target(10, "10.0.0.1", 25, 5),), 60.0)


# --- TTLs, failures and grace --------------------------------------------------------------------

POLICY = TtlPolicy(min_ttl=1.0, max_ttl=300.0, grace=60.0)
SET = (Target(0, "10.0.0.1", 25),)


@given(ttl=st.floats(min_value=0, max_value=10**7), low=st.floats(min_value=0.001, max_value=100),
       span=st.floats(min_value=0, max_value=10**5))
def test_ttl_is_clamped(ttl: float, low: float, span: float) -> None:
    policy = TtlPolicy(low, low + span)
    assert policy.min_ttl <= clamp_ttl(ttl, policy) <= policy.max_ttl
    if low <= ttl <= low + span:
        assert clamp_ttl(ttl, policy) == ttl


def test_answer_sets_the_servers_and_the_refresh_at_its_ttl() -> None:
    step = advance(State(), Found(SET, 30.0), 100.0, POLICY)
    assert (step.state, step.refresh_at, step.event) == (State(SET), 130.0, "changed")
    assert advance(step.state, Found(SET, 0.0), 200.0, POLICY).refresh_at == 201.0
    again = advance(step.state, Found(SET, 86400.0), 200.0, POLICY)
    assert (again.refresh_at, again.event) == (500.0, "unchanged")


def test_nxdomain_keeps_the_set_for_the_grace_period_then_empties_it() -> None:
    state = State(SET)
    step = advance(state, Failed("nxdomain"), 100.0, POLICY)
    assert (step.state.targets, step.event) == (SET, "kept")
    assert step.refresh_at == 101.0  # retries start at dns_min_ttl
    times = [step.refresh_at]
    while step.event == "kept":
        step = advance(step.state, Failed("nodata"), step.refresh_at, POLICY)
        times.append(step.refresh_at)
    assert step.event == "emptied"
    assert step.state.targets == ()
    assert 160.0 in times  # woken up at the end of the grace period exactly, not a backoff late
    assert advance(step.state, Found(SET, 5.0), 200.0, POLICY).state == State(SET)


def test_timeouts_keep_the_set_past_the_grace_period() -> None:
    step = advance(State(SET), Failed("timeout"), 100.0, POLICY)
    while step.refresh_at < 400.0:
        step = advance(step.state, Failed("timeout"), step.refresh_at, POLICY)
        assert step.state.targets == SET
    assert step.event == "stale"
    assert step.state.failing_since == 100.0


def test_an_answer_after_failures_resets_the_backoff() -> None:
    step = advance(State(SET), Failed("servfail"), 0.0, POLICY)
    step = advance(step.state, Failed("servfail"), step.refresh_at, POLICY)
    assert step.state.failures == 2
    step = advance(step.state, Found(SET, 10.0), 5.0, POLICY)
    assert step.state == State(SET)
    assert advance(step.state, Failed("timeout"), 20.0, POLICY).refresh_at == 21.0


@given(failures=st.integers(min_value=1, max_value=10**4),
       low=st.floats(min_value=0.01, max_value=100), span=st.floats(min_value=0, max_value=1000))
def test_retry_delay_is_bounded_and_grows(failures: int, low: float, span: float) -> None:
    policy = TtlPolicy(low, low + span)
    delay = retry_delay(failures, policy)
    assert low <= delay <= max(low, min(low + span, MAX_RETRY))
    assert retry_delay(failures + 1, policy) >= delay


def test_failure_with_nothing_to_keep() -> None:
    step = advance(State(), Failed("nxdomain"), 0.0, POLICY)
    assert (step.state.targets, step.event) == ((), "failed")


# --- balancing -----------------------------------------------------------------------------------


def endpoints(*hosts: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(host, 25, f"{host}:25") for host in hosts)


def test_round_robin_starts_one_further_each_time() -> None:
    balancer = Balancer()
    group = (Group(endpoints("a", "b", "c")),)
    firsts = [balancer.order(group, (), {})[0].host for _ in range(6)]
    assert firsts == ["a", "b", "c"] * 2
    assert [e.host for e in balancer.order(group, (), {})] == ["a", "b", "c"]


@given(weights=st.lists(st.integers(min_value=0, max_value=20), min_size=2, max_size=6))
def test_weighted_round_robin_gives_each_server_its_share(weights: list[int]) -> None:
    hosts = [f"h{i}" for i in range(len(weights))]
    groups = make_groups([(e, 0, w) for e, w in zip(endpoints(*hosts), weights, strict=True)])
    balancer = Balancer()
    total = sum(weights)
    rounds = total or len(weights)
    firsts = collections.Counter(balancer.order(groups, (), {})[0].host
                                 for _ in range(rounds * 3))
    expected = {host: 3 * (weight if total else 1) for host, weight in zip(hosts, weights,
                                                                            strict=True)}
    assert firsts == {host: count for host, count in expected.items() if count}


def test_weighted_turns_are_spread() -> None:
    groups = make_groups([(e, 0, w) for e, w in zip(endpoints("a", "b"), (3, 1), strict=True)])
    balancer = Balancer()
    assert "".join(balancer.order(groups, (), {})[0].host for _ in range(8)) == "aabaaaba"


def test_higher_priorities_only_when_every_lower_one_is_down() -> None:
    groups = make_groups([(e, p, 1) for e, p in zip(endpoints("a", "b", "c"), (10, 10, 20),
                                                    strict=True)])
    balancer = Balancer()
    assert {balancer.order(groups, (), {})[0].host for _ in range(4)} == {"a", "b"}
    order = balancer.order(groups, {"a:25"}, {})
    assert [e.host for e in order] == ["b", "c"]  # c stays as the fallback on refusal
    assert [e.host for e in balancer.order(groups, {"a:25", "b:25"}, {})] == ["c"]
    assert balancer.order(groups, {"a:25", "b:25", "c:25"}, {}) == []


def test_leastconn_picks_the_least_active_ties_round_robin() -> None:
    balancer = Balancer(leastconn=True)
    group = (Group(endpoints("a", "b", "c")),)
    assert [balancer.order(group, (), {"a:25": 1})[0].host for _ in range(4)] == [
        "b", "b", "c", "b"]
    assert [balancer.order(group, (), {"a:25": 2, "b:25": 1, "c:25": 3})[0].host
            for _ in range(3)] == ["b"] * 3
    assert [balancer.order(group, {"b:25"}, {"a:25": 2, "b:25": 0, "c:25": 3})[0].host
            for _ in range(2)] == ["a"] * 2


@given(active=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=6),
       picks=st.integers(min_value=1, max_value=12))
def test_leastconn_first_choice_is_always_a_least_active_server(active: list[int],
                                                                picks: int) -> None:
    hosts = [f"h{i}" for i in range(len(active))]
    counts = {f"{host}:25": n for host, n in zip(hosts, active, strict=True)}
    balancer = Balancer(leastconn=True)
    group = (Group(endpoints(*hosts)),)
    for _ in range(picks):
        order = balancer.order(group, (), counts)
        assert counts[order[0].server] == min(active)
        assert sorted(e.host for e in order) == sorted(hosts)


# --- the backend the sets feed -------------------------------------------------------------------


def test_discovered_servers_join_start_up_keep_their_health_and_drain() -> None:
    removed: list[tuple[str, int]] = []
    backend = Backend("b", [("10.0.0.1", 25)], Resolver(), fall=1,
                      sources=["dns+a://pods.test:25"])
    backend.on_removed = removed.append
    assert [e.host for e in backend.static_endpoints() or []] == ["10.0.0.1"]
    backend.update_source("dns+a://pods.test:25", [Target(0, "10.0.0.2", 25),
                                                   Target(0, "10.0.0.3", 25)])
    assert backend.health["10.0.0.2:25"].up
    backend.record_check("10.0.0.3:25", False)
    assert {e.host for _ in range(3) for e in backend.static_endpoints() or []} == {
        "10.0.0.1", "10.0.0.2"}
    backend.update_source("dns+a://pods.test:25", [Target(0, "10.0.0.3", 25)])
    assert removed == [("10.0.0.2", 25)]
    assert not backend.serves("10.0.0.2:25")
    assert backend.health["10.0.0.3:25"].up is False  # kept while it stays in the set
    assert backend.record_check("10.0.0.2:25", True) is False  # gone: its late check is ignored
    backend.update_source("dns+a://pods.test:25", [])
    assert removed == [("10.0.0.2", 25), ("10.0.0.3", 25)]
    assert [e.host for e in backend.static_endpoints() or []] == ["10.0.0.1"]


def test_a_backend_of_dns_servers_only_can_be_empty() -> None:
    backend = Backend("b", [], Resolver(), sources=["dns+a://pods.test:25"])
    assert backend.static_endpoints() == []
    backend.update_source("dns+a://pods.test:25", [Target(0, "10.0.0.2", 25)])
    assert [e.host for e in backend.static_endpoints() or []] == ["10.0.0.2"]


def test_active_counts_come_back_to_nothing() -> None:
    backend = Backend("b", [("10.0.0.1", 25), ("10.0.0.2", 25)], Resolver(),
                      balance="leastconn")
    backend.acquire("10.0.0.1:25")
    assert [backend.static_endpoints()[0].host for _ in range(2)] == ["10.0.0.2"] * 2  # type: ignore[index]
    backend.release("10.0.0.1:25")
    assert backend.active == {}
    assert {backend.static_endpoints()[0].host for _ in range(2)} == {  # type: ignore[index]
        "10.0.0.1", "10.0.0.2"}


def test_refresh_logs_a_failure_once_per_change_of_state(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    now = [0.0]
    sets: list[tuple[Target, ...]] = []
    discovery = Discovery(DnsName("a", "pods.test", 25), "pods",
                          make_resolver([("127.0.0.1", 53)], 1.0), TtlPolicy(grace=60.0),
                          sets.append, clock=lambda: now[0])
    pod = Found((Target(0, "10.0.0.2", 25),), 1.0)

    def refresh(outcome: Found | Failed, times: int = 1) -> list[str]:
        """The lines an operator sees (INFO and up) for ``times`` refreshes, 1 s apart."""
        caplog.clear()
        for _ in range(times):
            discovery.refresh(outcome)
            now[0] += 1.0
        return [f"{r.levelname} {r.getMessage().split(chr(34))[1]}" for r in caplog.records
                if r.levelno >= logging.INFO]

    with caplog.at_level(logging.DEBUG, logger="mta_ingress.discovery"):
        assert refresh(Failed("nxdomain"), 5) == [
            "WARNING dns name does not exist (NXDOMAIN), no servers yet"]
        assert refresh(pod, 3) == ["INFO dns servers changed"]
        assert refresh(Failed("timeout"), 5) == [
            "WARNING dns lookup timed out, keeping the last good set"]
        assert refresh(Failed("servfail"), 2) == [  # another kind of failure
            "WARNING dns servers failed (SERVFAIL or refused), keeping the last good set"]
        now[0] += 60.0
        assert refresh(Failed("servfail"), 3) == [
            "WARNING dns servers failed (SERVFAIL or refused), grace period over, still "
            "keeping the last good set"]
        assert refresh(pod, 2) == ["INFO dns name answers again"]
        assert refresh(Failed("nxdomain"), 2) == [
            "WARNING dns name does not exist (NXDOMAIN), keeping the last good set"]
        now[0] += 60.0
        assert refresh(Failed("nxdomain"), 4) == [
            "WARNING dns name does not exist (NXDOMAIN), grace period over, servers removed"]
        assert refresh(pod) == ["INFO dns servers changed"]
    assert sets == [pod.targets, (), pod.targets]
    assert "backend=pods server=dns+a://pods.test:25" in caplog.records[-1].getMessage()
