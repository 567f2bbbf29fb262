"""Backend servers found through DNS: ``dns+a://name:port`` and ``dns+srv://_service._tcp.name``.

Theory of operation
-------------------
Each ``dns+`` server of a backend is refreshed by one task per worker (:class:`Discovery`), never
by a session: sessions read the backend's current list, so no DNS query is ever on the
per-connection or per-request path.

The protocol logic is pure and separately tested; the I/O around it is thin:

- :func:`parse_dns_url` reads the configuration form.
- :func:`address_outcome` and :func:`srv_outcome` turn the answers of one refresh (A and AAAA,
  or SRV then A and AAAA of each target) into either the set of servers with the TTL it may be
  kept for, or a failure that says what went wrong.
- :func:`advance` decides, from the previous state, that outcome and the time, what the set is
  now and when to ask again: after the answer's TTL bounded by ``dns_min_ttl`` and
  ``dns_max_ttl``; after a failure, sooner, backing off.

Failures: a name that does not exist (NXDOMAIN) or has no records (NODATA) is an answer, so the
last good set is kept for ``dns_grace`` after the first such answer and then emptied: the
clients then get their 503 or SMTP 421 at once instead of connecting to servers that were taken
away.  A timeout or SERVFAIL says nothing about the servers, only about DNS, so the last good set
is kept for as long as DNS stays unreachable (logged again once the grace period has passed);
the health checks still take servers that really went away out of rotation.

The log says when a name starts failing, when the failure changes kind or what it does to the
set (kept, stale, emptied), and when the name answers again; a retry that changes nothing is a
debug line, since a name that stays broken would otherwise log every retry in every worker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from routing.backends import Target, is_ip

log = logging.getLogger("mta_ingress.discovery")

Kind = Literal["a", "srv"]
# nxdomain and nodata are answers about the name; the others are failures to get an answer.
Problem = Literal["nxdomain", "nodata", "timeout", "unreachable", "servfail", "error"]
NEGATIVE: frozenset[Problem] = frozenset({"nxdomain", "nodata"})

# The longest pause between retries after failures, whatever dns_max_ttl says: a name that is
# fixed should be seen again within half a minute.
MAX_RETRY = 30.0

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_SERVICE = re.compile(rf"_{_LABEL}")


@dataclass(frozen=True, slots=True)
class DnsName:
    """A ``dns+a://`` or ``dns+srv://`` server of a backend, as configured."""

    kind: Kind
    name: str  # lowercase; a trailing dot makes it absolute (no resolv.conf search domains)
    port: int | None = None  # dns+a only: SRV records carry their own ports

    def __str__(self) -> str:
        return f"dns+{self.kind}://{self.name}" + (f":{self.port}" if self.port else "")


def is_dns_url(text: str) -> bool:
    return text[:4].lower() == "dns+"


def is_dns_name(text: str) -> bool:
    """An RFC 1123 host name that is not an IP address: ``kumod``, ``pods.mail.test.`` (the
    names Kubernetes DNS answers; no '_')."""
    name = text.lower()
    return (len(name.rstrip(".")) <= 253 and bool(_HOST.fullmatch(name))
            and not is_ip(name.rstrip(".")))


def _check_host(name: str, text: str) -> None:
    if is_dns_name(name):
        return
    if is_ip(name.rstrip(".")):
        raise ValueError(f"{text!r}: {name!r} is an IP address; write it as a plain "
                         "\"host:port\" server")
    raise ValueError(f"{text!r}: {name!r} is not a host name (letters, digits and '-' in "
                     "dot-separated labels)")


