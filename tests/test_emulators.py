"""The provider emulators, each driven by the real client: deepgram-sdk and pipecat's DeepgramSTTService, the
openai SDK and OpenAILLMService, pipecat's CartesiaTTSService, and OpenAIRealtimeLLMService or a raw WebSocket
client speaking the Realtime protocol with G.711 μ-law in and out."""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import re
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.events import EventType
from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results, ListenV1SpeechStarted, ListenV1UtteranceEnd
from pipecat.frames.frames import (
    EndFrame, ErrorFrame, Frame, InputAudioRawFrame, LLMContextFrame, LLMTextFrame, TranscriptionFrame,
    TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame, TTSTextFrame, VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.tests.utils import run_test
from pipecat.workers.runner import WorkerRunner

from pipelines.providers.deepgram import QuietBatchingDeepgramSTT
from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.providers import emulators
from pipelines.providers.emulators import cartesia, deepgram, openai_chat, openai_realtime
from pipelines.providers.emulators import audio as emulator_audio
from pipelines.providers.emulators.rules import Rules
from telephony.audio import ulaw_rms
from tests.conftest import ROOT, free_port

SILENCE = b"\xff"  # one 8 kHz μ-law sample of silence
RULES = Rules.parse({"rules": [
    {"keywords": ["located", "address"], "tool_call": {"name": "get_address", "arguments": {"branch": "main"}},
     "after_tool": "We are at {result}."},
    {"keywords": ["weather"], "tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}},
    {"keywords": ["story"], "reply": "Once upon a time there was a cook. She made pasta every day. "
                                     "People came from far away to eat it. The end."},
    {"keywords": ["explode"], "fault": "server_error"},
]})
CARTESIA_VOICE = "79a125e8-cd45-4c13-8a67-188112f4dd22"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def pcm(ulaw: bytes) -> bytes:
    return audioop.ulaw2lin(ulaw, 2)


async def run_until(processor: FrameProcessor, frames: list[Frame], done, *, params: PipelineParams,
                    timeout: float = 20) -> list[Frame]:
    """Run `processor` in a pipeline, queue `frames`, and end it once `done(frames seen downstream)` holds."""
    seen: list[Frame] = []
    finished = asyncio.Event()

    class Collect(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            seen.append(frame)
            if done(seen):
                finished.set()
            await self.push_frame(frame, direction)

    worker = PipelineWorker(Pipeline([processor, Collect()]), params=params, cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    runner = WorkerRunner()
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        for frame in frames:
            if isinstance(frame, float):  # a pause in the feed, in seconds
                await asyncio.sleep(frame)
            else:
                await worker.queue_frame(frame)
        await asyncio.wait_for(finished.wait(), timeout)
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(task, 15)
    return seen


# --- Deepgram ------------------------------------------------------------------------------------------------


async def test_deepgram_pipecat_service_transcribes_phone_speech(speech):
    async with await deepgram.start() as emulator:
        stt = DeepgramSTTService(api_key="test-key", base_url=emulator.url,
                                 settings=DeepgramSTTService.Settings(model="nova-3", language="en"))
        audio = pcm(SILENCE * 4000 + speech["table"] + SILENCE * 8000)  # linear16 at 8 kHz, as voxline sends it
        frames = [InputAudioRawFrame(audio=audio[i:i + 320], sample_rate=8000, num_channels=1)
                  for i in range(0, len(audio), 320)]
        seen = await run_until(stt, frames, lambda fs: any(isinstance(f, TranscriptionFrame) for f in fs),
                               params=PipelineParams(audio_in_sample_rate=8000))
    final = next(f for f in seen if isinstance(f, TranscriptionFrame))
    # Words tiny.en hears in this phrase on both CPUs tried: its int8 decode differs between them elsewhere in it
    # (an AVX2-only EPYC hears "welcome all 4 2 people tonight"; the Xeon heard "table" and "two" too).
    assert {"hello", "people", "tonight"} <= words(final.text), final.text
    assert final.result.is_final and final.result.speech_final
    assert not [f for f in seen if isinstance(f, ErrorFrame)]


async def test_voxlines_deepgram_batches_a_quiet_line_and_sends_speech_live(speech):
    """QuietBatchingDeepgramSTT against the emulator: quiet before the words goes out 0.2 s a message, the VAD's
    start sends what waits and the words go out two frames a message, the VAD's stop sends the last one before
    pipecat's Finalize, quiet again after the live window is batched, and every byte arrives, in order (the
    transcript has the words from their onset)."""
    async with await deepgram.start() as emulator:
        stt = QuietBatchingDeepgramSTT(api_key="test-key", base_url=emulator.url, live_after_stop_secs=0.2,
                                       quiet_batch_secs=0.2,
                                       settings=DeepgramSTTService.Settings(model="nova-3", language="en"))

        def frames_of(ulaw: bytes) -> list[Frame]:
            audio = pcm(ulaw)  # linear16 at 8 kHz, 40 ms (640 bytes) a frame, as voxline sends it
            return [InputAudioRawFrame(audio=audio[i:i + 640], sample_rate=8000, num_channels=1)
                    for i in range(0, len(audio), 640)]

        # The VAD hears the words ~0.1 s in: the start comes after the first few frames of speech.
        words_ = frames_of(speech["table"] + SILENCE * (-len(speech["table"]) % 320))
        quiet, onset, rest, after = frames_of(SILENCE * 8000), words_[:3], words_[3:], frames_of(SILENCE * 12800)
        feed = [*quiet, *onset, VADUserStartedSpeakingFrame(), *rest, VADUserStoppedSpeakingFrame(), 0.4, *after]
        seen = await run_until(stt, feed, lambda fs: any(isinstance(f, TranscriptionFrame) for f in fs),
                               params=PipelineParams(audio_in_sample_rate=8000))
        await asyncio.sleep(0.2)
        received = emulator.emulator[-1]
    final = next(f for f in seen if isinstance(f, TranscriptionFrame))
    # Words tiny.en hears in this phrase on both CPUs tried: its int8 decode differs between them elsewhere in it
    # (an AVX2-only EPYC hears "welcome all 4 2 people tonight"; the Xeon heard "table" and "two" too).
    assert {"hello", "people", "tonight"} <= words(final.text), final.text
    # 25 quiet frames in 5 messages; the 3 onset frames in 1, sent at the start; the rest live, two a message (an odd
    # one last, sent at the stop); 40 quiet frames after the live window in 8.
    assert len(rest) % 2 == 1, "the phrase no longer ends on an odd frame: the stop's own send goes untested"
    assert received.messages == 5 + 1 + (len(rest) + 1) // 2 + 8, (received, len(rest))
    assert received.bytes == 640 * (len(quiet) + len(words_) + len(after))
    # pipecat's Finalize at the stop came after every frame of the words.
    assert received.finalized_at[0] == 640 * (len(quiet) + len(words_)), received
    assert stt.messages_sent == received.messages


async def test_voxlines_deepgram_says_when_the_finalize_found_nothing_more(speech):
    """Deepgram answers the Finalize pipecat sends at each VAD stop; an empty answer (a cough the STT made nothing
    of) goes on as a NothingMoreHeardFrame, once for two stops back to back (the first's answer says nothing of
    the audio after it), not at all when the caller spoke again before it came, and words go on as a transcript
    with none of it after them."""
    async with await deepgram.start() as emulator:
        stt = QuietBatchingDeepgramSTT(api_key="test-key", base_url=emulator.url,
                                       settings=DeepgramSTTService.Settings(model="nova-3", language="en"))
        quiet = [InputAudioRawFrame(audio=bytes(640), sample_rate=8000, num_channels=1) for _ in range(10)]
        feed = [*quiet, VADUserStartedSpeakingFrame(), *quiet, VADUserStoppedSpeakingFrame(),
                VADUserStoppedSpeakingFrame(), 0.5, *quiet]
        # Done with the last quiet frame, 0.5 s after both stops: both answers are in by then.
        seen = await run_until(stt, feed, lambda fs: sum(isinstance(f, InputAudioRawFrame) for f in fs) == 30,
                               params=PipelineParams(audio_in_sample_rate=8000))
    nothing = [f for f in seen if isinstance(f, NothingMoreHeardFrame)]
    assert len(nothing) == 1 and not [f for f in seen if isinstance(f, TranscriptionFrame)], seen
    assert stt._finalizes_sent == stt._finalizes_answered == 2

    # The caller speaks again before the answer comes: it says nothing of the new speech.
    async with await deepgram.start() as emulator:
        stt = QuietBatchingDeepgramSTT(api_key="test-key", base_url=emulator.url,
                                       settings=DeepgramSTTService.Settings(model="nova-3", language="en"))
        feed = [*quiet, VADUserStartedSpeakingFrame(), *quiet, VADUserStoppedSpeakingFrame(),
                VADUserStartedSpeakingFrame(), 0.5, *quiet]
        seen = await run_until(stt, feed, lambda fs: sum(isinstance(f, InputAudioRawFrame) for f in fs) == 30,
                               params=PipelineParams(audio_in_sample_rate=8000))
    assert stt._finalizes_answered == 1 and not [f for f in seen if isinstance(f, NothingMoreHeardFrame)], seen

    async with await deepgram.start() as emulator:
        stt = QuietBatchingDeepgramSTT(api_key="test-key", base_url=emulator.url,
                                       settings=DeepgramSTTService.Settings(model="nova-3", language="en"))
        audio = pcm(SILENCE * 4000 + speech["table"])
        frames = [InputAudioRawFrame(audio=audio[i:i + 640], sample_rate=8000, num_channels=1)
                  for i in range(0, len(audio) - 639, 640)]
        feed = [*frames[:25], VADUserStartedSpeakingFrame(), *frames[25:], VADUserStoppedSpeakingFrame()]

        def answered(fs: list[Frame]) -> bool:
            final_ = next((f for f in fs if isinstance(f, TranscriptionFrame)), None)
            return final_ is not None and (final_.result.from_finalize or isinstance(fs[-1], NothingMoreHeardFrame))

        seen = await run_until(stt, feed, answered, params=PipelineParams(audio_in_sample_rate=8000))
    kinds = [type(f) for f in seen if isinstance(f, (TranscriptionFrame, NothingMoreHeardFrame))]
    final = next(f for f in seen if isinstance(f, TranscriptionFrame))
    assert "people" in words(final.text), final.text
    # The words came in the finalize's answer, or before it (Deepgram's own endpointing), and then it was empty.
    assert kinds == [TranscriptionFrame] + ([] if final.result.from_finalize else [NothingMoreHeardFrame])


async def test_deepgram_sdk_stream_events_on_mulaw(speech):
    """μ-law 8 kHz straight from the line: SpeechStarted, interim and final Results, UtteranceEnd, Metadata."""
    async with await deepgram.start() as emulator:
        env = DeepgramClientEnvironment(base="http://unused", production=emulator.url, agent=emulator.url,
                                        agent_rest="http://unused")
        client = AsyncDeepgramClient(api_key="test-key", environment=env)
        got = []
        async with client.listen.v1.connect(model="nova-3", encoding="mulaw", sample_rate="8000", punctuate="true",
                                            interim_results="true", vad_events="true",
                                            utterance_end_ms="1000") as conn:
            async def on_message(message):
                got.append(message)

            conn.on(EventType.MESSAGE, on_message)
            listening = asyncio.create_task(conn.start_listening())
            audio = SILENCE * 2400 + speech["table"] + SILENCE * 12000
            for i in range(0, len(audio), 160):  # 20 ms frames at twice real time
                await conn.send_media(audio[i:i + 160])
                await asyncio.sleep(0.01)
            await conn.send_close_stream()
            await asyncio.wait_for(listening, 15)

    kinds = [type(m) for m in got]
    results = [m for m in got if isinstance(m, ListenV1Results)]
    finals = [r for r in results if r.is_final and r.channel.alternatives[0].transcript]
    heard = " ".join(r.channel.alternatives[0].transcript for r in finals)
    assert kinds[0] is ListenV1SpeechStarted and 0.2 < got[0].timestamp < 0.6, got[0]
    assert any(not r.is_final for r in results), "no interim result while speech went on"
    assert finals and {"table", "people", "tonight"} <= words(heard), heard
    assert finals[-1].speech_final and finals[-1].metadata.request_id and finals[0].start < 0.6
    assert kinds.index(ListenV1UtteranceEnd) > results.index(finals[-1])
    assert kinds[-1] is ListenV1Metadata
    assert got[-1].duration == pytest.approx(len(audio) / 8000, abs=0.05)


async def test_deepgram_finalize_flushes_speech_in_progress(speech):
    async with await deepgram.start() as emulator:
        async with websockets.connect(emulator.url + "/v1/listen?encoding=mulaw&sample_rate=8000&model=nova-3",
                                      additional_headers={"Authorization": "Token test-key"}) as ws:
            # No trailing silence: the VAD still hears speech when Finalize arrives.
            audio = SILENCE * 2400 + speech["located"]
            for i in range(0, len(audio), 1600):
                await ws.send(audio[i:i + 1600])
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await ws.send(json.dumps({"type": "Finalize"}))
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"type": "Finalize"}))  # nothing left: an empty, confirmed final
            empty = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["type"] == "Results" and message["is_final"] and message["from_finalize"]
    assert "located" in words(message["channel"]["alternatives"][0]["transcript"])
    assert empty["from_finalize"] and empty["channel"]["alternatives"][0]["transcript"] == ""


async def test_deepgram_refuses_a_missing_key_at_upgrade():
    async with await deepgram.start() as emulator:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(emulator.url + "/v1/listen?encoding=mulaw&sample_rate=8000"):
                pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["err_code"] == "INVALID_AUTH"


async def test_deepgram_deeply_nested_json_gets_its_error_and_the_stream_goes_on():
    async with await deepgram.start() as emulator:
        async with websockets.connect(emulator.url + "/v1/listen?encoding=mulaw&sample_rate=8000&model=nova-3",
                                      additional_headers={"Authorization": "Token test-key"}) as ws:
            await ws.send("[" * 50000)  # a RecursionError in json.loads, once the end of the socket
            nested = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send("not json")
            garbage = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"type": "Finalize"}))  # the same stream still answers
            final = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert nested["type"] == "Error" and nested["message"] == garbage["message"] == "Invalid message type"
    assert nested["variant"] == garbage["variant"] == "DATA-0000"
    assert final["type"] == "Results" and final["from_finalize"]


