"""The carrier side: dialing a created call (ringing, then the rule's outcome), fetching and running its TwiML,
connecting `<Connect><Stream>` to a media stream with the callee script on the far end, and placing inbound calls
to a voxline server's voice webhook. One task per call; REST updates reach it through `call.interrupt`."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

from loguru import logger
from twilio.request_validator import RequestValidator

from telephony.twilio.caller import VOICE_PATH, Answer, MediaStreamCaller
from telephony.twilio.emulator.callee import run_script
from telephony.twilio.emulator.state import API_VERSION, EmulatedCall, TwilioEmulator

INITIATE_SECS = 0.05  # queued → initiated: a beat, so that the 201 reaches the client before any callback
APPLICATION_ERROR = "An application error has occurred. Goodbye."


async def _interruptible_sleep(call: EmulatedCall, secs: float) -> bool:
    """Sleep unless the call is hung up or redirected meanwhile; True when it was."""
    try:
        await asyncio.wait_for(call.interrupt.wait(), secs)
        return True
    except TimeoutError:
        return False


def _say_secs(text: str) -> float:
    return 0.3 + 0.25 * len(text.split())  # near Twilio's <Say> pace; tests only need it to take some time


def call_params(emu: TwilioEmulator, call: EmulatedCall) -> dict[str, str]:
    """The standard parameters Twilio sends to a voice URL."""
    params = {"AccountSid": call.account_sid, "ApiVersion": API_VERSION, "CallSid": call.sid,
              "CallStatus": call.status, "Called": call.to, "Caller": call.from_, "Direction": call.direction,
              "From": call.from_, "To": call.to}
    if call.direction == "inbound":
        params["CallerName"] = ""  # blank values are signed too: a classic signature bug to catch
    if call.machine_detection and call.answered_by:
        params["AnsweredBy"] = call.answered_by
    return params


async def fetch_twiml(emu: TwilioEmulator, call: EmulatedCall, url: str, method: str = "POST",
                      signed_url: str | None = None) -> tuple[str | None, dict]:
    """TwiML from a voice URL, requested signed like Twilio; (None, record) on an HTTP or transport failure."""
    from urllib.parse import urlencode

    params = call_params(emu, call)
    validator = RequestValidator(emu.auth_token)
    record: dict = {"url": url, "method": method, "http_status": None, "error": None}
    try:
        if method.upper() == "GET":
            full = url + ("&" if "?" in url else "?") + urlencode(params)
            signed = (signed_url or url) + ("&" if "?" in url else "?") + urlencode(params)
            r = await emu.http().get(full, headers={"X-Twilio-Signature": validator.compute_signature(signed, {})})
        else:
            sig = validator.compute_signature(signed_url or url, params)
            r = await emu.http().post(url, data=params, headers={"X-Twilio-Signature": sig})
        record["http_status"] = r.status_code
        if r.status_code == 200:
            return r.text, record
        record["error"] = f"11200 HTTP retrieval failure: {r.status_code}"
    except Exception as exc:  # noqa: BLE001 - the far server's failure, reported on the call
        record["error"] = f"11200 HTTP retrieval failure: {type(exc).__name__}: {exc}"
    return None, record


# --- TwiML ---------------------------------------------------------------------------------------------------------

async def run_twiml(emu: TwilioEmulator, call: EmulatedCall, twiml: str | None) -> None:
    """Run TwiML verb by verb until the call ends; a REST redirect replaces what is left with the new TwiML."""
    while twiml is not None and call.ended is None:
        try:
            root = ET.fromstring(twiml)
            if root.tag != "Response":
                raise ET.ParseError(f"root element is <{root.tag}>, not <Response>")
        except ET.ParseError as exc:
            call.error = f"12100 Document parse failure: {exc}"
            call.said.append(APPLICATION_ERROR)
            return
        twiml = None
        for verb in root:
            if call.interrupt.is_set():
                break
            next_twiml, ended = await _verb(emu, call, verb)
            if ended:
                return
            if next_twiml is not None:
                twiml = next_twiml
                break
        if call.interrupt.is_set() and call.ended is None and call.redirect is not None:
            twiml = await _take_redirect(emu, call)


async def _take_redirect(emu: TwilioEmulator, call: EmulatedCall) -> str | None:
    kind, value, method = call.redirect
    call.redirect = None
    call.interrupt.clear()
    if kind == "twiml":
        return value
    text, record = await fetch_twiml(emu, call, value, method)
    if text is None:
        call.error = record["error"]
    return text


def _absolute(call: EmulatedCall, url: str) -> str:
    """TwiML URLs may be relative to the document they came from."""
    from urllib.parse import urljoin

    return urljoin(call.url or (call.webhook or {}).get("url") or "", url)


async def _verb(emu: TwilioEmulator, call: EmulatedCall, verb: ET.Element) -> tuple[str | None, bool]:
    """(TwiML to go on with, whether the call is over)."""
    tag, text = verb.tag, (verb.text or "").strip()
    if tag == "Say":
        call.said.append(text)
        await _interruptible_sleep(call, _say_secs(text))
    elif tag == "Play":
        call.played.append(text or f"digits:{verb.get('digits', '')}")
        await _interruptible_sleep(call, 1.0)
    elif tag == "Pause":
        await _interruptible_sleep(call, float(verb.get("length", "1")))
    elif tag in ("Hangup", "Reject"):
        call.hung_up_by = call.hung_up_by or "twiml"
        return None, True
    elif tag == "Dial":
        numbers = [(n.text or "").strip() for n in verb if n.tag in ("Number", "Client", "Sip")]
        call.transfer_to = text or (numbers[0] if numbers else "")
        call.notes.append(f"dialed {call.transfer_to}: the call left the emulator's hands")
        call.hung_up_by = call.hung_up_by or "transfer"
        return None, True
    elif tag == "Redirect":
        text_, record = await fetch_twiml(emu, call, _absolute(call, text), verb.get("method", "POST"))
        if text_ is None:
            call.error = record["error"]
            return None, True
        return text_, False
    elif tag == "Connect":
        stream = verb.find("Stream")
        if stream is None:
            call.notes.append("ignored <Connect> without <Stream>")
        elif await stream_leg(emu, call, stream):
            return None, True
        elif verb.get("action") and not call.interrupt.is_set():
            # Twilio asks the action URL what next once the stream ends, instead of reading on after </Connect>.
            text_, record = await fetch_twiml(emu, call, _absolute(call, verb.get("action")),
                                              verb.get("method", "POST"))
            if text_ is None:
                call.error = record["error"]
                return None, True
            return text_, False
    else:
        call.notes.append(f"ignored <{tag}>")
    return None, False


# --- the media stream ----------------------------------------------------------------------------------------------

async def stream_leg(emu: TwilioEmulator, call: EmulatedCall, stream: ET.Element) -> bool:
    """Connect the stream and run the callee on it; True when the call ended with it (the callee hung up, or REST
    ended it), False when the stream server closed the socket and TwiML goes on after `</Connect>`."""
    url = stream.get("url", "")
    answer = Answer(status_code=200, twiml="", stream_url=url,
                    parameters={p.get("name"): p.get("value") for p in stream.findall("Parameter")})
    caller = MediaStreamCaller(answer, auth_token=emu.auth_token, account_sid=call.account_sid, call_sid=call.sid)
    call.stream = {"url": url, "parameters": answer.parameters, "stream_sid": caller.stream_sid, "close_code": None}
    try:
        await caller.__aenter__()
    except Exception as exc:  # noqa: BLE001 - Twilio moves on to the next verb when the socket cannot open
        call.error = f"31920 Stream - WebSocket - Handshake Error: {type(exc).__name__}: {exc}"
        logger.warning(f"twilio emulator: call {call.sid}: {call.error}")
        return False
    max_secs = call.rule.max_call_secs if call.rule else 300.0
    script = asyncio.create_task(run_script(caller, call.script, call))
    closed = asyncio.create_task(caller.closed.wait())
    interrupted = asyncio.create_task(call.interrupt.wait())
    ended = True
    try:
        done, _ = await asyncio.wait({script, closed, interrupted}, timeout=max_secs,
                                     return_when=asyncio.FIRST_COMPLETED)
        if script in done and not script.result():  # the script is over but the callee stays on the line
            done, _ = await asyncio.wait({closed, interrupted}, timeout=max(0.0, max_secs - _held(call)),
                                         return_when=asyncio.FIRST_COMPLETED)
        if closed in done:
            ended = False
            call.notes.append("the stream server closed the socket")
        elif interrupted in done:
            ended = call.redirect is None  # a redirect goes on with new TwiML; otherwise REST hung up
        elif script in done and script.result():
            call.hung_up_by = call.hung_up_by or "callee"
        else:
            call.hung_up_by = call.hung_up_by or "timeout"
            call.notes.append(f"the callee hung up after max_call_secs ({max_secs:g}s)")
    finally:
        for task in (script, closed, interrupted):
            task.cancel()
        # Hanging up, a redirect or the callee leaving all end the stream the same way on Twilio: `stop`, then close.
        await caller.hang_up()
        _collect(call, caller)
    return ended


def _held(call: EmulatedCall) -> float:
    return time.time() - (call.answered_at or time.time())


def _collect(call: EmulatedCall, caller: MediaStreamCaller) -> None:
    call.heard_agent_bytes += len(caller.agent_audio)
    call.marks += [r.message.get("mark", {}).get("name") for r in caller.events("mark")]
    call.marks_echoed += caller.marks_echoed
    call.clears += len(caller.events("clear"))
    call.stream["close_code"] = caller.close_code
    if call.rule and call.rule.record:
        call.audio = (call.audio or b"") + bytes(caller.agent_audio)


# --- placing calls -------------------------------------------------------------------------------------------------

async def run_outbound(emu: TwilioEmulator, call: EmulatedCall) -> None:
    """A created call, from queued to its end, by the rule on its destination."""
    try:
        await _run_outbound(emu, call)
    except Exception as exc:  # noqa: BLE001 - the emulator's own bug must still end the call, and say so
        logger.exception(f"twilio emulator: call {call.sid} broke")
        call.error = call.error or f"emulator: {type(exc).__name__}: {exc}"
    finally:
        emu.finish(call, "completed" if call.answered_at else "failed", by="twiml")
        call.running = False


async def _run_outbound(emu: TwilioEmulator, call: EmulatedCall) -> None:
    rule = call.rule
    if await _interruptible_sleep(call, INITIATE_SECS):
        return
    emu.callback(call, "initiated", "initiated")
    if rule.outcome == "failed":  # an unreachable number fails before it ever rings
        await _interruptible_sleep(call, INITIATE_SECS)
        emu.finish(call, "failed")
        return
    await _interruptible_sleep(call, INITIATE_SECS)
    if call.ended is not None:
        return
    emu.ring(call)
    answers = rule.outcome in ("answer", "machine")
    if not answers or rule.ring_secs >= call.timeout:
        ring = rule.ring_secs if rule.outcome == "busy" else min(rule.ring_secs, call.timeout)
        if not await _interruptible_sleep(call, ring):
            emu.finish(call, "busy" if rule.outcome == "busy" else "no-answer")
        return
    if await _interruptible_sleep(call, rule.ring_secs):
        return
    answered_by = None
    if call.machine_detection:
        # Twilio's answers: Enable stops at the greeting's first words, DetectMessageEnd waits for its beep (the
        # emulator does not spend that time: the callee script still starts at the greeting).
        machine = "machine_end_beep" if call.machine_detection == "DetectMessageEnd" else "machine_start"
        answered_by = machine if rule.outcome == "machine" else "human"
    emu.answer(call, answered_by)
    twiml = call.twiml
    if twiml is None and call.url is None:
        call.error = "ApplicationSid calls are not emulated: give Twiml or Url"
        return
    if twiml is None:
        twiml, record = await fetch_twiml(emu, call, call.url, call.method)
        if twiml is None:
            call.error = record["error"]
            call.said.append(APPLICATION_ERROR)
            return
    await run_twiml(emu, call, twiml)


async def place_inbound(emu: TwilioEmulator, call: EmulatedCall, server: str, public_url: str | None) -> None:
    """Ask the server's voice webhook what to do with a ringing inbound call; the rest runs in the background."""
    twiml, record = await fetch_twiml(emu, call, server.rstrip("/") + VOICE_PATH, "POST",
                                      signed_url=(public_url or server).rstrip("/") + VOICE_PATH)
    call.webhook = {**record, "twiml": twiml}
    call.twiml = twiml
    emu.answer(call)  # Twilio answers to run the TwiML, even when it only says an error
    if twiml is None:
        call.error = record["error"]
        call.said.append(APPLICATION_ERROR)
        emu.finish(call, "completed", by="twiml")
        return
    call.running = True
    emu.spawn(_run_inbound(emu, call, twiml))


async def _run_inbound(emu: TwilioEmulator, call: EmulatedCall, twiml: str) -> None:
    try:
        await run_twiml(emu, call, twiml)
    except Exception as exc:  # noqa: BLE001
        logger.exception(f"twilio emulator: call {call.sid} broke")
        call.error = call.error or f"emulator: {type(exc).__name__}: {exc}"
    finally:
        emu.finish(call, "completed", by="twiml")
        call.running = False

