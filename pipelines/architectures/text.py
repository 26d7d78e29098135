"""The `text` architecture: one chat turn through a small pipecat pipeline, with no audio.

    user aggregator → error tap → LLM (with the agent's tools) → output tap → assistant aggregator

The stored history and the new message go in as context; the taps turn what comes out into turn events
(`message_delta`, `tool_executing`, `tool_done`, `assistant_message`, then `done` or `error`). Tool calls run
through pipecat's own function calling, so a tool result goes back into the context and the LLM runs again, exactly
as in a phone call. Any agent with an `llm` section can chat, whatever its architecture.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.providers import registry
from pipelines.providers.registry import BuildContext, ProviderError
from pipelines.tools import ToolSet, payload_text
from runtime import call_teardown

TURN_TIMEOUT_SECS = 120.0
_STOP_TIMEOUT_SECS = 5.0


@dataclass
class TurnEvent:
    type: str  # message_delta, tool_executing, tool_done, assistant_message (to store), done, error
    data: dict[str, Any] = field(default_factory=dict)


def context_messages(system_prompt: str, history: Iterable[Any]) -> list[dict[str, Any]]:
    """LLM messages from stored chat messages (anything with role, content and the tool_* fields)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for item in history:
        if item.role == "tool":
            # The shape pipecat's assistant aggregator gives a call and its result, so a resumed chat reads the same.
            messages.append({"role": "assistant", "tool_calls": [{
                "id": item.tool_call_id, "type": "function",
                "function": {"name": item.tool_name, "arguments": json.dumps(item.tool_arguments or {},
                                                                             ensure_ascii=False)},
            }]})
            messages.append({"role": "tool", "tool_call_id": item.tool_call_id,
                             "content": json.dumps(item.tool_result or {"error": {"message": item.tool_error}},
                                                   ensure_ascii=False)})
        elif item.role in ("user", "assistant") and item.content:
            messages.append({"role": item.role, "content": item.content})
    return messages


class _Turn:
    """What the taps have seen of this turn, and when it is over.

    The turn is over at the end of an LLM run that left no tool call running and no tool result waiting for the
    LLM to run again on it."""

    def __init__(self, as_sent: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        self._as_sent = as_sent  # a tool call's arguments as sent (the agent's fixed ones merged in)
        self.events: asyncio.Queue[TurnEvent] = asyncio.Queue()
        self.text: list[str] = []  # the whole turn's assistant text
        self._run_text: list[str] = []
        self._in_run = False
        self._pending: dict[str, float] = {}  # tool call id → monotonic start
        self._rerun_expected = False
        self._error: str | None = None
        self._over = False

    def put(self, type_: str, **data: Any) -> None:
        if not self._over:
            self.events.put_nowait(TurnEvent(type_, data))

    def finish(self, error: str | None = None) -> None:
        if self._over:
            return
        if error is None:
            self.put("done", text="".join(self.text))
        else:
            self.put("error", code="llm_error", message=error)
        self._over = True

    # --- from the output tap (downstream of the LLM) ---

    def run_started(self) -> None:
        self._in_run, self._run_text, self._rerun_expected, self._error = True, [], False, None

    def delta(self, text: str) -> None:
        self._run_text.append(text)
        self.text.append(text)
        self.put("message_delta", text=text)

    def run_ended(self) -> None:
        self._in_run = False
        if (said := "".join(self._run_text).strip()):
            self.put("assistant_message", text=said)
        self._run_text = []
        if self._error is not None:
            self.finish(self._error)
        elif not self._pending and not self._rerun_expected:
            self.finish()

    def calls_started(self, call_ids: Iterable[str]) -> None:
        for call_id in call_ids:
            self._pending.setdefault(call_id, time.monotonic())

    def call_running(self, frame: FunctionCallInProgressFrame) -> None:
        self._pending[frame.tool_call_id] = self._pending.get(frame.tool_call_id, time.monotonic())
        self.put("tool_executing", tool_call_id=frame.tool_call_id, name=frame.function_name,
                 arguments=self._as_sent(frame.function_name, dict(frame.arguments or {})))

    def call_done(self, frame: FunctionCallResultFrame) -> None:
        if frame.properties is not None and not frame.properties.is_final:
            return
        start = self._pending.pop(frame.tool_call_id, time.monotonic())
        result = frame.result if isinstance(frame.result, dict) else {"result": frame.result}
        text, failed = payload_text(result)
        error = frame.error or (text if failed else None)
        self.put("tool_done", tool_call_id=frame.tool_call_id, name=frame.function_name,
                 arguments=self._as_sent(frame.function_name, dict(frame.arguments or {})), result=result, error=error,
                 duration_ms=int((time.monotonic() - start) * 1000))
        run_llm = frame.properties.run_llm if frame.properties and frame.properties.run_llm is not None \
            else frame.run_llm
        # pipecat's assistant aggregator runs the LLM again on a (non-empty) result unless told not to.
        if frame.result and run_llm is not False:
            self._rerun_expected = True
        elif not self._pending and not self._in_run and not self._rerun_expected:
            self.finish()

    def call_cancelled(self, frame: FunctionCallCancelFrame) -> None:
        start = self._pending.pop(frame.tool_call_id, time.monotonic())
        self.put("tool_done", tool_call_id=frame.tool_call_id, name=frame.function_name, arguments={},
                 result=None, error="cancelled", duration_ms=int((time.monotonic() - start) * 1000))
        if not self._pending and not self._in_run and not self._rerun_expected:
            self.finish()

    # --- from the error tap (upstream of the LLM) ---

    def failed(self, error: str) -> None:
        if self._in_run or self._pending:
            self._error = self._error or error  # reported when the run ends, after what it did say
        else:
            self.finish(error)


class _OutputTap(FrameProcessor):
    def __init__(self, turn: _Turn):
        # Direct mode: frames are handled as the LLM pushes them, so the order of events is the order of frames.
        super().__init__(enable_direct_mode=True)
        self._turn = turn

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            turn = self._turn
            if isinstance(frame, LLMFullResponseStartFrame):
                turn.run_started()
            elif isinstance(frame, LLMTextFrame):
                turn.delta(frame.text)
            elif isinstance(frame, LLMFullResponseEndFrame):
                turn.run_ended()
            elif isinstance(frame, FunctionCallsStartedFrame):
                turn.calls_started(fc.tool_call_id for fc in frame.function_calls)
            elif isinstance(frame, FunctionCallInProgressFrame):
                turn.call_running(frame)
            elif isinstance(frame, FunctionCallResultFrame):
                turn.call_done(frame)
            elif isinstance(frame, FunctionCallCancelFrame):
                turn.call_cancelled(frame)
        await self.push_frame(frame, direction)


class _ErrorTap(FrameProcessor):
    def __init__(self, turn: _Turn):
        # Direct mode: the LLM's error is recorded before it pushes the end of its response.
        super().__init__(enable_direct_mode=True)
        self._turn = turn

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame) and direction == FrameDirection.UPSTREAM:
            self._turn.failed(frame.error)
        await self.push_frame(frame, direction)


