"""Reply and barge-in latency of a running voxline server, measured the way a Twilio caller experiences them.

    .venv/bin/python bench/call_latency.py --server http://127.0.0.1:8080 --calls 10 [--concurrency 1]

Each call: wait out the welcome, say one utterance, time end of speech → first agent media ("reply"); then a
second utterance started while the agent answers, timed from the first loud caller frame → `clear`
("barge-in"). Prints a Markdown table and writes JSON (--json). Figures, never assertions: the full load
benchmark against stock pipecat is bench work of its own (issue 8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from loadgen import Utterance, synthesize, time_reply

from telephony.twilio.caller import MediaStreamCaller, post_incoming_call


async def one_call(server: str, to: str, question: Utterance, interruption: Utterance) -> dict:
    answer = await post_incoming_call(server, to)
    result: dict = {}
    async with MediaStreamCaller(answer) as caller:
        await caller.wait_agent_audio(0.0, 20.0)
        await caller.wait_agent_quiet(0.8, 30.0)
        result["reply_ms"] = await time_reply(caller, question, await caller.say(question.ulaw))
        if result["reply_ms"] is not None:
            await asyncio.sleep(0.3)  # the agent is mid-sentence
            clears_before = len(caller.events("clear"))
            await caller.say(interruption.ulaw)
            onset = caller.first_speech_frame_at + interruption.lead
            clears = caller.events("clear")[clears_before:]
            result["barge_in_ms"] = (clears[0].at - onset) * 1000 if clears else None
        await caller.wait_agent_quiet(0.8, 30.0)
    return result


def summary(values: list[float]) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {}
    pick = lambda q: values[min(len(values) - 1, int(round(q * (len(values) - 1))))]  # noqa: E731
    return {"n": len(values), "p50": pick(0.5), "p95": pick(0.95), "max": values[-1], "mean": statistics.fmean(values)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--to", default="+15550100000")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    question = synthesize("Where are you located?")
    interruption = synthesize("Wait, where is that exactly?")
    results: list[dict] = []
    started = time.monotonic()
    for i in range(0, args.calls, args.concurrency):
        batch = min(args.concurrency, args.calls - i)
        results += await asyncio.gather(*(one_call(args.server, args.to, question, interruption) for _ in range(batch)))
    report = {
        "calls": args.calls, "concurrency": args.concurrency, "wall_s": round(time.monotonic() - started, 1),
        "reply_ms": summary([r.get("reply_ms") for r in results]),
        "barge_in_ms": summary([r.get("barge_in_ms") for r in results]),
    }
    print("| metric | n | p50 | p95 | max |\n|---|---|---|---|---|")
    for key, label in (("reply_ms", "reply: end of speech → first agent audio"),
                       ("barge_in_ms", "barge-in: caller speech onset → clear")):
        s = report[key]
        print(f"| {label} | {s.get('n', 0)} | {s.get('p50', 0):.0f} ms | {s.get('p95', 0):.0f} ms | {s.get('max', 0):.0f} ms |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
