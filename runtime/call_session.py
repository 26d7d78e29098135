"""One live call: builds the pipeline from the call's stored agent, runs it over the carrier's socket, writes
each turn as it completes, and closes the call record with a reason however the call ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import WebSocket
from loguru import logger
from pipecat.frames.frames import ErrorFrame, OutputAudioRawFrame
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocketState

from config import variables as call_variables
from runtime import call_feed, call_observer, call_teardown, ws_protocol
from config.agent import AgentConfig
from pipelines.factory import UnsupportedArchitecture, build_call_pipeline, local_models_needed
from pipelines.call_pipeline import LINE_SAMPLE_RATE
from pipelines.providers import local_models
from pipelines.providers.piper import synthesize
from pipelines.providers.registry import BuildContext, ProviderError
from pipelines.tools.loader import load_toolset
from pipelines.tools.toolset import ToolEvent
from runtime.call_controls import CallControls
from runtime.call_tools import add_call_tools
from runtime.context import Runtime
from runtime.reasons import DisconnectionReason as R
from runtime.recording import CallRecorder
from runtime.call_usage import UsageMeter, estimate_cost, latency_summary
from runtime.metrics import ACTIVE_CALLS, BARGE_IN, PROVIDER_ERRORS
from runtime.turn_metrics import TurnLatency, TurnLatencyTracker
from runtime.store import repo
from telephony import audio_in, audio_out
from telephony.pacing import LeadPacer
from telephony.peer_gone import quiet_when_peer_gone
from telephony.twilio.rest import CarrierError, TwilioCalls
from telephony.twilio.serializer import StreamEvents

_PROVIDER_REASON = {"stt": R.ERROR_STT, "llm": R.ERROR_LLM, "tts": R.ERROR_TTS, "realtime": R.ERROR_REALTIME}
# 80 ms output chunks. Every chunk costs the same Python work and a socket write however short it is (serializing,
# the media sender, the pacer, the send), and the carrier holds the pacer's 100 ms lead anyway, so a `clear` stops
# the same audio and a stall shorter than the lead is as inaudible. 20 → 40 ms took ~35 % off what speaking adds
# to a call; 40 → 80 ms took 14 % off a speaking call's CPU per second of agent audio (bench/side_by_side.py
# --phase speaking: 11.5 → 9.9 ms). The reply's first message waits for 80 ms of synthesized audio, which a
# streaming TTS delivers several times faster than real time.
_OUT_10MS_CHUNKS = 8


_CLOSE_CODES = {1000: "normal closure", 1001: "going away", 1006: "abnormal closure, no close frame",
                1005: "no close code", 1009: "message too big", 1011: "peer error", 1012: "service restart"}
# uvicorn closes live sockets with 1012 when the server shuts down, before the app's own shutdown runs.
_SERVER_GOING_AWAY = 1012


def _record_close_code(ws: WebSocket) -> dict:
    """pipecat's transport drops the close code of a socket the peer closed; keep it for the call record."""
    seen: dict = {}
    receive = ws.receive

    async def recording_receive():
        message = await receive()
        if message["type"] == "websocket.disconnect":
            seen["code"] = message.get("code")
        return message

    # A cycle through ws (the wrapper holds its bound method): CallSession._release undoes it.
    ws.receive = recording_receive  # type: ignore[method-assign]
    return seen


def _error_source(frame: ErrorFrame, agent: AgentConfig) -> tuple[R, str | None]:
    """The reason naming the fault domain, and the provider at fault (None when it is not a provider)."""
    proc = frame.processor
    if isinstance(proc, (BaseInputTransport, BaseOutputTransport)):
        return R.ERROR_CARRIER, None  # the media stream: a write that timed out, a peer that stopped reading
    if isinstance(proc, LLMService) and agent.realtime is not None:
        return R.ERROR_REALTIME, agent.realtime.provider
    for cls, reason, section in ((STTService, R.ERROR_STT, agent.transcriber), (LLMService, R.ERROR_LLM, agent.llm),
                                 (TTSService, R.ERROR_TTS, agent.tts)):
        if isinstance(proc, cls):
            return reason, section.provider if section else None
    return R.ERROR_INTERNAL, None


