"""The per-frame shortcuts keep pipecat's answers: the volume-gated VAD decides as pipecat's Silero VAD does, the
first clause of a reply goes to the TTS alone, and the caller's audio stops at the user aggregator."""

from __future__ import annotations

import asyncio
import audioop
from types import SimpleNamespace

import numpy as np
import pytest
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import (
    BotSpeakingFrame,
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    MetricsFrame,
    TextFrame,
    TranscriptionFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.workers.runner import WorkerRunner

from pipelines.providers import vad as shared_vad
from pipelines.providers.vad import SharedSileroVADAnalyzer
from pipelines.turns.first_clause import (
    FirstClauseSkipTagsAggregator,
    FirstClauseTextAggregator,
    speak_first_clause_early,
)
from pipelines.turns.keypad import KeypadAggregator
from pipelines.turns.user_aggregator import aggregator_pair
from runtime import call_observer
from runtime.turn_metrics import TurnLatencyTracker
from telephony.pacing import LeadPacer

PARAMS = VADParams(confidence=0.7, start_secs=0.1, stop_secs=0.2, min_volume=0.3)


def _line(speech: dict[str, bytes]) -> bytes:
    """Digital silence, speech, line noise around speech, speech: 8 kHz 16-bit PCM."""
    silence = bytes(16000)
    noise = (np.random.default_rng(1).standard_normal(8000) * 20).astype(np.int16).tobytes()
    located, stop = audioop.ulaw2lin(speech["located"], 2), audioop.ulaw2lin(speech["stop"], 2)
    return silence + located + silence + noise + stop + noise + silence


async def _states(analyzer, audio: bytes) -> list[VADState]:
    analyzer.set_sample_rate(8000)
    return [await analyzer.analyze_audio(audio[i:i + 640]) for i in range(0, len(audio), 640)]


async def test_the_vad_tells_of_each_pause_halfway_to_its_stop(speech):
    """What starts Whisper early (whisper.py): one call per pause that ends speech, before the VAD's stop, numbered
    as the pause the stop then ends. The decisions are the same with the hook as without it."""
    heard: list[tuple[int, int]] = []
    analyzer = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
    analyzer.on_pause = lambda pause: heard.append((pause, len(states)))
    states: list[VADState] = []
    pauses: list[int] = []  # the analyzer's pause count after each frame
    audio = _line(speech)
    analyzer.set_sample_rate(8000)
    for i in range(0, len(audio), 640):
        states.append(await analyzer.analyze_audio(audio[i:i + 640]))
        pauses.append(analyzer.pauses)
    assert states == await _states(SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS), audio)
    stops = [i for i in range(1, len(states)) if states[i] == VADState.QUIET and states[i - 1] != VADState.QUIET
             and VADState.SPEAKING in states[:i]]
    assert len(stops) == 2, stops  # "located", then "stop"
    assert len({pause for pause, _ in heard}) == len(heard), heard  # once per pause
    for stop in stops:
        pause, at = [(pause, at) for pause, at in heard if at <= stop][-1]
        assert at < stop, "told no earlier than the stop itself"
        assert pause == pauses[stop], "the stop ends another pause than the one told"


async def test_the_vad_tells_when_the_line_falls_silent_after_speech_sooner_than_the_pause(speech):
    """`on_quiet` starts Whisper on a line that falls silent when the words end: once for "located" (digital
    silence after it), before the half-pause; never for "stop", whose line noise (-44 dBFS) is well within 60 dB
    of the speech. The decisions are the same with the hook as without it."""
    told: list[tuple[str, int]] = []
    analyzer = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
    analyzer.on_quiet = lambda: told.append(("quiet", len(states)))
    analyzer.on_pause = lambda pause: told.append(("pause", len(states)))
    states: list[VADState] = []
    located = audioop.ulaw2lin(speech["located"], 2)
    words = np.frombuffer(audioop.ulaw2lin(speech["stop"], 2), np.int16)
    stop = np.concatenate([np.zeros(8000), words, np.zeros(8000)])
    stop += np.random.default_rng(1).standard_normal(len(stop)) * 200  # the line's noise, through the words too
    audio = bytes(16000) + located + bytes(16000) + np.clip(stop, -32768, 32767).astype(np.int16).tobytes()
    analyzer.set_sample_rate(8000)
    for i in range(0, len(audio), 640):
        states.append(await analyzer.analyze_audio(audio[i:i + 640]))
    assert states == await _states(SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS), audio)
    first_stop = next(i for i in range(1, len(states)) if states[i] == VADState.QUIET
                      and states[i - 1] == VADState.STOPPING)
    kinds = [kind for kind, _ in told]
    assert kinds.count("quiet") == 1 and kinds.count("pause") == 2, told
    assert kinds.index("quiet") < kinds.index("pause"), told
    # In frames of 40 ms: the silence is told a frame or more before the half-pause, itself before the stop.
    assert told[kinds.index("quiet")][1] < told[kinds.index("pause")][1] < first_stop, told


