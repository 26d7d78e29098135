"""Whisper started before the VAD's stop (pipelines/providers/whisper.py): a segment takes an early run only when it
transcribed that segment's speech, and Whisper's input leaves out a near-silent tail and nothing else. And nothing
in the process spins on the cores Whisper's encoder runs on."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import TranscriptionFrame

from pipelines.providers.whisper import LocalWhisperSTTService, without_quiet_tail


class _Pauses:
    """What the STT reads from the VAD: how many pauses it has told of."""

    def __init__(self):
        self.pauses = 0
        self.on_pause = self.on_quiet = None


def _whisper() -> LocalWhisperSTTService:
    stt = LocalWhisperSTTService()
    stt._sample_rate = 8000  # as its StartFrame would set it
    return stt


async def _transcripts(stt: LocalWhisperSTTService, audio: bytes) -> list[str]:
    return [f.text async for f in stt.run_stt(audio) if isinstance(f, TranscriptionFrame)]


async def test_an_early_whisper_run_serves_only_the_segment_whose_speech_it_transcribed(monkeypatch):
    """Under load a segment can wait behind another transcription while the caller speaks again and reaches the
    next half-pause. The older segment must not take that newer run's transcript (and lose its own)."""
    runs: list[bytes] = []

    def transcribe(pcm: bytes) -> str:
        runs.append(pcm)
        return {1: "first question", 2: "second question"}[pcm[0]]

    stt = _whisper()
    monkeypatch.setattr(stt, "_transcribe", transcribe)
    vad = _Pauses()
    stt.start_on_pauses(vad)
    stt._user_speaking = True
    first, second = b"\x01" * 3200, b"\x02" * 3200
    rest_of_pause = b"\x01\x00" * 400  # quiet, but not the near-silence that Whisper's input leaves out

    stt._audio_buffer[:] = first
    vad.pauses = 1
    vad.on_pause(1)
    first_segment = first + rest_of_pause + stt._trailing_silence()
    # The first segment's transcription is queued; meanwhile the caller says more and pauses again.
    stt._audio_buffer[:] = second
    vad.pauses = 2
    vad.on_pause(2)
    second_segment = second + rest_of_pause + stt._trailing_silence()

    assert await _transcripts(stt, first_segment) == ["first question"]
    assert stt._input(first_segment) in runs  # transcribed afresh, not taken from the second pause's run
    assert await _transcripts(stt, second_segment) == ["second question"]
    assert stt._input(second_segment) not in runs  # the second segment took the run started in its pause


async def test_a_segment_takes_the_run_started_in_its_own_pause(monkeypatch):
    stt = _whisper()
    runs: list[bytes] = []
    monkeypatch.setattr(stt, "_transcribe", lambda pcm: runs.append(pcm) or "hello")
    vad = _Pauses()
    stt.start_on_pauses(vad)
    stt._user_speaking = True
    stt._audio_buffer[:] = b"\x05" * 1600
    vad.pauses = 1
    vad.on_pause(1)
    assert await _transcripts(stt, b"\x05" * 1600 + bytes(800)) == ["hello"]
    assert len(runs) == 1 and runs[0].startswith(b"\x05" * 1600)
    # The caller went on after the half-pause and the VAD's stop ended a later pause: that run is not the segment's.
    stt._audio_buffer[:] = b"\x05" * 1600
    vad.pauses = 2
    vad.on_pause(2)
    stale = stt._early.run
    vad.pauses = 3
    segment = b"\x05" * 1600 + b"\x06" * 1600 + bytes(800)
    assert await _transcripts(stt, segment) == ["hello"]
    assert stt._input(segment) in runs  # transcribed afresh
    # The pause-2 run was left alone, not taken: it runs on its own thread of the shared pool, so wait for it
    # before counting (on two cores it can still be queued when the fresh run returns).
    assert stt._early is not None and stt._early.pause == 2
    await stale
    assert len(runs) == 3


def test_whispers_input_leaves_out_a_near_silent_tail_and_nothing_else():
    def tone(level: int, ms: int) -> bytes:
        return (np.sin(np.arange(8 * ms) * 0.3) * level * 1.414).astype(np.int16).tobytes()

    speech = bytes(8192) + tone(3000, 640)  # pre-roll silence, then the words (whole 32 ms blocks)
    silent = tone(2, 320)  # ~63 dB under the speech: μ-law's near-silence
    assert without_quiet_tail(speech + silent, 8000) == speech
    assert without_quiet_tail(speech + silent + bytes(8000), 8000) == speech
    soft = tone(12, 64)  # a release burst ~48 dB under the speech: Whisper can hear that
    assert without_quiet_tail(speech + silent[:1024] + soft + silent, 8000) == speech + silent[:1024] + soft
    assert without_quiet_tail(bytes(1600), 8000) == bytes(1600)
    # Counted from the start, so a segment cut earlier in its silence gives the same bytes.
    whole = speech + silent
    assert {without_quiet_tail(whole[:n], 8000) for n in range(len(speech) + 512, len(whole), 160)} == {speech}


async def test_a_run_started_on_the_silence_serves_the_segment_only_when_its_input_is_the_same(monkeypatch):
    stt = _whisper()
    runs: list[bytes] = []
    monkeypatch.setattr(stt, "_transcribe", lambda pcm: runs.append(pcm) or f"run {len(runs)}")
    vad = _Pauses()
    stt.start_on_pauses(vad)
    stt._user_speaking = True
    words = b"\x00\x10" * 4096  # 0.5 s at 4096, whole 32 ms blocks
    near_silence = b"\x02\x00" * 512  # 2: 66 dB under the words
    stt._audio_buffer[:] = words + near_silence
    vad.on_quiet()
    first = stt._early.run
    await first
    stt._audio_buffer += near_silence
    vad.pauses = 1
    vad.on_pause(1)  # only silence since: no second run
    assert stt._early.run is first
    assert await _transcripts(stt, words + near_silence * 3 + stt._trailing_silence()) == ["run 1"]
    assert runs == [words + stt._trailing_silence()]

    # Something Whisper can hear after the silence (a release burst, 40 dB under the words): the half-pause
    # starts its own run, and the segment takes that one.
    burst = b"\x28\x00" * 256
    stt._audio_buffer[:] = words + near_silence
    vad.on_quiet()
    await stt._early.run
    stt._audio_buffer += burst + near_silence
    vad.pauses = 2
    vad.on_pause(2)
    assert await _transcripts(stt, words + near_silence + burst + near_silence) == ["run 3"]
    assert runs[1] == words + stt._trailing_silence() and runs[2].startswith(words + near_silence + burst)


def test_the_whisper_holder_leaves_numpy_one_blas_thread():
    """OpenBLAS's idle workers spin after a product large enough to use them (faster-whisper's mel filter is one),
    and on two cores that took a core from Whisper's encoder: ~300 ms a transcription instead of ~240."""
    from threadpoolctl import threadpool_info

    from pipelines.providers import local_models

    local_models.get("whisper")
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas), blas
