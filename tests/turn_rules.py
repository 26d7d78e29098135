"""A turn rule on its own for a test: pipecat's real timers and task manager, no pipeline around it; and the
carrier's audio output reduced to what the barge-in rule asks of it."""

from __future__ import annotations

import asyncio
import time

from pipecat.clocks.system_clock import SystemClock
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.utils.asyncio.task_manager import TaskManager


async def started(rule) -> list[float]:
    """Sets `rule` up and starts a caller's turn; returns the list the times its turn ends are appended to."""
    # The rule uses only the task manager.
    await rule.setup(FrameProcessorSetup(clock=SystemClock(), pipeline_worker=None,
                                         task_manager=TaskManager(loop=asyncio.get_running_loop())))
    ended: list[float] = []

    async def on_stopped(_rule, _params):
        ended.append(time.monotonic())

    rule.add_event_handler("on_user_turn_stopped", on_stopped)
    await rule.handle_user_turn_started()
    return ended


class HeldLine:
    """A carrier's audio output reduced to what the barge-in rule asks of it: whether it is holding."""

    def __init__(self):
        self.holding = False
        self.resumed = 0

    async def hold(self) -> bool:
        self.holding = True
        return True

    async def resume(self) -> None:
        self.holding = False
        self.resumed += 1