# --- OpenAI chat completions ---------------------------------------------------------------------------------


async def test_openai_streams_echo_with_usage():
    async with await openai_chat.start() as emulator:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=emulator.url, max_retries=0)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What time is it"}])
        chunks = [c async for c in stream]
        models = [m.id async for m in client.models.list()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: What time is it"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # streamed, not one piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert "gpt-4o-mini" in models


async def test_openai_streams_a_tool_call_and_answers_its_result():
    async with await openai_chat.start(rules=RULES) as emulator:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=emulator.url, max_retries=0)
        tools = [{"type": "function", "function": {"name": "get_address", "parameters": {"type": "object"}}}]
        asked = [{"role": "user", "content": "Where are you located?"}]
        chunks = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=asked, tools=tools, stream=True)]
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        call_id = calls[0].id
        answered = asked + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_address", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "twelve Main Street"}]
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=answered, tools=tools)
        undeclared = await client.chat.completions.create(model="gpt-4o-mini", messages=asked)
    assert calls[0].type == "function" and calls[0].function.name == "get_address" and calls[0].index == 0
    assert len(calls) > 2 and json.loads(arguments) == {"branch": "main"}  # arguments split across chunks
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content == "We are at twelve Main Street."
    assert undeclared.choices[0].message.tool_calls is None  # a tool the request does not offer is never called


