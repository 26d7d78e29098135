"""The emulated carrier's memory: its calls (resource, what happened on them), the REST request log, the rules, the
concurrency counters; and the one place a call ends (`finish`), so that REST, TwiML and sockets agree on it."""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from fastapi import Request
from loguru import logger

from telephony.twilio.emulator.rules import Rule, RuleSet, Step

API_VERSION = "2010-04-01"
TERMINAL = ("completed", "busy", "no-answer", "failed", "canceled")


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def rfc2822(at: float | None) -> str | None:
    return format_datetime(datetime.fromtimestamp(at, timezone.utc)) if at else None


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
    method: str = "POST"
    # Only calls the emulator places and runs itself (created or /_emulator/inbound) ring, answer and count;
    # a call first heard of in a REST update (voxline's own tests dial without the carrier) is only a record.
    carried: bool = False
    status_callback: str | None = None
    callback_method: str = "POST"
    callback_events: frozenset[str] = frozenset({"completed"})
    machine_detection: str | None = None
    timeout: float = 60.0
    rule: Rule | None = None
    script: tuple[Step, ...] = ()
    created: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended: float | None = None
    answered_by: str | None = None
    # What the far end experienced.
    said: list[str] = field(default_factory=list)  # TwiML <Say> texts played to the callee
    played: list[str] = field(default_factory=list)
    callee_said: list[str] = field(default_factory=list)
    dtmf_sent: str = ""
    heard_agent_bytes: int = 0
    marks: list[str] = field(default_factory=list)  # names of the marks the stream server sent
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    stream: dict | None = None
    transfer_to: str | None = None
    hung_up_by: str | None = None  # callee | server (socket closed) | rest | twiml | timeout
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    webhook: dict | None = None
    callbacks: list[dict] = field(default_factory=list)
    audio: bytes | None = None
    # Plumbing between the REST handlers and the task that runs the call.
    interrupt: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    redirect: tuple[str, str, str] | None = None  # ("twiml", text, "") or ("url", url, method)
    running: bool = False  # its task still has the stream to close and what the callee heard to record
    sequence: int = 0
    outbox: asyncio.Queue | None = field(default=None, repr=False)

    @property
    def duration(self) -> int | None:
        if self.ended is None:
            return None
        if self.answered_at is None:
            return 0
        return math.ceil(self.ended - self.answered_at)  # billed by the started second

    def resource(self) -> dict[str, Any]:
        duration = self.duration
        return {
            "sid": self.sid, "account_sid": self.account_sid, "to": self.to, "to_formatted": self.to,
            "from": self.from_, "from_formatted": self.from_, "status": self.status, "direction": self.direction,
            "api_version": API_VERSION, "date_created": rfc2822(self.created), "date_updated": rfc2822(time.time()),
            "start_time": rfc2822(self.answered_at or (None if self.carried else self.created)),
            "end_time": rfc2822(self.ended), "duration": None if duration is None else str(duration),
            "price": None, "price_unit": "USD", "answered_by": self.answered_by, "forwarded_from": None,
            "caller_name": None, "parent_call_sid": None, "phone_number_sid": None, "group_sid": None,
            "queue_time": "0", "trunk_sid": None, "annotation": None,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json", "subresource_uris": {},
        }

    def view(self) -> dict[str, Any]:
        """The resource plus what the far end experienced, for tests (`GET /_emulator/calls/{sid}`)."""
        return {
            **self.resource(), "twiml": self.twiml, "url": self.url, "carried": self.carried,
            "answered": self.answered_at is not None, "outcome": self.rule.outcome if self.rule else None,
            "script": [s.describe() for s in self.script], "said": self.said, "played": self.played,
            "callee_said": self.callee_said, "dtmf_sent": self.dtmf_sent,
            "heard_agent_secs": round(self.heard_agent_bytes / 8000, 3), "marks": self.marks,
            "marks_echoed": self.marks_echoed, "clears": self.clears, "stream": self.stream,
            "transfer_to": self.transfer_to, "hung_up_by": self.hung_up_by, "error": self.error, "notes": self.notes,
            "webhook": self.webhook, "callbacks": self.callbacks, "has_audio": self.audio is not None,
        }


