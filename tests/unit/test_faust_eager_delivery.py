"""faust's conveyor with eager delivery (processors/faust_tuning.py ``_wait_first_eager``): a
record's delivery to the agents' queues runs at once when it can complete without waiting,
and when it does wait it behaves exactly as under faust's own ``wait_first`` (the other
awaitable, the flow's suspension, can still cut it short)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from sluicegate.processors import faust_tuning

faust_tuning.apply()


class Conveyor(Service):
    """Stands in for faust's Consumer: a mode Service, as ``wait_first`` needs."""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_delivery_that_never_waits_completes_in_the_call_without_tasks() -> None:
    async def scenario() -> None:
        ready = asyncio.Event()
        ready.set()  # awaiting a set event does not yield
        steps: list[str] = []

        async def deliver() -> str:
            await ready.wait()
            steps.append("queued")
            return "delivered"

        suspended = asyncio.Event()
        other = suspended.wait()
        before = len(asyncio.all_tasks())
        result = await faust_tuning._wait_first_eager(Conveyor(), deliver(), other)
        assert steps == ["queued"]
        assert result.results == ["delivered"] and not result.stopped and len(result.done) == 1
        assert other.cr_frame is None  # closed, never scheduled
        assert len(asyncio.all_tasks()) == before

    run(scenario())


@pytest.mark.parametrize("wait", ["future", "sleep0", "both"])
def test_a_delivery_that_waits_finishes_under_wait_first(wait: str) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        steps: list[str] = []

        async def deliver() -> int:
            steps.append("started")
            if wait in ("sleep0", "both"):
                await asyncio.sleep(0)  # a bare yield to the loop
                steps.append("after yield")
            if wait in ("future", "both"):
                room: asyncio.Future[int] = loop.create_future()
                loop.call_later(0.01, room.set_result, 7)
                got = await room  # a full queue making room
                steps.append(f"room {got}")
            return 42

        suspended = asyncio.Event()
        result = await faust_tuning._wait_first_eager(Conveyor(), deliver(), suspended.wait())
        assert result.results == [42] and not result.stopped
        expected = {"future": ["started", "room 7"], "sleep0": ["started", "after yield"],
                    "both": ["started", "after yield", "room 7"]}[wait]
        assert steps == expected

    run(scenario())


def test_a_suspended_flow_cuts_a_waiting_delivery_short() -> None:
    async def scenario() -> None:
        steps: list[str] = []
        never = asyncio.Event()

        async def deliver() -> None:
            steps.append("started")
            try:
                await never.wait()  # a full queue that never drains
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            steps.append("delivered")

        suspended = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, suspended.set)
        other = suspended.wait()
        result = await faust_tuning._wait_first_eager(Conveyor(), deliver(), other)
        assert result.done == [other] and not result.stopped
        await asyncio.sleep(0)  # let the cancellation reach the delivery
        assert steps == ["started", "cancelled"]

    run(scenario())


def test_an_error_before_the_first_wait_propagates_and_closes_the_other() -> None:
    async def scenario() -> None:
        async def deliver() -> None:
            raise ValueError("cannot decode")

        other = asyncio.Event().wait()
        with pytest.raises(ValueError, match="cannot decode"):
            await faust_tuning._wait_first_eager(Conveyor(), deliver(), other)
        assert other.cr_frame is None

    run(scenario())


def test_an_error_after_a_wait_propagates() -> None:
    async def scenario() -> None:
        async def deliver() -> None:
            await asyncio.sleep(0)
            raise ValueError("late")

        with pytest.raises(ValueError, match="late"):
            await faust_tuning._wait_first_eager(Conveyor(), deliver(), asyncio.Event().wait())

    run(scenario())


def test_a_stopped_conveyor_takes_faust_s_own_path() -> None:
    async def scenario() -> None:
        conveyor = Conveyor()
        conveyor._stopped.set()

        async def deliver() -> str:
            return "delivered"

        result = await faust_tuning._wait_first_eager(conveyor, deliver(), asyncio.Event().wait())
        assert result.stopped and result.done == []  # faust's answer: stopped wins

    run(scenario())