async def test_openai_faults_500_and_a_dropped_stream():
    async with await openai_chat.start(rules=RULES) as emulator:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=emulator.url, max_retries=0)
        user = [{"role": "user", "content": "one two three four five six"}]
        emulator.emulator.inject("server_error")
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="gpt-4o-mini", messages=user)
        assert failed.value.body["type"] == "server_error" and failed.value.body["message"]
        recovered = await client.chat.completions.create(model="gpt-4o-mini", messages=user)  # one request only
        assert recovered.choices[0].message.content.startswith("You said:")
        with pytest.raises(openai.InternalServerError):  # a rule can fault too
            await client.chat.completions.create(model="gpt-4o-mini",
                                                 messages=[{"role": "user", "content": "explode"}])
        emulator.emulator.inject("drop_stream")
        received = []
        with pytest.raises(openai.APIError):
            async for chunk in await client.chat.completions.create(model="gpt-4o-mini", messages=user, stream=True):
                received.append(chunk)
        assert received and len(received) < 5  # the stream broke after it had started
        async with httpx.AsyncClient() as http:  # the emulator runs on this event loop: no blocking client
            unauthenticated = await http.post(emulator.url + "/chat/completions", json={"model": "m", "messages": user})
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["type"] == "invalid_request_error"


async def test_openai_latency_delays_the_first_chunk():
    async with await openai_chat.start(latency_ms=300) as emulator:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=emulator.url, max_retries=0)
        began = time.monotonic()
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}])
        async for _ in stream:
            break
        assert time.monotonic() - began >= 0.3