async def test_the_vad_says_when_the_line_fell_silent_before_its_stop(speech, monkeypatch):
    """`quiet_since` (for the turn rules' clock, pipelines/turns/after_pause.py): frames arrive in real time here
    (the analyzer's clock is the audio's), so it can be checked against the audio itself. After "located" and its
    digital silence it is within a window of where the speech's level fell, before the VAD's reckoning of the
    silence (its stop less `stop_secs`), and kept past the stop; "stop" clears it, and its noisy line never falls
    that quiet. Decisions are the same with it as without it."""
    clock = [0.0]
    monkeypatch.setattr(shared_vad, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # the analyzer's clock only
    analyzer = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
    analyzer.track_quiet = True
    located = audioop.ulaw2lin(speech["located"], 2)
    words = np.frombuffer(audioop.ulaw2lin(speech["stop"], 2), np.int16)
    noisy = np.concatenate([np.zeros(8000), words, np.zeros(8000)])
    noisy += np.random.default_rng(1).standard_normal(len(noisy)) * 200
    audio = bytes(16000) + located + bytes(16000) + np.clip(noisy, -32768, 32767).astype(np.int16).tobytes()
    analyzer.set_sample_rate(8000)
    states, seen = [], []
    for i in range(0, len(audio), 640):
        clock[0] = (i + 640) / 16000  # the frame's last sample has just arrived
        states.append(await analyzer.analyze_audio(audio[i:i + 640]))
        seen.append(analyzer.quiet_since)
    assert states == await _states(SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS), audio)
    stop = next(i for i in range(1, len(states)) if states[i] == VADState.QUIET and states[i - 1] != VADState.QUIET
                and VADState.SPEAKING in states[:i])
    pcm = np.frombuffer(located, np.int16).astype(np.float64)
    rms = [np.sqrt(np.mean(pcm[j:j + 256] ** 2)) for j in range(0, len(pcm) - 255, 256)]
    fell = 1.0 + (max(i for i, r in enumerate(rms) if r * shared_vad.QUIET_BELOW_PEAK >= max(rms)) + 1) * 256 / 8000
    stopped_at = (stop + 1) * 640 / 16000
    assert seen[stop] is not None and abs(seen[stop] - fell) <= 0.04, (seen[stop], fell)
    assert seen[stop] < stopped_at - PARAMS.stop_secs  # Silero hears the pause after the level does
    again = next(i for i in range(stop, len(states)) if states[i] != VADState.QUIET)  # "stop" begins
    assert seen[again - 1] == seen[stop], "kept until the caller speaks again"
    assert all(q is None for q in seen[again:]), "the noisy line is never that quiet"


async def test_gated_vad_decides_as_pipecats_silero_vad(speech, monkeypatch):
    scored = []
    real_run = shared_vad._run_batch
    monkeypatch.setattr(shared_vad, "_run_batch", lambda rows, rate: scored.append(len(rows)) or real_run(rows, rate))
    audio = _line(speech)
    ours = await _states(SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS), audio)
    stock = await _states(SileroVADAnalyzer(sample_rate=8000, params=PARAMS), audio)
    assert ours == stock
    assert ours.count(VADState.SPEAKING) > 20 and ours[-1] == VADState.QUIET
    windows = len(audio) // 512
    # The model ran on the speech and the noise, not on the digital silence (about 40 % of this line).
    assert 0.3 * windows < sum(scored) < 0.75 * windows, (sum(scored), windows)


