"""`voxline call` as a terminal softphone: call an agent by number (the Twilio webhook path) or directly
(`--agent`, the softphone route), play a script of utterances or a live microphone, and print what happened:
the transcript, each turn's latency, each barge-in's latency, and how the call ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import typer
import websockets

from telephony.audio import speech_bounds
from telephony.twilio.caller import Answer, MediaStreamCaller, post_incoming_call
from telephony.twilio.emulator.callee import perform, synthesize_ahead
from telephony.twilio.emulator.rules import Step, parse_script

SOFTPHONE_CALLS = "/api/v1/softphone/calls"
RECORD_WAIT_SECS = 10.0


class CallFailed(Exception):
    """The call could not be placed: the message says why."""


class RecordUnavailable(Exception):
    """The call's record could not be read, so how the call ended is unknown: the message says why."""


# What opening a media stream raises when it cannot: refused or dropped connection, a timeout, an HTTP refusal.
STREAM_OPEN_ERRORS = (OSError, websockets.InvalidHandshake, websockets.InvalidURI)


def stream_error(exc: BaseException) -> str:
    return f"the media stream could not be opened: {exc or type(exc).__name__}"


def http_error(server: str, exc: httpx.HTTPError) -> str:
    """One line for a request that got no HTTP answer (server down, dropped connection, timeout)."""
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc  # the OS's reason ("connection refused") is further down the chain
        while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            return f"cannot reach {server} ({exc})"
        # asyncio words a refusal "Connect call failed ('127.0.0.1', 8080)"; the errno's own text is plainer.
        reason = os.strerror(cause.errno) if isinstance(cause.errno, int) and cause.errno > 0 else cause.strerror
        return f"cannot reach {server} ({reason.lower()})"
    if isinstance(exc, httpx.TimeoutException):
        return f"{server} did not answer in time ({type(exc).__name__})"
    return f"{server}: {exc or type(exc).__name__}"


