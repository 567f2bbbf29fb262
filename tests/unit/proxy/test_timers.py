"""ingress.proxy.timers: many timeouts of one length on one loop timer, on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import uvloop

from ingress.proxy.timers import Deadlines

SECONDS = 0.05


def run(test: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(test(), 10))


def test_each_runs_its_length_after_it_was_set_in_order_and_a_cancelled_one_never() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, SECONDS)
        fired: list[tuple[str, float]] = []
        set_at: dict[str, float] = {}

        def add(name: str) -> None:
            set_at[name] = loop.time()
            deadlines.add(lambda: fired.append((name, loop.time())))

        add("first")
        cancelled = deadlines.add(lambda: fired.append(("cancelled", loop.time())))
        await asyncio.sleep(SECONDS / 2)
        add("second")  # set while the timer waits for the first
        cancelled.cancel()
        await asyncio.sleep(SECONDS * 2)
        assert [name for name, _ in fired] == ["first", "second"]
        for name, at in fired:
            # a loop timer may fire up to its resolution (1 ms) early, never later than due
            # by more than a scheduling delay
            assert SECONDS - 0.0015 <= at - set_at[name] < SECONDS * 1.9
        assert len(deadlines) == 0

    run(scenario)


def test_cancelled_deadlines_at_the_head_are_dropped_as_new_ones_are_set() -> None:
    async def scenario() -> None:
        deadlines = Deadlines(asyncio.get_running_loop(), 60.0)
        for _ in range(1000):
            deadlines.add(lambda: None).cancel()
        deadlines.add(lambda: None)
        # what was cancelled ahead of the new one is gone: the queue holds what is in flight
        assert len(deadlines) == 1

    run(scenario)


def test_a_callback_that_raises_is_reported_and_the_next_still_runs() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[BaseException] = []
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        deadlines = Deadlines(loop, SECONDS)
        ran: list[str] = []

        def broken() -> None:
            raise RuntimeError("timeout handler broke")

        deadlines.add(broken)
        deadlines.add(lambda: ran.append("next"))
        await asyncio.sleep(SECONDS * 3)
        assert ran == ["next"]
        assert [str(error) for error in reported] == ["timeout handler broke"]

    run(scenario)


def test_a_deadline_set_by_a_callback_runs_once_on_one_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, SECONDS)
        ran: list[str] = []

        def first() -> None:
            ran.append("first")
            deadlines.add(lambda: ran.append("set by first"))

        deadlines.add(first)
        await asyncio.sleep(SECONDS / 2)
        deadlines.add(lambda: ran.append("second"))
        await asyncio.sleep(SECONDS * 3)
        assert ran == ["first", "second", "set by first"]
        assert deadlines._timer is None  # nothing left armed
        assert len(deadlines) == 0

    run(scenario)
