"""`end_call` and `transfer_call` are synchronous tools, so a barge-in may cancel their handlers: the ending a handler
has begun must still reach the end of the pipeline, or the call would stay open, marked as closing, until its
deadline."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from pipecat.frames.frames import EndWorkerFrame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from config.agent import AgentConfig
from pipelines.tools.toolset import ToolSet
from runtime.call_controls import CallControls
from runtime.call_tools import END_CALL, TRANSFER_CALL, add_call_tools
from runtime.reasons import DisconnectionReason as R
from tests.pipelines import running

AGENT = {"name": "a", "system_prompt": "p", "transcriber": {}, "llm": {}, "tts": {}}


class StalledLLM(FrameProcessor):
    """Where a tool's ending enters the pipeline (the LLM's place), with its pushes held until `release`."""

    def __init__(self):
        super().__init__()
        self.pushing = asyncio.Event()
        self.release = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)

    async def push_frame(self, frame, direction=FrameDirection.DOWNSTREAM):
        if isinstance(frame, (TTSSpeakFrame, EndWorkerFrame)):
            self.pushing.set()
            await self.release.wait()
        await super().push_frame(frame, direction)


async def _cancelled_mid_ending(tool: str, arguments: dict, agent: AgentConfig) -> tuple[list, list[str], bool]:
    llm = StalledLLM()
    worker, _, task = await running(llm)
    ended: list[tuple[R, str]] = []
    transfers: list[str] = []
    controls = CallControls(agent.call, worker, end_with=lambda r, d: ended.append((r, d)),
                            cancel=lambda why: None, label="t")
    tools = ToolSet()
    add_call_tools(tools, agent, controls, transfers.append)
    try:
        handler = asyncio.create_task(tools.call(tool, arguments, params=SimpleNamespace(llm=llm)))
        await asyncio.wait_for(llm.pushing.wait(), 5)
        handler.cancel()  # what pipecat does to a running tool call on an interruption
        await asyncio.gather(handler, return_exceptions=True)
        assert handler.cancelled()
        llm.release.set()
        # asyncio.wait, not wait_for: a runner cancelled by wait_for's timeout returns normally, like a finished one.
        done, _ = await asyncio.wait({task}, timeout=10)
        finished = task in done  # the EndWorkerFrame got through and ended the worker
    finally:
        controls.stop()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return ended, transfers, finished


async def test_an_end_call_cancelled_by_a_barge_in_still_ends_the_call():
    ended, _, finished = await _cancelled_mid_ending(END_CALL, {"reason": "done"}, AgentConfig(**AGENT))
    assert ended == [(R.AGENT_HANGUP, "end_call tool: done")] and finished


async def test_a_transfer_cancelled_by_a_barge_in_still_says_its_message_and_ends():
    agent = AgentConfig(**AGENT, call={"transfer": {"number": "+15550100099", "message": "Putting you through."}})
    ended, transfers, finished = await _cancelled_mid_ending(TRANSFER_CALL, {"reason": "asked"}, agent)
    assert transfers == ["+15550100099"] and ended == [(R.TRANSFER, "transferred to +15550100099")] and finished
