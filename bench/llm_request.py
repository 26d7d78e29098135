"""The event loop's CPU for one turn's LLM request in a call, by the length of the conversation: pipecat's OpenAI
service building the request from the call's context and the SDK sending it and reading a short streamed reply,
answered inside the process (an httpx MockTransport), with the SDK's transform walk of the body and without it
(pipelines/providers/openai_params.py). CPU milliseconds per request (process time, one thread), median of rounds.

    .venv/bin/python bench/llm_request.py [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai.resources.chat.completions.completions as sdk_completions  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402

from pipelines.providers import openai_params  # noqa: E402
from pipelines.providers.openai_llm import SharedTLSOpenAILLMService  # noqa: E402

QUESTION = "Where are you located?"
REPLY = "We are at twelve Main Street, next to the old cinema, and we are open every day from noon until ten."
CHUNKS = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
           "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
          for word in REPLY.split()[:8]]
BODY = ("".join(f"data: {json.dumps(c)}\n\n" for c in CHUNKS) + "data: [DONE]\n\n").encode()


def context(turns: int) -> LLMContext:
    messages = [{"role": "system", "content": "You are the front desk of Luigi's, a small restaurant."}]
    for _ in range(turns):
        messages += [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": REPLY}]
    return LLMContext(messages=[*messages, {"role": "user", "content": QUESTION}])


async def per_request_ms(turns: int, requests: int, around: bool) -> float:
    pool = httpx.AsyncClient(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=BODY)))
    llm = SharedTLSOpenAILLMService(api_key="k", base_url="http://llm.invalid/v1", pool=pool,
                                    settings=SharedTLSOpenAILLMService.Settings(model="m"))
    sdk_completions.async_maybe_transform = openai_params._transform if around else openai_params._sdk_transform
    ctx = context(turns)
    try:
        for _ in range(5):
            [c async for c in await llm.get_chat_completions(ctx)]
        t0 = time.process_time()
        for _ in range(requests):
            [c async for c in await llm.get_chat_completions(ctx)]
        return (time.process_time() - t0) / requests * 1000
    finally:
        sdk_completions.async_maybe_transform = openai_params._transform
        await pool.aclose()


async def main(requests: int, rounds: int) -> None:
    logger.remove()
    for turns in (2, 10, 20):
        walked, around = [], []
        for _ in range(rounds):
            walked.append(await per_request_ms(turns, requests, around=False))
            around.append(await per_request_ms(turns, requests, around=True))
        w, a = statistics.median(walked), statistics.median(around)
        print(f"{2 * turns + 2} messages: {w:.2f} ms a request with the SDK's walk, {a:.2f} ms around it "
              f"({w - a:.2f} ms less)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.requests, args.rounds))