class TurnWriter:
    """Writes transcript entries in order, off the pipeline's path, each as soon as its turn completes."""

    def __init__(self, rt: Runtime, call_id: str):
        self._rt, self._call_id = rt, call_id
        self._queue: asyncio.Queue[tuple | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._drain(), name=f"turns-{call_id}")

    def put(self, role: str, text: str, start: float, end: float, interrupted: bool,
            latency: TurnLatency | None = None) -> None:
        fields = dict(role=role, text=text, start_secs=round(start, 3), end_secs=round(end, 3), interrupted=interrupted)
        if latency is not None:
            fields.update(latency.as_fields())
        self._queue.put_nowait((repo.add_transcript_entry, role, fields))
        call_feed.publish(self._call_id, {"type": "transcript", **fields})

    def put_tool(self, event: ToolEvent, start: float, end: float) -> None:
        self._queue.put_nowait((repo.add_tool_entry, "tool", dict(
            name=event.name, tool_call_id=event.call_id, arguments=event.arguments, result=event.result,
            error=event.error, start_secs=round(start, 3), end_secs=round(end, 3))))
        call_feed.publish(self._call_id, {"type": "transcript", "role": "tool", "text": event.name, "interrupted": False,
                                          "error": event.error, "start_secs": round(start, 3), "end_secs": round(end, 3)})

    async def _drain(self) -> None:
        while (item := await self._queue.get()) is not None:
            write, what, fields = item
            try:
                await write(self._rt.db, self._call_id, **fields)
            except Exception:
                logger.exception(f"call {self._call_id}: could not store a {what} entry")

    async def close(self) -> None:
        self._queue.put_nowait(None)
        await self._task


