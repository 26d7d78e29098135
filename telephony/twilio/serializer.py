"""Twilio Media Streams as a pipecat serializer: the carrier's JSON stops here; the pipeline sees frames.

Unlike pipecat's stock TwilioFrameSerializer it is strict about what the network sends (every malformed message
is logged and dropped; nothing raises, since an exception would end pipecat's receive loop and with it the call),
runs at the line rate with no resampling, reports `mark` and `stop` to the call session, and sends `clear` only
while agent audio may still be playing at Twilio.

It is also the call's `Playout` (pipelines/turns/playout.py): barge-in holds the agent's audio here, at the last
step before the socket, so the agent goes quiet within one chunk and can carry on from the same sample.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import binascii
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable

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

from pipelines.call_pipeline import ULAW_METADATA_KEY
from pipelines.providers.vad import BELOW_GATE_RMS

TWILIO_RATE = 8000
_BYTES_PER_SEC = TWILIO_RATE  # μ-law: one byte per sample
# Recent outbound chunks kept for replay after a hold: ~1 s of 40 ms chunks, more than Twilio's buffer ever holds
# at real-time pacing (the pacer's lead and one chunk).
_RECENT_CHUNKS = 25
# Twilio sends 20 ms of caller audio a message; the pipeline gets 40 ms a frame. Every frame costs the same Python
# work in each processor, observer and queue it passes (the audio inside costs little), so pairing messages halves
# the per-call cost of a listening pipeline, for at most 20 ms more before the VAD (which works on 32 ms windows)
# hears speech. Frames end on the stream's 40 ms boundaries, so no message waits for more than one other.
INPUT_FRAME_BYTES = 320
# Where the agent allows it (coalesce_quiet), a line that has been below the VAD's loudness gate for a while gets
# 1 s frames instead: a listening caller on a digitally silent line (a muted phone, a carrier's silence
# suppression) then costs the pipeline a 25th of the frames. Nothing in them can start the VAD, and the
# first message above the gate ends the wait, so speech reaches the VAD when it did before. 1 s, not 200 ms:
# 0.85 of the CPU per idle call side by side. No clock in the pipeline is shorter while the line is quiet (the
# VAD's 1 s no-audio stop acts only while it hears speech), and a quiet Deepgram batch is 1 s too.
QUIET_FRAME_BYTES = 8000
# A line with a steady noise floor (a quiet room, a fan, a carrier's comfort noise: most real lines) is above that
# gate, so the VAD scores every window of it, but once it has held steady for the same wait, with the VAD hearing
# nothing, its frames grow to 200 ms. Steady: no message louder than STEADY_RATIO times the quietest of the run
# (white noise's 20 ms messages stay within ~1.3 of each other; a word's onset jumps 10–30 dB). The first louder
# message ends the wait as above, so speech that lifts the line's level reaches the VAD when it did with 40 ms
# frames. Speech that does not (under 3.5 dB above the floor, which Silero rarely calls speech) waits at most
# 180 ms more (a frame ends on the grid below); the VAD then no longer hears nothing and frames are 40 ms again
# until the line has been steady and quiet for the wait. Five frames a second instead of 25: the per-frame work
# of a listening caller on a noisy line.
STEADY_FRAME_BYTES = 1600
STEADY_RATIO = 1.5
# Silero scores every window of a steady frame, and the VAD scores all calls' waiting windows in one run
# (pipelines/providers/vad.py), so a steady frame ends at the first message past a 200 ms grid of the process's
# clock rather than after 200 ms of its own line: every steady line's frame then reaches the VAD within the 20 ms
# of the lines' message phases, and its six windows share runs with the other lines' instead of each line's
# frame making six runs of its own (20 lines: ~15 windows a run instead of ~6.6; the VAD alone, 0.85 → 0.64 % of
# a core per line, `bench/vad_batch.py --frame-ms 200 [--aligned]`). The first steady frame is shorter, to reach
# the grid; a burst of late messages is cut at twice the size.
STEADY_FRAME_SECS = STEADY_FRAME_BYTES / TWILIO_RATE
STEADY_BURST_BYTES = 2 * STEADY_FRAME_BYTES


def _grid_point_after(now: float) -> float:
    return (now // STEADY_FRAME_SECS + 1) * STEADY_FRAME_SECS


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


NOT_MEDIA = object()  # deserialize_media: a message that is not the caller's media


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
        self.media_direct = 0  # media messages read by deserialize_media
        self.frames_in = 0  # pipeline frames the caller's media made
        self.media_out = 0
        self.bytes_in = 0  # μ-law bytes: the call's audio seconds at 8,000 a second, for its usage record
        self.bytes_out = 0
        # Playout state (see hold/resume): the audio task blocks in serialize() while held.
        self._output = None
        self._released = asyncio.Event()
        self._released.set()
        self._blocked = False
        self._discard_blocked = False
        self._replay = b""
        self._recent: deque[bytes] = deque(maxlen=_RECENT_CHUNKS)
        self._pending_marks: dict[str, bool] = {}  # sent, not echoed yet → cleared by a hold?
        self._mark_callback: Callable[[str], Awaitable[None]] | None = None
        self.holdable = True
        self.recorder = None  # a CallRecorder when the agent records calls
        self._inbound = bytearray()  # caller audio (μ-law) waiting to make up one pipeline frame
        self._inbound_pcm = bytearray()  # the same audio as 16-bit PCM
        self._quiet_after: int | None = None  # bytes below the gate after which frames grow; None: never
        self._quiet_run = 0  # bytes below the gate since the last message above it
        self._hears_nothing: Callable[[], bool] | None = None  # the VAD's: frames grow on a steady line only then
        self._steady_run = 0  # bytes since the line's level last jumped
        self._steady_floor = 0  # the quietest message's RMS in that run
        self._steady_until: float | None = None  # the grid point at which the steady frame being made ends
        self._clock: Callable[[], float] = time.monotonic

    def coalesce_quiet(self, after_secs: float, hears_nothing: Callable[[], bool] | None = None,
                       clock: Callable[[], float] = time.monotonic) -> None:
        """Send the pipeline QUIET_FRAME_BYTES frames once the caller's audio has been below the VAD's loudness gate
        for `after_secs` on end. The caller (pipelines/architectures/pipeline.py) picks a time by which every rule
        that counts the caller's silence in audio (the VAD's stop, smart-turn's limit) has had its say.
        With `hears_nothing` (the VAD's: True while it hears no speech), a line whose level has held steady for as
        long gets frames of about STEADY_FRAME_BYTES while the VAD hears nothing, ending on `clock`'s grid of
        STEADY_FRAME_SECS (the same clock for every call of the process)."""
        self._quiet_after = int(after_secs * TWILIO_RATE)
        self._hears_nothing = hears_nothing
        self._clock = clock

    @property
    def stream_sid(self) -> str:
        return self._stream_sid

    async def setup(self, setup: FrameProcessorSetup):
        if setup.audio_in_sample_rate != TWILIO_RATE:
            raise ValueError(f"the Twilio serializer runs the pipeline at {TWILIO_RATE} Hz")

    # --- Twilio → pipeline -------------------------------------------------------------------------------------

    def deserialize_media(self, data: str) -> Frame | None | object:
        """What `deserialize` makes of a media message, or of an unreadable one (None, warned), with no coroutine:
        the socket hands the caller's 50 messages a second straight to it (telephony/audio_in.py). NOT_MEDIA for
        every other message, which is `deserialize`'s."""
        message = parse_message(data, self._warn)
        if message is None:
            return None
        if message["event"] != "media":
            return NOT_MEDIA
        self.media_direct += 1
        return self._media(message)

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
                await self._mark_echoed(name)
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
        self.bytes_in += len(ulaw)
        pcm = audioop.ulaw2lin(ulaw, 2)
        if self.recorder is not None:
            self.recorder.caller(pcm)  # per message, as it arrives: the recording's clock (runtime/recording.py)
        limit = INPUT_FRAME_BYTES
        if self._quiet_after is not None:
            rms = audioop.rms(pcm, 2)
            self._quiet_run = self._quiet_run + len(ulaw) if rms <= BELOW_GATE_RMS else 0
            steady = self._hears_nothing is not None and self._steady(rms, len(ulaw))
            if steady and self._quiet_run < self._quiet_after:
                ends = self._steady_frame_ends(len(self._inbound) + len(ulaw))
                limit = INPUT_FRAME_BYTES if ends else STEADY_BURST_BYTES  # a burst of late messages: by size
            else:
                self._steady_until = None
                if self._quiet_run >= self._quiet_after:
                    limit = QUIET_FRAME_BYTES
        self._inbound += ulaw
        self._inbound_pcm += pcm
        if len(self._inbound) < limit:
            return None
        # Frames end on the same 40 ms boundaries of the stream whatever their length (a quiet frame is 25 of those
        # joined), so the first sound after a quiet stretch waits for the rest of its 40 ms as it always did,
        # and the VAD changes state on the same message it would with 40 ms frames throughout.
        keep = self.bytes_in % INPUT_FRAME_BYTES
        if keep:
            cut = len(self._inbound) - keep
            ulaw, pcm = bytes(self._inbound[:cut]), bytes(self._inbound_pcm[:2 * cut])
            del self._inbound[:cut], self._inbound_pcm[:2 * cut]
        else:
            ulaw, pcm = bytes(self._inbound), bytes(self._inbound_pcm)
            self._inbound.clear()
            self._inbound_pcm.clear()
        self.frames_in += 1
        frame = InputAudioRawFrame(audio=pcm, num_channels=1, sample_rate=TWILIO_RATE)
        frame.metadata[ULAW_METADATA_KEY] = ulaw
        return frame

    def _steady_frame_ends(self, size: int) -> bool:
        """Whether this message ends the steady frame being made (`size` bytes with it): the first message at or past
        the grid's next point does, once the frame holds 40 ms."""
        now = self._clock()
        if self._steady_until is None:
            self._steady_until = _grid_point_after(now)
        if now < self._steady_until or size < INPUT_FRAME_BYTES:
            return False
        self._steady_until = _grid_point_after(now)
        return True

    def _steady(self, rms: int, size: int) -> bool:
        """Whether the line's level has held within STEADY_RATIO of its quietest message for the wait, this message
        included, all of it while the VAD heard nothing; a louder message starts a new run. Counted from the VAD's
        quiet, not the words' end: every rule that counts silence in audio (the VAD's stop, smart-turn's limit) has
        had its say before frames grow, as on a silent line."""
        if not self._hears_nothing():
            self._steady_run = 0
            return False
        rms = max(rms, BELOW_GATE_RMS)  # below the gate all is one level: silence, then noise, is a jump
        if self._steady_run and rms <= self._steady_floor * STEADY_RATIO:
            self._steady_run += size
            self._steady_floor = min(self._steady_floor, rms)
        else:
            self._steady_run, self._steady_floor = size, rms
        return self._steady_run >= self._quiet_after

    # --- pipeline → Twilio -------------------------------------------------------------------------------------

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, AudioRawFrame):
            if frame.sample_rate != TWILIO_RATE:
                logger.error(f"{self._warn.label}: output audio at {frame.sample_rate} Hz, expected {TWILIO_RATE}")
                return None
            if not self._released.is_set():
                self._blocked = True
                try:
                    await self._released.wait()
                finally:
                    self._blocked = False
                if self._discard_blocked:
                    self._discard_blocked = False
                    return None
            ulaw = audioop.lin2ulaw(frame.audio, 2)
            if not ulaw:
                return None
            if self.recorder is not None:
                self.recorder.agent(frame.audio)
            if self._replay:
                ulaw, self._replay = self._replay + ulaw, b""
            self._recent.append(ulaw)
            now = time.monotonic()
            self._playout_until = max(now, self._playout_until) + len(ulaw) / _BYTES_PER_SEC
            self.media_out += 1
            self.bytes_out += len(ulaw)
            return json.dumps(
                {"event": "media", "streamSid": self._stream_sid, "media": {"payload": base64.b64encode(ulaw).decode()}}
            )
        if isinstance(frame, InterruptionFrame):
            if self.holding:
                self.drop()
            if time.monotonic() >= self._playout_until:
                return None  # nothing left playing at Twilio: a clear would do nothing but cost a message
            self._playout_until = 0.0
            return json.dumps({"event": "clear", "streamSid": self._stream_sid})
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            message = dict(frame.message)
            message.setdefault("streamSid", self._stream_sid)
            return json.dumps(message)
        return None

    # --- Playout ------------------------------------------------------------------------------------------------

    def bind(self, output) -> None:
        """The output transport that carries our own messages (`clear`, `mark`) to the socket."""
        self._output = output

    def unplayed_secs(self) -> float:
        """How much of the audio already sent Twilio has still to play."""
        return max(0.0, self._playout_until - time.monotonic())

    @property
    def holding(self) -> bool:
        return not self._released.is_set()

    async def hold(self) -> bool:
        if not self.holdable or self._output is None:
            return False
        if self.holding:
            return True
        self._released.clear()
        now = time.monotonic()
        unplayed = int((self._playout_until - now) * _BYTES_PER_SEC)
        if unplayed > 0:
            # What Twilio will drop on `clear`; played again first if the agent resumes.
            self._replay = b"".join(self._recent)[-unplayed:]
            self._playout_until = 0.0
            for name in self._pending_marks:
                self._pending_marks[name] = True
            await self._output.send_message(OutputTransportMessageUrgentFrame(message={"event": "clear"}))
        return True

    async def resume(self) -> None:
        if not self.holding:
            return
        # Marks cleared by the hold: the audio before them is about to be replayed, so they count as played.
        cleared = [name for name, was_cleared in self._pending_marks.items() if was_cleared]
        for name in cleared:
            del self._pending_marks[name]
        self._released.set()
        for name in cleared:
            await self._report_mark(name)

    def drop(self) -> None:
        self._replay = b""
        for name in [n for n, was_cleared in self._pending_marks.items() if was_cleared]:
            del self._pending_marks[name]
        if self._blocked:
            self._discard_blocked = True
        self._released.set()

    async def mark(self, name: str) -> None:
        if self._output is None:
            return
        self._pending_marks[name] = False
        await self._output.send_message(OutputTransportMessageUrgentFrame(message={"event": "mark", "mark": {"name": name}}))

    def on_mark(self, callback: Callable[[str], Awaitable[None]]) -> None:
        self._mark_callback = callback

    async def _mark_echoed(self, name: str) -> None:
        cleared = self._pending_marks.pop(name, None)
        if cleared:
            self._pending_marks[name] = True  # echoed because of our `clear`: not played; resume() decides
            return
        await self._report_mark(name)
        await self._events.on_mark(name)

    async def _report_mark(self, name: str) -> None:
        if self._mark_callback is not None:
            await self._mark_callback(name)
