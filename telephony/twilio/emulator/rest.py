"""The emulator's HTTP face: Twilio's calls resource (create, fetch, update) with Basic auth and Twilio-shaped
errors, and the `/_emulator/*` routes tests and users drive it with (rules, inbound calls, state, stats, reset)."""

from __future__ import annotations

import asyncio
import audioop
import io
import re
import time
import wave
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from telephony.audio import LINE_RATE
from telephony.twilio.emulator import carrier
from telephony.twilio.emulator.rules import Rule, RuleSet, parse_rule
from telephony.twilio.emulator.state import API_VERSION, TERMINAL, EmulatedCall, TwilioEmulator, sid

_NUMBER = re.compile(r"^\+?[1-9]\d{1,14}$")
_EVENTS = {"initiated", "ringing", "answered", "completed"}


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status_code=status,
    )


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _dialable(number: str) -> bool:
    return bool(_NUMBER.match(number)) or number.startswith(("client:", "sip:"))


def _events(values: list[str]) -> frozenset[str]:
    # The SDK repeats the parameter; other clients send one space-separated value, which Twilio also takes.
    return frozenset(e for v in values for e in v.replace(",", " ").lower().split() if e in _EVENTS) | {"completed"}


def create_emulator_app(account_sid: str, auth_token: str, rules: RuleSet | None = None) -> FastAPI:
    emu = TwilioEmulator(account_sid, auth_token, rules)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await emu.close()

    app = FastAPI(title="Twilio emulator (voxline)", lifespan=lifespan)
    app.state.emulator = emu
    base = f"/{API_VERSION}/Accounts/{{account}}/Calls"

    async def received(request: Request) -> tuple[dict[str, list[str]], JSONResponse | None]:
        """The request's form (every value of each name), logged; and Twilio's refusal for bad credentials."""
        form: dict[str, list[str]] = {}
        if request.method == "POST":
            for k, v in (await request.form()).multi_items():
                form.setdefault(k, []).append(str(v))
        logged = {k: v[0] if len(v) == 1 else v for k, v in form.items()}
        emu.requests.append({"method": request.method, "path": request.url.path, "form": logged, "at": time.time()})
        if not emu.authorized(request):
            return form, _error(401, 20003, "Authenticate")
        if request.path_params.get("account") != account_sid:
            return form, _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return form, None

    def not_found(account: str, call_sid: str) -> JSONResponse:
        return _error(404, 20404, f"The requested resource /{API_VERSION}/Accounts/{account}/Calls/{call_sid}.json "
                                  "was not found")

    @app.post(base + ".json")
    async def create_call(account: str, request: Request):
        form, refused = await received(request)
        if refused:
            return refused
        one = {k: v[-1] for k, v in form.items()}
        to, from_ = one.get("To", "").strip(), one.get("From", "").strip()
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not _dialable(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not _dialable(from_):
            return _error(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        twiml, url = one.get("Twiml"), one.get("Url")
        if not (twiml or url or one.get("ApplicationSid")):
            return _error(400, 21205, "Url parameter is required")
        if url and not url.startswith(("http://", "https://")):
            return _error(400, 21205, f"Url is not a valid URL: {url}")
        try:
            timeout = min(600.0, max(1.0, float(one.get("Timeout", "60"))))
        except ValueError:
            return _error(400, 21216, f"Timeout must be a number: {one.get('Timeout')}")
        amd = one.get("MachineDetection")
        call = EmulatedCall(
            sid=sid("CA"), account_sid=account, to=to, from_=from_, twiml=twiml, url=url,
            method=one.get("Method", "POST").upper(), carried=True, status_callback=one.get("StatusCallback"),
            callback_method=one.get("StatusCallbackMethod", "POST").upper(),
            callback_events=_events(form.get("StatusCallbackEvent", [])),
            machine_detection=amd if amd in ("Enable", "DetectMessageEnd") else None, timeout=timeout,
        )
        call.rule = emu.rule_for(to)
        call.script = call.rule.script
        emu.add(call)
        call.running = True
        emu.spawn(carrier.run_outbound(emu, call))
        return JSONResponse(call.resource(), status_code=201)

    @app.get(base + "/{call_sid}.json")
    async def fetch_call(account: str, call_sid: str, request: Request):
        _, refused = await received(request)
        if refused:
            return refused
        call = emu.calls.get(call_sid)
        return not_found(account, call_sid) if call is None else call.resource()

    @app.post(base + "/{call_sid}.json")
    async def update_call(account: str, call_sid: str, request: Request):
        form, refused = await received(request)
        if refused:
            return refused
        one = {k: v[-1] for k, v in form.items()}
        call = emu.known_call(call_sid)
        status, twiml, url = one.get("Status"), one.get("Twiml"), one.get("Url")
        if call.status in TERMINAL:
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status not in (None, "completed", "canceled"):
            return _error(400, 20001, f"Invalid Status {status!r}: must be completed or canceled")
        if status is None and not (twiml or url):
            return _error(400, 21205, "Url, Twiml or Status is required")
        if status == "canceled" and call.status == "in-progress":
            return call.resource()  # canceled only stops calls not yet answered; Twilio leaves a live one alone
        if status is not None:
            # A call hung up before it was answered was never connected: Twilio reports it canceled.
            ended = "canceled" if call.carried and call.answered_at is None else status
            emu.finish(call, ended, by="rest")
        else:
            call.twiml, call.url = twiml, url
            if url:
                call.method = one.get("Method", "POST").upper()
            if call.carried and call.status == "in-progress":
                call.redirect = ("twiml", twiml, "") if twiml else ("url", url, call.method)
                call.interrupt.set()
        return call.resource()

    # --- /_emulator ------------------------------------------------------------------------------------------

    @app.get("/_emulator/requests")
    async def requests_log(call_sid: str | None = None):
        items = emu.requests if call_sid is None else [r for r in emu.requests if f"/Calls/{call_sid}" in r["path"]]
        return {"requests": items}

    @app.get("/_emulator/calls")
    async def list_calls(status: str | None = None, to: str | None = None, direction: str | None = None):
        calls = [c.view() for c in emu.calls.values()
                 if (status is None or c.status == status) and (to is None or c.to == to)
                 and (direction is None or c.direction == direction)]
        return {"calls": calls}

    @app.get("/_emulator/calls/{call_sid}")
    async def call_state(call_sid: str, wait: float = 0.0):
        """`wait`: seconds to wait for the call to end first (returns it as it is then, ended or not)."""
        deadline = time.monotonic() + min(max(wait, 0.0), 300.0)
        while ((call := emu.calls.get(call_sid)) is not None and (call.ended is None or call.running)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        if call is None:
            return _error(404, 20404, f"no call {call_sid}")
        return call.view()

    @app.get("/_emulator/calls/{call_sid}/audio.wav")
    async def call_audio(call_sid: str):
        call = emu.calls.get(call_sid)
        if call is None or call.audio is None:
            return _error(404, 20404, f"no recorded audio for call {call_sid} (record: true in its rule keeps it)")
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(LINE_RATE)
            w.writeframes(audioop.ulaw2lin(call.audio, 2))
        return Response(buf.getvalue(), media_type="audio/wav")

    @app.get("/_emulator/stats")
    async def stats():
        return emu.stats()

    @app.post("/_emulator/reset")
    async def reset():
        emu.reset()
        return emu.stats()

    @app.get("/_emulator/rules")
    async def list_rules():
        return {"rules": [r.describe() for r in [*emu.api_rules, *emu.file_rules.rules]],
                "default": emu.file_rules.default.describe()}

    @app.post("/_emulator/rules")
    async def add_rules(body: Any = Body(...)):
        """A rule, a list of rules, or {"rules": [...], "replace": true}; they take precedence over earlier ones."""
        replace = isinstance(body, dict) and bool(body.get("replace"))
        items = body.get("rules") if isinstance(body, dict) and "rules" in body else body
        items = items if isinstance(items, list) else [items]
        try:
            added = [parse_rule(f"rule {i}", r, Path.cwd()) for i, r in enumerate(items)]
        except ValueError as exc:
            return _bad(str(exc))
        emu.api_rules[:] = added + ([] if replace else emu.api_rules)
        return await list_rules()

    @app.delete("/_emulator/rules")
    async def clear_rules():
        emu.api_rules.clear()
        return await list_rules()

    @app.post("/_emulator/inbound", status_code=201)
    async def inbound(body: dict = Body(...)):
        """Place an inbound call to a voxline server: {to, from, server, public_url?, callee?, record?,
        max_call_secs?}. Returns once the voice webhook has answered; the call goes on in the background."""
        to, from_, server = body.get("to"), body.get("from") or "+15550199999", body.get("server")
        if not (isinstance(to, str) and _dialable(to)) or not _dialable(str(from_)):
            return _bad("'to' and 'from' must be phone numbers")
        if not (isinstance(server, str) and server.startswith(("http://", "https://"))):
            return _bad("'server' must be the voxline server's base URL (http://host:port)")
        raw_rule = {k: body[k] for k in ("callee", "record", "max_call_secs") if k in body}
        try:
            rule: Rule = parse_rule("inbound", {"match": to, **raw_rule}, Path.cwd())
        except ValueError as exc:
            return _bad(str(exc))
        call = EmulatedCall(sid=sid("CA"), account_sid=account_sid, to=to, from_=str(from_), status="ringing",
                            direction="inbound", carried=True, rule=rule, script=rule.script)
        emu.add(call)
        await carrier.place_inbound(emu, call, server, body.get("public_url"))
        return JSONResponse(call.view(), status_code=201)

    return app
