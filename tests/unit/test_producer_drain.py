"""The flush before each commit waits for every table changelog record in faust's
ProducerBuffer (processors/faust_tuning.py): faust's own flush gives up after 0.1 s without a
send, and does not count the record its sender is handing to aiokafka."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sluicegate.processors import faust_tuning


class SlowBuffer:
    """A ProducerBuffer stand-in: a queue and one sender that takes ``delay`` s per record."""

    def __init__(self, delay: float) -> None:
        self.pending: asyncio.Queue[str] = asyncio.Queue()
        self.message_sent = asyncio.Event()
        self.delay = delay
        self.sent: list[str] = []
        self.sg_sending = 0

    @property
    def size(self) -> int:
        return self.pending.qsize()

    async def _publish(self, record: str) -> None:
        await asyncio.sleep(self.delay)
        self.sent.append(record)

    async def run_sender(self) -> None:
        while True:
            record = await self.pending.get()
            fut = SimpleNamespace(message=SimpleNamespace(channel=SimpleNamespace(
                publish_message=lambda _fut, wait, r=record: self._publish(r))))
            await faust_tuning._send_pending(self, fut)
            self.message_sent.set()


@pytest.mark.parametrize("records, delay", [
    (0, 0.0),     # nothing to wait for
    (3, 0.01),
    (1, 0.25),    # slower than faust's 0.1 s give-up: faust's flush would return with it unsent
    (2, 0.15),
])
def test_drain_returns_only_once_every_record_is_sent(records: int, delay: float) -> None:
    async def scenario() -> None:
        buffer = SlowBuffer(delay)
        sender = asyncio.ensure_future(buffer.run_sender())
        for i in range(records):
            buffer.pending.put_nowait(f"r{i}")
        await asyncio.sleep(0)  # the sender takes the first record: queue shorter, one in hand
        await faust_tuning.drain(buffer)
        assert buffer.sent == [f"r{i}" for i in range(records)]
        assert buffer.size == 0 and buffer.sg_sending == 0
        sender.cancel()

    asyncio.run(scenario())


def test_the_record_in_the_senders_hands_is_counted_until_it_is_handed_over() -> None:
    async def scenario() -> None:
        buffer = SlowBuffer(0.05)
        sender = asyncio.ensure_future(buffer.run_sender())
        buffer.pending.put_nowait("r0")
        await asyncio.sleep(0.01)
        assert buffer.size == 0 and buffer.sg_sending == 1  # faust's size alone says "empty"
        await asyncio.sleep(0.1)
        assert buffer.sg_sending == 0 and buffer.sent == ["r0"]
        sender.cancel()

    asyncio.run(scenario())


def test_a_failed_send_is_not_counted_as_in_hand_forever() -> None:
    async def failing(_fut: object, wait: bool) -> None:
        raise RuntimeError("broker gone")

    async def scenario() -> None:
        buffer = SimpleNamespace(sg_sending=0)
        fut = SimpleNamespace(message=SimpleNamespace(channel=SimpleNamespace(publish_message=failing)))
        with pytest.raises(RuntimeError, match="broker gone"):
            await faust_tuning._send_pending(buffer, fut)
        assert buffer.sg_sending == 0

    asyncio.run(scenario())


def test_fausts_own_flush_returns_with_a_slow_record_unsent() -> None:
    """Why drain exists: faust's flush_atmost gives up after 0.1 s without a send."""
    from faust.transport.producer import ProducerBuffer

    async def scenario() -> None:
        buffer = SlowBuffer(0.3)
        buffer.state = "running"  # type: ignore[attr-defined]
        sender = asyncio.ensure_future(buffer.run_sender())
        buffer.pending.put_nowait("r0")
        buffer.pending.put_nowait("r1")
        await asyncio.sleep(0)
        await ProducerBuffer.flush_atmost(buffer, None)  # type: ignore[arg-type]
        assert buffer.sent == []  # returned, nothing sent yet
        await faust_tuning.drain(buffer)
        assert buffer.sent == ["r0", "r1"]
        sender.cancel()

    asyncio.run(scenario())