async def test_openai_token_pace_spaces_the_chunks_after_the_first():
    said = "one two three four five six"
    async with await openai_chat.start(token_ms=60) as emulator:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=emulator.url, max_retries=0)
        began = time.monotonic()
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": said}])
        arrived = [(time.monotonic() - began, c.choices[0].delta.content) async for c in stream
                   if c.choices and c.choices[0].delta.content]
    assert "".join(text for _, text in arrived) == f"You said: {said}"  # the echo rule, a word a chunk
    # The last word cannot come before the emulator has waited between every two chunks since the first.
    assert arrived[-1][0] >= 0.06 * (len(arrived) - 1), arrived
    with pytest.raises(ValueError, match="openai, not cartesia"):
        await emulators.start("cartesia", token_ms=10)


async def test_openai_pipecat_llm_service_speaks_the_reply():
    async with await openai_chat.start() as emulator:
        llm = OpenAILLMService(api_key="test-key", base_url=emulator.url,
                               settings=OpenAILLMService.Settings(model="gpt-4o-mini"))
        context = LLMContext(messages=[{"role": "user", "content": "Book a table"}])
        down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(context)])
    assert "".join(f.text for f in down if isinstance(f, LLMTextFrame)) == "You said: Book a table"


async def test_openai_chat_refuses_wrong_types_with_its_json_400(monkeypatch):
    user = [{"role": "user", "content": "hi"}]
    refused = [  # (request body, the param the error names)
        ({"tools": 5}, "tools"),
        ({"tools": [5]}, "tools[0]"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
         "tools[0].function.parameters"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": 5}, "stream_options"),
        ({"tool_choice": 5}, "tool_choice"),
        ({"messages": [{"role": "assistant", "tool_calls": ["x"]}, {"role": "tool", "content": "r"}]},
         "messages[0].tool_calls[0]"),
        ({"messages": [5]}, "messages[0]"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"model": ["gpt-4o-mini"]}, "model"),
    ]
    async with await openai_chat.start() as emulator:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=emulator.url, max_retries=0)
        with pytest.raises(openai.BadRequestError) as sdk:  # the SDK passes a wrong type through as it is
            await client.chat.completions.create(model="gpt-4o-mini", messages=user, tools=5)
        async with httpx.AsyncClient(headers={"Authorization": "Bearer test-key"}) as http:
            answers = [await http.post(emulator.url + "/chat/completions",
                                       json={"model": "gpt-4o-mini", "messages": user, **body})
                       for body, _ in refused]
            nested = await http.post(emulator.url + "/chat/completions", content="[" * 50000)
            valid = await http.post(emulator.url + "/chat/completions", json={"model": "gpt-4o-mini",
                                                                              "messages": user, "stream": False})
            # A fault of the emulator's own is a JSON 500 in the same shape, not Starlette's plain-text page.
            monkeypatch.setattr(openai_chat._Completion, "whole", lambda self: 1 / 0)
            crashed = await http.post(emulator.url + "/chat/completions", json={"model": "m", "messages": user})
    assert sdk.value.status_code == 400 and sdk.value.body["param"] == "tools"
    for (body, param), answer in zip(refused, answers, strict=True):
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], (body, error)
    assert answers[0].json()["error"]["code"] == "invalid_type"
    assert "expected an array, but got an integer" in answers[0].json()["error"]["message"]
    assert nested.status_code == 400 and nested.json()["error"]["type"] == "invalid_request_error"
    assert valid.status_code == 200 and valid.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert crashed.status_code == 500 and crashed.json()["error"]["type"] == "server_error"
    assert len(emulator.emulator.requests) == 2  # only the valid request, and the one that crashed, were accepted


# --- Cartesia ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 24000])
async def test_cartesia_pipecat_service_produces_audio_at_the_requested_rate(rate):
    async with await cartesia.start() as emulator:
        tts = CartesiaTTSService(api_key="test-key", url=emulator.url, encoding="pcm_s16le", sample_rate=rate,
                                 settings=CartesiaTTSService.Settings(voice=CARTESIA_VOICE, model="sonic-2"))
        down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello there. How are you today?")],
                                 pipeline_params=PipelineParams(audio_out_sample_rate=rate))
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    pcm16 = b"".join(f.audio for f in audio)
    assert {f.sample_rate for f in audio} == {rate}
    assert 1.0 < len(pcm16) / 2 / rate < 4.0
    assert audioop.rms(pcm16, 2) > 500
    assert [f.text for f in down if isinstance(f, TTSTextFrame)] == ["Hello", "there.", "How", "are", "you", "today?"]
    assert any(isinstance(f, TTSStoppedFrame) for f in down) and not any(isinstance(f, ErrorFrame) for f in down)


