"""Flow control between two transports: reading from one side pauses while the other side's
write buffer is above its high-water mark.  Both calls are idempotent and ignore a transport
that is gone or closing, so that callers never need to track who paused what."""

from __future__ import annotations

import asyncio

# Each proxy's transports pause the other side above this: twice asyncio's default, so bulk
# transfers (DATA, large bodies) make fewer pause/resume round trips.
WRITE_HIGH_WATER = 256 * 1024


def pause_reading(transport: asyncio.Transport | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.pause_reading()


def resume_reading(transport: asyncio.Transport | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


# A write of at most this many bytes (with what its transport already holds) waits for the end
# of the loop's round of I/O callbacks; a larger one goes at once, after what was held.
DEFER_LIMIT = 16 * 1024


class WriteBatch:
    """The small writes of one round of the loop's I/O callbacks, sent after the last of them.

    Why: each send() on a local socket wakes its reader. A send from every callback, between
    the work of the callbacks around it, wakes a peer (client or backend) that has just gone
    back to sleep for each request, and the proxy's kernel time per request grows the more it
    is the bottleneck. Sent together, one wake-up serves a round's worth of requests. On this
    2-core machine the benchmark floor relays 15% more keep-alive requests per second with it
    when it does 10 us of work per request, and HTTPS 15% more with none (docs/benchmarks.md).
    The delay is one pass of the loop: the callback that sends runs before the next poll."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[Outbox] = []

    def add(self, outbox: Outbox) -> None:
        if not self._waiting:
            self._loop.call_soon(self.send)
        self._waiting.append(outbox)

    def send(self) -> None:
        waiting, self._waiting = self._waiting, []
        for outbox in waiting:
            try:
                outbox.flush()
            except Exception as error:  # one broken transport must not hold back the others
                outbox.transport.abort()
                self._loop.call_exception_handler(
                    {"message": "held write failed", "exception": error})


class Outbox:
    """One transport's writes through a WriteBatch: in order, at most DEFER_LIMIT bytes held,
    and a write that would hold more sends what is held and itself at once (a large body is
    never held, so the transport's own flow control sees it as before). The owner closes the
    transport through it, after what is held; once the transport is closing otherwise, what
    is held is dropped, as the transport itself would drop it."""

    def __init__(self, batch: WriteBatch, transport: asyncio.Transport) -> None:
        self._batch = batch
        self.transport = transport
        self._held: list[bytes] = []
        self._held_size = 0

    def write(self, data: bytes) -> None:
        size = self._held_size + len(data)
        if size > DEFER_LIMIT:
            held = self._held
            if held:
                held.append(data)
                self._held = []
                self._held_size = 0
                if not self.transport.is_closing():
                    self.transport.writelines(held)
            elif not self.transport.is_closing():
                self.transport.write(data)
            return
        if not self._held:
            self._batch.add(self)
        self._held.append(data)
        self._held_size = size

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        self._held_size = 0
        if not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Close the transport after what is held."""
        self.flush()
        self.transport.close()