def load_script(path: Path) -> tuple[Step, ...]:
    """A list of steps, the Twilio emulator's callee language: say, interrupt, play, wait_agent, pause, dtmf, tone,
    hangup (see telephony/twilio/emulator/rules.py)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if isinstance(raw, dict) and "steps" in raw:
        raw = raw["steps"]
    steps = parse_script(str(path), raw, path.parent)
    if not steps:  # a call that hangs up at once and reports nothing is never what was meant
        raise ValueError(f"{path}: the script has no steps")
    return steps


async def place_softphone_call(server: str, api_key: str, agent: str) -> Answer:
    """A call straight to an agent (name or id), no number mapping: the server opens the record and the token."""
    async with httpx.AsyncClient(base_url=server, headers={"x-api-key": api_key}, timeout=15) as client:
        agent_id = agent
        listed = await client.get("/api/v1/agents", params={"limit": 100})
        if listed.status_code == 200:
            for row in listed.json().get("data", []):
                if agent in (row.get("id"), row.get("name")):
                    agent_id = row["id"]
                    break
        elif listed.status_code in (401, 403):
            raise CallFailed(f"the API refused the key: HTTP {listed.status_code}")
        r = await client.post(SOFTPHONE_CALLS, json={"agent_id": agent_id})
    if r.status_code not in (200, 201):
        raise CallFailed(f"the server refused the call: HTTP {r.status_code}: {_message(r)}")
    body = r.json()
    return Answer(status_code=200, twiml="", stream_url=body["stream_url"], parameters=body["parameters"])


@dataclass
class Played:
    """What the caller's side did and saw, timed by the caller's clock."""

    said: list[tuple[float, str]] = field(default_factory=list)
    barge_ins_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def play_script(caller: MediaStreamCaller, steps: tuple[Step, ...]) -> Played:
    played = Played()
    pending = synthesize_ahead(steps)
    since = 0.0
    try:
        for step in steps:
            clears_before = len(caller.events("clear"))
            done = await perform(caller, step, since, pending)
            since = done.since
            if done.note:
                played.notes.append(done.note)
            if done.said:
                played.said.append((time.monotonic(), done.said))
            if step.kind == "interrupt" and done.said:
                await _time_barge_in(caller, pending[step.value].result(), clears_before, played)
            if done.hangup:
                break
    finally:
        for task in pending.values():
            task.cancel()
    return played


async def _time_barge_in(caller: MediaStreamCaller, ulaw: bytes, clears_before: int, played: Played) -> None:
    """Caller speech onset (the first loud frame sent) → the `clear` that silenced the agent."""
    onset = caller.first_speech_frame_at + speech_bounds(ulaw)[0]
    await caller.wait_for(lambda: len(caller.events("clear")) > clears_before, 2.0)
    clears = caller.events("clear")[clears_before:]
    if clears:
        played.barge_ins_ms.append(max(0.0, (clears[0].at - onset) * 1000))
    else:
        played.notes.append("interrupt: no clear came: the agent was not silenced")


async def fetch_record(server: str, api_key: str, call_id: str) -> dict:
    """The call's record once the server has closed it (it closes just after the stream ends). RecordUnavailable
    when it cannot be read: the server went away, or refused the key."""
    deadline = time.monotonic() + RECORD_WAIT_SECS
    try:
        async with httpx.AsyncClient(base_url=server, headers={"x-api-key": api_key}, timeout=10) as client:
            while True:
                r = await client.get(f"/api/v1/calls/{call_id}")
                if r.status_code != 200:
                    raise RecordUnavailable(f"cannot read the call's record: HTTP {r.status_code}: {_message(r)}")
                record = r.json()
                if record.get("ended_at") or time.monotonic() > deadline:
                    return record
                await asyncio.sleep(0.2)
    except httpx.HTTPError as exc:
        raise RecordUnavailable(f"cannot read the call's record: {http_error(server, exc)}") from exc


async def closing_record(server: str, api_key: str | None, call_id: str | None) -> tuple[dict | None, int]:
    """The call's record (None without a key) and the exit status it makes: 1 when the server recorded the call
    `failed` or the record could not be read (how the call ended is then unknown). Prints why when it is 1."""
    if not (api_key and call_id):
        return None, 0
    try:
        record = await fetch_record(server, api_key, call_id)
    except RecordUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        return None, 1
    if record["status"] == "failed":
        detail = f" ({record['error_detail']})" if record.get("error_detail") else ""
        typer.echo(f"error: the call failed: {record.get('disconnection_reason') or 'no reason recorded'}{detail}",
                   err=True)
        return record, 1
    return record, 0


def status_line(record: dict) -> str:
    return (f"call {record['id']} ({record['direction']}): {record['status']}, "
            f"{record.get('disconnection_reason') or 'not closed yet'}"
            f"{' (' + record['error_detail'] + ')' if record.get('error_detail') else ''}")


def _message(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def summary_lines(record: dict | None, played: Played) -> list[str]:
    lines = []
    if record is not None:
        lines.append(status_line(record))
        for entry in record.get("transcript") or []:
            who = {"user": "caller", "assistant": "agent", "tool": "tool"}[entry["role"]]
            text = entry["text"] if entry["role"] != "tool" else f"{entry['tool']['name']}({entry['tool']['arguments']})"
            extra = []
            if entry.get("latency"):
                extra.append(f"{entry['latency']['e2e_ms']} ms")
            if entry.get("interrupted"):
                extra.append("interrupted")
            lines.append(f"  {entry['start_secs']:6.1f}s {who:>6}: {text}{'  [' + ', '.join(extra) + ']' if extra else ''}")
        e2e = (record.get("latency") or {}).get("e2e")
        if e2e:
            lines.append(f"turn latency (caller silent → agent audio): p50 {e2e['p50']} ms, p95 {e2e['p95']} ms, "
                         f"max {e2e['max']} ms over {e2e['turns']} turn(s)")
    else:
        for _, said in played.said:
            lines.append(f"  caller: {said}")
    for ms in played.barge_ins_ms:
        lines.append(f"barge-in (caller speech onset → clear): {ms:.0f} ms")
    lines.extend(f"note: {n}" for n in played.notes)
    return lines


async def run_script_call(server: str, steps: tuple[Step, ...], *, agent: str | None, api_key: str | None,
                          to: str, from_: str, token: str | None, public_url: str | None) -> int:
    try:
        if agent:
            if not api_key:
                raise CallFailed("--agent needs an API key: --api-key or VOXLINE_API_KEY")
            answer = await place_softphone_call(server, api_key, agent)
            signed_token = None  # a softphone stream is authenticated by its call's signed token alone
        else:
            answer = await post_incoming_call(server, to, from_, auth_token=token, public_url=public_url)
            if answer.status_code != 200 or not answer.stream_url:
                raise CallFailed(f"the agent did not answer: HTTP {answer.status_code}: "
                                 f"{' '.join(answer.said) or answer.twiml[:200]}")
            signed_token = token
    except CallFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except httpx.HTTPError as exc:
        typer.echo(f"error: {http_error(server, exc)}", err=True)
        return 1
    signed = _stream_signing_url(public_url) if signed_token else None
    try:
        async with MediaStreamCaller(answer, auth_token=signed_token, signed_url=signed) as caller:
            script = asyncio.create_task(play_script(caller, steps))
            closed = asyncio.create_task(caller.closed.wait())
            await asyncio.wait({script, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not script.done() or isinstance(script.exception(), websockets.ConnectionClosed):
                script.cancel()  # a step that sent as the server closed the stream ends like one cut short
                played = Played(notes=["the call ended before the script did"])
            else:
                played = script.result()
            closed.cancel()
    except STREAM_OPEN_ERRORS as exc:
        typer.echo(f"error: {stream_error(exc)}", err=True)
        return 1
    record, status = await closing_record(server, api_key, answer.parameters.get("call_id"))
    for line in summary_lines(record, played):
        typer.echo(line)
    return status


def _stream_signing_url(public_url: str | None) -> str | None:
    if not public_url:
        return None
    return public_url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://") + "/telephony/twilio/stream"


def mic_unavailable() -> str | None:
    """Why a live microphone call cannot run here, or None."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: PortAudio itself is missing
        return (f"--mic needs the sounddevice package and PortAudio ({exc}); install them with "
                "`pip install sounddevice` and your system's libportaudio2")
    try:
        sounddevice.query_devices(kind="input")
        sounddevice.query_devices(kind="output")
    except Exception as exc:  # noqa: BLE001 - PortAudio reports a missing device in several ways
        return f"--mic needs a sound input and output device: {exc}"
    return None