def test_a_block_below_the_loudness_gate_reads_zero_without_being_measured(speech, monkeypatch):
    """The VAD's volume skips pipecat's BS.1770 measure where an RMS proves the block below the -70 LKFS gate, and
    reads what pipecat's tracker reads on every block: the quietest lines, a tone at the K-weighting's loudest
    frequency just under and just over the bound, noise, speech."""
    import pipecat.audio.volume as pipecat_volume

    measured = []
    real_measure = pipecat_volume.calculate_audio_volume
    monkeypatch.setattr(pipecat_volume, "calculate_audio_volume",
                        lambda audio, rate: measured.append(len(audio)) or real_measure(audio, rate))
    rng = np.random.default_rng(3)
    nyquist = np.where(np.arange(3200) % 2, 1, -1)
    sparse_ulaw_steps = np.where(rng.random(3200) < 0.3, 8, 0) * nyquist  # the smallest μ-law steps, here and there
    blocks = {
        "digital silence": np.zeros(3200),
        "sparse μ-law steps": sparse_ulaw_steps,
        "Nyquist tone, RMS 5": 5 * nyquist,
        "Nyquist tone, RMS 7": 7 * nyquist,
        "noise, RMS 3": rng.standard_normal(3200) * 3,
        "noise, RMS 20": rng.standard_normal(3200) * 20,
        "speech": np.frombuffer(audioop.ulaw2lin(speech["located"], 2), np.int16)[4000:7200],
    }
    skipped = []
    for name, block in blocks.items():
        pcm = np.round(block).astype(np.int16).tobytes()
        ours, pipecats = shared_vad._GatedVolume(), pipecat_volume.AudioVolumeTracker()
        ours.update(pcm, 8000)
        pipecats.update(pcm, 8000)
        before = len(measured)
        got = ours.volume
        if len(measured) == before:
            skipped.append(name)
        assert got == pipecats.volume, name
    assert skipped == ["digital silence", "sparse μ-law steps", "Nyquist tone, RMS 5", "noise, RMS 3"]
    assert real_measure(np.round(blocks["Nyquist tone, RMS 7"]).astype(np.int16).tobytes(), 8000) > 0, \
        "RMS 7 at the loudest frequency passes the gate: the bound is close to tight"


async def test_calls_scored_together_decide_as_each_alone(speech, monkeypatch):
    """Windows of several calls that wait together go through Silero as one batch, each row with its own call's
    state: every call's decisions are those it gets when scored alone."""
    batches = []
    real_run = shared_vad._run_batch
    monkeypatch.setattr(shared_vad, "_run_batch", lambda rows, rate: batches.append(len(rows)) or real_run(rows, rate))
    rng = np.random.default_rng(7)
    lines = []
    for i in range(6):  # the same speech at different offsets and noise floors: calls in different states
        noise = (rng.standard_normal(4000 * (i + 1)) * (10 + 10 * i)).astype(np.int16).tobytes()
        lines.append(noise + _line(speech))
    alone = [await _states(SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS), line) for line in lines]
    assert max(batches) == 1
    batches.clear()
    analyzers = [SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS) for _ in lines]
    for a in analyzers:
        a.set_sample_rate(8000)
    together: list[list[VADState]] = [[] for _ in lines]
    for at in range(0, max(len(line) for line in lines), 640):
        live = [i for i, line in enumerate(lines) if at < len(line)]
        states = await asyncio.gather(*(analyzers[i].analyze_audio(lines[i][at:at + 640]) for i in live))
        for i, state in zip(live, states):
            together[i].append(state)
    assert together == alone
    assert max(batches) >= 4, batches  # they did go through together
    assert sum(batches) > len(batches)


