"""Tools an agent's LLM may call: stored HTTP tools and the runtime's built-ins.

    toolset = await load_toolset(rt.db, agent_id, settings, listener=on_event)
    toolset.add_builtin("end_call", "Hang up.", {"type": "object", "properties": {}}, handler, run_llm=False)
    context = LLMContext(messages, tools=toolset.tools_schema())
    toolset.register(llm)
"""

from pipelines.tools.http import HttpToolSpec, call_http_tool
from pipelines.tools.loader import load_toolset
from pipelines.tools.netguard import (
    RefusedAddress,
    UnresolvableHost,
    is_public,
    resolve_checked,
)
from pipelines.tools.result import ToolResult, payload_text
from pipelines.tools.toolset import (
    BuiltinHandler,
    Tool,
    ToolEvent,
    ToolListener,
    ToolSet,
)

__all__ = [
    "BuiltinHandler", "HttpToolSpec", "RefusedAddress", "Tool", "ToolEvent", "ToolListener", "ToolResult", "ToolSet",
    "UnresolvableHost", "call_http_tool", "is_public", "load_toolset", "payload_text", "resolve_checked",
]
