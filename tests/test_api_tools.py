"""HTTP tools: /api/v1/tool-endpoint-defs and attaching them to agents (/api/v1/agents/{agent_id}/tools).

The server is shared by the whole session, so every test names its tools and agents uniquely.
"""

from __future__ import annotations

import httpx

from tests.api_helpers import create_agent, refused, unique

TOOLS = "/api/v1/tool-endpoint-defs"
NO_SUCH_ID = "0123456789abcdef0123456789abcdef"
BOOKING_PARAMS = {"type": "object", "properties": {"party": {"type": "integer", "minimum": 1}},
                  "required": ["party"]}




def tool_body(name: str | None = None, **over) -> dict:
    return {"name": name or unique("tool"), "description": "Books a table.", "url": "https://example.com/book", **over}


def create_tool(c: httpx.Client, **over) -> dict:
    r = c.post(TOOLS, json=tool_body(**over))
    assert r.status_code == 201, r.text
    return r.json()


def text_agent(c: httpx.Client) -> dict:
    return create_agent(c, {"name": unique("tools-agent"), "architecture": "text", "system_prompt": "p",
                            "llm": {"provider": "scripted"}})


def agent_tools(agent: dict) -> str:
    return f"/api/v1/agents/{agent['id']}/tools"




def attached(r: httpx.Response) -> dict[str, dict]:
    """tool name → its attachment, from a 200 listing an agent's tools."""
    assert r.status_code == 200, r.text
    return {t["name"]: t for t in r.json()["data"]}


# --- definitions ----------------------------------------------------------------------------------------------------

def test_create_fills_in_defaults_then_get_and_list(api):
    with api.client("developer") as c:
        created = c.post(TOOLS, json=tool_body())
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["method"] == "POST" and body["headers"] == {} and body["timeout_secs"] == 10
        assert body["parameters"] == {"type": "object", "properties": {}}
        assert body["created_at"].endswith(("Z", "+00:00")) and body["updated_at"] and body["id"]
        got = c.get(f"{TOOLS}/{body['id']}")
        listed = c.get(TOOLS)
    assert got.status_code == 200 and got.json() == body
    assert listed.status_code == 200 and body in listed.json()["data"]


def test_create_keeps_every_field(api):
    fields = tool_body(method="GET", headers={"Authorization": "Bearer s3cret", "X-Trace": "1"},
                       parameters=BOOKING_PARAMS, timeout_secs=2.5, url="http://10.0.0.5:8080/api?x=1")
    with api.client("admin") as c:
        body = create_tool(c, **fields)
    assert {k: body[k] for k in fields} == fields


def test_put_replaces_the_whole_definition(api):
    with api.client("admin") as c:
        tool = create_tool(c, method="GET", headers={"X-A": "1"}, parameters=BOOKING_PARAMS)
        new_name = unique()
        r = c.put(f"{TOOLS}/{tool['id']}", json={"name": new_name, "description": "Cancels.",
                                                  "url": "https://example.com/cancel"})
        assert r.status_code == 200, r.text
        body = r.json()
        # Omitted fields take their defaults again: PUT is a replacement, not a merge.
        assert body["name"] == new_name and body["method"] == "POST" and body["headers"] == {}
        assert body["parameters"] == {"type": "object", "properties": {}}
        assert body["id"] == tool["id"] and body["created_at"] == tool["created_at"]
        assert c.get(f"{TOOLS}/{tool['id']}").json() == body
        assert c.put(f"{TOOLS}/{tool['id']}", json=tool_body(new_name)).status_code == 200  # its own name is no clash


def test_delete_removes_the_definition(api):
    with api.client("admin") as c:
        tool = create_tool(c)
        r = c.delete(f"{TOOLS}/{tool['id']}")
        assert r.status_code == 200 and r.json() == {"id": tool["id"], "deleted": True}
        assert c.get(f"{TOOLS}/{tool['id']}").status_code == 404
        assert c.delete(f"{TOOLS}/{tool['id']}").status_code == 404
        assert tool["id"] not in {t["id"] for t in c.get(TOOLS).json()["data"]}
        create_tool(c, name=tool["name"])  # the name is free again


def test_create_refuses_invalid_fields_naming_them(api):
    with api.client("admin") as c:
        refused(c.post(TOOLS, json=tool_body("has space")), "name")
        refused(c.post(TOOLS, json=tool_body("x" * 65)), "name")
        refused(c.post(TOOLS, json=tool_body(description="")), "description")
        refused(c.post(TOOLS, json=tool_body(description="d" * 1025)), "description")
        assert "http" in refused(c.post(TOOLS, json=tool_body(url="ftp://example.com/file")), "url")
        refused(c.post(TOOLS, json=tool_body(url="not a url")), "url")
        refused(c.post(TOOLS, json=tool_body(url="https://")), "url")
        refused(c.post(TOOLS, json=tool_body(method="FETCH")), "method")
        refused(c.post(TOOLS, json=tool_body(headers={"X-A": 1})), "headers.X-A")
        refused(c.post(TOOLS, json=tool_body(headers={"Bad Name": "v"})), "headers")
        refused(c.post(TOOLS, json=tool_body(headers={"X-A": "a\r\nInjected: 1"})), "headers")
        refused(c.post(TOOLS, json=tool_body(description="nul\x00")), "description")
        refused(c.post(TOOLS, json=tool_body(timeout_secs=0)), "timeout_secs")
        refused(c.post(TOOLS, json=tool_body(timeout_secs=60.5)), "timeout_secs")
        refused(c.post(TOOLS, json=tool_body(extra="field")), "extra")
        refused(c.post(TOOLS, json={"name": unique()}), "description")


