"""The server builds at start-up what FastAPI would otherwise build at its first request (every route's parameter
models: tens of milliseconds on the event loop, under a call's webhook or every call in progress): the first
requests after start-up build none, and the modules a first call would import are imported. Through the app's own
lifespan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fastapi.routing
import httpx

from config.settings import Settings
from runtime.app import create_app

ROOT = Path(__file__).resolve().parent.parent


async def test_the_first_requests_build_no_route(tmp_path, monkeypatch):
    (tmp_path / "agents").mkdir()
    app = create_app(Settings(_env_file=None, data_dir=tmp_path / "data", agents_dir=tmp_path / "agents"))
    built: list[str] = []
    original = fastapi.routing.get_dependant
    monkeypatch.setattr(fastapi.routing, "get_dependant",
                        lambda *a, **k: (built.append(k.get("path")), original(*a, **k))[1])
    async with app.router.lifespan_context(app):
        assert built, "start-up built the routes"
        built.clear()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            webhook = await client.post("/telephony/twilio/voice", data={"CallSid": "CA1", "From": "+15550100100",
                                                                          "To": "+15550100200"})
            listing = await client.get("/api/v1/agents")
    assert webhook.status_code == 200 and "<Response>" in webhook.text, webhook.text
    assert listing.status_code == 401  # the route ran: it asked for a key
    assert built == []


def test_start_up_imports_what_a_first_call_would():
    """In a fresh interpreter: the lifespan imports the phone architectures' modules, httpx's transport and the Twilio
    SDK's async client and Calls API, which a first call would otherwise import on the event loop."""
    script = """
import asyncio, sys, tempfile
from pathlib import Path
from config.settings import Settings
from runtime.app import create_app
from pipelines.factory import ARCHITECTURE_MODULES
d = Path(tempfile.mkdtemp()); (d / "agents").mkdir()
app = create_app(Settings(_env_file=None, data_dir=d / "data", agents_dir=d / "agents"))
wanted = [*ARCHITECTURE_MODULES, "httpcore", "twilio.http.async_http_client", "twilio.rest.api.v2010.account.call"]
before = [m for m in wanted if m in sys.modules]
async def main():
    async with app.router.lifespan_context(app):
        print("before", before, "after", [m for m in wanted if m not in sys.modules])
asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "before [] after []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_a_first_llm_request_after_start_up_imports_nothing():
    """In a fresh interpreter: a call's first streamed chat request through the server's shared pool, to a real
    socket, imports no module (anyio's asyncio backend was imported by the first request on each worker's loop,
    ~10 ms, in the middle of the load benchmark's talk burst)."""
    script = """
import asyncio, sys, tempfile
from pathlib import Path
from config.settings import Settings
from runtime.app import create_app
from pipelines.providers.openai_llm import ChunkValidatingAsyncOpenAI
from tests.openai_listener import REPLY, Listener
d = Path(tempfile.mkdtemp()); (d / "agents").mkdir()
app = create_app(Settings(_env_file=None, data_dir=d / "data", agents_dir=d / "agents"))
listener = Listener()
async def main():
    async with app.router.lifespan_context(app):
        client = ChunkValidatingAsyncOpenAI(api_key="k", base_url=listener.url + "/v1",
                                            http_client=app.state.runtime.http_pool)
        before = set(sys.modules)
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        print("reply", text == REPLY, "imported", sorted(set(sys.modules) - before))
asyncio.run(main())
listener.close()
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reply True imported []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
