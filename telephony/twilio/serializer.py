"""Twilio Media Streams as a pipecat serializer: the carrier's JSON stops here; the pipeline sees frames.

Unlike pipecat's stock TwilioFrameSerializer it is strict about what the network sends (every malformed message
is logged and dropped; nothing raises, since an exception would end pipecat's receive loop and with it the call),
runs at the line rate with no resampling, reports `mark` and `stop` to the call session, and sends `clear` only
while agent audio may still be playing at Twilio.
"""

from __future__ import annotations

import audioop
import base64
import binascii
import json
import time
from collections.abc import Callable

from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    AudioRawFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer

TWILIO_RATE = 8000
_BYTES_PER_SEC = TWILIO_RATE  # μ-law: one byte per sample


class StreamEvents:
    """What the serializer reports to the session. Defaults do nothing."""

    async def on_stream_stop(self, message: dict) -> None: ...

    async def on_mark(self, name: str) -> None: ...


class ProtocolWarnings:
    """Logs each kind of bad input the first few times, then every 100th, so a flood cannot flood the log."""

    def __init__(self, label: str, first: int = 3):
        self.label = label
        self.first = first
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, detail: str = "") -> None:
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        if n <= self.first or n % 100 == 0:
            logger.warning(f"{self.label}: {kind}{': ' + detail if detail else ''} (#{n}, dropped)")


def parse_message(data: str | bytes, warn: Callable[[str, str], None]) -> dict | None:
    """One Twilio message as a dict with a string `event`, or None (logged) when it is not one."""
    if isinstance(data, bytes):
        warn("binary frame", f"{len(data)} bytes; Media Streams messages are JSON text")
        return None
    try:
        message = json.loads(data)
    except json.JSONDecodeError as exc:
        warn("malformed JSON", f"{exc.msg} at char {exc.pos}")
        return None
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        warn("message without an event", type(message).__name__)
        return None
    return message


class TwilioMediaSerializer(FrameSerializer):
    def __init__(self, stream_sid: str, events: StreamEvents, *, label: str = "twilio"):
        super().__init__()
        self._stream_sid = stream_sid
        self._events = events
        self._warn = ProtocolWarnings(label)
        self._sample_rate = TWILIO_RATE
        # Monotonic time at which all audio sent so far will have played at Twilio (the output is paced at real
        # time, so this is exact to within one chunk); a `clear` is only worth sending before it.
        self._playout_until = 0.0
        self.media_in = 0
        self.media_out = 0

    @property
    def stream_sid(self) -> str:
        return self._stream_sid

    async def setup(self, setup: FrameProcessorSetup):
        if setup.audio_in_sample_rate != TWILIO_RATE:
            raise ValueError(f"the Twilio serializer runs the pipeline at {TWILIO_RATE} Hz")

    # --- Twilio → pipeline -------------------------------------------------------------------------------------

    async def deserialize(self, data: str | bytes) -> Frame | None:
        message = parse_message(data, self._warn)
        if message is None:
            return None
        event = message["event"]
        if event == "media":
            return self._media(message)
        if event == "dtmf":
            digit = (message.get("dtmf") or {}).get("digit") if isinstance(message.get("dtmf"), dict) else None
            try:
                return InputDTMFFrame(KeypadEntry(digit))
            except ValueError:
                self._warn("invalid dtmf digit", repr(digit)[:20])
                return None
        if event == "mark":
            name = (message.get("mark") or {}).get("name") if isinstance(message.get("mark"), dict) else None
            if isinstance(name, str):
                await self._events.on_mark(name)
            else:
                self._warn("mark without a name")
            return None
        if event == "stop":
            await self._events.on_stream_stop(message)
            return None
        if event == "start":
            self._warn("second start", "a stream has exactly one start; ignored")
            return None
        if event == "connected":
            return None
        self._warn("unknown event", repr(event)[:40])
        return None

    def _media(self, message: dict) -> Frame | None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str) or not payload:
            self._warn("media without a payload")
            return None
        sid = message.get("streamSid")
        if sid is not None and sid != self._stream_sid:
            self._warn("media for another stream", repr(sid)[:40])
            return None
        if isinstance(media, dict) and media.get("track") not in (None, "inbound", "inbound_track"):
            return None  # outbound-track echo when both tracks are streamed: not the caller
        try:
            ulaw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            self._warn("invalid base64 payload", str(exc))
            return None
        self.media_in += 1
        return InputAudioRawFrame(audio=audioop.ulaw2lin(ulaw, 2), num_channels=1, sample_rate=TWILIO_RATE)

    # --- pipeline → Twilio -------------------------------------------------------------------------------------

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, AudioRawFrame):
            if frame.sample_rate != TWILIO_RATE:
                logger.error(f"{self._warn.label}: output audio at {frame.sample_rate} Hz, expected {TWILIO_RATE}")
                return None
            ulaw = audioop.lin2ulaw(frame.audio, 2)
            if not ulaw:
                return None
            now = time.monotonic()
            self._playout_until = max(now, self._playout_until) + len(ulaw) / _BYTES_PER_SEC
            self.media_out += 1
            return json.dumps(
                {"event": "media", "streamSid": self._stream_sid, "media": {"payload": base64.b64encode(ulaw).decode()}}
            )
        if isinstance(frame, InterruptionFrame):
            if time.monotonic() >= self._playout_until:
                return None  # nothing left playing at Twilio: a clear would do nothing but cost a message
            self._playout_until = 0.0
            return json.dumps({"event": "clear", "streamSid": self._stream_sid})
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            message = dict(frame.message)
            message.setdefault("streamSid", self._stream_sid)
            return json.dumps(message)
        return None
