"""Backend servers: name resolution and the order in which servers are tried.

A server written as an IP literal is used as is.  A host name (a Kubernetes Service such as
``ga1-ingress-mta``) is resolved with the system resolver and the answer kept for
``RESOLVE_TTL`` seconds: resolving on every SMTP session would put a thread-pool round trip and
a DNS query on the per-connection path, and a ClusterIP changes only when the Service is
recreated.  A failed lookup is not cached beyond ``NEGATIVE_TTL`` so that a Service created after
the ingress is found quickly; while a name fails, the last good answer is still used.  Failures
are logged per backend and server when they start, when they change kind and when the name
resolves again, not at every retry: every health check and session retries a name that does not
resolve, several times a second.

Servers found through DNS (``dns+a://``, ``dns+srv://``) are not looked up here: their refresh
tasks (``routing.discovery``) hand each new set to ``Backend.update_source``, which rebuilds the
list sessions read.  A session never waits for DNS.

Which server a session tries first is the ``Balancer``'s choice (round robin, weighted by SRV
weight, or least connections); a backend of equal IP-literal servers under round robin keeps
the plain rotation, the fastest path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

log = logging.getLogger("mta_ingress.backends")

NO_SERVER = "no server available (every server down, or no address)"
RESOLVE_TTL = 30.0
NEGATIVE_TTL = 2.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address to connect to, and the configured server it came from (for the log)."""

    host: str
    port: int
    server: str


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """One discovered server: an address and port, with the SRV priority and weight it came
    with (0 and 1 for dns+a)."""

    priority: int
    host: str
    port: int
    weight: int = 1


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resolver:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._answers: dict[tuple[str, int], tuple[float, list[str]]] = {}
        # Until when a failed lookup stands, its kind and its error text.
        self._failures: dict[tuple[str, int], tuple[float, str, str]] = {}
        # (backend, host, port) -> the kind of failure last logged for it, while it fails.
        self._failing: dict[tuple[str, str, int], str] = {}

    async def resolve(self, host: str, port: int, backend: str = "") -> list[str]:
        """IP addresses for host, IPv4 first (cluster Services are usually IPv4-only);
        ``backend`` names the backend asking, for the log."""
        if is_ip(host):
            return [host]
        key = (host, port)
        now = self._clock()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            if self._failing:
                self._resolved(backend, host, port, cached[1])
            return cached[1]
        failure = self._failures.get(key)
        if failure is not None and failure[0] > now:
            # Another backend may not have heard of this failure yet.
            self._failed(backend, host, port, failure[1], failure[2], cached is not None)
            return cached[1] if cached else []
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            kind = lookup_error_kind(error)
            self._failures[key] = (now + NEGATIVE_TTL, kind, str(error))
            self._failed(backend, host, port, kind, str(error), cached is not None)
            return cached[1] if cached else []
        addresses: list[str] = []
        for family, *_, sockaddr in sorted(infos, key=lambda info: info[0] != socket.AF_INET):
            address = str(sockaddr[0])
            if family in (socket.AF_INET, socket.AF_INET6) and address not in addresses:
                addresses.append(address)
        self._answers[key] = (now + RESOLVE_TTL, addresses)
        self._failures.pop(key, None)
        if self._failing:
            self._resolved(backend, host, port, addresses)
        return addresses

    def _failed(self, backend: str, host: str, port: int, kind: str, detail: str,
                stale: bool) -> None:
        key = (backend, host, port)
        previous = self._failing.get(key)
        self._failing[key] = kind
        # Once per backend and server while the kind of failure stays the same: every health
        # check and session retries the name, and would log again each time.
        level = logging.DEBUG if previous == kind else logging.WARNING
        log.log(level, "msg=\"backend server name does not resolve, %s\" backend=%s server=%s "
                "name=%s error=%s detail=%r",
                "using the last answer" if stale else "server skipped", backend or "-",
                _label(host, port), host, kind, detail[:200])

    def _resolved(self, backend: str, host: str, port: int, addresses: list[str]) -> None:
        if self._failing.pop((backend, host, port), None) is not None:
            log.info("msg=\"backend server name resolves again\" backend=%s server=%s name=%s "
                     "addresses=%s", backend or "-", _label(host, port), host,
                     ",".join(addresses) or "-")


