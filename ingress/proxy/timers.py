"""Timeouts of one length, many at a time, on one loop timer.

A relayed session's connect timeout is set when the connect starts and, almost always, cancelled
a fraction of a millisecond later. A uvloop timer for each is a TimerHandle, a libuv timer
started and stopped, and a libuv handle closed: about 4% of a forward-mode session's user CPU
(docs/benchmarks.md). Timeouts of one length expire in the order they were set, so one queue
in that order and one loop timer, armed for the oldest, serve them all: setting one is an
append, cancelling it forgets its callback, and the timer, when it fires, runs what is due
and moves on to the next.

A cancelled deadline stays queued until it reaches the head; the head's are dropped as new
ones are set, so the queue holds about what is in flight, plus those set behind a deadline
still waiting at its head (at most the timeout's length of them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# A loop timer may fire up to its clock's resolution early; what is due within it runs now
# rather than being rearmed for a moment later (as asyncio's own loop does).
_RESOLUTION = 0.001


class Deadline:
    __slots__ = ("at", "callback")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class Deadlines:
    """``add(callback)`` calls it ``seconds`` from now unless the Deadline it returns is
    cancelled first."""

    __slots__ = ("_loop", "_queue", "_timer", "seconds")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self.seconds = seconds
        self._queue: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, callback: Callable[[], None]) -> Deadline:
        queue = self._queue
        while queue and queue[0].callback is None:
            queue.popleft()
        deadline = Deadline(self._loop.time() + self.seconds, callback)
        queue.append(deadline)
        if self._timer is None:
            self._timer = self._loop.call_at(queue[0].at, self._expire)
        return deadline

    def __len__(self) -> int:
        return len(self._queue)

    def _expire(self) -> None:
        self._timer = None
        loop, queue = self._loop, self._queue
        due = loop.time() + _RESOLUTION
        while queue:
            head = queue[0]
            callback = head.callback
            if callback is None:
                queue.popleft()
                continue
            if head.at > due:
                # unless a callback's add() has armed one meanwhile: one timer, never two
                if self._timer is None:
                    self._timer = loop.call_at(head.at, self._expire)
                return
            queue.popleft()
            head.callback = None
            try:
                callback()
            except Exception as error:  # one session's fault must not stop the others' timeouts
                loop.call_exception_handler(
                    {"message": "timeout callback failed", "exception": error})