def parse_dns_url(text: str) -> DnsName:
    """``dns+a://name:port`` or ``dns+srv://_service._tcp.name``; ValueError says what is
    wrong."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("dns+a", "dns+srv"):
        raise ValueError(f"{text!r}: write dns+a://name:port or dns+srv://_service._tcp.name")
    if scheme == "dns+a":
        name, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r}: dns+a needs a port: dns+a://name:port")
        name = name.lower()
        _check_host(name, text)
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        return DnsName("a", name, int(port_text))
    name = rest.lower()
    if ":" in name:
        raise ValueError(f"{text!r}: dns+srv takes its ports from the SRV records; write no "
                         "port")
    service, _, remainder = name.partition(".")
    proto, _, host = remainder.partition(".")
    if not _SERVICE.fullmatch(service) or not host:
        raise ValueError(f"{text!r}: write dns+srv://_service._tcp.name")
    if proto != "_tcp":
        raise ValueError(f"{text!r}: only _tcp services can be proxied, not {proto!r}")
    _check_host(host, text)
    if len(name.rstrip(".")) > 253:
        raise ValueError(f"{text!r}: the name is longer than 253 characters")
    return DnsName("srv", name)


# --- the answers of one refresh, as plain data ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    targets: tuple[Target, ...]
    ttl: float


@dataclass(frozen=True, slots=True)
class Failed:
    problem: Problem
    detail: str = ""


Outcome = Found | Failed


@dataclass(frozen=True, slots=True)
class Addresses:
    """One A or AAAA answer: its addresses (possibly none: NODATA) and TTL."""

    values: tuple[str, ...]
    ttl: float


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class SrvAnswer:
    records: tuple[SrvRecord, ...]
    ttl: float


def address_outcome(a: Addresses | Failed, aaaa: Addresses | Failed, port: int, *,
                    priority: int = 0, weight: int = 1) -> Outcome:
    """The servers of one name from its A and AAAA answers (IPv4 first).  Any failure to get
    one of the two answers fails the whole: half a set would drain the other half's servers."""
    for answer in (a, aaaa):
        if isinstance(answer, Failed) and answer.problem not in NEGATIVE:
            return answer
    found = [answer for answer in (a, aaaa) if isinstance(answer, Addresses) and answer.values]
    if not found:
        nxdomain = [answer for answer in (a, aaaa)
                    if isinstance(answer, Failed) and answer.problem == "nxdomain"]
        return nxdomain[0] if nxdomain else Failed("nodata", "no A or AAAA records")
    targets = [Target(priority, address, port, weight)
               for answer in found for address in answer.values]
    return Found(_unique(targets), min(answer.ttl for answer in found))


def srv_outcome(srv: SrvAnswer | Failed, targets: Mapping[str, Outcome]) -> Outcome:
    """The servers of an SRV name from its records and the address outcome of each record's
    target (keyed by target name, ports ignored).  A target that does not exist is left out; a
    target that could not be looked up fails the whole, as in address_outcome."""
    if isinstance(srv, Failed):
        return srv
    # RFC 2782: a single record with target "." means the service is decidedly not available.
    records = [record for record in srv.records if record.target not in (".", "")]
    if not records:
        return Failed("nodata", "no SRV records with a target")
    result: list[Target] = []
    ttl = srv.ttl
    for record in records:
        outcome = targets.get(record.target)
        if outcome is None:
            return Failed("error", f"target {record.target} was not looked up")
        if isinstance(outcome, Failed):
            if outcome.problem in NEGATIVE:
                continue
            return Failed(outcome.problem, f"target {record.target}: {outcome.detail}")
        ttl = min(ttl, outcome.ttl)
        result += [Target(record.priority, target.host, record.port, record.weight)
                   for target in outcome.targets]
    if not result:
        return Failed("nodata", "no SRV target has an address")
    return Found(_unique(result), ttl)


def _unique(targets: Sequence[Target]) -> tuple[Target, ...]:
    """Sorted (answers come in any order; DNS servers rotate them), one per address and port:
    the lowest priority wins, since that is where the server would be used first."""
    seen: set[tuple[str, int]] = set()
    result: list[Target] = []
    for target in sorted(targets, key=_sort_key):
        key = (target.host, target.port)
        if key not in seen:
            seen.add(key)
            result.append(target)
    return tuple(result)


def _sort_key(target: Target) -> tuple[int, int, int, int]:
    address = ipaddress.ip_address(target.host)
    return target.priority, address.version, int(address), target.port


# --- the state of one dns+ server and how an outcome changes it ---------------------------------


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    min_ttl: float = 1.0
    max_ttl: float = 300.0
    grace: float = 300.0


@dataclass(frozen=True, slots=True)
class State:
    targets: tuple[Target, ...] = ()
    failing_since: float | None = None  # the first failure since the last good answer
    failures: int = 0


Event = Literal["changed", "unchanged", "kept", "stale", "emptied", "failed"]


@dataclass(frozen=True, slots=True)
class Step:
    state: State
    refresh_at: float
    event: Event  # what happened, for the log: see advance


def clamp_ttl(ttl: float, policy: TtlPolicy) -> float:
    return min(max(ttl, policy.min_ttl), policy.max_ttl)