# getaddrinfo's errors, in the words of the dns+ servers' log (routing/discovery.py).
# EAI_NODATA and EAI_ADDRFAMILY are glibc's, not everywhere.
_LOOKUP_ERRORS: dict[int, str] = {}
for _name, _kind in (("EAI_NONAME", "nxdomain"), ("EAI_NODATA", "nodata"),
                     ("EAI_ADDRFAMILY", "nodata"), ("EAI_AGAIN", "temporary"),
                     ("EAI_FAIL", "servfail")):
    if hasattr(socket, _name):
        _LOOKUP_ERRORS[getattr(socket, _name)] = _kind


def lookup_error_kind(error: OSError) -> str:
    """``nxdomain``, ``nodata``, ``temporary`` (a timeout or SERVFAIL, for glibc), ``servfail``
    (a refusal) or ``error``."""
    if isinstance(error, socket.gaierror) and error.errno is not None:
        return _LOOKUP_ERRORS.get(error.errno, "error")
    return "error"


class ServerHealth:
    """HAProxy's ``check`` state machine, pure: a server starts up; ``fall`` consecutive failed
    checks take it down, ``rise`` consecutive successes bring it back."""

    __slots__ = ("_streak", "fall", "rise", "up")

    def __init__(self, rise: int = 2, fall: int = 3) -> None:
        self.rise = rise
        self.fall = fall
        self.up = True
        self._streak = 0  # consecutive results against the current state

    def record(self, ok: bool) -> bool:
        """Count one check; True when the server changed state."""
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up = ok
            self._streak = 0
            return True
        return False


Balance = Literal["roundrobin", "leastconn"]