async def test_the_batch_window_is_the_servers_setting_and_runs_keep_to_it(tmp_path, monkeypatch):
    """VOXLINE_VAD_BATCH_MS sets how often Silero may run: windows that come within it wait for one run."""
    from config.settings import Settings
    from runtime.app import create_app

    monkeypatch.setattr(shared_vad, "RUN_EVERY_SECS", shared_vad.RUN_EVERY_SECS)  # restored after the test
    (tmp_path / "agents").mkdir()
    app = create_app(Settings(_env_file=None, data_dir=tmp_path / "data", agents_dir=tmp_path / "agents",
                              vad_batch_ms=40))
    async with app.router.lifespan_context(app):
        assert shared_vad.RUN_EVERY_SECS == pytest.approx(0.04)

    batches = []
    real_run = shared_vad._run_batch
    monkeypatch.setattr(shared_vad, "_run_batch", lambda rows, rate: batches.append(len(rows)) or real_run(rows, rate))
    analyzers = [SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS) for _ in range(4)]
    noise = (np.random.default_rng(3).standard_normal(256 * 30) * 3000).astype(np.int16).tobytes()
    for analyzer in analyzers:  # past the 400 ms the volume needs and the smoothing's climb: every window scored
        analyzer.set_sample_rate(8000)
        await analyzer.analyze_audio(noise[:512 * 20])
    assert len(batches) > 4
    await asyncio.sleep(0.05)
    batches.clear()
    fed = [512 * 20] * 4

    async def one(i: int, after: float):
        await asyncio.sleep(after)
        await analyzers[i].analyze_audio(noise[fed[i]:fed[i] + 512])  # one 32 ms window
        fed[i] += 512

    shared_vad.set_batch_window(0.2)  # wide, so a slow machine's scheduling cannot split what comes within it
    await one(0, 0)  # a first run: the next may start 200 ms after it
    await asyncio.gather(*(one(i, 0.01 * i) for i in range(1, 4)))  # within 20 ms of each other
    assert batches == [1, 3]
    shared_vad.set_batch_window(0.001)
    await asyncio.sleep(0.05)
    await asyncio.gather(*(one(i, 0.05 * i) for i in range(1, 4)))
    assert batches[2:] == [1, 1, 1]  # each alone when runs may come every millisecond


def test_the_vad_pool_is_shared_not_per_call():
    a, b = SharedSileroVADAnalyzer(sample_rate=8000), SharedSileroVADAnalyzer(sample_rate=8000)
    assert a._model.session is b._model.session
    assert shared_vad._VAD_POOL._max_workers == 2


def _first_clause_aggregator(kind: str):
    if kind == "plain":
        return FirstClauseTextAggregator(aggregation_type=TextType.SENTENCE)
    return FirstClauseSkipTagsAggregator([("<spell>", "</spell>")], aggregation_type=TextType.SENTENCE)


async def _aggregate(pieces: list[str], kind: str = "plain") -> list[str]:
    aggregator = _first_clause_aggregator(kind)
    out = []
    for reply in pieces:
        for token in reply.split(" "):
            async for aggregation in aggregator.aggregate(token + " "):
                out.append(aggregation.text)
        if (rest := await aggregator.flush()) is not None and rest.text:
            out.append(rest.text)
    return out


@pytest.mark.parametrize("kind", ["plain", "skip_tags"])
async def test_the_first_clause_of_each_reply_goes_alone(kind):
    said = await _aggregate([
        "We are at twelve Main Street, next to the old cinema, and open daily. It costs 1,000 dollars, really.",
        "Well, sure. Yes, we are open.",
    ], kind)
    assert said == [
        "We are at twelve Main Street,",  # the first clause of the first reply
        "next to the old cinema, and open daily.",
        "It costs 1,000 dollars, really.",  # not the first sentence: whole, and "1,000" is no clause anyway
        "Well, sure.",  # "Well," is too short to go alone; the next reply starts afresh
        "Yes, we are open.",
    ]


async def test_a_first_clause_never_ends_inside_a_spell_tag():
    """Cartesia's (and Rime's) aggregator keeps `<spell>…</spell>` whole; so does its first clause."""
    said = await _aggregate(["Your code is <spell>A, B, C</spell>, and it works. See <spell>St. Louis</spell> now."],
                            "skip_tags")
    assert said == ["Your code is <spell>A, B, C</spell>,", "and it works.", "See <spell>St. Louis</spell> now."]
    said = await _aggregate(["Say <spell>Go. Now</spell> twice. Then stop."], "skip_tags")
    assert said == ["Say <spell>Go. Now</spell> twice.", "Then stop."]
    # A tag split across tokens is still a tag.
    aggregator = _first_clause_aggregator("skip_tags")
    out = [a.text for piece in ["Spell <sp", "ell>X, Y", ", Z</spell>, please", " wait."]
           async for a in aggregator.aggregate(piece)]
    assert out + [(await aggregator.flush()).text] == ["Spell <spell>X, Y, Z</spell>,", "please wait."]