class TwilioEmulator:
    def __init__(self, account_sid: str, auth_token: str, rules: RuleSet | None = None):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.file_rules = rules or RuleSet()
        self.api_rules: list[Rule] = []
        self.calls: dict[str, EmulatedCall] = {}
        self.requests: list[dict[str, Any]] = []
        self.max_concurrent = 0
        self.total = 0
        self.tasks: set[asyncio.Task] = set()
        self.closing = False
        self._http = None

    # --- plumbing ------------------------------------------------------------------------------------------

    def http(self):
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=15, follow_redirects=False)  # Twilio waits 15 s for webhooks
        return self._http

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        self.closing = True  # calls cut short by the shutdown send no more callbacks
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(password, self.auth_token)

    # --- calls ---------------------------------------------------------------------------------------------

    def rule_for(self, number: str) -> Rule:
        return self.file_rules.for_number(number, self.api_rules)

    def add(self, call: EmulatedCall) -> EmulatedCall:
        self.calls[call.sid] = call
        if call.carried:
            self.total += 1
        return call

    def known_call(self, sid_: str) -> EmulatedCall:
        """A call voxline heard of from a webhook rather than from us (its own tests dial directly): Twilio knows it."""
        call = self.calls.get(sid_)
        if call is None:
            call = self.calls[sid_] = EmulatedCall(sid=sid_, account_sid=self.account_sid, to="", from_="",
                                                   status="in-progress", direction="inbound")
        return call

    @property
    def active(self) -> int:
        return sum(1 for c in self.calls.values() if c.carried and c.status == "in-progress")

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for c in self.calls.values():
            if c.carried:
                by_status[c.status] = by_status.get(c.status, 0) + 1
        return {"active": self.active, "max_concurrent": self.max_concurrent, "total": self.total,
                "by_status": by_status}

    def reset(self) -> None:
        """Forget finished calls, the request log and the API's rules; calls still running go on and stay counted."""
        self.calls = {k: c for k, c in self.calls.items() if c.carried and c.status not in TERMINAL}
        self.requests.clear()
        self.api_rules.clear()
        self.total = len(self.calls)
        self.max_concurrent = self.active

    def ring(self, call: EmulatedCall) -> None:
        call.status = "ringing"
        self.callback(call, "ringing", "ringing")

    def answer(self, call: EmulatedCall, answered_by: str | None = None) -> None:
        call.status, call.answered_at, call.answered_by = "in-progress", time.time(), answered_by
        self.max_concurrent = max(self.max_concurrent, self.active)
        self.callback(call, "answered", "in-progress")

    def finish(self, call: EmulatedCall, status: str, *, by: str | None = None) -> bool:
        """End the call once, whoever ends it first; False when it had already ended."""
        if call.ended is not None:
            return False
        call.status, call.ended = status, time.time()
        call.hung_up_by = call.hung_up_by or by
        call.interrupt.set()
        if call.carried:
            logger.info(f"twilio emulator: call {call.sid} {status} (duration {call.duration}s, by {call.hung_up_by})")
            self.callback(call, "completed", status)
        return True

    # --- status callbacks ----------------------------------------------------------------------------------

    def callback(self, call: EmulatedCall, event: str, status: str) -> None:
        """Queue a status callback; they go out one after another per call, so they arrive in the order they happened
        (Twilio promises no order; voxline must cope with either, but a test wants to know which it got)."""
        if self.closing or not call.status_callback or (event != "completed" and event not in call.callback_events):
            return
        params = {
            "AccountSid": call.account_sid, "ApiVersion": API_VERSION, "CallSid": call.sid, "CallStatus": status,
            "Called": call.to, "Caller": call.from_, "Direction": call.direction, "From": call.from_, "To": call.to,
            "CallbackSource": "call-progress-events", "SequenceNumber": str(call.sequence),
            "Timestamp": rfc2822(time.time()),
        }
        call.sequence += 1
        if call.machine_detection and call.answered_by:
            params["AnsweredBy"] = call.answered_by
        if event == "completed":
            duration = call.duration or 0
            # CallDuration is seconds; Duration is the billed minutes, rounded up.
            params.update(CallDuration=str(duration), Duration=str(math.ceil(duration / 60)))
        if call.outbox is None:
            call.outbox = asyncio.Queue()
            self.spawn(self._send_callbacks(call))
        call.outbox.put_nowait((event, params))
        if event == "completed":
            call.outbox.put_nowait(None)

    async def _send_callbacks(self, call: EmulatedCall) -> None:
        from twilio.request_validator import RequestValidator

        validator = RequestValidator(self.auth_token)
        while (item := await call.outbox.get()) is not None:
            event, params = item
            record = {"event": event, "status": params["CallStatus"], "sequence": int(params["SequenceNumber"]),
                      "url": call.status_callback, "method": call.callback_method, "http_status": None,
                      "error": None, "at": time.time()}
            call.callbacks.append(record)
            try:
                if call.callback_method == "GET":
                    from urllib.parse import urlencode

                    url = call.status_callback + ("&" if "?" in call.status_callback else "?") + urlencode(params)
                    headers = {"X-Twilio-Signature": validator.compute_signature(url, {})}
                    r = await self.http().get(url, headers=headers)
                else:
                    headers = {"X-Twilio-Signature": validator.compute_signature(call.status_callback, params)}
                    r = await self.http().post(call.status_callback, data=params, headers=headers)
                record["http_status"] = r.status_code
                if r.status_code >= 400:
                    record["error"] = f"11200 HTTP retrieval failure: {r.status_code}"
            except Exception as exc:  # noqa: BLE001 - any failure is the callback target's, logged like Twilio does
                record["error"] = f"11200 HTTP retrieval failure: {type(exc).__name__}: {exc}"
            if record["error"]:
                # Twilio does not retry status callbacks: the debugger shows the error, and that is all.
                logger.warning(f"twilio emulator: call {call.sid} {event} callback to {call.status_callback}: "
                               f"{record['error']}")
