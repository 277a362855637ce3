"""The queue in front of every engine: at most `max_sequences` generations inside the engine at once.

Both engines queue here, not in the engine itself (vLLM would hold requests past `max_num_seqs` in its own
scheduler): so a request waits in arrival order in one place, a caller that leaves while queued never
reaches the engine, and `/health` counts the same things on both (`Stats`: waiting here, in flight in the
engine, finished after holding a slot, aborted when stopped early, queued or running). How many may wait is
the Edge's bound (`Limits.max_requests`, deployment/serving/edge.py).
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator

from deployment.serving.engines.base import Stats


@dataclass
class Slot:
    """One generation's place in the engine; the engine sets `finished` when the reply reached its end."""

    finished: bool = False


class SequenceSlots:
    """`async with slots.held() as slot:` waits for a free sequence slot and gives it back on the way out."""

    def __init__(self, size: int, stats: Stats) -> None:
        self.stats = stats
        self._free = asyncio.Semaphore(size)  # binds to the server's event loop at its first wait

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[Slot]:
        stats = self.stats
        stats.waiting += 1
        try:
            await self._free.acquire()
        except asyncio.CancelledError:  # the caller left while queued: it never reached the engine
            stats.aborted += 1
            raise
        finally:
            stats.waiting -= 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        slot = Slot()
        try:
            yield slot
        finally:
            if not slot.finished:  # the caller left, or the reply failed
                stats.aborted += 1
            stats.in_flight -= 1
            stats.finished += 1
            self._free.release()
