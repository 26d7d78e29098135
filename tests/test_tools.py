"""HTTP tools as the LLM runs them: argument checks, method/headers/body, timeouts, truncation, errors, the SSRF
guard, and the ToolSet's events, all against a real HTTP server on loopback."""

from __future__ import annotations

import ipaddress
import time

import pytest

from pipelines.tools import HttpToolSpec, ToolEvent, ToolSet, call_http_tool, is_public
from pipelines.tools.attachment import ToolAttachment
from pipelines.tools.loader import attachment_of
from tests.tool_server import ToolServer

BOOKING = {"type": "object", "properties": {"party": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
           "required": ["party"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tool_server():
    with ToolServer() as srv:
        yield srv


def spec(url: str, **over) -> HttpToolSpec:
    return HttpToolSpec(name=over.pop("name", "book"), description="Books a table.", url=url, **over)


async def run(tool: HttpToolSpec, arguments: dict, *, allow_private: bool = True, max_bytes: int = 16384):
    return await call_http_tool(tool, arguments, allow_private=allow_private, max_bytes=max_bytes)


async def test_post_sends_json_body_and_the_tools_headers(tool_server):
    result = await run(spec(f"{tool_server.url}/echo", headers={"X-Api-Token": "s3cret"}, parameters=BOOKING),
                       {"party": 2, "name": "Ada"})
    assert result.ok and result.status == 200, result
    seen = result.value
    assert seen["method"] == "POST" and seen["body"] == {"party": 2, "name": "Ada"}
    assert seen["headers"]["X-Api-Token"] == "s3cret"
    assert seen["headers"]["Host"] == f"127.0.0.1:{tool_server.port}"
    assert result.for_llm() == {"status": 200, "result": seen}


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_get_and_delete_send_arguments_as_query_parameters(tool_server, method):
    result = await run(spec(f"{tool_server.url}/echo?fixed=1", method=method, parameters=BOOKING), {"party": 3})
    assert result.ok, result
    assert result.value["method"] == method and result.value["body"] is None
    assert result.value["query"] == {"fixed": "1", "party": "3"}


async def test_the_host_header_names_the_host_while_the_checked_address_is_dialled(tool_server):
    result = await run(spec(f"http://localhost:{tool_server.port}/echo"), {})
    assert result.ok, result
    assert result.value["headers"]["Host"] == f"localhost:{tool_server.port}"


async def test_invalid_arguments_are_refused_before_any_request(tool_server):
    before = len(tool_server.requests)
    for bad in ({"party": "two"}, {}, {"party": 0}, {"party": 2, "extra": True}):
        result = await run(spec(f"{tool_server.url}/echo", parameters=BOOKING), bad)
        assert not result.ok and result.code == "invalid_arguments", (bad, result)
        assert result.for_llm()["error"]["message"].startswith("invalid arguments")
    assert len(tool_server.requests) == before, "an invalid call reached the tool's server"


async def test_timeout_is_an_error_result_within_the_tools_limit(tool_server):
    start = time.monotonic()
    result = await run(spec(f"{tool_server.url}/slow?secs=3", timeout_secs=0.5), {})
    elapsed = time.monotonic() - start
    assert not result.ok and result.code == "timeout", result
    assert 0.4 < elapsed < 1.5, elapsed
    assert result.for_llm() == {"error": {"code": "timeout", "message": "no answer within 0.5 s"}}


async def test_a_long_body_is_truncated_to_the_limit(tool_server):
    result = await run(spec(f"{tool_server.url}/big?bytes=50000"), {}, max_bytes=1000)
    assert result.ok and result.truncated and result.value == "x" * 1000
    assert result.for_llm()["truncated"] is True
    whole = await run(spec(f"{tool_server.url}/big?bytes=1000"), {}, max_bytes=1000)
    assert whole.ok and not whole.truncated and len(whole.value) == 1000


async def test_non_2xx_is_an_error_result_with_status_and_body(tool_server):
    result = await run(spec(f"{tool_server.url}/fail"), {})
    assert not result.ok and result.code == "http_error" and result.status == 500
    assert result.for_llm() == {"status": 500, "error": {"code": "http_error", "message": "HTTP 500 Internal Server Error"},
                                "body": {"detail": "kitchen on fire"}}
    missing = await run(spec(f"{tool_server.url}/nowhere"), {})
    assert not missing.ok and missing.status == 404


async def test_connection_refused_is_an_error_result():
    from tests.conftest import free_port

    result = await run(spec(f"http://127.0.0.1:{free_port()}/x", timeout_secs=5), {})
    assert not result.ok and result.code == "connection_error", result


async def test_redirects_are_resolved_and_checked_again_at_every_hop(tool_server):
    same_host = await run(spec(f"{tool_server.url}/redirect?to=/echo", method="GET", headers={"X-Api-Token": "t"}), {})
    assert same_host.ok and same_host.value["path"] == "/echo", same_host
    assert same_host.value["headers"]["X-Api-Token"] == "t"
    # Another host: dialled at its own checked address, named in Host, and not sent the tool's credentials.
    other = f"http://localhost:{tool_server.port}/echo"
    moved = await run(spec(f"{tool_server.url}/redirect?to={other}", method="GET", headers={"X-Api-Token": "t"}), {})
    assert moved.ok and moved.value["headers"]["Host"] == f"localhost:{tool_server.port}", moved
    assert "X-Api-Token" not in moved.value["headers"]
    # A POST answered by 302 continues as a GET without the body, as browsers and httpx do.
    posted = await run(spec(f"{tool_server.url}/redirect?to=/echo", parameters=BOOKING), {"party": 2})
    assert posted.ok and posted.value["method"] == "GET" and posted.value["body"] is None
    refused = await run(spec(f"{tool_server.url}/redirect?to=file:///etc/passwd", method="GET"), {})
    assert not refused.ok and refused.code == "refused_address", refused
    loop = await run(spec(f"{tool_server.url}/redirect", method="GET"), {})
    assert not loop.ok and loop.code == "http_error" and "redirects" in loop.error, loop


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/echo",
    "http://localhost:{port}/echo",
    "http://[::1]:{port}/echo",
    "http://[::ffff:127.0.0.1]:{port}/echo",
    "http://10.1.2.3/x",
    "http://192.168.0.10/x",
    "http://172.16.5.4/x",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/x",
    "http://0.0.0.0:{port}/x",
    "http://224.0.0.1/x",
    "http://[fe80::1]/x",
    "http://[fc00::1]/x",
])
async def test_private_and_reserved_addresses_are_refused_unless_allowed(tool_server, url):
    before = len(tool_server.requests)
    result = await run(spec(url.format(port=tool_server.port), timeout_secs=3), {}, allow_private=False)
    assert not result.ok and result.code == "refused_address", result
    assert "may not reach" in result.error
    assert len(tool_server.requests) == before


async def test_loopback_is_reachable_when_private_networks_are_allowed(tool_server):
    for url in (f"{tool_server.url}/echo", f"http://localhost:{tool_server.port}/echo"):
        result = await run(spec(url), {}, allow_private=True)
        assert result.ok, (url, result)


def test_address_classification():
    public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    private = ["127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
               "224.0.0.251", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00::1", "ff02::1",
               "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fec0::1"]
    assert all(is_public(ipaddress.ip_address(a)) for a in public)
    assert not any(is_public(ipaddress.ip_address(a)) for a in private)


async def test_toolset_offers_schemas_runs_calls_and_reports_events(tool_server):
    events: list[ToolEvent] = []
    toolset = ToolSet.from_definitions(
        [{"name": "book", "description": "Books.", "url": f"{tool_server.url}/echo", "parameters": BOOKING},
         {"name": "menu", "description": "Menu.", "url": f"{tool_server.url}/fail", "method": "GET"}],
        allow_private=True, max_bytes=4096, listener=events.append)

    async def hang_up(arguments, params):
        return {"hung_up": True, "reason": arguments["reason"]}

    toolset.add_builtin("end_call", "Ends the call.", {"type": "object", "properties": {"reason": {"type": "string"}},
                                                       "required": ["reason"]}, hang_up, run_llm=False)
    assert toolset.names == ["book", "menu", "end_call"]
    schemas = {s.name: s.to_default_dict() for s in toolset.tools_schema().standard_tools}
    assert schemas["book"]["parameters"]["required"] == ["party"]
    assert schemas["end_call"]["description"] == "Ends the call."

    ok = await toolset.call("book", {"party": 2}, call_id="c1")
    failed = await toolset.call("menu", {}, call_id="c2")
    builtin = await toolset.call("end_call", {"reason": "done"}, call_id="c3")
    refused = await toolset.call("end_call", {}, call_id="c4")
    unknown = await toolset.call("nope", {}, call_id="c5")
    assert ok.ok and not failed.ok and builtin.ok and not refused.ok and not unknown.ok
    assert builtin.for_llm() == {"result": {"hung_up": True, "reason": "done"}}
    assert refused.code == "invalid_arguments" and unknown.code == "unknown_tool"

    assert [(e.type, e.call_id) for e in events] == [
        (t, c) for c in ("c1", "c2", "c3", "c4", "c5") for t in ("tool_executing", "tool_done")]
    done = {e.call_id: e for e in events if e.type == "tool_done"}
    assert done["c1"].error is None and done["c1"].result["status"] == 200 and done["c1"].duration_ms >= 0
    assert done["c2"].error == "HTTP 500 Internal Server Error" and done["c2"].result["error"]["code"] == "http_error"
    assert events[0].arguments == {"party": 2} and events[0].name == "book"


async def test_an_agents_attachment_fixes_arguments_headers_wording_and_deadline(tool_server):
    """Two agents share one tool: each sends its own fixed argument and key, and its LLM never sees the argument."""
    schema = {"type": "object", "additionalProperties": False, "required": ["party", "clinic"],
              "properties": {"party": {"type": "integer", "minimum": 1}, "clinic": {"$ref": "#/$defs/clinic"}},
              "$defs": {"clinic": {"type": "string", "pattern": "^[a-z]{2}-[0-9]{2}$"}}}
    definition = {"name": "book", "description": "Books.", "url": f"{tool_server.url}/echo", "parameters": schema,
                  "headers": {"X-Api-Key": "shared", "X-Trace": "on"}, "timeout_secs": 10}
    soho = ToolAttachment(arguments={"clinic": "so-01"}, headers={"x-api-key": "soho-key"}, timeout_secs=0.5,
                          description="Books a table at the Soho site.")
    assert soho.argument_problems(schema) == []
    assert [p for p, _ in ToolAttachment(arguments={"clinic": "Soho", "x": 1}).argument_problems(schema)] == [
        "clinic", "x"]  # the $ref is followed; an argument the tool does not take is named

    events: list[ToolEvent] = []
    toolset = ToolSet.from_definitions([(definition, soho)], allow_private=True, max_bytes=4096,
                                       listener=events.append)
    offered = toolset.tools_schema().standard_tools[0].to_default_dict()
    assert offered["description"] == "Books a table at the Soho site."
    assert offered["parameters"]["properties"].keys() == {"party"} and offered["parameters"]["required"] == ["party"]

    # The LLM's own try at the fixed argument loses; what was sent is what is recorded.
    result = await toolset.call("book", {"party": 2, "clinic": "zz-99"}, call_id="s1")
    assert result.ok, result
    assert result.value["body"] == {"party": 2, "clinic": "so-01"}
    headers = {k.lower(): v for k, v in result.value["headers"].items()}
    assert headers["x-api-key"] == "soho-key" and headers["x-trace"] == "on"
    assert events[0].arguments == {"party": 2, "clinic": "so-01"}
    # The whole schema still checks the call.
    assert (await toolset.call("book", {"party": 0})).code == "invalid_arguments"

    slow = ToolSet.from_definitions([({**definition, "url": f"{tool_server.url}/slow?secs=2"}, soho)],
                                    allow_private=True, max_bytes=4096)
    started = time.monotonic()
    late = await slow.call("book", {"party": 2})
    assert late.code == "timeout" and time.monotonic() - started < 1.5

    # Another agent without settings gets the tool as defined.
    plain = ToolSet.from_definitions([definition], allow_private=True, max_bytes=4096)
    assert plain.tools_schema().standard_tools[0].to_default_dict()["parameters"]["required"] == ["party", "clinic"]
    assert (await plain.call("book", {"party": 2})).code == "invalid_arguments"




def test_stored_attachment_settings_that_no_longer_apply_are_logged_not_fatal(logged):
    definition = {"name": "book", "parameters": BOOKING}
    assert attachment_of(definition, {}) is None
    assert attachment_of(definition, {"table": 4}) is None  # stored before settings were typed
    kept = attachment_of(definition, {"arguments": {"clinic": "so-01"}})  # the tool changed since it was attached
    assert kept is not None and kept.arguments == {"clinic": "so-01"}
    text = "".join(logged)
    assert "attachment config is not valid, so it is not used" in text
    assert "fixed argument 'clinic': not a parameter of this tool (the tool changed since it was attached)" in text


async def test_a_failing_builtin_or_listener_never_raises():
    async def broken(arguments, params):
        raise RuntimeError("boom")

    def bad_listener(event):
        raise ValueError("listener bug")

    toolset = ToolSet(listener=bad_listener)
    toolset.add_builtin("broken", "Fails.", {"type": "object", "properties": {}}, broken)
    result = await toolset.call("broken", {})
    assert not result.ok and result.code == "failed" and "boom" in result.error
