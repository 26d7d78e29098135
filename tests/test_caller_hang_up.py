"""The Twilio-side test caller (telephony/twilio/caller.py) when the far end hangs up while it is still talking: an
agent may end a call as soon as it has heard enough, before the caller's utterance is all sent."""

from __future__ import annotations

import asyncio
import json

import websockets

from telephony.audio import FRAME_BYTES
from telephony.twilio.caller import Answer, MediaStreamCaller


async def test_say_returns_when_the_call_closes_before_the_utterance_is_sent():
    async def hang_up_after_a_few_frames(ws):
        media = 0
        async for message in ws:
            if json.loads(message).get("event") == "media":
                media += 1
                if media == 10:  # 0.2 s of a 4 s utterance
                    await ws.close()
                    return

    async with websockets.serve(hang_up_after_a_few_frames, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        caller = MediaStreamCaller(Answer(status_code=200, twiml="", stream_url=f"ws://127.0.0.1:{port}/"))
        async with caller:
            utterance = b"\x00" * (FRAME_BYTES * 200)
            await asyncio.wait_for(caller.say(utterance), 10)  # before the fix: waited forever
            assert caller.closed.is_set()
            assert 0 < caller.speech_frames_sent < 200, caller.speech_frames_sent