async def stream_turn(agent: AgentConfig, messages: list[dict[str, Any]], message: str, *, settings: Settings,
                      toolset: ToolSet, timeout_secs: float = TURN_TIMEOUT_SECS,
                      http_pool: Any = None) -> AsyncIterator[TurnEvent]:
    """Run one turn: `messages` is the context so far (see `context_messages`), `message` the user's new one.
    `http_pool`: the server's connections to the LLM (BuildContext.http_pool), so that a turn does not dial anew.
    Ends with a `done` or an `error` event; never raises for a provider failure."""
    if agent.llm is None:
        yield TurnEvent("error", {"code": "no_llm", "message": f"agent {agent.name!r} has no `llm` section to chat with"})
        return
    try:
        llm = registry.build("llm", agent.llm, BuildContext(agent=agent, settings=settings, http_pool=http_pool))
    except ProviderError as exc:
        yield TurnEvent("error", {"code": "llm_unavailable", "message": str(exc)})
        return
    toolset.register(llm)
    context = LLMContext(messages=messages, tools=toolset.tools_schema())
    pair = LLMContextAggregatorPair(context)
    turn = _Turn(toolset.as_sent)
    worker = PipelineWorker(
        Pipeline([pair.user(), _ErrorTap(turn), llm, _OutputTap(turn), pair.assistant()]),
        params=PipelineParams(), enable_rtvi=False, idle_timeout_secs=None, cancel_on_idle_timeout=False,
        enable_turn_tracking=False,
    )
    await worker.queue_frame(LLMMessagesAppendFrame(messages=[{"role": "user", "content": message}], run_llm=True))
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        async for event in _events(turn, running, timeout_secs):
            yield event
    finally:
        await _stop(worker, running)
        if worker.has_finished():  # otherwise its tasks may still be unwinding: left to the cyclic collector
            call_teardown.release(call_teardown.call_objects(worker))


async def _events(turn: _Turn, running: asyncio.Task, timeout_secs: float) -> AsyncIterator[TurnEvent]:
    deadline = time.monotonic() + timeout_secs
    while True:
        getter = asyncio.ensure_future(turn.events.get())
        done, _ = await asyncio.wait({getter, running}, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            event = getter.result()
            yield event
            if event.type in ("done", "error"):
                return
            continue
        getter.cancel()
        if not running.done():
            yield TurnEvent("error", {"code": "timeout", "message": f"no answer within {timeout_secs:g} s"})
            return
        while not turn.events.empty():  # the pipeline ended (e.g. a goodbye rule): what it said still counts
            event = turn.events.get_nowait()
            yield event
            if event.type in ("done", "error"):
                return
        yield TurnEvent("error", {"code": "llm_error", "message": "the pipeline stopped before the turn was over"})
        return


async def _stop(worker: PipelineWorker, running: asyncio.Task) -> None:
    try:
        await worker.cancel(reason="chat turn over")
        await asyncio.wait_for(asyncio.shield(running), _STOP_TIMEOUT_SECS)
    except Exception as exc:
        logger.warning(f"chat turn: pipeline did not stop cleanly: {exc!r}")
        running.cancel()