def test_parameters_must_be_a_valid_object_schema(api):
    with api.client("admin") as c:
        invalid = {"type": "object", "properties": {"party": {"type": "not-a-type"}}}
        message = refused(c.post(TOOLS, json=tool_body(parameters=invalid)), "parameters")
        assert "not a valid JSON Schema" in message
        refused(c.post(TOOLS, json=tool_body(parameters={"type": "object", "required": "party"})), "parameters")
        assert '"type": "object"' in refused(c.post(TOOLS, json=tool_body(parameters={"type": "string"})),
                                             "parameters")
        refused(c.post(TOOLS, json=tool_body(parameters={"properties": {}})), "parameters")
        refused(c.post(TOOLS, json=tool_body(parameters=["type", "object"])), "parameters")
        refused(c.post(TOOLS, json=tool_body(parameters={"type": "object", "$schema": ["x"]})), "parameters")
        tool = create_tool(c)
        refused(c.put(f"{TOOLS}/{tool['id']}", json=tool_body(tool["name"], parameters=invalid)), "parameters")
        assert c.get(f"{TOOLS}/{tool['id']}").json() == tool


def test_a_name_is_unique_per_workspace(api):
    name = unique()
    with api.client("admin") as c:
        first = create_tool(c, name=name)
        clash = c.post(TOOLS, json=tool_body(name))
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict", clash.text
        assert name in clash.json()["error"]["message"]
        second = create_tool(c)
        renamed = c.put(f"{TOOLS}/{second['id']}", json=tool_body(name))
        assert renamed.status_code == 409 and c.get(f"{TOOLS}/{second['id']}").json()["name"] == second["name"]
    with api.client("other") as c:
        assert create_tool(c, name=name)["id"] != first["id"]  # another workspace may use the same name


# --- attaching to agents --------------------------------------------------------------------------------------------

def test_attach_update_replace_and_detach(api):
    with api.client("developer") as c:
        agent = text_agent(c)
        a, d = (create_tool(c, name=unique(p)) for p in ("a", "d"))
        b = create_tool(c, name=unique("b"), parameters=BOOKING_PARAMS)
        path = agent_tools(agent)
        assert attached(c.get(path)) == {}

        first = attached(c.post(path, json=[{"tool_id": a["id"]},
                                            {"tool_id": b["id"], "config": {"arguments": {"party": 4}}}]))
        assert set(first) == {a["name"], b["name"]}
        assert first[a["name"]]["config"] == {} and first[b["name"]]["config"] == {"arguments": {"party": 4}}
        assert first[a["name"]]["tool_id"] == a["id"] and first[a["name"]]["attached_at"].endswith(("Z", "+00:00"))

        # POST adds, and updates the config of one already attached (which keeps its attached_at).
        second = attached(c.post(path, json=[{"tool_id": b["id"], "config": {"arguments": {"party": 6}}},
                                             {"tool_id": d["id"]}]))
        assert set(second) == {a["name"], b["name"], d["name"]}
        assert second[b["name"]]["config"] == {"arguments": {"party": 6}}
        assert second[b["name"]]["attached_at"] == first[b["name"]]["attached_at"]
        assert attached(c.get(path)) == second

        # PATCH sets exactly this list.
        settings = {"headers": {"X-Api-Key": "agent-7"}, "timeout_secs": 4, "description": "Books at our Soho site."}
        third = attached(c.patch(path, json=[{"tool_id": d["id"], "config": settings}, {"tool_id": a["id"]}]))
        assert set(third) == {a["name"], d["name"]} and third[d["name"]]["config"] == settings
        assert attached(c.get(path)) == third

        left = attached(c.delete(f"{path}/{a['id']}"))
        assert set(left) == {d["name"]}
        assert c.delete(f"{path}/{a['id']}").status_code == 404  # no longer attached
        assert c.get(f"{TOOLS}/{a['id']}").status_code == 200  # detaching keeps the definition

        assert attached(c.patch(path, json=[])) == {}


