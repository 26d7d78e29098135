"""What one agent sets for an HTTP tool it has attached (`config` of /api/v1/agents/{id}/tools).

One booking tool serves several agents: each sends its own clinic's id, its own API key, and may give its LLM its
own wording and its callers a shorter wait. Fixed arguments are left out of the schema the LLM is offered, so it
neither asks the caller for them nor can change them; they are merged into every call (over anything the LLM sent
under the same name) and the request is checked against the tool's whole schema. Arguments are recorded in the
transcript with the call; credentials belong in `headers`, which are not.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.text import no_nul

from pipelines.tools.schema import UncheckableSchema, errors

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_headers(value: dict[str, str]) -> dict[str, str]:
    """HTTP header names and values that can be sent; raises ValueError naming the first that cannot."""
    for key, item in value.items():
        # A header that cannot be sent should fail when it is stored, not on every call the agent makes.
        if not _HEADER_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid header name")
        if not item.isascii() or any(c in item for c in "\r\n\x00"):
            raise ValueError(f"the value of {key!r} must be ASCII without CR, LF or NUL")
    return value


class ToolAttachment(BaseModel):
    # Unknown keys are refused, not kept: a setting that is stored but does nothing is worse than an error.
    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, Any] = Field(
        default_factory=dict, examples=[{"clinic_id": "sf-01"}],
        description="Argument values fixed for this agent: each must be a property of the tool's parameters and "
                    "valid for it; hidden from the LLM and sent on every call")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with this agent's calls, over the tool's own headers of the same "
                                          "name (compared case-insensitively), e.g. the agent's own API key")
    timeout_secs: float | None = Field(default=None, gt=0, le=60,
                                       description="This agent's deadline for a call; the tool's own when unset")
    description: str | None = Field(default=None, min_length=1, max_length=1024,
                                    description="What this agent's LLM is told about the tool; the tool's own "
                                                "when unset")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @field_validator("description")
    @classmethod
    def _description(cls, value: str | None) -> str | None:
        return value if value is None else no_nul(value)

    def argument_problems(self, parameters: dict[str, Any]) -> list[tuple[str, str]]:
        """(argument, what is wrong) for each fixed argument the tool's parameters do not take as given."""
        properties = parameters.get("properties") or {}
        problems = []
        for name, value in self.arguments.items():
            if name not in properties:
                problems.append((name, "not a parameter of this tool"))
                continue
            # Checked as the only argument against the whole schema, so "#/..." refs mean what they do in a call;
            # only what is wrong under this argument counts (another's absence is the LLM's to fill in).
            try:
                error = next((e for e in errors(parameters, {name: value}) if list(e.absolute_path)[:1] == [name]),
                             None)
            except UncheckableSchema as exc:
                problems.append((name, f"cannot be checked: the tool's parameters schema cannot be applied: {exc}"))
                continue
            if error is not None:
                problems.append((name, error.message))
        return problems

    def llm_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """The tool's schema as this agent's LLM sees it: without the fixed arguments."""
        if not self.arguments:
            return parameters
        shown = dict(parameters)
        shown["properties"] = {k: v for k, v in (parameters.get("properties") or {}).items()
                               if k not in self.arguments}
        if "required" in parameters:
            shown["required"] = [k for k in parameters["required"] if k not in self.arguments]
        return shown

    def headers_over(self, headers: dict[str, str]) -> dict[str, str]:
        mine = {k.lower() for k in self.headers}
        return {**{k: v for k, v in headers.items() if k.lower() not in mine}, **self.headers}