def test_each_sentence_aggregating_tts_gets_its_first_clause_version():
    from pipecat.services.cartesia.tts import CartesiaTTSService
    from pipecat.services.tts_service import TextAggregationMode

    from pipelines.providers.piper import LocalPiperTTSService

    cartesia = CartesiaTTSService(api_key="k", settings=CartesiaTTSService.Settings(voice="v"))
    speak_first_clause_early(cartesia)
    assert type(cartesia._text_aggregator) is FirstClauseSkipTagsAggregator
    assert cartesia._text_aggregator._tags == [("<spell>", "</spell>")]
    streaming = CartesiaTTSService(api_key="k", settings=CartesiaTTSService.Settings(voice="v"),
                                   text_aggregation_mode=TextAggregationMode.TOKEN)
    kept = streaming._text_aggregator
    speak_first_clause_early(streaming)  # tokens go straight on: nothing to wait for
    assert streaming._text_aggregator is kept
    piper = LocalPiperTTSService()
    speak_first_clause_early(piper)
    assert type(piper._text_aggregator) is FirstClauseTextAggregator


async def test_an_interruption_starts_the_next_reply_afresh():
    aggregator = FirstClauseTextAggregator(aggregation_type=TextType.SENTENCE)
    out = [a.text async for a in aggregator.aggregate("Let me see, hmm, the menu has ")]
    assert out == ["Let me see,"]
    await aggregator.handle_interruption()
    out = [a.text async for a in aggregator.aggregate("Our pasta is fresh, made today. ")]
    assert out == ["Our pasta is fresh,"]


async def test_callers_audio_stops_at_the_user_aggregator(monkeypatch):
    user, _assistant = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    sent = []

    async def downstream(self, frame, direction=FrameDirection.DOWNSTREAM):
        sent.append((type(frame).__name__, direction))

    monkeypatch.setattr(LLMUserAggregator, "push_frame", downstream)
    await user.push_frame(InputAudioRawFrame(audio=bytes(320), sample_rate=8000, num_channels=1))
    await user.push_frame(TextFrame("hello"))
    await user.push_frame(InputAudioRawFrame(audio=bytes(320), sample_rate=8000, num_channels=1),
                          FrameDirection.UPSTREAM)
    assert sent == [("TextFrame", FrameDirection.DOWNSTREAM), ("InputAudioRawFrame", FrameDirection.UPSTREAM)]


class _CountingKeypad(KeypadAggregator):
    def __init__(self):
        super().__init__()
        self.processed: list[str] = []

    async def process_frame(self, frame, direction):
        self.processed.append(type(frame).__name__)
        await super().process_frame(frame, direction)


async def test_the_callers_audio_passes_the_keypad_by_and_digits_still_go_through_it():
    keypad, after = _CountingKeypad(), _Arrived()
    worker = PipelineWorker(Pipeline([keypad, after]), enable_rtvi=False, enable_turn_tracking=False)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    audio = [InputAudioRawFrame(audio=bytes([i]) * 640, sample_rate=8000, num_channels=1) for i in range(20)]
    await worker.queue_frames(audio[:10] + [InputDTMFFrame(KeypadEntry.ONE)] + audio[10:]
                              + [InputDTMFFrame(KeypadEntry.POUND)])
    async def arrived():
        while not any(isinstance(f, TranscriptionFrame) for f in after.frames):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(arrived(), 5)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 10)
    assert [f for f in after.frames if isinstance(f, InputAudioRawFrame)] == audio
    assert [f.text for f in after.frames if isinstance(f, TranscriptionFrame)] == ["DTMF: 1#"]
    assert "InputAudioRawFrame" not in keypad.processed
    assert keypad.processed.count("InputDTMFFrame") == 2 and "StartFrame" in keypad.processed


class _LoudIsSpeech(VADAnalyzer):
    """Every frame is speech; each one moves the VAD controller's clock on by its 40 ms, so the heartbeat's period
    is counted in audio, not in how fast the test runs."""

    def __init__(self, clock: list[float]):
        super().__init__(sample_rate=8000, params=VADParams())
        self._clock = clock

    def num_frames_required(self) -> int:
        return 256

    def voice_confidence(self, buffer: bytes) -> float:
        return 1.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self._clock[0] += 0.04
        return VADState.SPEAKING


class _Upstream(FrameProcessor):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM:
            self.seen.append(type(frame).__name__)
        await self.push_frame(frame, direction)