class BackendEvents(Protocol):
    """What a backend reports to the metrics (ingress.ops.metrics.Metrics has these methods)."""

    def checked(self, backend: str, ok: bool) -> None: ...
    def servers(self, backend: str, up: int, down: int) -> None: ...
    def connect_failed(self, backend: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Group:
    """Servers of one priority (SRV; everything else is priority 0), with their weights, or
    None when they are all equal."""

    endpoints: tuple[Endpoint, ...]
    weights: tuple[int, ...] | None = None


def make_groups(members: Sequence[tuple[Endpoint, int, int]]) -> tuple[Group, ...]:
    """(endpoint, priority, weight) members -> groups, lowest priority first, member order
    kept within a group."""
    by_priority: dict[int, list[tuple[Endpoint, int]]] = {}
    for endpoint, priority, weight in members:
        by_priority.setdefault(priority, []).append((endpoint, weight))
    groups = []
    for priority in sorted(by_priority):
        group = by_priority[priority]
        weights = tuple(weight for _, weight in group)
        groups.append(Group(tuple(endpoint for endpoint, _ in group),
                            None if len(set(weights)) <= 1 else weights))
    return tuple(groups)


class Balancer:
    """Which server a new session tries first, and the order of the others after it.  Pure: the
    state it keeps between sessions (a rotating start, the weighted round robin's credits) is
    its own, so its choices are reproducible in tests.

    The first choice is made in the lowest priority group with a server up: round robin
    (weighted when the group's weights differ: nginx's smooth weighted round robin, which
    spreads a heavier server's turns instead of bunching them), or with ``leastconn`` the server
    with the fewest active sessions, ties broken round robin.  The rest of that group follows in
    rotation, then the up servers of the higher priorities, for a session whose first choice
    refuses."""

    __slots__ = ("_credit", "_next", "leastconn")

    def __init__(self, leastconn: bool = False) -> None:
        self.leastconn = leastconn
        self._next = 0
        self._credit: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the weighted credits (the servers changed)."""
        self._credit.clear()

    def order(self, groups: Sequence[Group], down: Collection[str],
              active: Mapping[str, int]) -> list[Endpoint]:
        index, up = _first_usable(groups, down)
        if not up:
            return []
        group = groups[index]
        endpoints = group.endpoints
        count = len(up)
        if self.leastconn:
            first = self._least(endpoints, up, active)
        elif group.weights is None or count == 1:
            first = self._next % count
            self._next = first + 1
        else:
            first = self._weighted(endpoints, group.weights, up)
        result = [endpoints[up[(first + k) % count]] for k in range(count)]
        for later in groups[index + 1:]:
            result += [e for e in later.endpoints if e.server not in down]
        return result

    def _least(self, endpoints: Sequence[Endpoint], up: Sequence[int],
               active: Mapping[str, int]) -> int:
        count = len(up)
        start = self._next % count
        self._next = start + 1
        best, best_active = start, active.get(endpoints[up[start]].server, 0)
        for k in range(1, count):
            position = (start + k) % count
            load = active.get(endpoints[up[position]].server, 0)
            if load < best_active:
                best, best_active = position, load
        return best

    def _weighted(self, endpoints: Sequence[Endpoint], weights: Sequence[int],
                  up: Sequence[int]) -> int:
        total = sum(weights[i] for i in up)
        credit = self._credit
        best, best_credit = 0, 0
        for position, i in enumerate(up):
            # All-zero weights (RFC 2782: "no server selection to do") count as equal.
            label = endpoints[i].server
            value = credit.get(label, 0) + (weights[i] if total else 1)
            credit[label] = value
            if position == 0 or value > best_credit:
                best, best_credit = position, value
        credit[endpoints[up[best]].server] = best_credit - (total or len(up))
        return best


def _first_usable(groups: Sequence[Group], down: Collection[str]) -> tuple[int, list[int]]:
    """The lowest priority group with a server up, and the positions of its up servers."""
    for index, group in enumerate(groups):
        endpoints = group.endpoints
        up = ([i for i, e in enumerate(endpoints) if e.server not in down] if down
              else list(range(len(endpoints))))
        if up:
            return index, up
    return 0, []


class Backend:
    """The servers of one backend, tried round-robin (or least-connections): each new session
    starts one further on, and on a connect failure the session moves on to the next server.
    Servers that health checks found down are skipped; when all are down there is nothing to
    try, and the client gets its 503 or 421 at once instead of after a connect timeout.

    Servers come from the configuration (``servers``: host names and IP literals) and from DNS
    discovery (``sources``: dns+ servers, whose current targets ``update_source`` sets).  The
    list a session reads is rebuilt on every change, never per session."""

    def __init__(self, name: str, servers: Sequence[tuple[str, int]], resolver: Resolver,
                 *, rise: int = 2, fall: int = 3, balance: Balance = "roundrobin",
                 sources: Sequence[str] = ()) -> None:
        self.name = name
        self.servers = list(servers)
        self.sources = list(sources)
        self._resolver = resolver
        self._rise = rise
        self._fall = fall
        self._next = 0
        self.health = {_label(host, port): ServerHealth(rise, fall) for host, port in servers}
        self._down: set[str] = set()
        self._all_up = True
        self.leastconn = balance == "leastconn"
        # Sessions or requests in progress per server and in all, in this worker: what
        # leastconn balances on, and the access log's srv_conn and beconn.
        self.active: dict[str, int] = {}
        self.busy = 0
        self._balancer = Balancer(self.leastconn)
        self._ordered = False  # True: the balancer orders sessions, not the plain rotation
        self._discovered: dict[str, tuple[Target, ...]] = {source: () for source in sources}
        self._members: list[tuple[Endpoint, int, int]] = []
        self._groups: tuple[Group, ...] = ()
        # Called with (address, port) of each server that leaves the set (closes idle pooled
        # connections to it).
        self.on_removed: Callable[[tuple[str, int]], None] | None = None
        self.events: BackendEvents | None = None
        # Servers written as IP literals need no lookup: their endpoints are built once here so
        # that a session's connect does no parsing and no awaiting before the connect itself.
        self._static: list[Endpoint] | None = None
        self._rebuild()

    def _rebuild(self) -> list[tuple[str, int]]:
        """Recompute what sessions read after a change of the discovered servers; returns the
        servers that are gone."""
        members: list[tuple[Endpoint, int, int]] = []
        seen: set[str] = set()
        plain_ips = all(is_ip(host) for host, _ in self.servers)
        if plain_ips:
            for host, port in self.servers:
                label = _label(host, port)
                if label not in seen:
                    seen.add(label)
                    members.append((Endpoint(host, port, label), 0, 1))
        discovered = []
        for source in self.sources:
            for target in self._discovered[source]:
                label = _label(target.host, target.port)
                if label not in seen:
                    seen.add(label)
                    endpoint = Endpoint(target.host, target.port, label)
                    discovered.append((endpoint, target.priority, target.weight))
        members += discovered
        removed = [(e.host, e.port) for e, _, _ in self._members if e.server not in seen]
        self._members = discovered if not plain_ips else members
        # A server keeps its health state while it stays; one that appears starts up.
        labels = [_label(host, port) for host, port in self.servers] + [
            e.server for e, _, _ in discovered]
        old = self.health
        self.health = {label: old.get(label) or ServerHealth(self._rise, self._fall)
                       for label in labels}
        self._down = {label for label, health in self.health.items() if not health.up}
        self._all_up = not self._down
        self._groups = make_groups(members)
        self._ordered = self.leastconn or len(self._groups) > 1 or any(
            group.weights is not None for group in self._groups)
        self._balancer.reset()
        self._static = [e for e, _, _ in members] if plain_ips else None
        return removed

    def update_source(self, source: str, targets: Sequence[Target]) -> None:
        """The dns+ server ``source`` now stands for ``targets``."""
        self._discovered[source] = tuple(targets)
        removed = self._rebuild()
        if self.on_removed is not None:
            for key in removed:
                self.on_removed(key)

    def serves(self, server: str) -> bool:
        """Whether ``server`` (a label) is still one of this backend's servers."""
        return server in self.health

    def acquire(self, server: str) -> None:
        self.active[server] = self.active.get(server, 0) + 1
        self.busy += 1

    def release(self, server: str) -> None:
        count = self.active.get(server, 0) - 1
        if count > 0:
            self.active[server] = count
        else:
            self.active.pop(server, None)  # no entry left behind for servers that are gone
        self.busy -= 1

    def rotation(self) -> list[tuple[str, int]]:
        count = len(self.servers)
        start = self._next % count
        self._next = (start + 1) % count
        return self.servers[start:] + self.servers[:start]

    def static_endpoints(self) -> list[Endpoint] | None:
        """This session's order of endpoints when no server needs a lookup, else None."""
        static = self._static
        if static is None:
            return None
        if self._ordered:
            return self._balancer.order(self._groups, self._down, self.active)
        if not self._all_up:
            static = [e for e in static if self.health[e.server].up]
            if not static:
                return static
        if len(static) <= 1:  # empty: every discovered server is gone
            return static
        start = self._next % len(static)
        self._next = start + 1
        return static[start:] + static[:start]

    async def check_forever(self, interval: float, connect_timeout: float) -> None:
        """TCP health checks of every server: a connect, then a close, every ``interval``."""
        while True:
            await self.check_once(connect_timeout)
            await asyncio.sleep(interval)

    async def check_once(self, connect_timeout: float) -> None:
        # Concurrently: a discovered set can hold many servers, and a round must not take a
        # connect timeout per server that black-holes.
        checks: dict[str, tuple[str, int]] = {_label(host, port): (host, port)
                                              for host, port in self.servers}
        for endpoint, _, _ in self._members:
            checks.setdefault(endpoint.server, (endpoint.host, endpoint.port))
        labels = list(checks)
        results = await asyncio.gather(*(self._check(*checks[label], connect_timeout)
                                         for label in labels))
        events = self.events
        for label, ok in zip(labels, results, strict=True):
            if self.record_check(label, ok):
                log.warning("msg=\"server %s\" backend=%s server=%s",
                            "up" if ok else "down", self.name, label)
            if events is not None:
                events.checked(self.name, ok)
        if events is not None:
            events.servers(self.name, len(self.health) - len(self._down), len(self._down))

    def connect_failed(self) -> None:
        """One connection attempt to one of this backend's servers failed."""
        if self.events is not None:
            self.events.connect_failed(self.name)

    async def _check(self, host: str, port: int, connect_timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        for address in await self._resolver.resolve(host, port, self.name):
            try:
                async with asyncio.timeout(connect_timeout):
                    transport, _ = await loop.create_connection(asyncio.Protocol, address, port)
            except (OSError, TimeoutError):
                continue
            transport.close()
            return True
        return False

    def record_check(self, server: str, ok: bool) -> bool:
        health = self.health.get(server)
        if health is None:
            return False  # it left the set while it was being checked
        changed = health.record(ok)
        if changed:
            if health.up:
                self._down.discard(server)
            else:
                self._down.add(server)
            self._all_up = not self._down
        return changed

    async def endpoints(self) -> list[Endpoint]:
        """Every address of every server, in this session's order."""
        static = self.static_endpoints()
        if static is not None:
            return static
        if not self.sources and not self.leastconn:
            result: list[Endpoint] = []
            for host, port in self.rotation():
                label = _label(host, port)
                if not self.health[label].up:
                    continue
                for address in await self._resolver.resolve(host, port, self.name):
                    result.append(Endpoint(address, port, label))
            return result
        members: list[tuple[Endpoint, int, int]] = []
        for host, port in self.servers:
            label = _label(host, port)
            if label not in self._down:
                members += [(Endpoint(address, port, label), 0, 1)
                            for address in await self._resolver.resolve(host, port,
                                                                         self.name)]
        return self._balancer.order(make_groups(members + self._members), self._down,
                                    self.active)


class NoServerReachedError(Exception):
    """No endpoint accepted the connection; the message says why the last one failed."""


P = TypeVar("P", bound=asyncio.BaseProtocol)


# How a connection is opened: loop.create_connection's signature (factory, host, port).
Opener = Callable[[Callable[[], P], str, int], Awaitable[tuple[Any, P]]]


async def connect_first(endpoints: Sequence[Endpoint],
                        factory: Callable[[Endpoint], Callable[[], P]],
                        on_failure: Callable[[], None] | None = None,
                        open_connection: Opener[P] | None = None) -> tuple[P, Endpoint]:
    """Connect to the first endpoint, in order, that accepts; ``on_failure`` is told of each
    that does not.  No deadline here: each caller bounds the whole attempt its own way
    (timeouts.connect covers every endpoint tried).  ``open_connection``: the loop's
    ``create_connection`` unless given (``ingress/proxy/sockets.py`` gives its own)."""
    if open_connection is None:
        open_connection = asyncio.get_running_loop().create_connection
    failure = NO_SERVER
    for endpoint in endpoints:
        try:
            _, protocol = await open_connection(factory(endpoint), endpoint.host, endpoint.port)
        except OSError as error:
            failure = connect_failure(endpoint, error)
            if on_failure is not None:
                on_failure()
            continue
        return protocol, endpoint
    raise NoServerReachedError(failure)


def connect_failure(endpoint: Endpoint, error: OSError) -> str:
    """Why a connect to ``endpoint`` failed, as the client's log line and refusal say it."""
    return f"{endpoint.server} ({endpoint.host}): {error.strerror or error}"


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
