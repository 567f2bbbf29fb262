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