@pytest.mark.parametrize("voxlines", [True, False])
async def test_the_user_speaking_heartbeat_comes_once_a_second(monkeypatch, voxlines):
    """2.4 s of the caller speaking: pipecat's VAD broadcasts a UserSpeakingFrame every 0.2 s, each crossing every
    processor of the call; voxline's user aggregator once a second, from the start of the speech."""
    clock = [1000.0]
    monkeypatch.setattr("pipecat.audio.vad.vad_controller.time.time", lambda: clock[0])
    params = LLMUserAggregatorParams(vad_analyzer=_LoudIsSpeech(clock))
    if voxlines:
        user, assistant = aggregator_pair(LLMContext(), params)
    else:
        pair = LLMContextAggregatorPair(LLMContext(), user_params=params)
        user, assistant = pair.user(), pair.assistant()
    upstream = _Upstream()
    worker = PipelineWorker(Pipeline([upstream, user, assistant]), enable_rtvi=False, enable_turn_tracking=False)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.2)
    for _ in range(60):
        await worker.queue_frame(InputAudioRawFrame(audio=b"\x10\x10" * 320, sample_rate=8000, num_channels=1))
    async def spoken():
        while clock[0] < 1000.0 + 60 * 0.04 - 1e-6:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(spoken(), 10)
    await asyncio.sleep(0.2)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 10)
    beats = upstream.seen.count("UserSpeakingFrame")
    if voxlines:
        assert 2 <= beats <= 3, upstream.seen
    else:
        assert beats >= 8, upstream.seen


class _Output:
    """What LeadPacer reads of pipecat's websocket output: chunk size, rate, and the clock it zeroes."""
    audio_chunk_size = 320  # 20 ms at 8 kHz, 16-bit
    sample_rate = 8000
    _next_send_time = 0.0

    async def _write_audio_sleep(self):
        raise AssertionError("replaced by the pacer")


