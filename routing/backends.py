"""Backend servers: name resolution and the order in which servers are tried.

A server written as an IP literal is used as is.  A host name (a Kubernetes Service such as
``ga1-ingress-mta``) is resolved with the system resolver and the answer kept for
``RESOLVE_TTL`` seconds: resolving on every SMTP session would put a thread-pool round trip and
a DNS query on the per-connection path, and a ClusterIP changes only when the Service is
recreated.  A failed lookup is not cached beyond ``NEGATIVE_TTL`` so that a Service created after
the ingress is found quickly; while a name fails, the last good answer is still used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

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
        self._failures: dict[tuple[str, int], float] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """IP addresses for host, IPv4 first (cluster Services are usually IPv4-only)."""
        if is_ip(host):
            return [host]
        key = (host, port)
        now = self._clock()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._failures.get(key, 0.0) > now:
            return cached[1] if cached else []
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            self._failures[key] = now + NEGATIVE_TTL
            if cached:
                log.warning("msg=\"lookup failed, using the last answer\" host=%s error=%r",
                            host, str(error))
                return cached[1]
            log.warning("msg=\"lookup failed\" host=%s error=%r", host, str(error))
            return []
        addresses: list[str] = []
        for family, *_, sockaddr in sorted(infos, key=lambda info: info[0] != socket.AF_INET):
            address = str(sockaddr[0])
            if family in (socket.AF_INET, socket.AF_INET6) and address not in addresses:
                addresses.append(address)
        self._answers[key] = (now + RESOLVE_TTL, addresses)
        self._failures.pop(key, None)
        return addresses


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


class Backend:
    """The servers of one backend, tried round-robin: each new session starts one further on,
    and on a connect failure the session moves on to the next server.  Servers that health
    checks found down are skipped; when all are down there is nothing to try, and the client
    gets its 503 or 421 at once instead of after a connect timeout."""

    def __init__(self, name: str, servers: Sequence[tuple[str, int]], resolver: Resolver,
                 *, rise: int = 2, fall: int = 3) -> None:
        self.name = name
        self.servers = list(servers)
        self._resolver = resolver
        self._next = 0
        self.health = {_label(host, port): ServerHealth(rise, fall) for host, port in servers}
        self._all_up = True
        # Servers written as IP literals need no lookup: their endpoints are built once here so
        # that a session's connect does no parsing and no awaiting before the connect itself.
        self._static: list[Endpoint] | None = None
        if all(is_ip(host) for host, _ in self.servers):
            self._static = [Endpoint(host, port, _label(host, port)) for host, port in self.servers]

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
        if not self._all_up:
            static = [e for e in static if self.health[e.server].up]
            if not static:
                return static
        if len(static) == 1:
            return static
        start = self._next % len(static)
        self._next = start + 1
        return static[start:] + static[:start]

    async def check_forever(self, interval: float, connect_timeout: float) -> None:
        """TCP health checks of every server: a connect, then a close, every ``interval``."""
        loop = asyncio.get_running_loop()
        while True:
            for host, port in list(self.servers):
                label = _label(host, port)
                ok = False
                for address in await self._resolver.resolve(host, port):
                    try:
                        async with asyncio.timeout(connect_timeout):
                            transport, _ = await loop.create_connection(
                                asyncio.Protocol, address, port)
                    except (OSError, TimeoutError):
                        continue
                    transport.close()
                    ok = True
                    break
                if self.record_check(label, ok):
                    log.warning("msg=\"server %s\" backend=%s server=%s",
                                "up" if ok else "down", self.name, label)
            await asyncio.sleep(interval)

    def record_check(self, server: str, ok: bool) -> bool:
        changed = self.health[server].record(ok)
        if changed:
            self._all_up = all(health.up for health in self.health.values())
        return changed

    async def endpoints(self) -> list[Endpoint]:
        """Every address of every server, in this session's order."""
        static = self.static_endpoints()
        if static is not None:
            return static
        result: list[Endpoint] = []
        for host, port in self.rotation():
            label = _label(host, port)
            if not self.health[label].up:
                continue
            for address in await self._resolver.resolve(host, port):
                result.append(Endpoint(address, port, label))
        return result


class NoServerReachedError(Exception):
    """No endpoint accepted the connection; the message says why the last one failed."""


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def connect_first(endpoints: Sequence[Endpoint],
                        factory: Callable[[Endpoint], Callable[[], P]]) -> tuple[P, Endpoint]:
    """Connect to the first endpoint, in order, that accepts.  No deadline here: each caller
    bounds the whole attempt its own way (timeouts.connect covers every endpoint tried)."""
    loop = asyncio.get_running_loop()
    failure = NO_SERVER
    for endpoint in endpoints:
        try:
            _, protocol = await loop.create_connection(factory(endpoint), endpoint.host,
                                                       endpoint.port)
        except OSError as error:
            failure = f"{endpoint.server} ({endpoint.host}): {error.strerror or error}"
            continue
        return protocol, endpoint
    raise NoServerReachedError(failure)


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
