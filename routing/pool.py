"""Idle keep-alive connections to backend servers, reused across clients.

HAProxy's ``http-reuse aggressive``: a backend connection whose last response was read to its end
(and whose request was fully sent) goes back here, and any client's next request to the same
server may take it.  A connection that is mid-response is never pooled: the next request would
read the rest of the previous response as its own (a desync).

A pooled connection can be closed by the server at any moment (its keep-alive timeout); the
connection then removes itself (``discard``), and a request that loses that race before any byte
of the response arrived is retried once on a fresh connection by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Poolable(Protocol):
    def close(self) -> None: ...


MAX_IDLE_PER_SERVER = 64


class ConnectionPool:
    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic,
                 max_idle: int = MAX_IDLE_PER_SERVER) -> None:
        self._idle: dict[tuple[str, int], list[tuple[float, Poolable]]] = {}
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._max_idle = max_idle

    def take(self, key: tuple[str, int]) -> Poolable | None:
        """The most recently used idle connection to ``key`` (warmest), if any, out of the
        pool. The caller checks that it is still usable and takes another if not: a connection
        the server closed removes itself, but one may be closing. (The caller knows its
        connections' class, so the check is a direct call there, not a protocol call here.)"""
        idle = self._idle.get(key)
        if idle:
            return idle.pop()[1]
        return None

    def give(self, key: tuple[str, int], connection: Poolable) -> None:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if len(idle) >= self._max_idle:
            connection.close()
            return
        idle.append((self._clock(), connection))

    def discard(self, key: tuple[str, int], connection: Poolable) -> None:
        idle = self._idle.get(key)
        if idle:
            self._idle[key] = [(t, c) for t, c in idle if c is not connection]

    def expire(self) -> None:
        """Close connections idle longer than the timeout (called from the worker's sweep)."""
        limit = self._clock() - self._idle_timeout
        for key, idle in self._idle.items():
            if idle and idle[0][0] < limit:
                keep = []
                for since, connection in idle:
                    if since < limit:
                        connection.close()
                    else:
                        keep.append((since, connection))
                self._idle[key] = keep

    def close_idle(self, key: tuple[str, int]) -> None:
        """Close the idle connections to a server that left its backend: they would otherwise
        hold a socket on a pod that is going away until the idle timeout."""
        for _, connection in self._idle.pop(key, ()):
            connection.close()

    def close_all(self) -> None:
        for idle in self._idle.values():
            for _, connection in idle:
                connection.close()
        self._idle.clear()

    def idle_count(self, key: tuple[str, int]) -> int:
        return len(self._idle.get(key, ()))
