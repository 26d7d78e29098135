"""Outbound audio paced against a clock with a small fixed lead, instead of pipecat's chunk-by-chunk sleep.

pipecat's websocket output sleeps one chunk's duration after sending each chunk and, when it wakes late, starts
its clock again from now: the carrier never holds more than the chunk in flight, so any event-loop stall longer
than a chunk (a busy server, a GC pause) is a gap the caller hears, and the time lost is never made up. Here the
clock is the carrier's playout: each chunk is sent once the carrier has less than `lead_secs` queued, so a stall
shorter than the lead is absorbed by the carrier's buffer and the next chunks catch up at once. The lead is also
what a `clear` throws away, so it stays small: 100 ms (60 ms still left underruns with 40 calls on 2 cores).
"""

from __future__ import annotations

import asyncio
import time

LEAD_SECS = 0.1


class LeadPacer:
    def __init__(self, output, lead_secs: float = LEAD_SECS):
        """`output`: pipecat 1.14's FastAPIWebsocketOutputTransport, whose `_write_audio_sleep` this replaces. It
        zeroes `_next_send_time` on an interruption (the carrier's buffer was cleared); that resets the clock."""
        self._output = output
        self._lead = lead_secs
        self._chunk_secs = 0.0
        self._playout_until = 0.0
        output._write_audio_sleep = self.sleep

    async def sleep(self) -> None:
        output = self._output
        if not self._chunk_secs:
            self._chunk_secs = output.audio_chunk_size / 2 / output.sample_rate
        now = time.monotonic()
        if output._next_send_time == 0:  # start, or an interruption emptied the carrier's buffer
            self._playout_until = now
        self._playout_until = max(self._playout_until, now) + self._chunk_secs
        output._next_send_time = self._playout_until
        wait = self._playout_until - self._lead - now
        if wait > 0:
            await asyncio.sleep(wait)