class CallSession(StreamEvents):
    def __init__(
        self, rt: Runtime, call_id: str, ws: WebSocket, serializer_factory: Callable[[StreamEvents], FrameSerializer]
    ):
        self.rt, self.call_id, self.ws = rt, call_id, ws
        self._serializer_factory = serializer_factory
        self._close = _record_close_code(ws)
        self._t0 = time.monotonic()
        self._reason: R | None = None
        self._detail: str | None = None
        self._worker: PipelineWorker | None = None
        self._transport: FastAPIWebsocketTransport | None = None
        self._cancel_task: asyncio.Task | None = None
        self._turn_start = {"user": 0.0, "assistant": 0.0}
        self._turns: TurnWriter | None = None
        self._serializer = None
        self._controls: CallControls | None = None
        self._carrier = TwilioCalls(rt.settings)
        self._call_sid: str | None = None
        self._transfer_to: str | None = None
        self._carrier_told = False
        self._built = None
        self._agent: AgentConfig | None = None
        self._recorder: CallRecorder | None = None
        self._usage = UsageMeter()
        self._latency = TurnLatencyTracker(on_metrics=self._usage.add)
        self._tool_started: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def end_with(self, reason: R, detail: str | None = None) -> None:
        """Record why the call is ending; the first reason given wins."""
        if self._reason is None:
            self._reason, self._detail = reason, detail

    def stop(self, reason: R, why: str) -> None:
        """End the call from outside the pipeline (e.g. server shutdown)."""
        self.end_with(reason, why)
        self._cancel(why)

    # --- StreamEvents (from the carrier serializer) -------------------------------------------------------------

    async def on_stream_stop(self, message: dict) -> None:
        self.end_with(R.CALLER_HANGUP)
        self._cancel("stream stopped by the carrier")

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def _cancel(self, why: str) -> None:
        if self._worker is not None and self._cancel_task is None:
            # Scheduled, not awaited: this runs inside the pipeline's own receive task, which the cancel stops.
            self._cancel_task = asyncio.create_task(self._worker.cancel(reason=why))

    async def run(self) -> None:
        self.rt.sessions[self.call_id] = self
        ACTIVE_CALLS.inc()
        self.rt.admission.started(self.call_id)
        self._turns = TurnWriter(self.rt, self.call_id)
        try:
            await self._run()
        except asyncio.CancelledError:
            self.end_with(R.SERVER_SHUTDOWN if self.rt.shutting_down.is_set() else R.ERROR_INTERNAL, "cancelled")
            raise
        except Exception as exc:
            logger.exception(f"call {self.call_id}: session failed")
            self.end_with(R.ERROR_INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        if self.rt.sessions.pop(self.call_id, None) is not None:
            ACTIVE_CALLS.dec()
        if self._controls:
            self._controls.stop()
        if self._turns:
            await self._turns.close()
        if self._recorder is not None:
            try:
                await self._recorder.close()
            except Exception:
                logger.exception(f"call {self.call_id}: could not finish the recording")
        if self._reason is None:
            if self.rt.shutting_down.is_set():
                self.end_with(R.SERVER_SHUTDOWN)
            else:
                self.end_with(R.ERROR_CARRIER, self._unexpected_close())
        status = "failed" if self._reason.is_error else "completed"
        await self._tell_carrier()
        await repo.end_call(self.rt.db, self.call_id, status=status, reason=self._reason, detail=self._detail,
                            ended_by=self._reason.ended_by, record=await self._record())
        call_feed.publish(self.call_id, {"type": "ended", "reason": str(self._reason), "detail": self._detail})
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                await self.ws.close(code=1000 if status == "completed" else 1011)
            except Exception:
                pass
        media = ""
        if self._serializer is not None:
            s = self._serializer
            media = (f", media in/out {s.media_in}/{s.media_out} ({s.media_direct} read directly), "
                     f"caller frames {s.frames_in}")
        logger.info(f"call {self.call_id}: ended after {self.elapsed():.1f}s: {self._reason}"
                    f"{' (' + self._detail + ')' if self._detail else ''}{media}")
        self._release()

    def _release(self) -> None:
        """Free the ended call's pipecat objects now rather than at the next full collection (call_teardown)."""
        vars(self.ws).pop("receive", None)  # _record_close_code's wrapper
        self._controls = None  # it holds this session's bound methods
        worker, built, transport = self._worker, self._built, self._transport
        self._worker = self._built = self._transport = None
        if worker is None or not worker.has_finished():
            return  # never started, or cancelled mid-run (shutdown): its tasks may still be unwinding
        others = (built.user_aggregator, built.assistant_aggregator) if built else ()
        try:
            n = call_teardown.release(call_teardown.call_objects(worker, transport, *others))
        except Exception:  # the call is over and recorded; the cyclic collector frees what was not emptied
            logger.exception(f"call {self.call_id}: could not release its pipecat objects")
            return
        logger.debug(f"call {self.call_id}: released {n} pipecat objects")

    async def _record(self) -> dict:
        """Usage, cost and latency percentiles for the call's record; a failure here never keeps it open."""
        record: dict = {}
        if self._recorder is not None:
            record["recording_path"] = self._recorder.path.name
        try:
            turns = await repo.transcript(self.rt.db, self.call_id)
            record["latency"] = latency_summary([{"latency_ms": t.latency_ms, "stt_ms": t.stt_ms, "llm_ms": t.llm_ms,
                                                  "tts_ms": t.tts_ms} for t in turns if t.role == "assistant"])
            if self._serializer is not None:
                usage = self._usage.summary(self._serializer.bytes_in, self._serializer.bytes_out)
                record["usage"] = usage
                if self._agent is not None:
                    record["cost"] = estimate_cost(self._agent, usage, self.elapsed(),
                                                   carrier="twilio" if self._call_sid else None)
        except Exception:
            logger.exception(f"call {self.call_id}: could not sum up the call's usage")
        return record

    async def _run(self) -> None:
        call = await repo.get_call(self.rt.db, self.call_id)
        self._call_sid = call.twilio_call_sid if call else None
        agent_row = await repo.get_agent(self.rt.db, call.agent_id) if call and call.agent_id else None
        if agent_row is None:
            self.end_with(R.ERROR_INTERNAL, "the call's agent no longer exists")
            return
        agent = AgentConfig.model_validate(agent_row.config)
        if unfilled := call_variables.missing(agent, call.variables):
            logger.info(f"call {self.call_id}: no value for {', '.join(unfilled)}: their {{{{placeholders}}}} are "
                        "left as written")
        agent = call_variables.render(agent, call.variables)
        for name in local_models_needed(agent):
            await local_models.load(name)  # normally preloaded at start-up; never loaded on the event loop

        self._serializer = self._serializer_factory(self)
        transport = self._transport = FastAPIWebsocketTransport(
            self.ws,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                audio_out_10ms_chunks=_OUT_10MS_CHUNKS,
                # pipecat sends 2 s of silence after an EndFrame "so words don't cut out", as one 21 KB message;
                # the hang-up already waits for the last words to play (_tell_carrier), and waited for that
                # silence too: a full second longer on every call the agent ended.
                audio_out_end_silence_secs=0,
                serializer=self._serializer,
            ),
        )
        self._serializer.bind(transport.output())
        LeadPacer(transport.output())
        audio_out.trim(transport.output())
        audio_in.trim(transport.input())
        take_directly = self.ws.scope.get("extensions", {}).get(ws_protocol.DIRECT)
        if take_directly is not None and hasattr(self._serializer, "deserialize_media"):
            audio_in.direct(transport.input(), take_directly, self._serializer)
        self._tell_carrier_before_closing(transport)
        quiet_when_peer_gone(transport._client, f"call {self.call_id}")  # pipecat 1.14: both transports' one client
        if agent.call.record:
            self._recorder = CallRecorder(self.rt.settings.resolved_recordings_dir / f"{self.call_id}.wav")
            await asyncio.to_thread(self._recorder.open)
            self._serializer.recorder = self._recorder
        self._controls = CallControls(agent.call, None, self.end_with, self._cancel, self.call_id,
                                      on_closing=self._closing)
        tools = await load_toolset(self.rt.db, agent_row.id, self.rt.settings, listener=self._on_tool)
        add_call_tools(tools, agent, self._controls, self.transfer_to)
        ctx = BuildContext(agent=agent, settings=self.rt.settings, on_goodbye=self._on_goodbye,
                           playout=self._serializer, label=f"call {self.call_id}", tools=tools,
                           on_barge_in=lambda verdict, secs: BARGE_IN.labels(verdict=verdict).observe(secs),
                           http_pool=self.rt.http_pool)
        try:
            built = build_call_pipeline(agent, transport, ctx)
        except ProviderError as exc:
            logger.error(f"call {self.call_id}: cannot build the {exc.kind} provider: {exc}")
            self.end_with(_PROVIDER_REASON.get(exc.kind, R.ERROR_INTERNAL), str(exc))
            return
        except UnsupportedArchitecture as exc:
            logger.error(f"call {self.call_id}: {exc}")
            self.end_with(R.ERROR_INTERNAL, str(exc))
            return

        if built.quiet_frames_after_secs is not None:
            self._serializer.coalesce_quiet(built.quiet_frames_after_secs, built.vad_hears_nothing)
        worker = self._worker = PipelineWorker(
            built.pipeline,
            params=PipelineParams(
                audio_in_sample_rate=built.audio_in_sample_rate,
                audio_out_sample_rate=built.audio_out_sample_rate,
                enable_metrics=True,
                enable_usage_metrics=True,
            ),
            enable_rtvi=False,
            enable_turn_tracking=False,  # nothing here reads its turns, and every observer costs a hop per frame
            observers=[self._latency.observer],
        )
        call_observer.install(worker)
        call_observer.stop_observed_only_frames(built.pipeline)
        self._agent = agent
        self._observe(transport, built, worker)
        self._built = built
        self._controls.worker = worker
        self._controls.attach(built.user_aggregator)
        self._controls.start()
        if self._reason is not None:  # stopped from outside (shutdown, voicemail) while the pipeline was being built
            return
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(worker)
        logger.info(f"call {self.call_id}: media stream started, agent {agent.name!r}")
        await runner.run()

    def _closing(self) -> None:
        """From here on the agent only says goodbye: the caller can neither interrupt nor start a turn."""
        self._serializer.holdable = False
        if self._built is not None and self._built.closing_mute is not None:
            self._built.closing_mute.engage()

    async def _on_tool(self, event: ToolEvent) -> None:
        if event.type == "tool_executing":
            self._tool_started[event.call_id] = self.elapsed()
        else:
            self._turns.put_tool(event, self._tool_started.pop(event.call_id, self.elapsed()), self.elapsed())

    def _tell_carrier_before_closing(self, transport: FastAPIWebsocketTransport) -> None:
        """pipecat's transports close the socket as the pipeline ends, and Twilio then runs the rest of the TwiML
        (`<Hangup/>`) at once, so a transfer would hang up instead of dialing. The carrier has to be told first."""
        client = transport._client  # pipecat 1.14 (pinned): the one client both transports close
        close = client.disconnect
        telling: asyncio.Future | None = None

        async def tell_then_close() -> None:
            # Both transports (and the session's end) disconnect; each waits for the one telling, or the first to
            # close would end the call while the carrier is still being told (when audio is left to play).
            nonlocal telling
            if telling is None:
                telling = asyncio.ensure_future(self._tell_carrier())
            await asyncio.shield(telling)
            await close()

        client.disconnect = tell_then_close

    async def _tell_carrier(self) -> None:
        """Hang up (or transfer) through Twilio's REST API before the socket closes: closing it alone would leave
        Twilio to run the rest of the TwiML, which only works for calls voxline answered itself."""
        if self._reason is None or self._carrier_told:
            return  # not decided yet (the session's end will tell), or already told
        self._carrier_told = True
        if self._reason in (R.CALLER_HANGUP, R.SERVER_SHUTDOWN) or not self._call_sid:
            return
        if self._serializer is not None:
            # Let Twilio play the last words it has buffered: a hang-up now would cut them off.
            await asyncio.sleep(min(1.0, self._serializer.unplayed_secs()))
        if not self._carrier.configured:
            logger.debug(f"call {self.call_id}: no Twilio credentials; hanging up by closing the stream")
            return
        try:
            if self._reason is R.TRANSFER and self._transfer_to:
                await self._carrier.transfer(self._call_sid, self._transfer_to)
            else:
                await self._carrier.hang_up(self._call_sid)
        except CarrierError as exc:
            logger.error(f"call {self.call_id}: {exc}")
            self._detail = f"{self._detail}; {exc}" if self._detail else str(exc)

    def transfer_to(self, number: str) -> None:
        self.end_with(R.TRANSFER, f"transferred to {number}")
        self._transfer_to = number

    def _unexpected_close(self) -> str:
        code = self._close.get("code")
        why = f" (code {code}: {_CLOSE_CODES.get(code, 'unknown')})" if code else ""
        detail = f"media stream closed without a stop message{why}"
        logger.warning(f"call {self.call_id}: {detail}")
        return detail

    async def _on_goodbye(self) -> None:
        self.end_with(R.AGENT_HANGUP, "goodbye rule")

    async def _on_pipeline_error(self, frame: ErrorFrame) -> None:
        logger.error(f"call {self.call_id}: pipeline error from {frame.processor}: {frame.error}")
        reason, provider = _error_source(frame, self._agent)
        PROVIDER_ERRORS.labels(reason=str(reason)).inc()
        if provider is not None:
            # A provider that failed after its own retries leaves the caller in silence: apologise and end.
            await self._apologize(reason, f"{provider}: {frame.error}")
        elif frame.fatal:
            self.end_with(reason, frame.error)  # pipecat's worker cancels the pipeline itself
        elif frame.processor is not None and not frame.processor.is_usable:
            # pipecat's worker runs on past a processor that can no longer do its job (its default policy): a call
            # whose output gave up on a write (10 s, as when the event loop stalled that long) went on in silence
            # until the caller hung up, and was recorded as their hang-up. Nothing can be said on it: it ends.
            self.end_with(reason, frame.error)
            self._cancel(f"{frame.processor} can no longer do its job")

    async def _apologize(self, reason: R, detail: str) -> None:
        """Say the agent's apology in the bundled Piper voice (whichever provider failed, this one works), then end."""
        try:
            pcm = await local_models.run_inference(synthesize, self._agent.call.apology, LINE_SAMPLE_RATE)
        except Exception as exc:
            logger.error(f"call {self.call_id}: could not synthesize the apology: {exc}")
            pcm = []
        audio = []
        for chunk in pcm:
            frame = OutputAudioRawFrame(audio=chunk, sample_rate=LINE_SAMPLE_RATE, num_channels=1)
            frame.interruptible = False
            audio.append(frame)
        await self._controls.end_after_speech(reason, detail, audio=audio)

    def _observe(self, transport, built, worker: PipelineWorker) -> None:
        @transport.event_handler("on_client_connected")
        async def _connected(_transport, _ws):
            if built.greeting:
                await worker.queue_frames(built.greeting)

        @transport.event_handler("on_client_disconnected")
        async def _disconnected(_transport, _ws):
            if self._close.get("code") == _SERVER_GOING_AWAY:
                self.end_with(R.SERVER_SHUTDOWN, "server shutting down")
            elif self._reason is None:
                self.end_with(R.ERROR_CARRIER, self._unexpected_close())
            self._cancel("media stream closed")

        @worker.event_handler("on_pipeline_error")
        async def _error(_worker, frame: ErrorFrame):
            await self._on_pipeline_error(frame)

        @worker.event_handler("on_idle_timeout")
        async def _idle(_worker):
            self.end_with(R.SILENCE_TIMEOUT, "no speech from either side")

        user, assistant = built.user_aggregator, built.assistant_aggregator

        @user.event_handler("on_user_turn_started")
        async def _user_started(_agg, _strategy):
            self._turn_start["user"] = self.elapsed()
            call_feed.publish(self.call_id, {"type": "speaking", "who": "caller", "speaking": True})

        @user.event_handler("on_user_turn_stopped")
        async def _user_stopped(_agg, _strategy, _message):
            call_feed.publish(self.call_id, {"type": "speaking", "who": "caller", "speaking": False})

        # Not on_user_turn_stopped: with a realtime model the caller's words are only final when its reply starts.
        @user.event_handler("on_user_turn_message_added")
        async def _user_said(_agg, message):
            if message.content and message.content.strip():
                self._turns.put("user", message.content.strip(), self._turn_start["user"], self.elapsed(), False)

        @assistant.event_handler("on_assistant_turn_started")
        async def _assistant_started(_agg):
            self._turn_start["assistant"] = self.elapsed()
            call_feed.publish(self.call_id, {"type": "speaking", "who": "agent", "speaking": True})

        @assistant.event_handler("on_assistant_turn_stopped")
        async def _assistant_stopped(_agg, message):
            # The aggregator sits after the output transport, so its text is what has been played, sentence by
            # sentence. An interruption before the first sentence finished still leaves an (empty) entry: the
            # agent did speak, and was cut off.
            text = (message.content or "").strip()
            call_feed.publish(self.call_id, {"type": "speaking", "who": "agent", "speaking": False})
            if text or message.interrupted:
                self._turns.put("assistant", text, self._turn_start["assistant"], self.elapsed(), message.interrupted,
                                self._latency.take())
