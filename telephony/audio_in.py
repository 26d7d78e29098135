"""The call's input transport without a task per frame of the caller's audio, and (`direct`) without one per message.

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


def direct(input_transport, take_directly, serializer) -> None:
    """The caller's media messages straight from the socket's protocol into `input_transport`'s audio queue, as they
    are read. `take_directly`: the protocol's offer (runtime/ws_protocol.py, DIRECT).

    pipecat's receive loop takes each message through uvicorn's queue of ASGI events, a wake-up of the app's task,
    starlette's and pipecat's receive iterators and the serializer's coroutine: for a Twilio stream, 50 times a
    second per call, talking or not, most of what a silent call costs after the kernel. Here the protocol calls
    `take` with each text message as it is read; a media message (or an unreadable one, warned) is made into its
    frame there, as `serializer.deserialize` would, and queued as pipecat's `push_audio_frame` would. Every other
    message (marks, dtmf, stop) and the socket's close still reach pipecat's loop, which runs as before. Only while
    that loop runs: the socket's messages that came before it were queued for it, and are handed over first.
    Tied to pipecat 1.14's `_receive_messages`, `push_audio_frame` (copied) and `_audio_in_queue`
    (tests/test_transport_trims.py pins them)."""
    from telephony.twilio.serializer import NOT_MEDIA

    t = input_transport
    to_media = serializer.deserialize_media
    pipecats = t._receive_messages

    def take(text: str) -> bool:
        queue = getattr(t, "_audio_in_queue", None)  # made as the transport starts
        if queue is None:
            return False
        frame = to_media(text)
        if frame is NOT_MEDIA:
            return False
        if frame is not None and t._params.audio_in_enabled and not t._paused:
            queue.put_nowait(frame)
        return True

    async def receive_messages():
        take_directly(take)
        try:
            await pipecats()
        finally:
            take_directly(None)

    t._receive_messages = receive_messages
