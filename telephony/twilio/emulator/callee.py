"""The person (or voicemail box) who answers: runs a callee script on the Twilio side of a media stream."""

from __future__ import annotations

import asyncio
import audioop
import math
import struct
import time
from collections import OrderedDict

from loguru import logger

from telephony.audio import LINE_RATE, wav_to_ulaw
from telephony.twilio.caller import MediaStreamCaller
from telephony.twilio.emulator.rules import Step

AGENT_QUIET_SECS = 0.8  # a pause longer than the agent leaves between its sentences
DTMF_GAP_SECS = 0.1

_speech: OrderedDict[str, bytes] = OrderedDict()  # synthesized sentences: scripts repeat them call after call
_SPEECH_CACHE = 64


def _synthesize_ulaw(text: str) -> bytes:
    from pipelines.providers import piper  # pipecat import: only paid by an emulator that speaks

    return audioop.lin2ulaw(b"".join(piper.synthesize(text, LINE_RATE)), 2)


async def speech(text: str) -> bytes:
    cached = _speech.get(text)
    if cached is None:
        from pipelines.providers import local_models

        cached = await local_models.run_inference(_synthesize_ulaw, text)
        _speech[text] = cached
        while len(_speech) > _SPEECH_CACHE:
            _speech.popitem(last=False)
    return cached


def tone(secs: float, hz: float = 1000.0) -> bytes:
    n = int(secs * LINE_RATE)
    pcm = struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * hz * i / LINE_RATE)) for i in range(n)))
    return audioop.lin2ulaw(pcm, 2)


async def send_dtmf(caller: MediaStreamCaller, digits: str) -> None:
    for digit in digits:
        await caller.send_json({"event": "dtmf", "streamSid": caller.stream_sid,
                                "dtmf": {"track": "inbound_track", "digit": digit}})
        await asyncio.sleep(DTMF_GAP_SECS)


class StepResult:
    """What one step did: when the callee last did something the agent may answer, and what to note."""

    def __init__(self, since: float, said: str | None = None, note: str | None = None, hangup: bool = False):
        self.since, self.said, self.note, self.hangup = since, said, note, hangup


async def perform(caller: MediaStreamCaller, step: Step, since: float, pending: dict[str, asyncio.Task],
                  quiet_timeout: float = 300.0) -> StepResult:
    """Run one script step on the Twilio side of a stream (shared by the emulator's callee and `voxline call`)."""
    if step.kind == "say":
        return StepResult(await caller.say(await pending[step.value]), said=step.value)
    if step.kind == "interrupt":
        started = await caller.wait_agent_audio(since, 30.0)
        if started is None:
            return StepResult(since, note="interrupt: the agent never started talking")
        await asyncio.sleep(max(0.0, started + step.after - time.monotonic()))
        return StepResult(await caller.say(await pending[step.value]), said=step.value)
    if step.kind == "play":
        return StepResult(await caller.say(await asyncio.to_thread(wav_to_ulaw, step.value)),
                          said=f"<{step.value.name}>")
    if step.kind == "tone":
        return StepResult(await caller.say(tone(step.value)))
    if step.kind == "dtmf":
        await send_dtmf(caller, step.value)
        return StepResult(time.monotonic(), said=f"DTMF {step.value}")
    if step.kind == "pause":
        await asyncio.sleep(step.value)
        return StepResult(since)
    if step.kind == "wait_agent":
        if await caller.wait_agent_audio(since, step.value) is None:
            return StepResult(time.monotonic(), note=f"wait_agent: the agent said nothing within {step.value:g}s")
        await caller.wait_agent_quiet(AGENT_QUIET_SECS, timeout=quiet_timeout)
        return StepResult(time.monotonic())
    return StepResult(since, hangup=True)


def synthesize_ahead(steps: tuple[Step, ...]) -> dict[str, asyncio.Task]:
    """Every sentence of the script, synthesized while the call runs (each one once)."""
    return {s.value: asyncio.create_task(speech(s.value)) for s in steps if s.kind in ("say", "interrupt")}


async def run_script(caller: MediaStreamCaller, steps: tuple[Step, ...], call) -> bool:
    """Play the script; True when it ends by hanging up. The caller of this races it against the socket closing,
    since `say` never returns on a closed socket."""
    pending = synthesize_ahead(steps)
    since = 0.0  # when the callee last did something the agent may answer
    try:
        for step in steps:
            done = await perform(caller, step, since, pending,
                                 quiet_timeout=call.rule.max_call_secs if call.rule else 300.0)
            since = done.since
            if step.kind == "dtmf":
                call.dtmf_sent += step.value
            elif done.said:
                call.callee_said.append(done.said)
            if done.note:
                call.notes.append(done.note)
            if done.hangup:
                return True
        return False
    except Exception as exc:  # noqa: BLE001 - a broken script step (a bad WAV, synthesis) ends the call, visibly
        logger.exception(f"twilio emulator: call {call.sid}: callee script failed")
        call.error = call.error or f"callee script: {type(exc).__name__}: {exc}"
        return True
    finally:
        for task in pending.values():
            task.cancel()
