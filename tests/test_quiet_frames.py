"""A silent line's larger frames (TwilioMediaSerializer.coalesce_quiet): the VAD changes state on the same message
as with 40 ms frames, no audio is lost or reordered, the recording keeps every message as it came, and a line with
any sound on it keeps 40 ms frames unless its level holds steady while the VAD hears nothing: then 200 ms frames,
ending on the process's 200 ms grid whatever the line's phase, and the VAD still changes state on the same message
when words come."""

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
from telephony.twilio.serializer import (
    INPUT_FRAME_BYTES,
    QUIET_FRAME_BYTES,
    STEADY_FRAME_BYTES,
    STEADY_FRAME_SECS,
    StreamEvents,
    TwilioMediaSerializer,
)

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


class _LineClock:
    """The process's clock as the line's messages arrive, 20 ms apart as Twilio sends them, from `start` (off the
    200 ms grid, so no message lands exactly on a grid point)."""

    def __init__(self, start: float = 1000.013):
        self.now = start - 0.02

    def tick(self) -> None:
        self.now += 0.02

    def __call__(self) -> float:
        return self.now


async def _frames(ulaw: bytes, quiet_after: float | None, recorder: CallRecorder | None = None,
                  hears_nothing=None, clock: _LineClock | None = None, times: list[float] | None = None) -> list:
    """The frame (or None) the serializer makes of each of the line's messages; `times` gets the clock's time of
    each frame."""
    clock = clock or _LineClock()
    serializer = TwilioMediaSerializer(SID, StreamEvents())
    serializer.recorder = recorder
    if quiet_after is not None:
        serializer.coalesce_quiet(quiet_after, hears_nothing, clock=clock)
    frames = []
    for message in _messages(ulaw):
        clock.tick()
        frames.append(await serializer.deserialize(message))
        if frames[-1] is not None and times is not None:
            times.append(clock())
    return frames


def _noise(secs: float, rms: float, seed: int = 5) -> bytes:
    pcm = (np.random.default_rng(seed).standard_normal(int(secs * 8000)) * rms).astype(np.int16)
    return audioop.lin2ulaw(pcm.tobytes(), 2)


def _under_noise(ulaw: bytes, rms: float) -> bytes:
    """The line with white noise at `rms` all along, under the words too, as a real line has it."""
    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), np.int16).astype(np.float64)
    pcm += np.random.default_rng(7).standard_normal(len(pcm)) * rms
    return audioop.lin2ulaw(np.clip(pcm, -32768, 32767).astype(np.int16).tobytes(), 2)


async def _states_as_the_vad_hears(line: bytes, quiet_after: float | None) -> tuple[list[VADState], list[int]]:
    """The VAD's state after each message, with the serializer asking that VAD whether it hears nothing (as a call
    does), and the frames' sizes."""
    vad = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
    vad.set_sample_rate(8000)
    serializer = TwilioMediaSerializer(SID, StreamEvents())
    clock = _LineClock()
    if quiet_after is not None:
        serializer.coalesce_quiet(quiet_after, vad.hears_nothing, clock=clock)
    state, states, sizes = VADState.QUIET, [], []
    for message in _messages(line):
        clock.tick()
        frame = await serializer.deserialize(message)
        if frame is not None:
            sizes.append(len(frame.metadata["ulaw"]))
            state = await vad.analyze_audio(frame.audio)
        states.append(state)
    return states, sizes


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