async def test_cartesia_without_buffering_speaks_each_submission_alone():
    """max_buffer_delay_ms 0 (pipecat's setting when it sends whole sentences or clauses): each transcript is
    generated as it comes, even when the next one is already there; the default buffer joins them into a sentence."""
    async with await cartesia.start() as emulator:
        async with websockets.connect(emulator.url + "?api_key=test-key&cartesia_version=2026-03-01") as ws:
            base = {"model_id": "sonic-2", "voice": {"mode": "id", "id": CARTESIA_VOICE}, "add_timestamps": True,
                    "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000}}
            for context, buffer in (("unbuffered", {"max_buffer_delay_ms": 0}), ("buffered", {})):
                await ws.send(json.dumps({**base, **buffer, "context_id": context, "transcript": "We are at twelve "
                                          "Main Street,", "continue": True}))
                await ws.send(json.dumps({**base, **buffer, "context_id": context,
                                          "transcript": " next to the cinema.", "continue": True}))
                await ws.send(json.dumps({**base, **buffer, "context_id": context, "transcript": "",
                                          "continue": False}))
            messages = []
            while sum(m["type"] == "done" for m in messages) < 2:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    spoken = {c: [m["word_timestamps"]["words"] for m in messages if m["type"] == "timestamps" and m["context_id"] == c]
              for c in ("unbuffered", "buffered")}
    assert spoken["unbuffered"] == [["We", "are", "at", "twelve", "Main", "Street,"], ["next", "to", "the", "cinema."]]
    assert spoken["buffered"] == [["We", "are", "at", "twelve", "Main", "Street,", "next", "to", "the", "cinema."]]


async def test_cartesia_mulaw_contexts_cancel_and_errors():
    async with await cartesia.start() as emulator:
        async with websockets.connect(emulator.url + "?api_key=test-key&cartesia_version=2026-03-01") as ws:
            base = {"model_id": "sonic-2", "voice": {"mode": "id", "id": CARTESIA_VOICE},
                    "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}}
            await ws.send(json.dumps({**base, "context_id": "a", "transcript": "Good ", "continue": True}))
            await ws.send(json.dumps({**base, "context_id": "a", "transcript": "morning.", "continue": True}))
            await ws.send(json.dumps({**base, "context_id": "a", "transcript": "", "continue": False}))
            await ws.send(json.dumps({**base, "context_id": "b", "transcript": "This one is cancelled.",
                                      "continue": True}))
            await ws.send(json.dumps({"context_id": "b", "cancel": True}))
            bad = {**base, "output_format": {**base["output_format"], "encoding": "mp3"}}
            await ws.send(json.dumps({**bad, "context_id": "c", "transcript": "Hi.", "continue": False}))
            messages = []
            while not any(m["type"] == "done" for m in messages):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            with pytest.raises(TimeoutError):  # nothing more: the cancelled context never speaks
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
    ulaw = b"".join(base64.b64decode(m["data"]) for m in messages if m["type"] == "chunk")
    assert {m["context_id"] for m in messages if m["type"] in ("chunk", "done")} == {"a"}
    assert 0.5 < len(ulaw) / 8000 < 2.5 and ulaw_rms(ulaw) > 500  # one byte a sample: μ-law at 8 kHz
    error = next(m for m in messages if m["type"] == "error")
    assert error["context_id"] == "c" and error["status_code"] == 400 and "encoding" in error["error"]


async def test_cartesia_malformed_requests_fail_their_context_only():
    async with await cartesia.start() as emulator:
        async with websockets.connect(emulator.url + "?api_key=test-key&cartesia_version=2026-03-01") as ws:
            base = {"model_id": "sonic-2", "voice": {"mode": "id", "id": CARTESIA_VOICE},
                    "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}}
            await ws.send(json.dumps({**base, "context_id": "a", "transcript": "Good ", "continue": True}))
            # A context under way that a malformed message ends: its buffered words are never spoken.
            await ws.send(json.dumps({**base, "context_id": "f", "transcript": "Hello ", "continue": True,
                                      "max_buffer_delay_ms": 300}))
            bad = {"b": {"max_buffer_delay_ms": "abc", "transcript": "Hi ", "continue": True},
                   "c": {"transcript": 5, "continue": False},
                   "d": {"transcript": "Hi.", "continue": "yes"},
                   "e": {"transcript": "Hi ", "continue": True, "max_buffer_delay_ms": 1e9},
                   "f": {"transcript": "there", "continue": True, "add_timestamps": "true"}}
            for context_id, fields in bad.items():
                await ws.send(json.dumps({**base, "context_id": context_id, **fields}))
            await ws.send("[" * 50000)
            await ws.send(json.dumps({**base, "context_id": ["g"], "transcript": "Hi.", "continue": False}))
            await ws.send(json.dumps({**base, "context_id": "a", "transcript": "morning.", "continue": False}))
            await ws.send(json.dumps({**base, "context_id": "h", "transcript": "Thank you.", "continue": False}))
            messages = []
            while len([m for m in messages if m["type"] == "done"]) < 2:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
            with pytest.raises(TimeoutError):  # nothing more: the ended context "f" never speaks
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["context_id"] for e in errors] == [*bad, "", ""]
    assert all(e["status_code"] == 400 and e["done"] is True and e["error"] for e in errors)
    assert "max_buffer_delay_ms" in errors[0]["error"] and "transcript" in errors[1]["error"]
    assert "continue" in errors[2]["error"] and "Invalid JSON" in errors[5]["error"]
    assert {m["context_id"] for m in messages if m["type"] in ("chunk", "done")} == {"a", "h"}
    assert sorted(m["context_id"] for m in messages if m["type"] == "done") == ["a", "h"]  # contexts run side by side


# --- OpenAI Realtime -----------------------------------------------------------------------------------------


class RealtimeClient:
    def __init__(self, ws):
        self.ws, self.events = ws, []

    async def send(self, type_: str, **payload) -> None:
        await self.ws.send(json.dumps({"type": type_, **payload}))

    async def until(self, type_: str, timeout: float = 15) -> dict:
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            self.events.append(event)
            if event["type"] == type_:
                return event

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]


async def test_realtime_mulaw_speech_function_call_round_trip(speech):
    async with await openai_realtime.start(rules=RULES) as emulator:
        async with websockets.connect(emulator.url + "?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer test-key"}) as ws:
            rt = RealtimeClient(ws)
            await rt.until("session.created")
            await rt.send("session.update", session={
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
                          "output": {"format": {"type": "audio/pcmu"}}},
                "tools": [{"type": "function", "name": "get_address", "parameters": {"type": "object"}}]})
            updated = await rt.until("session.updated")
            audio = SILENCE * 4000 + speech["located"] + SILENCE * 8000
            for i in range(0, len(audio), 160):
                await rt.send("input_audio_buffer.append", audio=base64.b64encode(audio[i:i + 160]).decode())
            called = await rt.until("response.done")
            call = called["response"]["output"][0]
            await rt.send("conversation.item.create", item={
                "type": "function_call_output", "call_id": call["call_id"], "output": "twelve Main Street"})
            await rt.send("response.create")
            answered = await rt.until("response.done")

    assert updated["session"]["audio"]["input"]["format"]["type"] == "audio/pcmu"
    started, stopped = rt.of("input_audio_buffer.speech_started")[0], rt.of("input_audio_buffer.speech_stopped")[0]
    assert 400 < started["audio_start_ms"] < stopped["audio_end_ms"] and started["item_id"] == stopped["item_id"]
    assert rt.of("input_audio_buffer.committed")[0]["item_id"] == started["item_id"]
    heard = rt.of("conversation.item.input_audio_transcription.completed")[0]
    assert "located" in words(heard["transcript"]) and heard["item_id"] == started["item_id"]
    assert call["type"] == "function_call" and call["name"] == "get_address"
    deltas = "".join(e["delta"] for e in rt.of("response.function_call_arguments.delta"))
    assert json.loads(deltas) == {"branch": "main"} == json.loads(
        rt.of("response.function_call_arguments.done")[0]["arguments"])
    ulaw = b"".join(base64.b64decode(e["delta"]) for e in rt.of("response.output_audio.delta"))
    assert 1.0 < len(ulaw) / 8000 < 4.0 and ulaw_rms(ulaw) > 500
    assert rt.of("response.output_audio_transcript.done")[0]["transcript"] == "We are at twelve Main Street."
    assert answered["response"]["status"] == "completed" and answered["response"]["usage"]["output_tokens"] > 0


