"""An agent's tools: the schemas the LLM is offered, the handlers pipecat runs, and an event per call.

HTTP tools come from the store (see `loader.py`); built-ins (the call session's `end_call`, `transfer_call`) are
async Python functions. Both go through the same path: arguments checked against the JSON schema, failures turned
into a structured error result, `tool_executing` / `tool_done` events to an optional listener.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import FunctionCallResultProperties
from pipecat.services.llm_service import FunctionCallParams, LLMService
from pipecat.utils.types import NOT_GIVEN, NotGiven

from pipelines.tools.attachment import ToolAttachment
from pipelines.tools.http import HttpToolSpec, argument_failure, call_http_tool
from pipelines.tools.result import ToolResult

# pipecat's own deadline is a backstop only: ours ends the call first and reports it as a timeout.
_PIPECAT_TIMEOUT_MARGIN_SECS = 5.0


@dataclass
class ToolEvent:
    type: Literal["tool_executing", "tool_done"]
    name: str
    call_id: str
    arguments: dict[str, Any]
    result: dict[str, Any] | None = None  # tool_done: what the LLM was given (ToolResult.for_llm())
    error: str | None = None  # tool_done: set when the call failed
    duration_ms: int | None = None  # tool_done


ToolListener = Callable[[ToolEvent], Awaitable[None] | None]
# A built-in's handler: (validated arguments, pipecat's call params or None when called directly) → any JSON value,
# or a ToolResult for full control. Raising is allowed: it becomes an error result.
BuiltinHandler = Callable[[dict[str, Any], FunctionCallParams | None], Awaitable[Any]]


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], FunctionCallParams | None], Awaitable[ToolResult]]
    timeout_secs: float | None = None
    run_llm: bool | None = None  # False: the LLM is not run again on the result (e.g. after end_call)
    builtin: bool = False
    fixed_arguments: dict[str, Any] = field(default_factory=dict)  # merged over the LLM's, which never sees them

    def function_schema(self) -> FunctionSchema:
        return FunctionSchema(name=self.name, description=self.description,
                              properties=self.parameters.get("properties", {}),
                              required=list(self.parameters.get("required", [])))


def _elapsed_ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


@dataclass
class ToolSet:
    tools: dict[str, Tool] = field(default_factory=dict)
    listener: ToolListener | None = None

    # --- building ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_definitions(cls, definitions: Iterable[dict[str, Any] | tuple[dict[str, Any], ToolAttachment | None]],
                         *, allow_private: bool, max_bytes: int, listener: ToolListener | None = None) -> ToolSet:
        """From stored definitions, each alone or with the agent's attachment settings."""
        toolset = cls(listener=listener)
        for item in definitions:
            definition, attachment = item if isinstance(item, tuple) else (item, None)
            toolset.add_http(HttpToolSpec.from_definition(definition, attachment), allow_private=allow_private,
                             max_bytes=max_bytes)
        return toolset

    def add_http(self, spec: HttpToolSpec, *, allow_private: bool, max_bytes: int) -> None:
        async def run(arguments: dict[str, Any], _params: FunctionCallParams | None) -> ToolResult:
            return await call_http_tool(spec, arguments, allow_private=allow_private, max_bytes=max_bytes)

        self._add(Tool(spec.name, spec.description, spec.offered_parameters or spec.parameters, run,
                       timeout_secs=spec.timeout_secs, fixed_arguments=spec.fixed_arguments))

    def add_builtin(self, name: str, description: str, parameters: dict[str, Any], handler: BuiltinHandler, *,
                    run_llm: bool | None = None, timeout_secs: float | None = None) -> None:
        """Add a Python tool. A stored HTTP tool of the same name is replaced: built-ins are the runtime's own."""

        async def run(arguments: dict[str, Any], params: FunctionCallParams | None) -> ToolResult:
            value = handler(arguments, params)
            value = await value if inspect.isawaitable(value) else value
            return value if isinstance(value, ToolResult) else ToolResult.success(value)

        self._add(Tool(name, description, parameters or {"type": "object", "properties": {}}, run,
                       timeout_secs=timeout_secs, run_llm=run_llm, builtin=True))

    def _add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            logger.warning(f"tool {tool.name!r} defined twice; the later one is used")
        self.tools[tool.name] = tool

    # --- offering them to an LLM ------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def function_schemas(self) -> list[FunctionSchema]:
        return [tool.function_schema() for tool in self.tools.values()]

    def tools_schema(self) -> ToolsSchema | NotGiven:
        """For `LLMContext(tools=...)`; NOT_GIVEN when there are none (some providers refuse an empty list)."""
        return ToolsSchema(standard_tools=self.function_schemas()) if self.tools else NOT_GIVEN

    def register(self, llm: LLMService) -> None:
        """Register one handler per tool on the pipecat LLM service."""
        for tool in self.tools.values():
            timeout = tool.timeout_secs + _PIPECAT_TIMEOUT_MARGIN_SECS if tool.timeout_secs else None
            # Every tool is synchronous: pipecat 1.14 turns cancel_on_interruption=False into an asynchronous tool,
            # and then adds its own "ASYNC TOOLS" guidance to every request's system prompt.
            llm.register_function(tool.name, self._pipecat_handler, timeout_secs=timeout, cancel_on_interruption=True)

    async def _pipecat_handler(self, params: FunctionCallParams) -> None:
        tool = self.tools.get(params.function_name)
        result = await self.call(params.function_name, dict(params.arguments or {}), call_id=params.tool_call_id,
                                 params=params)
        properties = FunctionCallResultProperties(run_llm=tool.run_llm) if tool and tool.run_llm is not None else None
        await params.result_callback(result.for_llm(), properties=properties)

    # --- running them -----------------------------------------------------------------------------------------------

    def as_sent(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The LLM's arguments with the agent's fixed ones over them: what a call sends, and what is recorded."""
        tool = self.tools.get(name)
        return {**arguments, **tool.fixed_arguments} if tool is not None and tool.fixed_arguments else arguments

    async def call(self, name: str, arguments: dict[str, Any], *, call_id: str | None = None,
                   params: FunctionCallParams | None = None) -> ToolResult:
        """Run one call; never raises (except cancellation, which is reported first)."""
        call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
        arguments = self.as_sent(name, arguments)
        await self._emit(ToolEvent("tool_executing", name, call_id, arguments))
        start = time.monotonic()
        try:
            result = await self._run(name, arguments, params)
        except asyncio.CancelledError:
            # An interruption (barge-in) cancels the call: it still ends, for whoever records it.
            await self._emit(ToolEvent("tool_done", name, call_id, arguments, error="cancelled",
                                       duration_ms=_elapsed_ms(start)))
            raise
        payload = result.for_llm()
        logger.debug(f"tool {name} [{call_id}]: {'ok' if result.ok else result.error} in {_elapsed_ms(start)} ms")
        await self._emit(ToolEvent("tool_done", name, call_id, arguments, result=payload,
                                   error=None if result.ok else result.error, duration_ms=_elapsed_ms(start)))
        return result

    async def _run(self, name: str, arguments: dict[str, Any], params: FunctionCallParams | None) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult.failure("unknown_tool", f"there is no tool named {name!r}")
        if tool.builtin and (refused := argument_failure(name, tool.parameters, arguments)) is not None:
            return refused
        try:
            return await tool.run(arguments, params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.opt(exception=exc).warning(f"tool {name}: handler failed")
            return ToolResult.failure("failed", f"{type(exc).__name__}: {exc}")

    async def _emit(self, event: ToolEvent) -> None:
        if self.listener is None:
            return
        try:
            outcome = self.listener(event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:  # a broken listener must not break the call
            logger.opt(exception=exc).warning(f"tool event listener failed on {event.type} {event.name}")
