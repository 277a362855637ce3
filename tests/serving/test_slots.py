"""The queue in front of both engines (deployment/serving/engines/slots.py): what /health counts, and why.

The live edge tests (test_edge_live.py) read these counts from each engine's server; here the rules alone."""
from __future__ import annotations

import asyncio

import pytest

from deployment.serving.engines.base import Stats
from deployment.serving.engines.slots import SequenceSlots


async def _hold(slots: SequenceSlots, release: asyncio.Event, finish: bool) -> None:
    async with slots.held() as slot:
        await release.wait()
        slot.finished = finish


def test_past_the_slots_requests_wait_and_a_caller_that_leaves_is_counted() -> None:
    async def scenario() -> None:
        stats = Stats()
        slots = SequenceSlots(2, stats)
        release = asyncio.Event()
        running = [asyncio.create_task(_hold(slots, release, finish)) for finish in (True, False)]
        queued = [asyncio.create_task(_hold(slots, release, True)) for _ in range(3)]
        await asyncio.sleep(0)
        assert (stats.in_flight, stats.waiting, stats.peak_in_flight) == (2, 3, 2)
        queued[0].cancel()  # leaves while queued: it never held a slot
        await asyncio.gather(queued[0], return_exceptions=True)
        assert (stats.in_flight, stats.waiting, stats.aborted, stats.finished) == (2, 2, 1, 0)
        release.set()
        await asyncio.gather(*running, *queued[1:])
        # the running one that did not finish is aborted too; the four that held a slot gave it back
        assert (stats.in_flight, stats.waiting, stats.aborted, stats.finished, stats.peak_in_flight) == (0, 0, 2, 4, 2)

    asyncio.run(scenario())


def test_a_generation_that_fails_gives_its_slot_back() -> None:
    async def scenario() -> None:
        stats = Stats()
        slots = SequenceSlots(1, stats)
        with pytest.raises(RuntimeError):
            async with slots.held():
                raise RuntimeError("the engine failed")
        async with slots.held() as slot:  # the one slot is free again
            slot.finished = True
        assert (stats.in_flight, stats.aborted, stats.finished) == (0, 1, 2)

    asyncio.run(scenario())
