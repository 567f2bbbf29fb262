"""ingress.proxy.flow.Outbox and WriteBatch: small writes wait for the end of the loop's round and
reach the transport in order; large ones go at once; nothing held outlives a closing transport.

The transport here records the calls the Outbox makes (what is under test is which calls, in
which order); tests/integration covers the same writes over real sockets, through the proxy."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.proxy.flow import DEFER_LIMIT, Outbox, WriteBatch


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", b"".join(list_of_data)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    @property
    def received(self) -> bytes:
        return b"".join(data for _, data in self.calls)


class Loop:
    """The one loop call WriteBatch makes, with the callbacks kept for the test to run."""

    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)

    def run_round(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()


def _outbox() -> tuple[Loop, WriteBatch, RecordingTransport, Outbox]:
    loop = Loop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    transport = RecordingTransport()
    return loop, batch, transport, Outbox(batch, transport)


def test_small_writes_wait_for_the_round_and_go_out_as_one_write() -> None:
    loop, _batch, transport, outbox = _outbox()
    outbox.write(b"HTTP/1.1 200 OK\r\n")
    outbox.write(b"Content-Length: 0\r\n\r\n")
    assert transport.calls == []
    assert len(loop.soon) == 1
    loop.run_round()
    assert transport.calls == [("write", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]


def test_one_round_schedules_one_send_for_every_outbox() -> None:
    loop = Loop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    transports = [RecordingTransport() for _ in range(5)]
    for number, transport in enumerate(transports):
        Outbox(batch, transport).write(b"response %d" % number)
    assert len(loop.soon) == 1
    loop.run_round()
    assert [t.calls for t in transports] == [[("write", b"response %d" % n)] for n in range(5)]
    assert loop.soon == []


def test_a_large_write_sends_what_is_held_first_and_at_once() -> None:
    loop, _batch, transport, outbox = _outbox()
    outbox.write(b"head")
    outbox.write(b"x" * DEFER_LIMIT)
    assert transport.calls == [("writelines", b"head" + b"x" * DEFER_LIMIT)]
    loop.run_round()  # nothing left for the round
    assert len(transport.calls) == 1


def test_a_large_write_with_nothing_held_is_one_plain_write() -> None:
    _loop, _batch, transport, outbox = _outbox()
    outbox.write(b"y" * (DEFER_LIMIT + 1))
    assert transport.calls == [("write", b"y" * (DEFER_LIMIT + 1))]


def test_flush_sends_at_once_and_the_round_then_has_nothing_to_do() -> None:
    loop, _batch, transport, outbox = _outbox()
    outbox.write(b"last response")
    outbox.flush()  # what the owner does before closing the transport
    assert transport.calls == [("write", b"last response")]
    loop.run_round()
    assert transport.calls == [("write", b"last response")]


def test_close_sends_what_is_held_then_closes_and_the_round_has_nothing_to_do() -> None:
    loop, _batch, transport, outbox = _outbox()
    outbox.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
    outbox.close()
    assert transport.calls == [("write", b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"),
                               ("close", b"")]
    loop.run_round()
    assert len(transport.calls) == 2


def test_what_is_held_is_dropped_once_the_transport_is_closing() -> None:
    loop, _batch, transport, outbox = _outbox()
    outbox.write(b"to a client that is gone")
    transport.closing = True
    loop.run_round()
    outbox.write(b"z" * (DEFER_LIMIT + 1))
    assert transport.calls == []


def test_an_outbox_used_again_after_its_round_joins_the_next_round() -> None:
    loop, _batch, transport, outbox = _outbox()
    outbox.write(b"first")
    loop.run_round()
    outbox.write(b"second")
    assert len(loop.soon) == 1
    loop.run_round()
    assert transport.calls == [("write", b"first"), ("write", b"second")]


@settings(max_examples=300)
@given(st.lists(st.one_of(st.integers(min_value=1, max_value=3 * DEFER_LIMIT),
                          st.just(0), st.just(-1)), max_size=40))
def test_bytes_arrive_in_order_and_at_most_the_limit_is_ever_held(steps: list[int]) -> None:
    """Steps: a positive number writes that many bytes (each write its own byte value), 0 ends
    the loop's round, -1 is the owner's flush."""
    loop, _batch, transport, outbox = _outbox()
    written = bytearray()
    for number, step in enumerate(steps):
        if step > 0:
            data = bytes([number % 256]) * step
            outbox.write(data)
            written += data
        elif step == 0:
            loop.run_round()
        else:
            outbox.flush()
        held = len(written) - len(transport.received)
        assert 0 <= held <= DEFER_LIMIT
        assert bytes(written).startswith(transport.received)
    loop.run_round()
    assert transport.received == bytes(written)


def test_on_a_real_loop_the_batch_is_sent_before_the_next_round() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        loop = asyncio.get_running_loop()
        transport = RecordingTransport()
        outbox = Outbox(WriteBatch(loop), transport)
        outbox.write(b"held")
        assert transport.calls == []
        await asyncio.sleep(0)
        return transport.calls

    assert asyncio.run(scenario()) == [("write", b"held")]


class BrokenTransport(RecordingTransport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: Any) -> None:
        raise RuntimeError("the handle is closed")

    def abort(self) -> None:
        self.aborted = True


def test_a_transport_that_fails_is_aborted_and_the_others_still_get_their_writes() -> None:
    reported: list[dict[str, Any]] = []

    class ReportingLoop(Loop):
        def call_exception_handler(self, context: dict[str, Any]) -> None:
            reported.append(context)

    loop = ReportingLoop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    broken, healthy = BrokenTransport(), RecordingTransport()
    Outbox(batch, broken).write(b"lost")
    Outbox(batch, healthy).write(b"delivered")
    loop.run_round()
    assert broken.aborted
    assert healthy.calls == [("write", b"delivered")]
    assert [type(context["exception"]) for context in reported] == [RuntimeError]
