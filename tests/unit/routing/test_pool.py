"""routing.pool.ConnectionPool: which idle connection a request gets, and which are closed."""

from __future__ import annotations

from routing.pool import ConnectionPool

KEY = ("10.0.0.1", 80)
OTHER = ("10.0.0.2", 80)


class Connection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pool_of_three(first: Connection, second: Connection, elsewhere: Connection
                   ) -> ConnectionPool:
    """``first`` then ``second`` pooled for KEY, ``elsewhere`` for OTHER."""
    pool = ConnectionPool(idle_timeout=60)
    pool.give(KEY, first)
    pool.give(KEY, second)
    pool.give(OTHER, elsewhere)
    return pool


def test_take_gives_the_most_recently_pooled_connection_to_that_server() -> None:
    first, second, elsewhere = Connection("first"), Connection("second"), Connection("other")
    pool = _pool_of_three(first, second, elsewhere)
    assert pool.take(KEY) is second
    assert pool.take(KEY) is first
    assert pool.take(KEY) is None
    assert pool.take(OTHER) is elsewhere
    assert not any(c.closed for c in (first, second, elsewhere))


def test_a_full_pool_closes_the_connection_given_back() -> None:
    pool = ConnectionPool(idle_timeout=60, max_idle=2)
    connections = [Connection(str(n)) for n in range(3)]
    for connection in connections:
        pool.give(KEY, connection)
    assert [c.closed for c in connections] == [False, False, True]
    assert pool.idle_count(KEY) == 2


def test_expire_closes_only_connections_idle_past_the_timeout() -> None:
    clock = Clock()
    pool = ConnectionPool(idle_timeout=10, clock=clock)
    old, recent = Connection("old"), Connection("recent")
    pool.give(KEY, old)
    clock.now += 8
    pool.give(KEY, recent)
    clock.now += 5
    pool.expire()
    assert (old.closed, recent.closed) == (True, False)
    assert pool.take(KEY) is recent
    assert pool.take(KEY) is None


def test_discard_and_close_idle_remove_connections() -> None:
    gone, kept, leaving = Connection("gone"), Connection("kept"), Connection("leaving")
    pool = _pool_of_three(gone, kept, leaving)
    pool.discard(KEY, gone)  # the server closed it while it was idle
    assert not gone.closed
    pool.close_idle(OTHER)  # its server left the backend
    assert leaving.closed
    assert pool.take(OTHER) is None
    assert pool.take(KEY) is kept
    assert pool.take(KEY) is None
