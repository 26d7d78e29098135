"""A local stand-in for Twilio's REST API, speaking its wire format, so the real `twilio` client can be pointed at it
(`TWILIO_API_BASE_URL`) in tests and by users who have no account. Run it with `voxline emulate twilio`.

It keeps the calls it was told about and every request it received (`GET /_emulator/requests`), which is how tests
check what voxline asked the carrier to do. Basic auth with the configured account SID and auth token, like Twilio.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status_code=status,
    )


@dataclass
class EmulatedCall:
    sid: str
    account_sid: str
    to: str
    from_: str
    status: str = "queued"
    direction: str = "outbound-api"
    twiml: str | None = None
    url: str | None = None
    created: float = field(default_factory=time.time)
    ended: float | None = None

    def resource(self) -> dict[str, Any]:
        duration = str(int(self.ended - self.created)) if self.ended else None
        return {
            "sid": self.sid, "account_sid": self.account_sid, "to": self.to, "from": self.from_,
            "status": self.status, "direction": self.direction, "api_version": "2010-04-01",
            "date_created": formatdate(self.created), "date_updated": formatdate(time.time()),
            "start_time": formatdate(self.created), "end_time": formatdate(self.ended) if self.ended else None,
            "duration": duration, "price": None, "price_unit": "USD", "answered_by": None, "forwarded_from": None,
            "caller_name": None, "parent_call_sid": None, "phone_number_sid": None, "group_sid": None,
            "queue_time": "0", "trunk_sid": None, "annotation": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.sid}.json", "subresource_uris": {},
        }


class TwilioEmulator:
    def __init__(self, account_sid: str, auth_token: str):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.calls: dict[str, EmulatedCall] = {}
        self.requests: list[dict[str, Any]] = []

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(password, self.auth_token)

    def known_call(self, sid: str) -> EmulatedCall:
        """A call voxline heard of from a webhook rather than by creating it (an inbound call): Twilio knows it."""
        call = self.calls.get(sid)
        if call is None:
            call = self.calls[sid] = EmulatedCall(sid=sid, account_sid=self.account_sid, to="", from_="",
                                                  status="in-progress", direction="inbound")
        return call


def create_emulator_app(account_sid: str, auth_token: str) -> FastAPI:
    emu = TwilioEmulator(account_sid, auth_token)
    app = FastAPI(title="Twilio REST emulator (voxline)")
    app.state.emulator = emu
    base = "/2010-04-01/Accounts/{account}/Calls"

    async def received(request: Request) -> tuple[dict, JSONResponse | None]:
        """The request's form, logged; and Twilio's refusal when the credentials or the account are wrong."""
        form = {k: str(v) for k, v in (await request.form()).multi_items()} if request.method == "POST" else {}
        emu.requests.append({"method": request.method, "path": request.url.path, "form": form, "at": time.time()})
        if not emu.authorized(request):
            return form, _error(401, 20003, "Authenticate")
        if request.path_params.get("account") != account_sid:
            return form, _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return form, None

    @app.post(base + ".json")
    async def create_call(account: str, request: Request):
        form, refused = await received(request)
        if refused:
            return refused
        to, from_ = form.get("To"), form.get("From")
        if not to or not from_:
            return _error(400, 21201 if not to else 21213, "No 'To' number is specified" if not to
                          else "No 'From' number is specified")
        if not (form.get("Twiml") or form.get("Url") or form.get("ApplicationSid")):
            return _error(400, 21205, "Url parameter is required")
        call = EmulatedCall(sid=_sid("CA"), account_sid=account, to=to, from_=from_,
                            twiml=form.get("Twiml"), url=form.get("Url"))
        emu.calls[call.sid] = call
        return JSONResponse(call.resource(), status_code=201)

    @app.get(base + "/{sid}.json")
    async def fetch_call(account: str, sid: str, request: Request):
        _, refused = await received(request)
        if refused:
            return refused
        call = emu.calls.get(sid)
        if call is None:
            return _error(404, 20404, f"The requested resource /2010-04-01/Accounts/{account}/Calls/{sid}.json "
                                      "was not found")
        return call.resource()

    @app.post(base + "/{sid}.json")
    async def update_call(account: str, sid: str, request: Request):
        form, refused = await received(request)
        if refused:
            return refused
        call = emu.known_call(sid)
        status, twiml, url = form.get("Status"), form.get("Twiml"), form.get("Url")
        if call.status in ("completed", "canceled", "failed", "busy", "no-answer"):
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status in ("completed", "canceled"):
            call.status, call.ended = status, time.time()
        elif status is not None:
            return _error(400, 20001, f"Invalid Status {status!r}: must be completed or canceled")
        elif twiml or url:
            call.twiml, call.url = twiml, url
        else:
            return _error(400, 21205, "Url, Twiml or Status is required")
        return call.resource()

    @app.get("/_emulator/calls/{sid}")
    async def call_state(sid: str):
        call = emu.calls.get(sid)
        if call is None:
            return _error(404, 20404, f"no call {sid}")
        return {**call.resource(), "twiml": call.twiml, "url": call.url}

    @app.get("/_emulator/requests")
    async def requests_log(call_sid: str | None = None):
        items = emu.requests if call_sid is None else [r for r in emu.requests if f"/Calls/{call_sid}" in r["path"]]
        return {"requests": items}

    return app