async def run_mic_call(server: str, *, agent: str | None, api_key: str | None, to: str, from_: str,
                       token: str | None, public_url: str | None) -> int:
    """A live call: the microphone goes to the agent in 20 ms μ-law frames, the agent comes out of the speaker,
    and a `clear` empties what is waiting to play (barge-in is audible). Ctrl-C hangs up."""
    import audioop

    import sounddevice as sd

    try:
        if agent:
            if not api_key:
                raise CallFailed("--agent needs an API key: --api-key or VOXLINE_API_KEY")
            answer, signed_token = await place_softphone_call(server, api_key, agent), None
        else:
            answer = await post_incoming_call(server, to, from_, auth_token=token, public_url=public_url)
            if not answer.stream_url:
                raise CallFailed(f"the agent did not answer: {' '.join(answer.said) or answer.twiml[:200]}")
            signed_token = token
    except CallFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except httpx.HTTPError as exc:
        typer.echo(f"error: {http_error(server, exc)}", err=True)
        return 1
    loop = asyncio.get_running_loop()
    rate = int(sd.query_devices(kind="input")["default_samplerate"])
    out_rate = int(sd.query_devices(kind="output")["default_samplerate"])
    speaker = bytearray()  # agent PCM at the output device's rate, waiting to play
    state_in = state_out = None

    stream = contextlib.AsyncExitStack()
    try:
        caller = await stream.enter_async_context(MediaStreamCaller(
            answer, auth_token=signed_token, signed_url=_stream_signing_url(public_url) if signed_token else None))
    except STREAM_OPEN_ERRORS as exc:
        typer.echo(f"error: {stream_error(exc)}", err=True)
        return 1
    async with stream:
        pending = bytearray()

        def heard(indata, _frames, _time, _status) -> None:  # PortAudio's thread
            nonlocal state_in
            pcm, state_in = audioop.ratecv(bytes(indata), 2, 1, rate, 8000, state_in)
            loop.call_soon_threadsafe(feed, pcm)

        def feed(pcm: bytes) -> None:
            pending.extend(pcm)
            while len(pending) >= 320:
                caller.feed(audioop.lin2ulaw(bytes(pending[:320]), 2))
                del pending[:320]

        def on_media(ulaw: bytes) -> None:
            nonlocal state_out
            pcm, state_out = audioop.ratecv(audioop.ulaw2lin(ulaw, 2), 2, 1, 8000, out_rate, state_out)
            speaker.extend(pcm)

        def play(outdata, frames, _time, _status) -> None:  # PortAudio's thread
            n = frames * 2
            chunk = bytes(speaker[:n])
            del speaker[:n]
            outdata[:] = chunk.ljust(n, b"\0")

        caller.on_media = on_media
        caller.on_clear = speaker.clear
        with sd.RawInputStream(samplerate=rate, channels=1, dtype="int16", callback=heard), \
                sd.RawOutputStream(samplerate=out_rate, channels=1, dtype="int16", callback=play):
            typer.echo("connected: speak now (Ctrl-C hangs up)")
            try:
                await caller.closed.wait()
            except (KeyboardInterrupt, asyncio.CancelledError):
                pass
    record, status = await closing_record(server, api_key, answer.parameters.get("call_id"))
    for line in summary_lines(record, Played()):
        typer.echo(line)
    return status
