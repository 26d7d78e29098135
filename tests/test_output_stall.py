"""A call whose output gives up on a write ends, on the record, instead of going on in silence.

pipecat's output transport gives up on a peer after a write that took `audio_out_write_timeout_secs` (10 s), and
from then on drops every chunk; its pipeline worker's default is to run on past such a processor. At 100 calls on
two cores a worker's event loop once stalled that long, and 26 of its 51 calls went silent for the rest of the call,
recorded as the caller's hang-up (bench/HISTORY.md, session 39). Here the transport's own deadline is met for real
(the call's trimmed output, a socket that stops taking messages, a 0.3 s deadline), and the call session's error
handler is given the error the worker reports: the call ends `error_carrier`, with the transport's words, and its
pipeline is cancelled. An error from a processor that can still work (a tool's, say) leaves the call running."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame

from config.agent import AgentConfig
from config.settings import Settings
from runtime.call_session import CallSession
from runtime.reasons import DisconnectionReason as R
from tests.test_transport_trims import _Call, _Socket, _speech


def _session(call: _Call) -> CallSession:
    session = CallSession(SimpleNamespace(settings=Settings()), "call-stall", call.socket, serializer_factory=None)
    session._worker = call.worker
    session._agent = AgentConfig.model_validate({
        "name": "cloud", "system_prompt": "Be brief.", "transcriber": {"provider": "deepgram"},
        "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "tts": {"provider": "cartesia"}})
    return session


async def test_a_call_whose_output_stopped_writing_ends_as_a_carrier_error():
    async with _Call(_Socket(stall_after=3), write_timeout=0.3) as call:
        session = _session(call)
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(10), sample_rate=8000, num_channels=1))
        await call.until(lambda: any(isinstance(f, ErrorFrame) for f in call.upstream.frames), timeout=3.0)
        error = next(f for f in call.upstream.frames if isinstance(f, ErrorFrame))
        assert error.processor is call.output and not call.output.is_usable and not error.fatal

        await session._on_pipeline_error(error)

        assert session._reason is R.ERROR_CARRIER
        assert "stopped reading" in session._detail
        await asyncio.wait_for(asyncio.shield(call._running), 5.0)  # the pipeline was cancelled: the call is over
        assert call.worker.has_finished()


async def test_an_error_from_a_processor_that_still_works_leaves_the_call_running():
    async with _Call(_Socket()) as call:
        session = _session(call)
        await session._on_pipeline_error(ErrorFrame("a tool's request failed", processor=call.upstream))
        await asyncio.sleep(0.3)
        assert session._reason is None
        assert not call._running.done()
