"""Deepgram streaming STT that sends a quiet line in larger pieces.

pipecat sends Deepgram every input frame as its own WebSocket message, 25 a second per call at our 40 ms frames, and
each one costs this server a Python send (~a quarter of an idle call's CPU in a profile of 40 idle calls). Most of
a call the caller is quiet: listening to the agent or thinking. There the audio only has to reach Deepgram in
order, not at once, so once the caller has been quiet for `LIVE_AFTER_STOP_SECS` after their last words, frames are
batched into `QUIET_BATCH_SECS` pieces. Nothing is dropped or reordered, so Deepgram's timestamps are unchanged.

Deepgram's empty answer to the Finalize pipecat sends at each VAD stop (nothing more was said: a cough, or an
interim's words it then dropped) goes on as a `NothingMoreHeardFrame` (pipelines/stt_frames.py), for the turn rules
that would otherwise wait out a timeout for words that are not coming.

The caller starting to speak (the VAD's start, ~0.1 s into the words) sends what is waiting at once, so Deepgram
hears the words' onset as soon as before, in one piece. While the caller speaks, audio goes out in `LIVE_BATCH_SECS`
pieces (two of our 40 ms frames): half pipecat's sends, each a WebSocket frame and a socket write on the event loop,
at the time the server is busiest (a burst of callers talking). Nothing a turn waits for comes later: the VAD's stop
sends what waits before pipecat's `Finalize`, which asks for the final transcript, so the final covers every word
as before; an interim transcript comes at most one frame (40 ms) later. Up to `QUIET_BATCH_SECS` of quiet still
waiting when the call ends is not sent.

pipecat builds a Deepgram SDK client per service, so per call, and the SDK gives it an HTTP client of its own (a
new TLS context: the CA store loaded, ~33 ms on the event loop), which a streaming STT never uses; and the SDK dials
`wss://` with a TLS context made for that one connection (the same again). Both get the process's shared context
(pipelines/providers/tls.py) through the two names the SDK and pipecat 1.14 look up at call time, rebound once when
this module is imported; a test fails if either seam moves (tests/test_provider_tls.py).

The SDK also builds each connection's headers by reading its own version from the installed packages' metadata, a
scan of site-packages: ~0.75 ms on the event loop per call, and a reference cycle left for the full collector. What
those headers hold but the key and the caller's own headers is the same for every connection, so it is read once
(`_sdk_headers`; tests/test_provider_tls.py compares it with the SDK's).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator

import deepgram.listen.v1.client as deepgram_listen
import httpx
import pipecat.services.deepgram.stt as pipecat_deepgram
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.client_wrapper import BaseClientWrapper
from deepgram.listen.v1.types import ListenV1Results
from pipecat.frames.frames import Frame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.deepgram.stt import DeepgramSTTService

from pipelines.providers.tls import tls_context, ws_tls
from pipelines.stt_frames import NothingMoreHeardFrame

# 1 s: a quiet line is 1 send a second instead of 5; ~6 % less CPU per idle call side by side (bench/side_by_side.py).
QUIET_BATCH_SECS = 1.0
LIVE_AFTER_STOP_SECS = 1.0  # a pause this short may be mid-sentence, and Deepgram's own endpointing runs on it
# Deepgram asks for 20–250 ms of audio a message when streaming; 80 ms is two of our 40 ms input frames.
LIVE_BATCH_SECS = 0.08


SDK_TIMEOUT_SECS = 60  # the SDK's own default for a client it makes


class SharedTLSDeepgramClient(AsyncDeepgramClient):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("httpx_client", httpx.AsyncClient(verify=tls_context(), timeout=SDK_TIMEOUT_SECS))
        super().__init__(*args, **kwargs)


_sdk_ws_connect = deepgram_listen.websockets_client_connect


def _ws_connect_shared_tls(uri: str, *args, **kwargs):
    return _sdk_ws_connect(uri, *args, **ws_tls(uri, kwargs))


pipecat_deepgram.AsyncDeepgramClient = SharedTLSDeepgramClient
deepgram_listen.websockets_client_connect = _ws_connect_shared_tls

_sdk_get_headers = BaseClientWrapper.get_headers


@functools.cache
def _sdk_headers() -> dict[str, str]:
    """The SDK's headers without the key or the caller's own (its name, version and platform)."""
    headers = _sdk_get_headers(BaseClientWrapper(api_key="", environment=DeepgramClientEnvironment.PRODUCTION))
    del headers["Authorization"]
    return headers


def _get_headers(self: BaseClientWrapper) -> dict[str, str]:
    # As deepgram-sdk 7.17's (pinned), in the same order.
    return {**_sdk_headers(), **(self.get_custom_headers() or {}), "Authorization": f"Token {self.api_key}"}


BaseClientWrapper.get_headers = _get_headers  # type: ignore[method-assign]


class QuietBatchingDeepgramSTT(DeepgramSTTService):
    def __init__(self, *args, quiet_batch_secs: float = QUIET_BATCH_SECS,
                 live_after_stop_secs: float = LIVE_AFTER_STOP_SECS, live_batch_secs: float = LIVE_BATCH_SECS,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._quiet_batch_secs = quiet_batch_secs
        self._live_after_stop_secs = live_after_stop_secs
        self._live_batch_secs = live_batch_secs
        self._batch_bytes = 0  # known once the pipeline's sample rate is (the first audio)
        self._live_bytes = 0
        self._pending = bytearray()
        self._speaking = False
        self._live_until = 0.0
        self.messages_sent = 0  # audio messages, for tests and benchmarks
        self._finalizing_on = None  # the connection the counts below are of
        self._finalizes_sent = 0
        self._finalizes_answered = 0
        self._spoke_since_finalize = False  # the caller spoke again after the latest Finalize was sent

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        if not self._batch_bytes:
            self._batch_bytes = int(self.sample_rate * 2 * self._quiet_batch_secs)  # 16-bit mono
            self._live_bytes = int(self.sample_rate * 2 * self._live_batch_secs)
        piece = self._live_bytes if self._speaking or time.monotonic() < self._live_until else self._batch_bytes
        if not self._pending and len(audio) >= piece:
            await self._send(audio)  # a whole piece already (a quiet line's 1 s frame): no copy
        else:
            self._pending += audio
            if len(self._pending) >= piece:
                await self._send_pending()
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speaking = True
            self._spoke_since_finalize = True
            await self._send_pending()  # the words' onset, before anything the start sets off
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            self._live_until = time.monotonic() + self._live_after_stop_secs
            await self._send_pending()  # the words' end, before pipecat's Finalize asks for the final transcript
            if self._connection:  # pipecat's process_frame sends the Finalize on the same condition
                if self._connection is not self._finalizing_on:  # a new connection answers only its own
                    self._finalizing_on, self._finalizes_sent, self._finalizes_answered = self._connection, 0, 0
                self._finalizes_sent += 1
                self._spoke_since_finalize = False
        await super().process_frame(frame, direction)

    async def _on_message(self, message):
        await super()._on_message(message)
        if (isinstance(message, ListenV1Results) and message.is_final and getattr(message, "from_finalize", False)
                and message.channel and message.channel.alternatives):
            # Deepgram answers each Finalize with one final. An empty answer says nothing of the audio after its
            # Finalize, so only the latest one's counts, and only if the caller has not spoken again since.
            self._finalizes_answered += 1
            if (not message.channel.alternatives[0].transcript and self._finalizes_answered >= self._finalizes_sent
                    and not self._spoke_since_finalize):
                await self.push_frame(NothingMoreHeardFrame())

    async def _send_pending(self) -> None:
        if self._pending:
            audio = bytes(self._pending)
            self._pending.clear()
            await self._send(audio)

    async def _send(self, audio: bytes) -> None:
        self.messages_sent += 1
        async for _ in super().run_stt(audio):  # pipecat's send: it yields only None
            pass
