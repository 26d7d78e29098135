"""`voxline call`: one scripted call through the Twilio path, with what was heard and how fast."""

from __future__ import annotations

import asyncio
from pathlib import Path

import audioop
import numpy as np
import typer

from telephony.audio import LINE_RATE, speech_bounds, ulaw_to_wav, wav_to_ulaw
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


async def run_call(server: str, wav: Path, out: Path | None, to: str, from_: str, token: str | None,
                   public_url: str | None, reply_timeout: float) -> int:
    utterance = wav_to_ulaw(wav)
    answer = await post_incoming_call(server, to, from_, auth_token=token, public_url=public_url)
    if answer.status_code != 200:
        typer.echo(f"webhook refused the call: HTTP {answer.status_code}: {answer.twiml[:200]}", err=True)
        return 1
    if not answer.stream_url:
        typer.echo(f"the agent did not answer: {' '.join(answer.said) or answer.twiml}", err=True)
        return 1
    signed = public_url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://") + "/telephony/twilio/stream" if public_url else None
    async with MediaStreamCaller(answer, auth_token=token, signed_url=signed) as caller:
        if not await caller.wait_agent_audio(0.0, 15.0):
            typer.echo("no welcome audio from the agent within 15 s", err=True)
        await caller.wait_agent_quiet(0.8, 30.0)
        welcome = bytes(caller.agent_audio)
        sent_at = await caller.say(utterance)
        spoke_at = sent_at - speech_bounds(utterance)[1]  # the last loud frame, not the file's trailing silence
        first = await caller.wait_agent_audio(sent_at, reply_timeout)
        if first is not None:
            await caller.wait_agent_quiet(0.8, 60.0)
        reply = bytes(caller.agent_audio[len(welcome):])
    if out:
        ulaw_to_wav(bytes(caller.agent_audio), out)
    loop = asyncio.get_running_loop()
    heard_welcome, heard_reply, heard_caller = await asyncio.gather(
        loop.run_in_executor(None, transcribe_ulaw, welcome),
        loop.run_in_executor(None, transcribe_ulaw, reply),
        loop.run_in_executor(None, transcribe_ulaw, utterance),
    )
    typer.echo(f"call {answer.parameters.get('call_id')}")
    typer.echo(f"  agent : {heard_welcome}")
    typer.echo(f"  caller: {heard_caller}")
    typer.echo(f"  agent : {heard_reply or '(no reply)'}")
    if first is None:
        typer.echo(f"no reply within {reply_timeout:g} s of the end of speech", err=True)
        return 1
    typer.echo(f"reply latency (end of caller speech → first agent audio): {(first - spoke_at) * 1000:.0f} ms")
    return 0
