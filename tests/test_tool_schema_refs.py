"""A `$ref` in a tool's parameters schema never makes the server fetch anything (QA #1): only references within the
schema are followed. A loopback HTTP server records any fetch, and a file on disk holds a value that would show up
in an answer if it were read. Checked where schemas are applied (a call's arguments, an agent's fixed arguments),
where they are stored (POST/PUT /api/v1/tool-endpoint-defs: 400 naming the `$ref`), and for a definition stored
before that check (attach: 400; a call the LLM makes: an error result and a log line)."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipelines.tools import HttpToolSpec, ToolSet, call_http_tool
from pipelines.tools.attachment import ToolAttachment
from pipelines.tools.schema import UncheckableSchema, errors, ref_problems
from tests.api_helpers import chat_turn, create_agent, refused, unique
from tests.tool_server import ToolServer

TOOLS = "/api/v1/tool-endpoint-defs"
SECRET = "TOP-SECRET-VALUE-FROM-DISK"
LOCAL = {"type": "object", "required": ["party"],
         "properties": {"party": {"$ref": "#/$defs/party"}, "clinic": {"$ref": "#/properties/site"},
                        "site": {"type": "string", "pattern": "^[a-z]{2}-[0-9]{2}$"}},
         "$defs": {"party": {"type": "integer", "minimum": 1}}}


@pytest.fixture(scope="module")
def fetch_probe():
    """Answers any GET with JSON (so a fetched `$ref` would work) and records it."""
    with ToolServer() as srv:
        yield srv


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.json"
    path.write_text(json.dumps({"const": SECRET}))
    return path.as_uri()




def with_ref(ref: str) -> dict:
    return {"type": "object", "properties": {"a": {"$ref": ref}}}


# --- applying a schema (no server) ----------------------------------------------------------------------------------

def test_local_refs_still_validate():
    assert ref_problems(LOCAL) == []
    assert errors(LOCAL, {"party": 2, "clinic": "so-01"}) == []
    assert [(list(e.absolute_path), e.message) for e in errors(LOCAL, {"party": 0, "clinic": "Soho"})] == [
        (["clinic"], "'Soho' does not match '^[a-z]{2}-[0-9]{2}$'"), (["party"], "0 is less than the minimum of 1")]
    # An agent's fixed argument whose property refers to a sibling property: checked against that sibling.
    assert ToolAttachment(arguments={"clinic": "so-01"}).argument_problems(LOCAL) == []
    assert ToolAttachment(arguments={"clinic": 7}).argument_problems(LOCAL) == [("clinic", "7 is not of type 'string'")]


async def test_a_call_with_a_remote_ref_fetches_nothing_and_says_it_could_not_check(fetch_probe, secret_file, logged):
    before = len(fetch_probe.requests)
    for ref in (f"{fetch_probe.url}/echo", secret_file):
        spec = HttpToolSpec(name="book", description="Books.", url=f"{fetch_probe.url}/echo", parameters=with_ref(ref))
        result = await call_http_tool(spec, {"a": "x"}, allow_private=True, max_bytes=4096)
        assert not result.ok and result.code == "invalid_arguments", result
        assert "could not be checked" in result.error and SECRET not in json.dumps(result.for_llm())
    assert fetch_probe.requests[before:] == []  # neither the $ref nor, unchecked, the tool itself
    text = "\n".join(logged)
    assert "tool book: arguments not checked, so the tool was not called" in text
    assert f"properties.a.$ref: '{secret_file}' is not a local reference" in text and SECRET not in text


async def test_a_builtin_or_an_agents_fixed_argument_with_a_remote_ref_fetches_nothing(fetch_probe, secret_file):
    before = len(fetch_probe.requests)
    toolset = ToolSet()

    async def handler(arguments, params):
        return "ran"

    toolset.add_builtin("probe", "Probes.", with_ref(f"{fetch_probe.url}/echo"), handler)
    assert (await toolset.call("probe", {"a": 1})).code == "invalid_arguments"
    for ref in (f"{fetch_probe.url}/echo", secret_file):
        [(name, problem)] = ToolAttachment(arguments={"a": "x"}).argument_problems(with_ref(ref))
        assert name == "a" and problem.startswith("cannot be checked") and SECRET not in problem, problem
    assert fetch_probe.requests[before:] == []


@pytest.mark.parametrize("schema", [
    with_ref("#/properties/b"),  # a pointer to nowhere
    with_ref("#/properties/a"),  # a loop
    with_ref("#/required/0"),  # leads to a string, not a schema
    {**with_ref("#/required/x"), "required": ["a"]},  # a pointer jsonschema cannot even read
])
def test_a_schema_that_cannot_be_applied_is_reported_not_raised(schema):
    with pytest.raises(UncheckableSchema):
        errors(schema, {"a": 1})
    [(name, problem)] = ToolAttachment(arguments={"a": 1}).argument_problems(schema)
    assert problem.startswith("cannot be checked"), problem


# --- the API (a real server) ----------------------------------------------------------------------------------------

def tool_body(parameters: dict, **over) -> dict:
    return {"name": unique("ref"), "description": "Books.", "url": "https://example.com/book",
            "parameters": parameters, **over}


def test_a_tool_with_a_remote_ref_is_refused_naming_where(api, fetch_probe, secret_file):
    before = len(fetch_probe.requests)
    with api.client("developer") as c:
        refused(c.post(TOOLS, json=tool_body(with_ref(f"{fetch_probe.url}/s.json"))), "parameters.properties.a.$ref",
                code="invalid_request")
        r = c.post(TOOLS, json=tool_body(with_ref(secret_file)))
        assert "not a local reference" in refused(r, "parameters.properties.a.$ref", code="invalid_request")
        assert SECRET not in r.text
        nested = {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}},
                  "$defs": {"x": {"anyOf": [{"type": "null"}, {"$ref": "https://example.com/x.json"}]}}}
        refused(c.post(TOOLS, json=tool_body(nested)), "parameters.$defs.x.anyOf.1.$ref", code="invalid_request")
        tool = c.post(TOOLS, json=tool_body(LOCAL))
        assert tool.status_code == 201, tool.text
        replaced = c.put(f"{TOOLS}/{tool.json()['id']}", json=tool_body(with_ref(f"{fetch_probe.url}/s.json")))
        refused(replaced, "parameters.properties.a.$ref", code="invalid_request")
        assert c.get(f"{TOOLS}/{tool.json()['id']}").json() == tool.json()
    assert fetch_probe.requests[before:] == []


def test_a_tool_with_a_local_ref_that_leads_nowhere_is_refused(api):
    with api.client("developer") as c:
        for ref in ("#/properties/b", "#/$defs/missing", "#nowhere"):
            message = refused(c.post(TOOLS, json=tool_body(with_ref(ref))), "parameters.properties.a.$ref",
                              code="invalid_request")
            assert f"{ref!r} does not resolve within this schema" in message


def test_local_refs_check_an_agents_fixed_arguments(api):
    with api.client("developer") as c:
        tool = c.post(TOOLS, json=tool_body(LOCAL))
        assert tool.status_code == 201, tool.text
        agent = create_agent(c, {"name": unique("ref-agent"), "architecture": "text", "system_prompt": "p",
                                 "llm": {"provider": "scripted"}})
        path = f"/api/v1/agents/{agent['id']}/tools"
        attach = [{"tool_id": tool.json()["id"], "config": {"arguments": {"party": 0, "clinic": 5}}}]
        message = refused(c.post(path, json=attach), "0.config.arguments.party", code="invalid_request")
        assert "less than the minimum of 1" in message
        attach[0]["config"]["arguments"] = {"party": 2, "clinic": 5}  # "#/properties/site" inside a property
        assert "is not of type 'string'" in refused(c.post(path, json=attach), "0.config.arguments.clinic",
                                                    code="invalid_request")
        attach[0]["config"]["arguments"] = {"party": 2, "clinic": "so-01"}
        assert c.post(path, json=attach).status_code == 200


async def _store_parameters(database_url: str, tool_id: str, parameters: dict) -> None:
    """As a definition saved before refs were checked."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from runtime.store.models import ToolDef

    engine = create_async_engine(database_url)
    try:
        async with AsyncSession(engine) as s:
            tool = await s.scalar(select(ToolDef).where(ToolDef.id == tool_id))
            tool.definition = {**tool.definition, "parameters": parameters}
            await s.commit()
    finally:
        await engine.dispose()


