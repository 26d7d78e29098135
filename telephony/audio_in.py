"""The call's input transport without a task per frame of the caller's audio.

pipecat 1.14's input transport takes each frame from its queue under `asyncio.wait_for(..., 0.5 s)`, which in
Python 3.11 runs the queue's `get` in a task of its own: a task created, scheduled and awaited 25 times a second for
every connected call, talking or not. When the 0.5 s pass with no frame, pipecat does nothing (the handler's
`except TimeoutError` only continues), so here the frame is simply awaited, in the transport's own audio task, and
handled as pipecat handles it (input filter, empty frames skipped, passthrough). `bench/transport_path.py` measures
a caller's 20 ms message into the pipeline. Tied to pipecat 1.14's `BaseInputTransport._audio_task_handler` and its
`_audio_in_queue`, pinned like the other seams.
"""

from __future__ import annotations


def trim(input_transport) -> None:
    """`input_transport`: a call's pipecat input transport (before the pipeline starts)."""
    t = input_transport

    async def audio_task_handler():
        while True:
            queue = t._audio_in_queue
            frame = await queue.get()
            if t._params.audio_in_filter:
                frame.audio = await t._params.audio_in_filter.filter(frame.audio)
            if frame.audio and t._params.audio_in_passthrough:
                await t.push_frame(frame)
            queue.task_done()

    t._audio_task_handler = audio_task_handler