async def test_realtime_cancel_interrupts_and_bad_events_get_errors():
    async with await openai_realtime.start(rules=RULES) as emulator:
        async with websockets.connect(emulator.url + "?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer test-key"}) as ws:
            rt = RealtimeClient(ws)
            await rt.until("session.created")
            await rt.send("conversation.item.create", item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story"}]})
            await rt.send("response.create")
            first = await rt.until("response.output_audio.delta")
            await rt.send("conversation.item.truncate", item_id=first["item_id"], content_index=0, audio_end_ms=50)
            await rt.send("response.cancel")
            cancelled = await rt.until("response.done")
            with pytest.raises(TimeoutError):  # no audio after the cancelled response is done
                await rt.until("response.output_audio.delta", timeout=0.5)
            await rt.send("response.cancel")
            not_active = await rt.until("error")
            await rt.send("no.such.event")
            unknown = await rt.until("error")
    assert cancelled["response"]["status"] == "cancelled"
    assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"
    assert rt.of("conversation.item.truncated")[0]["audio_end_ms"] == 50
    pcm24 = b"".join(base64.b64decode(e["delta"]) for e in rt.of("response.output_audio.delta"))
    assert len(pcm24) / 2 / 24000 < 3.0  # far less than the whole four-sentence story
    assert not_active["error"]["code"] == "response_cancel_not_active"
    assert unknown["error"]["code"] == "invalid_value" and unknown["error"]["param"] == "type"


async def test_realtime_server_vad_barge_in_cancels_the_response(speech):
    async with await openai_realtime.start(rules=RULES) as emulator:
        async with websockets.connect(emulator.url + "?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer test-key"}) as ws:
            rt = RealtimeClient(ws)
            await rt.until("session.created")
            # Beta field names still configure G.711 both ways.
            await rt.send("session.update", session={"input_audio_format": "g711_ulaw",
                                                     "output_audio_format": "g711_ulaw"})
            updated = await rt.until("session.updated")
            await rt.send("conversation.item.create", item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story"}]})
            await rt.send("response.create")
            await rt.until("response.output_audio.delta")
            audio = SILENCE * 1600 + speech["goodbye"] + SILENCE * 8000  # the caller talks over the story
            for i in range(0, len(audio), 160):
                await rt.send("input_audio_buffer.append", audio=base64.b64encode(audio[i:i + 160]).decode())
            interrupted = await rt.until("response.done")
            answered = await rt.until("response.done")
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert rt.events.index(rt.of("input_audio_buffer.speech_started")[0]) < rt.events.index(interrupted)
    assert interrupted["response"]["status"] == "cancelled"
    assert interrupted["response"]["status_details"]["reason"] == "turn_detected"
    assert answered["response"]["status"] == "completed"
    assert "goodbye" in words(answered["response"]["output"][0]["content"][0]["transcript"])


async def test_realtime_session_update_errors():
    async with await openai_realtime.start() as emulator:
        async with websockets.connect(emulator.url + "?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer test-key"}) as ws:
            rt = RealtimeClient(ws)
            created = await rt.until("session.created")
            await rt.send("session.update", event_id="evt_1",
                          session={"type": "realtime", "audio": {"input": {"format": {"type": "audio/opus"}}}})
            bad_format = await rt.until("error")
            await rt.send("session.update", session={"type": "realtime", "colour": "blue"})
            unknown = await rt.until("error")
            await rt.send("input_audio_buffer.commit")
            empty = await rt.until("error")
    assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert bad_format["error"]["param"] == "session.audio.input.format.type"
    assert bad_format["error"]["event_id"] == "evt_1"
    assert unknown["error"]["code"] == "unknown_parameter"
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_realtime_pipecat_service_answers_a_text_turn():
    async with await openai_realtime.start() as emulator:
        llm = OpenAIRealtimeLLMService(api_key="test-key", base_url=emulator.url,
                                       settings=OpenAIRealtimeLLMService.Settings(model="gpt-realtime"))
        context = LLMContext(messages=[{"role": "user", "content": "Is the kitchen open tonight?"}])
        seen = await run_until(llm, [LLMContextFrame(context)],
                               lambda fs: any(isinstance(f, TTSStoppedFrame) for f in fs),
                               params=PipelineParams(audio_out_sample_rate=24000))
    audio = [f for f in seen if isinstance(f, TTSAudioRawFrame)]
    pcm24 = b"".join(f.audio for f in audio)
    assert {f.sample_rate for f in audio} == {24000} and 1.0 < len(pcm24) / 2 / 24000 < 5.0
    assert audioop.rms(pcm24, 2) > 500
    assert "".join(f.text for f in seen if isinstance(f, TTSTextFrame)) == "You said: Is the kitchen open tonight?"
    assert not [f for f in seen if isinstance(f, ErrorFrame)]


