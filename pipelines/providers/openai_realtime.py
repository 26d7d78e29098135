"""OpenAI Realtime on a phone line: G.711 μ-law in and out, at the line's 8 kHz.

pipecat's OpenAIRealtimeLLMService always asks for 24 kHz PCM, so a phone call would be resampled 8→24 kHz on the way
in (a stream resampler that adds ~100 ms) and 24→8 kHz on the way out. The Realtime API speaks PCMU natively, so this
subclass asks for `audio/pcmu` both ways: the caller's μ-law bytes go to OpenAI as Twilio sent them, and OpenAI's
μ-law comes back at 8 kHz, where only the exact G.711 table lookup to the pipeline's PCM form remains.

It also bounds how long the server may stay quiet while an answer is owed (see PhoneRealtimeService): pipecat waits
on the socket forever, so a server that took the connection but never speaks would leave the caller in silence
until call.max_duration_secs.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from websockets.asyncio.client import connect as websocket_connect

from config.agent import AgentConfig, RealtimeConfig
from pipelines.call_pipeline import LINE_SAMPLE_RATE, ULAW_METADATA_KEY
from pipelines.providers.endpoint_guard import connect_public_only
from pipelines.providers.tls import ws_tls

DEFAULT_TIMEOUT_SECS = 10.0  # as RealtimeConfig.timeout_secs, which explains it
_ULAW_BYTES_PER_MS = LINE_SAMPLE_RATE // 1000


def session_properties(agent: AgentConfig, section: RealtimeConfig) -> events.SessionProperties:
    return events.SessionProperties(
        instructions=agent.system_prompt,
        audio=events.AudioConfiguration(
            input=events.AudioInput(
                format=events.PCMUAudioFormat(),
                transcription=events.InputAudioTranscription(language=(agent.transcriber.language
                                                                       if agent.transcriber else "en")),
                turn_detection=events.TurnDetection(silence_duration_ms=int(agent.turn.silence_secs * 1000)),
            ),
            output=events.AudioOutput(format=events.PCMUAudioFormat(), voice=section.voice),
        ),
    )


class RealtimeResponseTimeout(TimeoutError):
    """The Realtime server sent no event for `timeout_secs` while an answer was owed. A TimeoutError, so pipecat
    files it as a connectivity fault, like the dropped socket it stands for."""


class PhoneRealtimeService(OpenAIRealtimeLLMService):
    """The Realtime service on a phone line, with a watchdog on the server's silence.

    The server owes us an event after we connect (`session.created`, then `session.updated` for our session update:
    until then the welcome cannot even be asked for), after each `response.create` we send, and after its own VAD's
    `input_audio_buffer.speech_stopped` (it then makes the response itself), until that response's `response.done`.
    While one is owed, `timeout_secs` without any server event at all (each one resets the clock: a long reply
    streams deltas) fails the service through pipecat's `push_error`, the path of a dropped socket: the call
    apologises and ends `error_realtime`. When nothing is owed (the caller thinking in silence, a tool running
    between `response.done` and the next `response.create`) no clock runs.
    """

    def __init__(self, *, timeout_secs: float = DEFAULT_TIMEOUT_SECS, public_only_for: str | None = None,
                 **kwargs: Any):
        """`public_only_for`: who the base URL is (for log lines), when it may reach only public addresses
        (pipelines/providers/endpoint_guard.py)."""
        self._timeout_secs = timeout_secs
        self._public_only_for = public_only_for
        # What the server owes ("session", "response"), kept apart so that settling one (a mid-call session.updated)
        # does not stop the clock on the other. The clock runs while this is not empty.
        self._owed: set[str] = set()
        self._deadline = 0.0  # loop time by which the server must send something, while anything is owed
        self._owing = asyncio.Event()  # wakes the watchdog when something becomes owed
        self._watchdog: asyncio.Task | None = None
        self._listening = False  # pipecat's receive loop is running: without it, nothing owed can ever arrive
        super().__init__(**kwargs)

    def _expect(self, what: str):
        if not self._listening:
            return
        self._owed.add(what)
        self._deadline = asyncio.get_running_loop().time() + self._timeout_secs
        self._owing.set()

    def _settle(self, what: str):
        self._owed.discard(what)

    async def _connect(self):
        await self._connect_shared_tls()
        ws = self._websocket
        if ws is None or self._watchdog is not None:  # the connect failed (already reported), or was not needed
            return
        # The seam for "a server event arrived": the connection's own `recv`, wrapped on this one instance.
        # pipecat's _receive_task_handler reads with `async for message in self._websocket`, and websockets'
        # Connection.__aiter__ awaits `self.recv()` per message, so this sees every message before pipecat parses
        # it, without copying that 40-line dispatch loop (a fork to keep in step with pipecat) and without patching
        # `events.parse_server_event`, which is module-wide and would touch every instance in the process.
        recv = ws.recv

        async def recv_noting_activity(*args, **kwargs):
            message = await recv(*args, **kwargs)
            if self._owed:
                self._deadline = asyncio.get_running_loop().time() + self._timeout_secs
            return message

        ws.recv = recv_noting_activity  # type: ignore[method-assign]
        self._listening = True  # _connect_shared_tls has just created the receive task, which has not run yet
        self._expect("session")  # session.created, then session.updated (the welcome waits for it)
        self._watchdog = self.create_task(self._watch(), name=f"{self}::realtime-watchdog")

    async def _connect_shared_tls(self):
        """pipecat 1.14's `_connect`, with the process's TLS context (pipelines/providers/tls.py: a new one per call
        loaded the CA store on the event loop), dialling the checked address when the URL may reach only public
        ones."""
        if self._websocket:
            return
        try:
            self._websocket = await self._open_socket()
            self._receive_task = self.create_task(self._receive_task_handler())
        except Exception as e:
            await self.push_error(error_msg=f"Error connecting: {e}", exception=e)
            self._websocket = None

    async def _open_socket(self):
        options = ws_tls(self.base_url, {"additional_headers": await self._auth_headers()})
        if self._public_only_for is None:
            return await websocket_connect(uri=self.base_url, **options)
        return await connect_public_only(self.base_url, who=self._public_only_for, field="realtime.base_url",
                                         **options)

    async def _disconnect(self):
        # stop, cancel and cleanup all come here (and reset_conversation, which then connects again).
        self._owed.clear()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            await self.cancel_task(watchdog)
        await super()._disconnect()

    async def _receive_task_handler(self):
        ws = self._websocket
        try:
            await super()._receive_task_handler()
        finally:
            if ws is not None:
                vars(ws).pop("recv", None)  # _connect's wrapper, a cycle through the socket
            # Nothing more can arrive. An exception here (a dropped socket) pipecat reports itself, and so a fatal
            # `error` event (_handle_evt_error settles what was owed first); our own disconnect settles it too.
            owed, self._owed = self._owed, set()
            self._listening = False
        if owed and not self._disconnecting:
            # The loop ended without an error while an answer was due: the server closed its socket cleanly
            # (1000), which pipecat's loop takes as the end of the session and reports to nobody.
            code = getattr(self._websocket, "close_code", None)
            message = f"openai realtime: the server closed the connection ({code}) while an answer was due"
            await self.push_error(error_msg=message, exception=ConnectionError(message))

    async def _handle_evt_error(self, evt):
        self._owed.clear()  # pipecat reports this fatal error itself: one apology, not two
        await super()._handle_evt_error(evt)

    async def _watch(self):
        loop = asyncio.get_running_loop()
        while True:
            if not self._owed:
                self._owing.clear()
                await self._owing.wait()
                continue
            left = self._deadline - loop.time()
            if left > 0:
                await asyncio.sleep(left)
                continue
            self._owed.clear()
            if self._websocket is not None:
                # A server that sent nothing for timeout_secs will not answer the close handshake either (nor read
                # it, behind the audio it has not read): without this, ending the call waits out websockets'
                # 10 s close timeout after the apology.
                self._websocket.close_timeout = 0
            message = f"openai realtime: no response within {self._timeout_secs:g} s"
            await self.push_error(error_msg=message, exception=RealtimeResponseTimeout(message))
            return

    async def send_client_event(self, event: events.ClientEvent):
        # Every response.create (pipecat's _create_response, and its own after a local turn end) owes a
        # response.done. Owed before sending: the reply could otherwise be handled before the clock starts, leaving
        # it running with nothing owed.
        if isinstance(event, events.ResponseCreateEvent) and self._websocket is not None and not self._disconnecting:
            self._expect("response")
        await super().send_client_event(event)

    async def _handle_evt_session_updated(self, evt):
        self._settle("session")  # before the base handler, which may send the welcome's response.create
        await super()._handle_evt_session_updated(evt)

    async def _handle_evt_speech_stopped(self, evt):
        self._expect("response")  # the server's VAD ended the turn: it makes the response, we send nothing
        await super()._handle_evt_speech_stopped(evt)

    async def _handle_evt_response_done(self, evt):
        self._settle("response")  # before the base handler, which may send a held response.create
        await super()._handle_evt_response_done(evt)

    async def _send_user_audio(self, frame: InputAudioRawFrame):
        ulaw = frame.metadata.get(ULAW_METADATA_KEY) if frame.sample_rate == LINE_SAMPLE_RATE else None
        if ulaw is None:
            if frame.sample_rate != LINE_SAMPLE_RATE:
                raise ValueError(f"realtime phone audio must be {LINE_SAMPLE_RATE} Hz, got {frame.sample_rate}")
            ulaw = audioop.lin2ulaw(frame.audio, 2)
        await self.send_client_event(events.InputAudioBufferAppendEvent(audio=base64.b64encode(ulaw).decode()))

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if isinstance(frame, TTSAudioRawFrame) and frame.sample_rate != LINE_SAMPLE_RATE:
            # The base class labels every audio delta 24 kHz PCM; with PCMU sessions it is 8 kHz μ-law.
            frame.audio = audioop.ulaw2lin(frame.audio, 2)
            frame.sample_rate = LINE_SAMPLE_RATE
            frame.num_frames = len(frame.audio) // 2
        await super().push_frame(frame, direction)

    def _calculate_audio_duration_ms(self, total_bytes: int, sample_rate: int = LINE_SAMPLE_RATE,
                                     bytes_per_sample: int = 1) -> int:
        # Truncation on barge-in is computed from bytes received: μ-law is one byte per 8 kHz sample.
        return total_bytes // _ULAW_BYTES_PER_MS