def test_attach_validation(api):
    with api.client("admin") as c:
        agent = text_agent(c)
        tool = create_tool(c)
        path = agent_tools(agent)
        refused(c.post(path, json=[{"config": {}}]), "0.tool_id")
        refused(c.post(path, json=[{"tool_id": tool["id"], "config": "on"}]), "0.config")
        # Settings that would be stored and do nothing are refused, as are ones that cannot work.
        refused(c.post(path, json=[{"tool_id": tool["id"], "config": {"table": 4}}]), "0.config.table")
        refused(c.post(path, json=[{"tool_id": tool["id"], "config": {"timeout_secs": 0}}]), "0.config.timeout_secs")
        refused(c.post(path, json=[{"tool_id": tool["id"], "config": {"headers": {"Bad Name": "x"}}}]),
                "0.config.headers")
        booking = create_tool(c, parameters=BOOKING_PARAMS)
        assert "not a parameter" in refused(
            c.post(path, json=[{"tool_id": booking["id"], "config": {"arguments": {"table": 4}}}]),
            "0.config.arguments.table", code="invalid_request")
        assert "less than the minimum" in refused(
            c.post(path, json=[{"tool_id": tool["id"]}, {"tool_id": booking["id"], "config": {"arguments": {"party": 0}}}]),
            "1.config.arguments.party", code="invalid_request")
        assert c.post(path, json={"tool_id": tool["id"]}).status_code == 400  # a list, not one object
        assert "listed twice" in refused(c.patch(path, json=[{"tool_id": tool["id"]}, {"tool_id": tool["id"]}]),
                                         "1.tool_id", code="invalid_request")
        missing = c.post(path, json=[{"tool_id": tool["id"]}, {"tool_id": NO_SUCH_ID}])
        assert missing.status_code == 404 and missing.json()["error"]["message"] == "tool not found"
        assert attached(c.get(path)) == {}  # all or nothing
        assert c.post(f"/api/v1/agents/{NO_SUCH_ID}/tools", json=[{"tool_id": tool["id"]}]).status_code == 404
        assert c.get(f"/api/v1/agents/{NO_SUCH_ID}/tools").status_code == 404


def test_deleting_a_tool_detaches_it_from_every_agent(api):
    with api.client("admin") as c:
        first, second = text_agent(c), text_agent(c)
        doomed, kept = create_tool(c), create_tool(c)
        for agent in (first, second):
            c.post(agent_tools(agent), json=[{"tool_id": doomed["id"]}, {"tool_id": kept["id"]}])
        assert c.delete(f"{TOOLS}/{doomed['id']}").status_code == 200
        for agent in (first, second):
            assert set(attached(c.get(agent_tools(agent)))) == {kept["name"]}
    if api.backend == "sqlite":
        assert api.server.query("SELECT * FROM agent_tools WHERE tool_id = ?", doomed["id"]) == []


# --- keys and workspaces --------------------------------------------------------------------------------------------

def test_every_tool_route_needs_a_key(api):
    agent_path = f"/api/v1/agents/{NO_SUCH_ID}/tools"
    with api.client(None) as c:
        for r in (c.get(TOOLS), c.post(TOOLS, json=tool_body()), c.get(f"{TOOLS}/{NO_SUCH_ID}"),
                  c.put(f"{TOOLS}/{NO_SUCH_ID}", json=tool_body()), c.delete(f"{TOOLS}/{NO_SUCH_ID}"),
                  c.get(agent_path), c.post(agent_path, json=[]), c.patch(agent_path, json=[]),
                  c.delete(f"{agent_path}/{NO_SUCH_ID}")):
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "missing_api_key"


def test_another_workspaces_tools_and_agents_are_404(api):
    with api.client("admin") as c:
        agent, tool = text_agent(c), create_tool(c)
        c.post(agent_tools(agent), json=[{"tool_id": tool["id"]}])
    with api.client("other") as c:
        theirs_agent, theirs_tool = text_agent(c), create_tool(c)
        for r in (c.get(f"{TOOLS}/{tool['id']}"), c.put(f"{TOOLS}/{tool['id']}", json=tool_body()),
                  c.delete(f"{TOOLS}/{tool['id']}"), c.get(agent_tools(agent)),
                  c.post(agent_tools(agent), json=[{"tool_id": theirs_tool["id"]}]),
                  c.patch(agent_tools(agent), json=[]), c.delete(f"{agent_tools(agent)}/{tool['id']}"),
                  # Attaching the other workspace's tool to one's own agent is refused the same way.
                  c.post(agent_tools(theirs_agent), json=[{"tool_id": tool["id"]}]),
                  c.patch(agent_tools(theirs_agent), json=[{"tool_id": tool["id"]}])):
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found"
        assert tool["id"] not in {t["id"] for t in c.get(TOOLS).json()["data"]}
        assert attached(c.get(agent_tools(theirs_agent))) == {}
    with api.client("admin") as c:
        assert c.get(f"{TOOLS}/{tool['id']}").json() == tool
        assert set(attached(c.get(agent_tools(agent)))) == {tool["name"]}
        assert c.post(agent_tools(agent), json=[{"tool_id": theirs_tool["id"]}]).status_code == 404