async def test_the_pacer_keeps_a_small_lead_and_catches_up_after_a_stall(monkeypatch):
    clock = [100.0]
    slept = []

    async def fake_sleep(secs):
        slept.append(round(secs, 3))
        clock[0] += secs

    monkeypatch.setattr("telephony.pacing.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("telephony.pacing.asyncio.sleep", fake_sleep)
    output = _Output()
    LeadPacer(output, lead_secs=0.06)
    for _ in range(5):
        await output._write_audio_sleep()
    # Three chunks go at once (the lead), then one per 20 ms of playout.
    assert slept == [0.02, 0.02]
    clock[0] += 0.05  # the event loop stalls for 50 ms: the carrier still had 60 ms queued
    slept.clear()
    for _ in range(4):
        await output._write_audio_sleep()
    assert slept == [0.01, 0.02], slept  # two chunks catch up at once, then the pace resumes
    output._next_send_time = 0  # pipecat's reset on an interruption: the carrier's buffer was cleared
    slept.clear()
    for _ in range(4):
        await output._write_audio_sleep()
    assert slept == [0.02], slept


def test_openai_clients_share_one_tls_context_and_the_servers_pool():
    from pipelines.providers.openai_llm import SharedTLSOpenAILLMService, shared_pool
    from pipelines.providers.tls import tls_context

    a = SharedTLSOpenAILLMService(api_key="k", base_url="http://127.0.0.1:9/v1")
    b = SharedTLSOpenAILLMService(api_key="k", base_url="http://127.0.0.1:9/v1")
    assert a._client._client is not b._client._client  # without the server's pool, each makes its own
    pools = [c._client._client._transport._pool for c in (a, b)]  # AsyncOpenAI → httpx client → transport
    assert all(p._ssl_context is tls_context() for p in pools)
    pool = shared_pool()
    c = SharedTLSOpenAILLMService(api_key="k", base_url="http://127.0.0.1:9/v1", pool=pool)
    d = SharedTLSOpenAILLMService(api_key="k2", base_url="http://127.0.0.1:9/v1", pool=pool)
    assert c._client is not d._client and c._client._client is d._client._client is pool
    assert pool._transport._pool._ssl_context is tls_context()
    # An agent's own endpoint held to public addresses keeps its guarded client, pool or not.
    e = SharedTLSOpenAILLMService(api_key="k", base_url="https://llm.example.com/v1", pool=pool,
                                  public_only_for="agent a")
    assert e._client._client is not pool


class _Seen(BaseObserver):
    def __init__(self, processed: bool = False):
        super().__init__()
        self.pushed: list[str] = []
        self.processed: list[str] | None = [] if processed else None

    async def on_push_frame(self, data: FramePushed):
        self.pushed.append(type(data.frame).__name__)


class _SeenProcessed(_Seen):
    async def on_process_frame(self, data: FrameProcessed):
        self.processed.append(type(data.frame).__name__)


class _Through(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


async def _observe_a_pipeline(*observers: BaseObserver) -> None:
    worker = PipelineWorker(Pipeline([_Through(), _Through()]), observers=list(observers),
                            enable_rtvi=False, enable_turn_tracking=False)
    assert isinstance(call_observer.install(worker), call_observer.CallWorkerObserver)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    await worker.queue_frames([InputAudioRawFrame(audio=bytes(640), sample_rate=8000, num_channels=1),
                               TextFrame("hello"), EndFrame()])
    await asyncio.wait_for(runner.run(), 10)
    await asyncio.sleep(0.05)  # the observers' tasks drain their queues


async def test_a_calls_observers_are_not_handed_the_callers_audio():
    """The caller's 40 ms frames are most of a call's frames; handing each push and each processing of them to
    every observer's queue cost a task wake-up each. Everything else still reaches the observers."""
    plain = _Seen()
    await _observe_a_pipeline(plain)
    assert "TextFrame" in plain.pushed and "EndFrame" in plain.pushed and "StartFrame" in plain.pushed
    assert "InputAudioRawFrame" not in plain.pushed


async def test_processed_frame_events_reach_an_observer_that_reads_them():
    plain, reader = _Seen(), _SeenProcessed(processed=True)
    await _observe_a_pipeline(plain, reader)
    assert "TextFrame" in reader.processed and "InputAudioRawFrame" in reader.processed
    assert "InputAudioRawFrame" not in reader.pushed and "TextFrame" in reader.pushed


class _Measures(FrameProcessor):
    """A service reporting a metric as it hands a text frame on (as pipecat's services push their MetricsFrame),
    and the output's speaking heartbeat, broadcast both ways."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            await self.push_frame(MetricsFrame(data=[TTFBMetricsData(processor="llm", value=0.123)]))
            await self.broadcast_frame(BotSpeakingFrame)
        await self.push_frame(frame, direction)


class _Arrived(_Through):
    """Hands every frame on, and keeps what it took in."""

    def __init__(self):
        super().__init__()
        self.frames: list = []

    async def process_frame(self, frame, direction):
        self.frames.append(frame)
        await super().process_frame(frame, direction)

    def named(self) -> list[str]:
        return [type(f).__name__ for f in self.frames]


class _FirstPushes(BaseObserver):
    """As the call's observers: told of a frame at its first push only."""

    def __init__(self):
        super().__init__(observe_every_push=False)
        self.pushed: list[str] = []

    async def on_push_frame(self, data: FramePushed):
        self.pushed.append(type(data.frame).__name__)


@pytest.mark.parametrize("stopped", [True, False])
async def test_observed_only_frames_are_observed_once_and_go_no_further_than_their_first_push(stopped):
    """The call's metrics reader (the latency observer, which hands usage on to the call's record) sees a
    service's metric once either way, and the idle watch's kind of observer both copies of a heartbeat; with the
    stop, no other processor takes them in."""
    metrics = []
    tracker = TurnLatencyTracker(on_metrics=metrics.append)
    watch = _FirstPushes()
    first, later, last = _Arrived(), _Arrived(), _Arrived()
    pipeline = Pipeline([first, _Measures(), later, _Through(), last])
    worker = PipelineWorker(pipeline, observers=[tracker.observer, watch], enable_rtvi=False,
                            enable_turn_tracking=False)
    call_observer.install(worker)
    if stopped:
        call_observer.stop_observed_only_frames(pipeline)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    await worker.queue_frames([TextFrame("hello"), EndFrame()])
    await asyncio.wait_for(runner.run(), 10)
    await asyncio.sleep(0.05)
    assert [(m.processor, m.value) for m in metrics if isinstance(m, TTFBMetricsData)] == [("llm", 0.123)]
    assert watch.pushed.count("BotSpeakingFrame") == 2
    assert "TextFrame" in last.named()
    if stopped:
        assert not {"MetricsFrame", "BotSpeakingFrame"} & set(first.named() + later.named() + last.named())
    else:
        assert "MetricsFrame" in later.named() and "MetricsFrame" in last.named()
        assert "BotSpeakingFrame" in first.named() and "BotSpeakingFrame" in last.named()