def test_a_definition_stored_with_a_remote_ref_fetches_nothing(api, fetch_probe, secret_file):
    before = len(fetch_probe.requests)
    with api.client("developer") as c:
        plain = {"type": "object", "properties": {"a": {"type": "string"}}}
        http_tool, file_tool = (c.post(TOOLS, json=tool_body(plain)).json() for _ in range(2))
        asyncio.run(_store_parameters(api.database_url, http_tool["id"], with_ref(f"{fetch_probe.url}/s.json")))
        asyncio.run(_store_parameters(api.database_url, file_tool["id"], with_ref(secret_file)))
        agent = create_agent(c, {"name": unique("ref-agent"), "architecture": "text", "system_prompt": "p",
                                 "llm": {"provider": "scripted", "script": {"rules": [
                                     {"keywords": ["book"], "tool": http_tool["name"], "arguments": {"a": "x"},
                                      "reply": "Booked: {result}"}]}}})
        path = f"/api/v1/agents/{agent['id']}/tools"
        for tool in (http_tool, file_tool):
            r = c.post(path, json=[{"tool_id": tool["id"], "config": {"arguments": {"a": "x"}}}])
            assert "cannot be checked" in refused(r, "0.config.arguments.a", code="invalid_request")
            assert SECRET not in r.text
        # Attached without fixed arguments, the schema is first applied when the LLM calls the tool.
        assert c.post(path, json=[{"tool_id": http_tool["id"]}]).status_code == 200
        session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]})
        assert session.status_code == 201, session.text
        events = chat_turn(c, session.json()["id"], "Can I book?")
    done = next(data for name, data in events if name == "tool_done")
    assert done["result"]["error"]["code"] == "invalid_arguments" and "could not be checked" in done["error"], done
    assert fetch_probe.requests[before:] == []
    log = api.server.log()
    assert (f"tool {http_tool['name']}: arguments not checked, so the tool was not called: its parameters schema "
            f"cannot be applied: properties.a.$ref: '{fetch_probe.url}/s.json' is not a local reference") in log
