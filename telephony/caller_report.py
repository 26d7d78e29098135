"""`voxline call`: one scripted call through the Twilio path, with what was heard and how fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import audioop
import httpx
import numpy as np
import typer

from telephony.audio import LINE_RATE, speech_bounds, ulaw_to_wav
from telephony.softphone_cli import STREAM_OPEN_ERRORS, closing_record, http_error, status_line, stream_error
from telephony.twilio.caller import MediaStreamCaller, post_incoming_call


def transcribe_ulaw(ulaw: bytes) -> str:
    """What the agent said, as the caller heard it (bundled Whisper, run locally)."""
    import soxr

    from pipelines.providers import local_models

    if not ulaw:
        return ""
    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype=np.int16).astype(np.float32) / 32768.0
    segments, _ = local_models.get("whisper").transcribe(soxr.resample(pcm, LINE_RATE, 16000), language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments).strip()


def out_problem(out: Path) -> str | None:
    """Why the agent's audio could not be written to `out`, found before dialing rather than after the call."""
    if out.is_dir():
        return f"--out {out}: is a directory"
    if not out.parent.is_dir():
        return f"--out {out}: no such directory {out.parent}"
    existed = out.exists()
    try:
        with out.open("ab"):  # a real open, not os.access: that one says yes to root on a read-only mount
            pass
    except OSError as exc:
        return f"--out {out}: {exc.strerror or exc}"
    if not existed:
        out.unlink(missing_ok=True)
    return None


async def run_call(server: str, utterance: bytes, out: Path | None, to: str, from_: str, token: str | None,
                   public_url: str | None, reply_timeout: float, api_key: str | None = None) -> int:
    """One turn: the welcome, `utterance` (8 kHz μ-law), the reply. With `api_key` the call's record decides
    whether it failed (a provider failure is answered with an apology, which sounds like a reply)."""
    try:
        answer = await post_incoming_call(server, to, from_, auth_token=token, public_url=public_url)
    except httpx.HTTPError as exc:
        typer.echo(f"error: {http_error(server, exc)}", err=True)
        return 1
    if answer.status_code != 200:
        typer.echo(f"webhook refused the call: HTTP {answer.status_code}: {answer.twiml[:200]}", err=True)
        return 1
    if not answer.stream_url:
        typer.echo(f"the agent did not answer: {' '.join(answer.said) or answer.twiml}", err=True)
        return 1
    signed = public_url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://") + "/telephony/twilio/stream" if public_url else None
    first = None
    try:
        async with MediaStreamCaller(answer, auth_token=token, signed_url=signed) as caller:
            if not await caller.wait_agent_audio(0.0, 15.0):
                typer.echo("no welcome audio from the agent within 15 s", err=True)
            await caller.wait_agent_quiet(0.8, 30.0)
            welcome = bytes(caller.agent_audio)
            if not caller.closed.is_set():  # said into a closed stream, the utterance would never finish sending
                sent_at = await _say_unless_closed(caller, utterance)
                spoke_at = sent_at - speech_bounds(utterance)[1]  # the last loud frame, not the trailing silence
                first = await caller.wait_agent_audio(sent_at, reply_timeout)
                if first is not None:
                    await caller.wait_agent_quiet(0.8, 60.0)
            reply = bytes(caller.agent_audio[len(welcome):])
    except STREAM_OPEN_ERRORS as exc:
        typer.echo(f"error: {stream_error(exc)}", err=True)
        return 1
    call_id = answer.parameters.get("call_id")
    if not api_key:
        typer.echo("note: no API key (--api-key or VOXLINE_API_KEY), so the call's record was not read: a call the "
                   "server ended as failed is not reported as one", err=True)
    record, status = await closing_record(server, api_key, call_id)
    if out:
        try:
            ulaw_to_wav(bytes(caller.agent_audio), out)
        except OSError as exc:  # checked before dialing; this is the file system changing since
            typer.echo(f"error: --out {out}: {exc.strerror or exc}", err=True)
            status = 1
    loop = asyncio.get_running_loop()
    heard_welcome, heard_reply, heard_caller = await asyncio.gather(
        loop.run_in_executor(None, transcribe_ulaw, welcome),
        loop.run_in_executor(None, transcribe_ulaw, reply),
        loop.run_in_executor(None, transcribe_ulaw, utterance),
    )
    typer.echo(f"call {call_id}")
    typer.echo(f"  agent : {heard_welcome}")
    typer.echo(f"  caller: {heard_caller}")
    typer.echo(f"  agent : {heard_reply or '(no reply)'}")
    if record is not None:
        typer.echo(f"record: {status_line(record)}")
    if status:
        return status  # a failed call's "reply" is its apology: no latency is reported for it
    if first is None:
        typer.echo(f"no reply within {reply_timeout:g} s of the end of speech", err=True)
        return 1
    typer.echo(f"reply latency (end of caller speech → first agent audio): {(first - spoke_at) * 1000:.0f} ms")
    return 0


async def _say_unless_closed(caller: MediaStreamCaller, utterance: bytes) -> float:
    """`caller.say`, cut short when the server closes the stream mid-utterance (its sender then stops)."""
    saying = asyncio.create_task(caller.say(utterance))
    closed = asyncio.create_task(caller.closed.wait())
    await asyncio.wait({saying, closed}, return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    if saying.done():
        return saying.result()
    saying.cancel()
    return time.monotonic()