@pytest.mark.parametrize("rms", [8, 30, 300])
async def test_a_steady_noisy_line_gets_200_ms_frames_while_the_vad_hears_nothing(rms):
    line = _noise(5.0, rms)
    frames = await _frames(line, quiet_after=1.2, hears_nothing=lambda: True)
    sizes = [len(f.metadata["ulaw"]) for f in frames if f]
    # 40 ms frames for the wait (1.2 s), then one that reaches the grid, then 200 ms frames
    first = next(i for i, size in enumerate(sizes) if size > INPUT_FRAME_BYTES)
    assert first * INPUT_FRAME_BYTES == pytest.approx(1.2 * 8000, abs=2 * INPUT_FRAME_BYTES)
    assert set(sizes[:first]) == {INPUT_FRAME_BYTES} and set(sizes[first + 1:]) == {STEADY_FRAME_BYTES}
    assert sizes[first] % INPUT_FRAME_BYTES == 0 and sizes[first] <= STEADY_FRAME_BYTES
    assert sizes.count(STEADY_FRAME_BYTES) >= (5.0 - 1.5) * 8000 // STEADY_FRAME_BYTES
    ulaw = b"".join(f.metadata["ulaw"] for f in frames if f)  # nothing lost or reordered
    assert ulaw == line[:len(ulaw)] and len(line) - len(ulaw) < STEADY_FRAME_BYTES + 2 * MESSAGE  # to the grid
    # While the VAD hears something (speech starting, going on or stopping), every frame is 40 ms.
    frames = await _frames(line, quiet_after=1.2, hears_nothing=lambda: False)
    assert {len(f.metadata["ulaw"]) for f in frames if f} == {INPUT_FRAME_BYTES}


async def test_steady_frames_of_lines_in_any_phase_end_together_on_the_grid():
    """So the VAD scores every steady line's windows in the same runs. Lines whose messages come at any phase of
    the grid: each steady frame after the first ends with the first message past a grid point, within the 20 ms of
    a message; the same grid points for every line."""
    line = _noise(5.0, 30)
    ends = {}
    for start in (1000.013, 1000.071, 1000.139, 1000.197):
        times: list[float] = []
        frames = await _frames(line, 1.2, hears_nothing=lambda: True, clock=_LineClock(start), times=times)
        sizes = [len(f.metadata["ulaw"]) for f in frames if f]
        first = next(i for i, size in enumerate(sizes) if size > INPUT_FRAME_BYTES)
        steady = times[first:]
        assert len(steady) >= 15
        assert all(t % STEADY_FRAME_SECS < 0.02 + 1e-9 for t in steady), (start, steady)
        ends[start] = {round(t // STEADY_FRAME_SECS) for t in steady[1:-1]}
    assert len(set.intersection(*ends.values())) >= 14, ends
    # A burst (messages that all come at once after a stall) is cut at twice the size, not held until the grid.
    frozen = _LineClock()
    frozen.tick = lambda: None
    sizes = [len(f.metadata["ulaw"]) for f in await _frames(line, 1.2, hears_nothing=lambda: True, clock=frozen) if f]
    assert max(sizes) == 2 * STEADY_FRAME_BYTES and sizes.count(2 * STEADY_FRAME_BYTES) >= 5


async def test_a_line_whose_level_moves_keeps_40_ms_frames():
    """Every 100 ms the noise doubles or halves (6 dB): never steady for the wait."""
    line = b"".join(_noise(0.1, 40 if i % 2 else 80, seed=i) for i in range(50))
    frames = await _frames(line, quiet_after=1.2, hears_nothing=lambda: True)
    assert {len(f.metadata["ulaw"]) for f in frames if f} == {INPUT_FRAME_BYTES}


@pytest.mark.parametrize("rms", [30, 300])
async def test_on_a_noisy_line_the_vad_changes_state_on_the_same_message_as_with_40_ms_frames(speech, rms):
    """Noise at −60 and −40 dBFS all along the line, under the words too: the words lift the level, which ends the
    200 ms frames, so the VAD hears each utterance start and stop on the message it would with 40 ms frames."""
    noise = _noise(3.0, 0)  # digital silence, which _under_noise fills
    line = _under_noise(noise + speech["located"] + noise + speech["stop"] + noise, rms)
    paired, paired_sizes = await _states_as_the_vad_hears(line, None)
    grown, sizes = await _states_as_the_vad_hears(line, quiet_frames_after_secs(_agent()))
    assert set(paired_sizes) == {INPUT_FRAME_BYTES}
    assert sizes.count(STEADY_FRAME_BYTES) > 0.8 * (3 * 3 - 3 * 1.5) * 8000 / STEADY_FRAME_BYTES, sizes
    assert grown == paired
    assert grown.count(VADState.SPEAKING) > 20 and grown[-1] == VADState.QUIET
    starts = [i for i in range(1, len(grown)) if grown[i] != VADState.QUIET and grown[i - 1] == VADState.QUIET]
    assert len(starts) >= 2, starts


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