def retry_delay(failures: int, policy: TtlPolicy) -> float:
    """Doubling from dns_min_ttl, at most dns_max_ttl and MAX_RETRY: DNS that is down is not
    asked in a tight loop, and one that answers again is seen soon."""
    cap = min(policy.max_ttl, MAX_RETRY)
    delay = policy.min_ttl * 2.0 ** min(max(failures - 1, 0), 30)
    return max(min(delay, cap), policy.min_ttl)


def advance(state: State, outcome: Outcome, now: float, policy: TtlPolicy) -> Step:
    """The set after one refresh, and when to refresh next.

    Events: ``changed``/``unchanged`` (an answer with servers); ``kept`` (a failure, the last
    good set still in use); ``stale`` (a timeout or SERVFAIL past the grace period: still kept,
    logged as such); ``emptied`` (NXDOMAIN or NODATA past the grace period: the set is now
    empty); ``failed`` (a failure with no set to keep)."""
    if isinstance(outcome, Found):
        event: Event = "changed" if outcome.targets != state.targets else "unchanged"
        return Step(State(outcome.targets), now + clamp_ttl(outcome.ttl, policy), event)
    failures = state.failures + 1
    since = now if state.failing_since is None else state.failing_since
    delay = retry_delay(failures, policy)
    if not state.targets:
        return Step(State((), since, failures), now + delay, "failed")
    deadline = since + policy.grace
    if outcome.problem in NEGATIVE:
        if now >= deadline:
            return Step(State((), since, failures), now + delay, "emptied")
        # Wake up at the deadline, so that the set is emptied on time and not a backoff late.
        return Step(State(state.targets, since, failures), min(now + delay, deadline), "kept")
    event = "stale" if now >= deadline else "kept"
    return Step(State(state.targets, since, failures), now + delay, event)


# --- I/O: dnspython ------------------------------------------------------------------------------


def make_resolver(nameservers: Sequence[tuple[str, int]], timeout: float
                  ) -> dns.asyncresolver.Resolver:
    """The configured nameservers, or the system's (/etc/resolv.conf, with its search domains
    and ndots, so that Kubernetes short names work) when none are configured.  No cache: each
    refresh must see the records' current TTLs."""
    resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                for host, port in nameservers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None
    return resolver


def _failure(error: Exception) -> Failed:
    if isinstance(error, dns.resolver.NXDOMAIN):
        return Failed("nxdomain", "the name does not exist")
    if isinstance(error, dns.exception.Timeout):
        return Failed("timeout", str(error))
    if isinstance(error, dns.resolver.NoNameservers):
        # Every server failed: by an answer (SERVFAIL, REFUSED) or by a socket error, as a
        # stopped server on the same host refuses UDP at once instead of timing out.
        errors = error.kwargs.get("errors") or []
        if errors and all(any(isinstance(part, OSError) for part in entry) for entry in errors):
            return Failed("unreachable", str(error))
        return Failed("servfail", str(error))
    return Failed("error", f"{type(error).__name__}: {error}")


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
                 ) -> dns.resolver.Answer | Failed:
    try:
        return await resolver.resolve(name, rdtype, search=True, raise_on_no_answer=False)
    except dns.exception.DNSException as error:
        return _failure(error)


async def lookup_addresses(resolver: dns.asyncresolver.Resolver, name: str
                           ) -> tuple[Addresses | Failed, Addresses | Failed]:
    results = await asyncio.gather(_query(resolver, name, dns.rdatatype.A),
                                   _query(resolver, name, dns.rdatatype.AAAA))
    answers: list[Addresses | Failed] = []
    for result in results:
        if isinstance(result, Failed):
            answers.append(result)
        elif result.rrset is None:
            answers.append(Addresses((), 0.0))
        else:
            answers.append(Addresses(tuple(str(rdata.address) for rdata in result.rrset),
                                     float(result.chaining_result.minimum_ttl)))
    return answers[0], answers[1]


