"""Load runs on a host without espeak-ng, Whisper or Piper (bench/load.py `--audio-cache`, `--only-agent`): the
caller's speech and the emulated voice are replayed as the bytes a run elsewhere made, and a cloud run's server can
be given an agent set that needs no local model."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import fast_providers  # noqa: E402
import loadgen  # noqa: E402
from audio_cache import cached_audio  # noqa: E402
from processes import agent_files  # noqa: E402

from pipelines.factory import local_models_needed  # noqa: E402
from pipelines.providers import local_models  # noqa: E402
from pipelines.providers.emulators import audio  # noqa: E402
from runtime.agent_files import read_agent_file  # noqa: E402


def models_needed(files: dict[str, str], tmp_path) -> set[str]:
    needed: set[str] = set()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        needed |= local_models_needed(read_agent_file(tmp_path / name)[0])
    return needed


def test_a_cloud_run_given_only_its_agent_needs_no_local_model(tmp_path):
    (tmp_path / "all").mkdir(), (tmp_path / "only").mkdir()
    assert models_needed(agent_files("cloud"), tmp_path / "all") == {"silero", "whisper", "piper"}
    only = agent_files("cloud", turn_silence=0.5, only_agent=True)
    assert list(only) == ["bench_cloud.yaml"] and "silence_secs: 0.5" in only["bench_cloud.yaml"]
    assert models_needed(only, tmp_path / "only") == {"silero"}  # the VAD: pipecat's wheel carries it
    assert list(agent_files("local", only_agent=True)) == ["bench_local.yaml"]


def test_the_callers_speech_is_replayed_without_espeak(tmp_path, monkeypatch):
    spoken = loadgen.synthesize(loadgen.QUESTION, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1 and len(spoken.ulaw) > 8000  # over a second of speech
    monkeypatch.setattr(loadgen.shutil, "which", lambda name: None)  # a host without espeak-ng
    again = loadgen.synthesize(loadgen.QUESTION, cache=tmp_path)
    assert again == spoken
    with pytest.raises(SystemExit, match="espeak-ng is needed.*--audio-cache"):
        loadgen.synthesize(loadgen.INTERRUPTION, cache=tmp_path)  # not made on this host before


def _put_back_after(monkeypatch):
    for name in ("synthesize", "transcribe", "Segmenter"):  # fast_providers.patch swaps them: put them back after
        monkeypatch.setattr(audio, name, getattr(audio, name))
    monkeypatch.setattr(local_models, "run_inference", local_models.run_inference)


def test_the_emulated_voice_is_read_from_the_cache_before_piper(tmp_path, monkeypatch):
    _put_back_after(monkeypatch)
    kept = b"\x01\x02" * 400  # no voice says this: only the cache can return it
    cached_audio(tmp_path, "piper|8000|Hello there.", lambda: kept)
    fast_providers.patch("Where are you located?", tmp_path)
    assert audio.synthesize("Hello there.", 8000) == kept
    made = audio.synthesize("Goodbye.", 8000)  # not kept: Piper makes it, and it is kept for the next host
    assert len(made) > 8000 and made != kept and len(list(tmp_path.iterdir())) == 2
    assert cached_audio(tmp_path, "piper|8000|Goodbye.", lambda: b"") == made


async def test_calls_meeting_a_new_sentence_together_synthesize_it_once(tmp_path, monkeypatch):
    _put_back_after(monkeypatch)
    made = []

    def piper(text, rate):
        made.append(text)
        time.sleep(0.2)  # Piper's time, in the inference pool's thread
        return b"\x00\x01" * 800

    monkeypatch.setattr(audio, "synthesize", piper)
    fast_providers.patch("Where are you located?", tmp_path)
    asked = [asyncio.ensure_future(local_models.run_inference(audio.synthesize, "Hello there.", 8000))
             for _ in range(6)]
    await asyncio.sleep(0.05)
    asked[0].cancel()  # one caller interrupted: the others still get the sentence
    done = await asyncio.gather(*asked[1:])
    assert made == ["Hello there."] and all(pcm == b"\x00\x01" * 800 for pcm in done)
    again = await local_models.run_inference(audio.synthesize, "Hello there.", 8000)  # made: back at once
    assert again == done[0] and made == ["Hello there."]
    await local_models.run_inference(audio.synthesize, "Goodbye.", 8000)
    assert made == ["Hello there.", "Goodbye."]
