"""The heard-text gate in a real pipecat pipeline: text the carrier never confirms is released after the mark
timeout, and a call cancelled with text still held leaves no timer to fire into the finished pipeline."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import TTSTextFrame

from pipelines.turns.heard import HeardTextGate
from tests.pipelines import SilentCarrier, running


async def test_text_the_carrier_never_confirms_counts_as_heard_after_the_timeout(logged):
    carrier = SilentCarrier()
    worker, collect, task = await running(HeardTextGate(carrier, mark_timeout=0.2))
    try:
        await worker.queue_frame(TTSTextFrame("Hello there.", text_type="sentence"))
        await asyncio.sleep(0.1)
        assert carrier.marks == ["vx1"] and collect.texts == []  # held behind its mark
        await asyncio.sleep(0.3)
        assert collect.texts == ["Hello there."]
        assert sum("did not echo a mark" in line for line in logged) == 1
    finally:
        await worker.cancel()
        await asyncio.wait_for(task, 10)


async def test_a_call_cancelled_with_text_held_leaves_no_timer_behind(logged):
    carrier = SilentCarrier()
    gate = HeardTextGate(carrier, mark_timeout=0.2)
    worker, collect, task = await running(gate)
    await worker.queue_frame(TTSTextFrame("Goodbye.", text_type="sentence"))
    await asyncio.sleep(0.1)
    assert carrier.marks == ["vx1"] and collect.texts == []
    await worker.cancel()  # the caller hung up before the carrier echoed the mark
    await asyncio.wait_for(task, 10)
    await asyncio.sleep(0.35)  # past the mark timeout
    assert collect.texts == []
    assert not [line for line in logged if "did not echo a mark" in line or "heard-flush" in line], logged
