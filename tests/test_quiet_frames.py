"""A silent line's larger frames (TwilioMediaSerializer.coalesce_quiet): the VAD changes state on the same message
as with 40 ms frames, no audio is lost or reordered, the recording keeps every message as it came, and a line with
any sound on it keeps 40 ms frames."""

from __future__ import annotations

import audioop
import base64
import json
import wave

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from config.agent import AgentConfig
from pipelines.architectures.pipeline import QUIET_MARGIN_SECS, quiet_frames_after_secs
from pipelines.providers.vad import BELOW_GATE_RMS, SharedSileroVADAnalyzer
from runtime.recording import CallRecorder
from telephony.twilio.serializer import INPUT_FRAME_BYTES, QUIET_FRAME_BYTES, StreamEvents, TwilioMediaSerializer

PARAMS = VADParams(confidence=0.7, start_secs=0.1, stop_secs=0.2, min_volume=0.3)
SID = "MZ" + "0" * 32
MESSAGE = 160  # Twilio's 20 ms
SILENCE = b"\xff" * 8000 * 3  # 3 s of μ-law digital silence


def _agent(**fields) -> AgentConfig:
    return AgentConfig(name="a", system_prompt="p", transcriber={}, llm={}, tts={}, **fields)


def _messages(ulaw: bytes) -> list[str]:
    return [json.dumps({"event": "media", "streamSid": SID, "media": {
        "track": "inbound", "payload": base64.b64encode(ulaw[i:i + MESSAGE]).decode()}})
        for i in range(0, len(ulaw), MESSAGE)]


async def _frames(ulaw: bytes, quiet_after: float | None, recorder: CallRecorder | None = None) -> list:
    """The frame (or None) the serializer makes of each of the line's messages."""
    serializer = TwilioMediaSerializer(SID, StreamEvents())
    serializer.recorder = recorder
    if quiet_after is not None:
        serializer.coalesce_quiet(quiet_after)
    return [await serializer.deserialize(m) for m in _messages(ulaw)]


def _noise(secs: float, rms: float) -> bytes:
    pcm = (np.random.default_rng(5).standard_normal(int(secs * 8000)) * rms).astype(np.int16)
    return audioop.lin2ulaw(pcm.tobytes(), 2)


def _loud(message: bytes) -> bool:
    return audioop.rms(audioop.ulaw2lin(message, 2), 2) > BELOW_GATE_RMS


async def test_the_vad_changes_state_on_the_same_message_as_with_40_ms_frames(speech):
    line = SILENCE + speech["located"] + SILENCE + speech["stop"] + SILENCE
    after = quiet_frames_after_secs(_agent())

    async def states_by_message(frames) -> list[VADState]:
        vad = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
        vad.set_sample_rate(8000)
        state, states = VADState.QUIET, []
        for frame in frames:
            if frame is not None:
                state = await vad.analyze_audio(frame.audio)
            states.append(state)
        return states

    paired, grown = await _frames(line, None), await _frames(line, after)
    assert {len(f.metadata["ulaw"]) for f in paired if f} == {INPUT_FRAME_BYTES}
    sizes = [len(f.metadata["ulaw"]) for f in grown if f]
    assert sizes.count(QUIET_FRAME_BYTES) > 0.8 * (3 * 3 - 3 * after) * 8000 / QUIET_FRAME_BYTES, sizes
    # 9 s of silence, 5.4 of it past the wait, in a 12 s line: about 57 % of the 40 ms frames
    assert len(sizes) < 0.65 * len([f for f in paired if f])

    by_message = await states_by_message(grown)
    assert by_message == await states_by_message(paired)
    assert by_message.count(VADState.SPEAKING) > 20 and by_message[-1] == VADState.QUIET

    # Nothing lost or reordered: the frames are the line, in order, as μ-law and as PCM.
    ulaw = b"".join(f.metadata["ulaw"] for f in grown if f)
    assert ulaw == line[:len(ulaw)] and len(line) - len(ulaw) < QUIET_FRAME_BYTES
    assert b"".join(f.audio for f in grown if f) == audioop.ulaw2lin(ulaw, 2)

    # Each utterance's first sound ends the wait, and from there on frames end where the 40 ms frames end.
    messages = [line[i:i + MESSAGE] for i in range(0, len(line), MESSAGE)]
    onsets = [i for i in range(1, len(messages)) if _loud(messages[i]) and not any(map(_loud, messages[i - 50:i]))]
    assert len(onsets) == 2, onsets
    for i in onsets:
        # 1.8 s of the silence is past the wait: its last frame is a quiet one, and what came after it waits.
        before = [len(f.metadata["ulaw"]) for f in grown[i - 100:i] if f]
        assert before and before[-1] == QUIET_FRAME_BYTES, "not waiting before it"
        assert [f is None for f in grown[i + 1:i + 25]] == [f is None for f in paired[i + 1:i + 25]]


@pytest.mark.parametrize("rms", [8, 20, 300])
async def test_a_line_with_sound_on_it_keeps_40_ms_frames(rms):
    """Line noise, however faint, is above the VAD's loudness gate: its windows are scored as they come."""
    frames = await _frames(_noise(5.0, rms), quiet_after=1.2)
    assert {len(f.metadata["ulaw"]) for f in frames if f} == {INPUT_FRAME_BYTES}


async def test_a_silence_shorter_than_the_wait_keeps_40_ms_frames():
    line = _noise(1.0, 300) + SILENCE[:8000] + _noise(1.0, 300) + SILENCE[:8000]
    frames = await _frames(line, quiet_after=1.2)
    assert {len(f.metadata["ulaw"]) for f in frames if f} == {INPUT_FRAME_BYTES}
    frames = await _frames(line, quiet_after=0.5)
    # Past the wait, the quiet waits for a frame of its own; the next sound sends it (0.52 s, not a whole frame).
    assert max(len(f.metadata["ulaw"]) for f in frames if f) > INPUT_FRAME_BYTES


async def test_the_recording_has_every_message_as_it_came(tmp_path, speech):
    """The recorder pairs the agent's audio with the caller's by arrival (runtime/recording.py), so it takes each
    message when it comes, not the frames the pipeline gets later; the audio still waiting for a frame at the end
    of the call is in it too."""
    line = SILENCE + speech["located"] + SILENCE[:4000]
    recorder = CallRecorder(tmp_path / "call.wav")
    recorder.open()
    frames = await _frames(line, quiet_after=1.2, recorder=recorder)
    assert sum(len(f.metadata["ulaw"]) for f in frames if f) < len(line), "the test needs audio left waiting"
    await recorder.close()
    with wave.open(str(tmp_path / "call.wav"), "rb") as w:
        stereo = w.readframes(w.getnframes())
    assert audioop.tomono(stereo, 2, 1, 0) == audioop.ulaw2lin(line, 2)


def test_when_a_quiet_line_may_get_larger_frames():
    assert quiet_frames_after_secs(_agent()) == pytest.approx(0.2 + QUIET_MARGIN_SECS)
    assert quiet_frames_after_secs(_agent(vad={"stop_secs": 2.5})) == pytest.approx(2.5 + QUIET_MARGIN_SECS)
    # smart-turn counts the caller's silence in audio too, up to its limit
    smart = _agent(turn={"strategy": "smart_turn", "smart_turn_max_secs": 3.0})
    assert quiet_frames_after_secs(smart) == pytest.approx(3.0 + QUIET_MARGIN_SECS)
    # a VAD that may call a window below the loudness gate speech gets every frame on time
    assert quiet_frames_after_secs(_agent(vad={"min_volume": 0.0})) is None
