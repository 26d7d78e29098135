"""The load benchmark's caller stays in step with an agent whose answer to the interruption comes late
(bench/loadgen.py `run_call`): an overloaded server answers seconds late, and a caller that took that answer for the
reply to its next question timed a turn too short and ran out of step with the agent for the rest of its cycles."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time

import websockets

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import loadgen  # noqa: E402

from telephony.twilio.caller import Answer  # noqa: E402

FRAME = 0.02
SILENT, LOUD = b"\xff" * 160, b"\x00" * 160  # μ-law: digital silence, full scale
INTERRUPTION_ANSWER_AFTER = 2.0  # later than the caller's 1 s of quiet, and than a next question said at once
SECOND_REPLY_AFTER = 1.2


def utterance(loud_secs: float, lead: float = 0.1, trail: float = 0.3) -> loadgen.Utterance:
    frames = [SILENT] * round(lead / FRAME) + [LOUD] * round(loud_secs / FRAME) + [SILENT] * round(trail / FRAME)
    return loadgen.Utterance(ulaw=b"".join(frames), lead=lead, trail=trail)


class ScriptedAgent:
    """A Twilio-protocol peer that hears utterances by their loud frames and answers by their number: the first
    question at once, the interruption `INTERRUPTION_ANSWER_AFTER` late, the second question after
    `SECOND_REPLY_AFTER`; a caller's voice that starts over a reply stops it with a `clear` (one that started before
    the reply, heard while the agent was still thinking, does not)."""

    def __init__(self):
        self.heard: list[tuple[str, int, float]] = []  # ("start" | "end", utterance number, when)
        self.answer_spans: dict[int, tuple[float, float]] = {}  # utterance answered → when its answer played

    async def serve(self, ws) -> None:
        sid, events = None, asyncio.Queue()

        async def speak(secs: float, answering: int) -> None:
            payload = base64.b64encode(LOUD).decode()
            start = time.monotonic()
            try:
                for _ in range(round(secs / FRAME)):
                    await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}}))
                    await asyncio.sleep(FRAME)
            finally:
                self.answer_spans[answering] = (start, time.monotonic())

        async def script() -> None:
            reply, reply_at = asyncio.create_task(speak(0.2, 0)), time.monotonic()  # the greeting
            while True:
                kind, n, at = await events.get()
                if kind == "start" and not reply.done() and at >= reply_at:
                    reply.cancel()
                    await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
                elif kind == "end":
                    delay, secs = {1: (0.1, 3.0), 2: (INTERRUPTION_ANSWER_AFTER, 2.0),
                                   3: (SECOND_REPLY_AFTER, 3.0)}.get(n, (0.1, 0.5))
                    await asyncio.sleep(delay)
                    reply, reply_at = asyncio.create_task(speak(secs, n)), time.monotonic()

        scripting, count, loud, quiet = None, 0, False, 0
        try:
            async for data in ws:
                message = json.loads(data)
                if message["event"] == "start":
                    sid = message["streamSid"]
                    scripting = asyncio.create_task(script())
                elif message["event"] == "media":
                    frame_loud = base64.b64decode(message["media"]["payload"]) != SILENT
                    if frame_loud and not loud:
                        loud, count = True, count + 1
                        self.heard.append(("start", count, time.monotonic()))
                        events.put_nowait(self.heard[-1])
                    quiet = 0 if frame_loud else quiet + 1
                    if loud and quiet == 5:  # 0.1 s of silence ends an utterance
                        loud = False
                        self.heard.append(("end", count, time.monotonic()))
                        events.put_nowait(self.heard[-1])
                elif message["event"] == "stop":
                    break
        finally:
            if scripting:
                scripting.cancel()


class Target:
    def __init__(self, url: str):
        self.url = url

    async def answer(self, client) -> Answer:
        return Answer(status_code=200, twiml="", stream_url=self.url)


def test_the_next_question_waits_for_the_agents_late_answer_to_the_interruption():
    agent = ScriptedAgent()

    async def main() -> loadgen.CallResult:
        async with websockets.serve(agent.serve, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            plan = loadgen.Plan(turns=2, spread=0.0, hold=0.0, question=utterance(0.8),
                                interruption=utterance(0.8))
            go = asyncio.Event()
            go.set()
            return await loadgen.run_call(Target(f"ws://127.0.0.1:{port}/"), None, 0, plan, asyncio.Queue(), go,
                                          time.monotonic())

    res = asyncio.run(main())
    assert res.error is None and res.missed_replies == 0 and res.missed_clears == 0, res
    assert len(res.turn_ms) == 2 and len(res.barge_in_ms) == 2, res
    # The second question's turn was the agent's reply to it (> SECOND_REPLY_AFTER), not the interruption's late
    # answer (~0.9 s after the question, had it been said at once),
    assert res.turn_ms[1] > SECOND_REPLY_AFTER * 1000 > res.turn_ms[0], res.turn_ms
    # because the question began only after that answer had played and 1 s of quiet.
    starts = {n: at for kind, n, at in agent.heard if kind == "start"}
    assert 2 in agent.answer_spans and starts[3] >= agent.answer_spans[2][1] + 0.9, (starts, agent.answer_spans)
