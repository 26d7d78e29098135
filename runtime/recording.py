"""Stereo call recordings (caller left, agent right), written while the call runs.

The caller's audio is the clock: it arrives every 20 ms for as long as the call lasts, so each caller frame is paired
with as much agent audio as has been *sent* in the meantime (silence when the agent is quiet). The agent's audio is
paced at real time by the output transport, so the two channels stay aligned to within a chunk, and what was cleared
at Twilio on a barge-in (a few tens of ms) is the only audio recorded but not heard.

Memory stays bounded however long the call is: frames go to a small buffer that is flushed to the file, off the event
loop, about once a second; agent audio waiting for its caller frame is capped too.
"""

from __future__ import annotations

import asyncio
import audioop
import wave
from pathlib import Path

from loguru import logger

_FLUSH_BYTES = 8000 * 4  # one second of 16-bit stereo at 8 kHz
_MAX_PENDING_AGENT_BYTES = 8000 * 2 * 2  # two seconds of agent audio ahead of the caller's clock


class CallRecorder:
    def __init__(self, path: Path, sample_rate: int = 8000):
        self.path = path
        self._rate = sample_rate
        self._buffer = bytearray()
        self._agent = bytearray()  # agent PCM not yet paired with caller audio
        self._wav: wave.Wave_write | None = None
        self._flushing: asyncio.Task | None = None
        self._failed = False
        self.frames = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wav = wave.open(str(self.path), "wb")
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(self._rate)
        self._wav = wav

    def agent(self, pcm: bytes) -> None:
        if len(self._agent) < _MAX_PENDING_AGENT_BYTES:
            self._agent += pcm

    def caller(self, pcm: bytes) -> None:
        if self._wav is None or self._failed:
            return
        n = len(pcm)
        if len(self._agent) >= n:
            agent = bytes(self._agent[:n])
            del self._agent[:n]
        else:
            agent = bytes(self._agent).ljust(n, b"\x00")
            self._agent.clear()
        self._buffer += audioop.add(audioop.tostereo(pcm, 2, 1, 0), audioop.tostereo(agent, 2, 0, 1), 2)
        self.frames += n // 2
        if len(self._buffer) >= _FLUSH_BYTES and (self._flushing is None or self._flushing.done()):
            data, self._buffer = bytes(self._buffer), bytearray()
            self._flushing = asyncio.get_running_loop().create_task(asyncio.to_thread(self._write, data))

    def _write(self, data: bytes) -> None:
        try:
            self._wav.writeframesraw(data)
        except Exception as exc:  # a full disk must not end the call
            self._failed = True
            logger.error(f"recording {self.path.name}: write failed, recording stopped: {exc}")

    async def close(self) -> None:
        if self._wav is None:
            return
        if self._flushing is not None:
            await self._flushing
        data, self._buffer = bytes(self._buffer), bytearray()
        wav, self._wav = self._wav, None

        def finish() -> None:
            if data and not self._failed:
                wav.writeframesraw(data)
            wav.close()  # patches the header's sizes

        await asyncio.to_thread(finish)
