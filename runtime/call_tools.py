"""The tools a phone call adds for its LLM: `end_call` and `transfer_call`. Both let the agent finish what it is
saying, then end the call from the LLM's place in the pipeline, so the hang-up follows the last words.

Both are ordinary (synchronous) pipecat tools. pipecat 1.14 takes `cancel_on_interruption=False` to mean an
asynchronous tool, whose result arrives later, and then puts its own "ASYNC TOOLS" guidance into every request's
system prompt, ahead of the agent's. So a barge-in may cancel these handlers like any tool call's; the ending they
start is shielded from that, so a call that has begun to close always closes."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.services.llm_service import FunctionCallParams

from config.agent import AgentConfig
from pipelines.tools.toolset import ToolSet
from runtime.call_controls import CallControls
from runtime.reasons import DisconnectionReason as R

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"


def add_call_tools(tools: ToolSet, agent: AgentConfig, controls: CallControls, transfer_to) -> None:
    """`transfer_to(number)` records the transfer with the session, which asks the carrier to dial it."""
    if agent.call.end_call_tool:
        async def end_call(args: dict[str, Any], params: FunctionCallParams | None) -> dict:
            reason = args.get("reason") or "the conversation is over"
            await asyncio.shield(controls.end_after_speech(R.AGENT_HANGUP, f"end_call tool: {reason}",
                                                           source=params.llm if params else None))
            return {"status": "ending the call"}

        tools.add_builtin(
            END_CALL,
            "Hang up the phone call. Say goodbye first: the call ends right after what you have already said.",
            {"type": "object", "properties": {"reason": {"type": "string", "description": "Why the call ends"}}},
            end_call, run_llm=False,
        )

    transfer = agent.call.transfer
    if transfer is not None:
        async def transfer_call(args: dict[str, Any], params: FunctionCallParams | None) -> dict:
            transfer_to(transfer.number)
            await asyncio.shield(controls.end_after_speech(R.TRANSFER, f"transferred to {transfer.number}",
                                                           message=transfer.message,
                                                           source=params.llm if params else None))
            return {"status": "transferring"}

        tools.add_builtin(
            TRANSFER_CALL, transfer.description,
            {"type": "object", "properties": {"reason": {"type": "string", "description": "Why the caller is moved"}}},
            transfer_call, run_llm=False,
        )