async def lookup(resolver: dns.asyncresolver.Resolver, name: DnsName) -> Outcome:
    """One refresh of ``name``: its queries, then the pure outcome functions."""
    if name.kind == "a":
        a, aaaa = await lookup_addresses(resolver, name.name)
        return address_outcome(a, aaaa, name.port or 0)
    result = await _query(resolver, name.name, dns.rdatatype.SRV)
    if isinstance(result, Failed):
        return result
    if result.rrset is None:
        return Failed("nodata", "no SRV records")
    srv = SrvAnswer(tuple(SrvRecord(rdata.priority, rdata.weight, rdata.port,
                                    rdata.target.to_text().lower())
                          for rdata in result.rrset),
                    float(result.chaining_result.minimum_ttl))
    names = sorted({record.target for record in srv.records if record.target not in (".", "")})
    looked_up = await asyncio.gather(*(lookup_addresses(resolver, target) for target in names))
    targets = {target: address_outcome(a, aaaa, 0) for target, (a, aaaa) in zip(names, looked_up,
                                                                                 strict=True)}
    return srv_outcome(srv, targets)


class Discovery:
    """One dns+ server of one backend, in one worker: refreshes it and hands every new set to
    ``on_change``."""

    def __init__(self, name: DnsName, backend: str, resolver: dns.asyncresolver.Resolver,
                 policy: TtlPolicy, on_change: Callable[[tuple[Target, ...]], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_refresh: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.backend = backend
        self._resolver = resolver
        self._policy = policy
        self._on_change = on_change
        self._on_refresh = on_refresh  # "ok" or the failure's kind: for the metrics
        self._clock = clock
        self.state = State()
        self.first_answer = asyncio.Event()  # set after the first refresh, whatever its result
        # The failure last logged (its kind, and what it did to the set); None while answering.
        self._failure_logged: tuple[Problem, str] | None = None

    async def run(self) -> None:
        while True:
            try:
                outcome = await lookup(self._resolver, self.name)
            except Exception as error:  # a bug must not end discovery for the worker's life
                log.exception("msg=\"dns lookup crashed\" backend=%s server=%s", self.backend,
                              self.name)
                outcome = Failed("error", repr(error))
            await asyncio.sleep(max(0.0, self.refresh(outcome) - self._clock()))

    def refresh(self, outcome: Outcome) -> float:
        """Apply one lookup's outcome; returns when to look up next (on ``clock``)."""
        previous = self.state
        step = advance(previous, outcome, self._clock(), self._policy)
        self.state = step.state
        if step.state.targets != previous.targets:
            self._on_change(step.state.targets)
        self._log(step, previous, outcome)
        if self._on_refresh is not None:
            self._on_refresh(outcome.problem if isinstance(outcome, Failed) else "ok")
        self.first_answer.set()
        return step.refresh_at

    def _log(self, step: Step, previous: State, outcome: Outcome) -> None:
        failing_before = self._failure_logged
        if not isinstance(outcome, Failed):
            self._failure_logged = None
        if step.event == "unchanged" and failing_before is not None:
            log.info("msg=\"dns name answers again\" backend=%s server=%s servers=%s failures=%d",
                     self.backend, self.name,
                     ",".join(_text(t) for t in step.state.targets) or "-", previous.failures)
            return
        if step.event == "changed":
            now = {_text(t) for t in step.state.targets}
            before = {_text(t) for t in previous.targets}
            log.info("msg=\"dns servers changed\" backend=%s server=%s servers=%s added=%s "
                     "removed=%s", self.backend, self.name,
                     ",".join(_text(t) for t in step.state.targets) or "-",
                     ",".join(sorted(now - before)) or "-", ",".join(sorted(before - now)) or "-")
            return
        if not isinstance(outcome, Failed):
            return
        what = {"nxdomain": "dns name does not exist (NXDOMAIN)",
                "nodata": "dns name has no records",
                "timeout": "dns lookup timed out",
                "unreachable": "dns servers unreachable",
                "servfail": "dns servers failed (SERVFAIL or refused)",
                "error": "dns lookup failed"}[outcome.problem]
        then = {"kept": "keeping the last good set", "failed": "no servers yet",
                "stale": "grace period over, still keeping the last good set",
                "emptied": "grace period over, servers removed",
                "changed": "", "unchanged": ""}[step.event]
        # After "emptied", the retries that find nothing are the same state as "failed".
        logged = (outcome.problem, "empty" if step.event in ("emptied", "failed") else step.event)
        self._failure_logged = logged
        level = logging.DEBUG if logged == failing_before else logging.WARNING
        log.log(level, "msg=\"%s, %s\" backend=%s server=%s error=%s servers=%d detail=%r",
                what, then, self.backend, self.name, outcome.problem,
                len(step.state.targets), outcome.detail[:200])


def _text(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"