async def test_realtime_refuses_a_missing_key():
    async with await openai_realtime.start() as emulator:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(emulator.url + "?model=gpt-realtime"):
                pass
    assert refused.value.response.status_code == 401


async def test_realtime_malformed_events_get_errors_and_the_session_goes_on():
    deep_tracing = {"type": "session.update", "session": {"tracing": {"x": json.loads("[" * 500 + "]" * 500)}}}
    bad = [  # (the raw client event, the error code, the error param)
        (json.dumps({"type": ["x"]}), "invalid_type", "type"),
        (json.dumps({"event_id": "evt_2", "type": "session.update", "session": {"audio": "x"}}),
         "invalid_type", "session.audio"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
            "silence_duration_ms": "x"}}}}}), "invalid_type", "session.audio.input.turn_detection.silence_duration_ms"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": ["audio/pcmu"]}}}}}),
         "invalid_value", "session.audio.input.format.type"),
        (json.dumps({"type": "session.update", "session": {"input_audio_format": ["g711_ulaw"]}}),
         "invalid_type", "session.input_audio_format"),
        (json.dumps({"type": "session.update", "session": {"modalities": 5}}), "invalid_type", "session.modalities"),
        (json.dumps({"type": "session.update", "session": {"tools": 5}}), "invalid_type", "session.tools"),
        (json.dumps({"type": "session.update", "session": {"tools": [{"type": "function"}]}}),
         "missing_required_parameter", "session.tools[0].name"),
        (json.dumps({"type": "response.create", "response": "x"}), "invalid_type", "response"),
        (json.dumps({"type": "response.create", "response": {"tools": [5]}}), "invalid_type", "response.tools[0]"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "id": ["a"]}}),
         "invalid_type", "item.id"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant",
                                                                  "content": "hi"}}), "invalid_type", "item.content"),
        (json.dumps({"type": "conversation.item.retrieve", "item_id": ["a"]}), "invalid_type", "item_id"),
        (json.dumps({"type": "conversation.item.delete", "item_id": {"a": 1}}), "invalid_type", "item_id"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "asst_1", "content_index": 0,
                     "audio_end_ms": "x"}), "invalid_type", "audio_end_ms"),
        ("[" * 50000, "invalid_json", None),
        (json.dumps(deep_tracing), "invalid_json", None),
    ]
    async with await openai_realtime.start() as emulator:
        async with websockets.connect(emulator.url + "?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer test-key"}) as ws:
            rt = RealtimeClient(ws)
            created = await rt.until("session.created")
            await rt.send("conversation.item.create", item={  # what the truncate above is aimed at
                "id": "asst_1", "type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello."}]})
            await rt.until("conversation.item.done")
            errors = []
            for raw, _, _ in bad:
                await ws.send(raw)
                errors.append(await rt.until("error"))
            # The same socket still works, and nothing of the refused updates was kept.
            await rt.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
            updated = await rt.until("session.updated")
            await rt.send("conversation.item.create", item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Still there?"}]})
            await rt.send("response.create")
            answered = await rt.until("response.done")
    for (raw, code, param), error in zip(bad, errors, strict=True):
        assert error["error"]["type"] == "invalid_request_error", (raw[:120], error)
        assert (error["error"]["code"], error["error"]["param"]) == (code, param), (raw[:120], error)
        assert error["error"]["message"] and error["event_id"], (raw[:120], error)
    assert errors[1]["error"]["event_id"] == "evt_2" and errors[0]["error"]["event_id"] is None
    assert "expected an object, but got a string" in errors[1]["error"]["message"]
    assert not rt.of("session.updated")[:-1]  # none of the malformed updates was taken
    session = updated["session"]
    assert session["tools"] == [] and session["audio"] == created["session"]["audio"]
    assert "tracing" not in session or session["tracing"] is None
    assert answered["response"]["status"] == "completed", answered
    assert answered["response"]["output"][0]["content"][0]["text"] == "You said: Still there?"


async def test_realtime_a_failing_handler_is_a_server_error_not_a_dead_socket(monkeypatch, logged):
    async def broken(self, evt):
        raise RuntimeError("emulator bug")

    monkeypatch.setattr(openai_realtime._Session, "_item_retrieve", broken)
    async with await openai_realtime.start() as emulator:
        async with websockets.connect(emulator.url + "?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer test-key"}) as ws:
            rt = RealtimeClient(ws)
            await rt.until("session.created")
            await rt.send("conversation.item.retrieve", event_id="evt_7", item_id="item_x")
            failed = await rt.until("error")
            await rt.send("session.update", session={"type": "realtime", "instructions": "Be brief."})
            updated = await rt.until("session.updated")
    assert failed["error"]["type"] == "server_error" and failed["error"]["code"] == "server_error"
    assert failed["error"]["event_id"] == "evt_7"
    assert updated["session"]["instructions"] == "Be brief."
    assert any("conversation.item.retrieve" in line for line in logged), logged


