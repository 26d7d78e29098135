"""Call recordings: a stereo WAV with the caller on the left and the agent on the right, aligned in time."""

from __future__ import annotations

import audioop
import time
import wave

from tests.calls import converse
from tests.conftest import DEMO_NUMBER, RECORDED_NUMBER

WINDOW = 1600  # 0.2 s at 8 kHz


def loudness(pcm: bytes, start_secs: float, end_secs: float) -> int:
    a, b = int(start_secs * 8000) * 2, int(end_secs * 8000) * 2
    return audioop.rms(pcm[a:b], 2) if b > a else 0


async def test_a_recorded_call_has_the_caller_left_and_the_agent_right(server, speech):
    started = time.monotonic()
    caller, spoke_at, replied_at = await converse(server, speech["located"], RECORDED_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    server.wait_ended(call_id)
    path = server.data_dir / "recordings" / f"{call_id}.wav"
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = wav.readframes(wav.getnframes())
        seconds = wav.getnframes() / 8000
    left, right = audioop.tomono(frames, 2, 1, 0), audioop.tomono(frames, 2, 0, 1)
    assert 3.0 < seconds <= time.monotonic() - started + 1.0, seconds
    # The caller's question sits on the left, at the time it was said, with the agent quiet on the right.
    said_end = spoke_at - started
    said_start = said_end - len(speech["located"]) / 8000
    assert loudness(left, said_start + 0.3, said_end - 0.3) > 300
    assert loudness(right, said_start + 0.3, said_end - 0.3) < 50
    # The agent's reply is on the right, after it, and the caller's channel is silent then.
    reply = replied_at - started
    assert loudness(right, reply, reply + 1.0) > 300
    assert loudness(left, reply, reply + 1.0) < 50


async def test_calls_are_not_recorded_unless_the_agent_says_so(server, speech):
    caller, _, _ = await converse(server, speech["located"], DEMO_NUMBER)
    server.wait_ended(caller.answer.parameters["call_id"])
    assert not (server.data_dir / "recordings" / f"{caller.answer.parameters['call_id']}.wav").exists()
