"""The server builds at start-up what FastAPI would otherwise build at its first request (every route's parameter
models: tens of milliseconds on the event loop, under a call's webhook or every call in progress): the first
requests after start-up build none. In process, through the app's own lifespan."""

from __future__ import annotations

import fastapi.routing
import httpx

from config.settings import Settings
from runtime.app import create_app


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