# --- rules and the CLI ---------------------------------------------------------------------------------------


def test_rules_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - keywords: [hi]\n    reply: Hello.\n    fault: server_error\n")
    with pytest.raises(ValueError, match="exactly one of"):
        Rules.load(path)
    path.write_text('{"rules": [{"keywords": ["hi"], "reply": "Hello {text}"}], "fallback": "Pardon?"}')
    rules = Rules.load(path)
    assert rules.decide([{"role": "user", "content": "hi there"}], set()).text == "Hello hi there"
    assert rules.decide([{"role": "user", "content": "what"}], set()).text == "Pardon?"


def test_the_model_run_on_pipecats_empty_turn_instruction_asks_the_caller_to_repeat(tmp_path):
    from pipecat.turns.empty_user_turn import DEFAULT_EMPTY_USER_TURN_INTERRUPTED_PROMPT as ASK_AGAIN

    said = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "Hello hi"}]
    asked = said + [{"role": "developer", "content": ASK_AGAIN}]
    path = tmp_path / "rules.yaml"
    path.write_text('{"rules": [{"keywords": ["hi"], "reply": "Hello {text}"}], "ask_again": "Come again?"}')
    rules = Rules.load(path)
    # The caller's words are answered; the instruction after them is followed, not the words answered again.
    assert rules.decide(said, set()).text == "Hello hi there"
    assert rules.decide(asked, set()).text == "Come again?"
    assert Rules().decide(asked, set()).text == Rules().ask_again
    instructed = said + [{"role": "developer", "content": 'Say exactly "One moment."'}]
    assert rules.decide(instructed, set()).text == "One moment."
    # A system prompt alone, or an instruction before the caller has said anything, still gets the greeting.
    assert rules.decide([{"role": "developer", "content": ASK_AGAIN}], set()).text == rules.greeting


def test_voxline_emulate_openai_starts_and_answers(tmp_path):
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{keywords: [ping], reply: pong}]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "emulate", "openai", "--port", str(port), "--rules", str(rules)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any("VOXLINE_OPENAI_BASE_URL" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        base = f"http://127.0.0.1:{port}/v1"
        assert f"VOXLINE_OPENAI_BASE_URL={base}" in "".join(lines)
        reply = httpx.post(base + "/chat/completions", headers={"Authorization": "Bearer test-key"},
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}]}, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "pong"



class _FeedRecorder:
    def __init__(self, blocking: bool):
        self.blocking, self.threads = blocking, []

    def feed(self, pcm: bytes) -> list:
        self.threads.append(threading.get_ident())
        return [len(pcm)]


async def test_a_segmenter_that_blocks_is_fed_in_a_thread_and_a_cheap_one_on_the_loop():
    silero_like, loudness_like = _FeedRecorder(blocking=True), _FeedRecorder(blocking=False)
    assert await emulator_audio.feed(silero_like, b"\0" * 320) == [320]
    assert await emulator_audio.feed(loudness_like, b"\0" * 320) == [320]
    assert silero_like.threads[0] != threading.get_ident()  # Silero never runs on the emulator's loop
    assert loudness_like.threads == [threading.get_ident()]
    assert emulator_audio.Segmenter.blocking is True
