"""A caller that behaves like Twilio: posts the (signed) incoming-call webhook, follows the TwiML to the media
stream, streams 20 ms μ-law frames in real time (silence between utterances, as a phone line does), records the
agent's audio and echoes `mark`s when the audio before them has played. Used by `voxline call` and the tests."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import websockets
from twilio.request_validator import RequestValidator

from telephony.audio import FRAME_BYTES, LINE_RATE, SILENCE_ULAW

VOICE_PATH = "/telephony/twilio/voice"


@dataclass
class Answer:
    """What the webhook answered: a stream to connect to, a spoken refusal, or a rejection."""

    status_code: int
    twiml: str
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)
    hangup: bool = False
    rejected: str | None = None  # `<Reject reason=…/>`: a full server turned the call away ("busy")


def sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def parse_twiml(status_code: int, body: str) -> Answer:
    answer = Answer(status_code=status_code, twiml=body)
    if status_code != 200:
        return answer
    root = ET.fromstring(body)
    for el in root.iter():
        if el.tag == "Stream":
            answer.stream_url = el.get("url")
            answer.parameters = {p.get("name"): p.get("value") for p in el.findall("Parameter")}
        elif el.tag == "Say":
            answer.said.append(el.text or "")
        elif el.tag == "Hangup":
            answer.hangup = True
        elif el.tag == "Reject":
            answer.rejected = el.get("reason", "rejected")
    return answer


async def post_incoming_call(
    server: str, to: str, from_: str = "+15550199999", *, auth_token: str | None = None,
    account_sid: str = "AC" + "0" * 32, call_sid: str | None = None, public_url: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> Answer:
    """POST the incoming-call webhook as Twilio would (signed over `public_url` when a token is given)."""
    params = {
        "AccountSid": account_sid, "CallSid": call_sid or sid("CA"), "From": from_, "To": to,
        "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", "CallerName": "",
    }
    url = server.rstrip("/") + VOICE_PATH
    headers = {}
    if auth_token:
        signed_url = (public_url or server).rstrip("/") + VOICE_PATH
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(signed_url, params)
    own = client is None
    client = client or httpx.AsyncClient(timeout=10)
    try:
        r = await client.post(url, data=params, headers=headers)
    finally:
        if own:
            await client.aclose()
    return parse_twiml(r.status_code, r.text)


@dataclass
class Received:
    at: float
    message: dict


class MediaStreamCaller:
    """One media stream, Twilio side. Use as an async context manager after `post_incoming_call`."""

    def __init__(self, answer: Answer, *, auth_token: str | None = None, account_sid: str = "AC" + "0" * 32,
                 call_sid: str | None = None, signed_url: str | None = None,
                 prelude: list[str | bytes] | None = None):
        self.answer = answer
        self._prelude = prelude or []  # raw messages sent between `connected` and `start` (tests of bad peers)
        self.stream_sid = sid("MZ")
        self.call_sid = call_sid or sid("CA")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._signed_url = signed_url or answer.stream_url
        self.received: list[Received] = []
        self.agent_audio = bytearray()
        self.media_times: list[float] = []  # arrival time of each agent media message
        self.marks_echoed: list[str] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._speech_done: asyncio.Event | None = None
        self._utterance_starting = False
        self._playout_until = 0.0
        self._pending_marks: list[tuple[float, str]] = []
        self._ws = None
        self._tasks: list[asyncio.Task] = []
        self.on_media: Callable[[bytes], None] | None = None  # each agent audio payload (a live softphone plays it)
        self.on_clear: Callable[[], None] | None = None
        self.first_speech_frame_at = 0.0  # of the latest utterance
        self.last_speech_frame_at = 0.0
        self.speech_frames_sent = 0
        self.idle_frames: list[bytes] = [SILENCE_ULAW]  # sent in turn when there is nothing to say (line noise)

    async def __aenter__(self) -> MediaStreamCaller:
        headers = {}
        if self._auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self._auth_token).compute_signature(self._signed_url, {})
        self._ws = await websockets.connect(self.answer.stream_url, additional_headers=headers, max_size=2**20)
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        for raw in self._prelude:
            await self._ws.send(raw)
        await self.send_json(self.start_message())
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send_media())]
        return self

    def start_message(self) -> dict:
        return {
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {
                "streamSid": self.stream_sid, "accountSid": self.account_sid, "callSid": self.call_sid,
                "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": LINE_RATE, "channels": 1},
                "customParameters": self.answer.parameters,
            },
        }

    async def __aexit__(self, *exc) -> None:
        await self.hang_up()

    async def send_json(self, message: dict) -> None:
        await self._ws.send(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        await self._ws.send(data)

    async def hang_up(self, *, send_stop: bool = True) -> None:
        for task in self._tasks[1:]:
            task.cancel()
        if send_stop and not self.closed.is_set():
            try:
                await self.send_json({"event": "stop", "streamSid": self.stream_sid,
                                      "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
            except websockets.ConnectionClosed:
                pass
        if self._ws is not None:
            await self._ws.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drop(self) -> None:
        """An abrupt disconnect: the TCP connection goes away with no stop and no close handshake."""
        for task in self._tasks:
            task.cancel()
        self._ws.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- sending -----------------------------------------------------------------------------------------------

    async def say(self, ulaw: bytes) -> float:
        """Stream an utterance in real time (between silence frames); returns when its last frame was sent, or
        when the call closes first (an agent may hang up on a caller whose words it has already heard)."""
        done = self._speech_done = asyncio.Event()
        self._utterance_starting = True
        for i in range(0, len(ulaw), FRAME_BYTES):
            self._outbox.put_nowait(ulaw[i:i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))
        self._outbox.put_nowait(b"")  # marker: utterance ends here
        waits = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(self.closed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self.last_speech_frame_at

    def feed(self, frame: bytes) -> None:
        """One 20 ms μ-law frame of live audio, sent in its turn (a microphone)."""
        self._outbox.put_nowait(frame)

    async def _send_media(self) -> None:
        chunk = 0
        next_at = time.monotonic()
        # Twilio's media message, as json.dumps writes it, from a template: the load benchmark's callers send 50 a
        # second each on the server's own cores, so the idle line's payloads are encoded once, not per message.
        template = ('{"event": "media", "sequenceNumber": "%d", "streamSid": ' + json.dumps(self.stream_sid)
                    + ', "media": {"track": "inbound", "chunk": "%d", "timestamp": "%d", "payload": "%s"}}')
        idle_payloads: dict[bytes, str] = {}
        while True:
            try:
                frame = self._outbox.get_nowait()
            except asyncio.QueueEmpty:
                frame = self.idle_frames[chunk % len(self.idle_frames)]
                speaking = False
                payload = idle_payloads.get(frame)
                if payload is None:
                    payload = idle_payloads[frame] = base64.b64encode(frame).decode()
            else:
                speaking = True
                if frame == b"":
                    if self._speech_done:
                        self._speech_done.set()
                    continue
                payload = base64.b64encode(frame).decode()
            chunk += 1
            try:
                await self._ws.send(template % (chunk + 1, chunk, chunk * 20, payload))
            except websockets.ConnectionClosed:
                return
            if speaking:
                self.last_speech_frame_at = time.monotonic()
                if self._utterance_starting:
                    self.first_speech_frame_at, self._utterance_starting = self.last_speech_frame_at, False
                self.speech_frames_sent += 1
            next_at += 0.020
            # Marks are echoed as their audio finishes playing, like Twilio, not only when a message arrives.
            await self._echo_due_marks(time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    # --- receiving ---------------------------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            async for data in self._ws:
                now = time.monotonic()
                message = json.loads(data)
                self.received.append(Received(now, message))
                event = message.get("event")
                if event == "media":
                    audio = base64.b64decode(message["media"]["payload"])
                    self.agent_audio += audio
                    if self.on_media is not None:
                        self.on_media(audio)
                    self.media_times.append(now)
                    self._playout_until = max(now, self._playout_until) + len(audio) / LINE_RATE
                elif event == "mark":
                    self._pending_marks.append((self._playout_until, message["mark"]["name"]))
                elif event == "clear":
                    self._playout_until = now
                    if self.on_clear is not None:
                        self.on_clear()
                    for _, name in self._pending_marks:
                        await self._echo_mark(name)
                    self._pending_marks.clear()
                await self._echo_due_marks(now)
        except websockets.ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            if self._ws is not None and self._ws.close_code is not None and self.close_code is None:
                self.close_code = self._ws.close_code
            self.closed.set()

    async def _echo_due_marks(self, now: float) -> None:
        while self._pending_marks and self._pending_marks[0][0] <= now:
            await self._echo_mark(self._pending_marks.pop(0)[1])

    async def _echo_mark(self, name: str) -> None:
        self.marks_echoed.append(name)
        await self.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    # --- waiting -----------------------------------------------------------------------------------------------

    def events(self, name: str) -> list[Received]:
        return [r for r in self.received if r.message.get("event") == name]

    async def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.closed.is_set():
                return predicate()
            await asyncio.sleep(0.01)
        return predicate()

    async def wait_agent_audio(self, after: float, timeout: float) -> float | None:
        """Arrival time of the first agent media after `after`, or None."""
        ok = await self.wait_for(lambda: any(t > after for t in self.media_times), timeout)
        return next((t for t in self.media_times if t > after), None) if ok else None

    async def wait_agent_quiet(self, quiet: float = 0.7, timeout: float = 30.0) -> bool:
        """Until the agent has sent no audio for `quiet` seconds (and has played what it sent)."""
        def is_quiet():
            last = self.media_times[-1] if self.media_times else 0.0
            return time.monotonic() - max(last, self._playout_until) >= quiet
        return await self.wait_for(is_quiet, timeout)
