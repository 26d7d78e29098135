"""The browser softphone: its page (`GET /softphone`), `POST /api/v1/softphone/calls`, which opens a call to an agent
the way the incoming-call webhook does (a call row and a signed stream token), and the call's live event socket.

The softphone speaks Twilio's Media Streams protocol to the same stream endpoint a phone call uses; only its upgrade
is unsigned (see telephony/twilio/stream.py). The event socket is a side channel, so the media socket stays
protocol-pure. Browsers cannot set headers on a WebSocket, so the event socket is authenticated by a token in its
URL: a signed token bound to the one call (its own salt, so it is neither a stream token nor an API key), not the API
key itself, which would then sit in URLs, logs and history with the power of the whole workspace.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from config.agent import AgentConfig
from runtime import call_feed
from runtime.api.auth import Caller
from runtime.api.errors import COMMON_ERRORS, ApiError, ErrorResponse, bad_request, not_found
from runtime.api.lookup import owned
from runtime.capacity import RETRY_AFTER_SECS
from runtime.context import Runtime, runtime_of
from runtime.store import repo
from runtime.store.models import Agent
from runtime.tokens import StreamTokens, TokenError
from telephony.twilio.stream import SOFTPHONE
from telephony.twilio.webhook import STREAM_PATH

router = APIRouter(tags=["softphone"], responses=COMMON_ERRORS)

STATIC = Path(__file__).resolve().parents[2] / "softphone" / "static"
_FILES = {"softphone.js": "text/javascript", "worklet.js": "text/javascript", "softphone.css": "text/css"}
EVENTS_SALT = "voxline.softphone-events.v1"
# An events token lasts as long as the longest call can (config/agent.py: max_duration_secs <= 4 h), plus the time
# the stream has to start.
EVENTS_TOKEN_TTL_SECS = 4 * 3600 + 300
POLICY_VIOLATION = 1008


class SoftphoneCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(max_length=64)


class StreamParameters(BaseModel):
    call_id: str
    token: str | None = Field(description="The signed stream token: `start.customParameters.token`; null in an "
                                          "idempotent replay (credentials are not kept for replays)")


class SoftphoneCallOut(BaseModel):
    call_id: str = Field(description="The call's id (GET /api/v1/calls/{id})")
    stream_url: str = Field(description="The Media Streams socket to open (ws:// or wss://)")
    parameters: StreamParameters = Field(description="What the `start` message carries as `customParameters`")
    events_url: str | None = Field(description="The call's live event socket (transcript, speaking, ended), token "
                                               "included; null in an idempotent replay")


def events_tokens(rt: Runtime) -> StreamTokens:
    return StreamTokens(rt.settings.resolved_secret_key(), EVENTS_TOKEN_TTL_SECS, salt=EVENTS_SALT)


def _ws_base(request: Request) -> str:
    rt = runtime_of(request)
    base = rt.settings.public_url.rstrip("/") if rt.settings.public_url else str(request.base_url).rstrip("/")
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


@router.post("/api/v1/softphone/calls", response_model=SoftphoneCallOut, status_code=201,
             summary="Open a softphone call to an agent: its stream URL, stream token and live event socket",
             responses={503: {"model": ErrorResponse, "description": "`at_capacity`: the server is full "
                                                                     "(VOXLINE_MAX_CALLS, VOXLINE_SHED_LOOP_LAG_MS)"}})
async def create_softphone_call(body: SoftphoneCallIn, p: Caller, request: Request) -> SoftphoneCallOut:
    rt = runtime_of(request)
    async with rt.db() as s:
        agent = await owned(s, Agent, body.agent_id, p, "agent")
    cfg = AgentConfig.model_validate(agent.config)
    if cfg.architecture == "text":
        message = f"agent {cfg.name!r} is a text agent; text agents cannot take calls"
        raise bad_request(f"agent_id: {message}", [{"field": "agent_id", "message": message}])
    if why := await rt.admission.admit(f"softphone call to agent {cfg.name!r}"):
        raise ApiError(503, "at_capacity", f"{why}; try again later", headers={"Retry-After": str(RETRY_AFTER_SECS)})
    call = await repo.create_call(rt.db, workspace_id=p.workspace_id, agent_id=agent.id, direction=SOFTPHONE,
                                  from_number=None, to_number=None, status="ringing")
    rt.admission.admitted(call.id)
    # If its stream never comes, the periodic unstreamed-call sweep closes it (runtime/recovery.py), on any server.
    base = _ws_base(request)
    logger.info(f"call {call.id}: softphone → agent {cfg.name!r} ({agent.id}), key {p.key_id}")
    return SoftphoneCallOut(
        call_id=call.id, stream_url=base + STREAM_PATH,
        parameters=StreamParameters(call_id=call.id, token=rt.tokens.mint(call.id)),
        events_url=f"{base}/api/v1/softphone/calls/{call.id}/events?token={events_tokens(rt).mint(call.id)}")


@router.websocket("/api/v1/softphone/calls/{call_id}/events")
async def softphone_events(ws: WebSocket, call_id: str) -> None:
    """JSON events of one softphone call until it ends: `transcript`, `speaking`, `ended` (then the socket closes)."""
    rt = runtime_of(ws)
    token = ws.query_params.get("token") or ""
    try:
        events_tokens(rt).verify(token, call_id)
    except TokenError as exc:
        logger.warning(f"softphone events refused: call {call_id[:40]}: {str(exc).replace('stream token', 'token')}")
        await ws.close(code=POLICY_VIOLATION, reason="invalid events token")
        return
    call = await repo.get_call(rt.db, call_id)
    if call is None or call.direction != SOFTPHONE:
        await ws.close(code=POLICY_VIOLATION, reason="unknown call")
        return
    await ws.accept()
    with call_feed.subscribe(call_id) as events:
        call = await repo.get_call(rt.db, call_id)  # after subscribing: an end between the two is not missed
        if call is not None and call.ended_at is not None:
            await ws.send_json({"type": "ended", "reason": call.disconnection_reason, "detail": call.error_detail})
            await ws.close(code=1000)
            return
        closed = asyncio.create_task(_until_closed(ws))
        try:
            while True:
                get = asyncio.create_task(events.get())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    get.cancel()
                    return
                event = get.result()
                await ws.send_json(event)
                if event.get("type") == "ended":
                    await ws.close(code=1000)
                    return
        except (WebSocketDisconnect, RuntimeError):
            return  # the page went away mid-send
        finally:
            closed.cancel()


async def _until_closed(ws: WebSocket) -> None:
    """Reads (and ignores) what the page sends, until it disconnects."""
    try:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass
    except (WebSocketDisconnect, RuntimeError):
        pass


# --- the page ---------------------------------------------------------------------------------------------------

def _page_headers(request: Request) -> dict[str, str]:
    # Everything is served from here; sockets go to this server's own ws(s) origin (the public one when set).
    ws_origin = _ws_base(request)
    return {
        "Content-Security-Policy": f"default-src 'self'; connect-src 'self' {ws_origin}; img-src 'self' data:; "
                                   "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


@router.get("/softphone", include_in_schema=False)
async def softphone_page(request: Request) -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=_page_headers(request))


@router.get("/softphone/{name}", include_in_schema=False)
async def softphone_asset(name: str, request: Request):
    if name not in _FILES:
        raise not_found("softphone file")  # the documented JSON error body, as for any unknown route
    return FileResponse(STATIC / name, media_type=_FILES[name], headers=_page_headers(request))
