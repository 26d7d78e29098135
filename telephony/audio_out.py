"""The call's output transport without four costs of agent audio that buy nothing on a phone call.

pipecat 1.14's output transport, for every chunk it writes:
- pushes the chunk on downstream "in case anyone else needs it". After the output a call has only the heard-text
  gate and the assistant aggregator, and neither reads audio (they keep text; recording taps the serializer), so
  each chunk was two more queue hops and three observer hand-offs, 25 times a second per speaking call;
- takes the chunk from its queue, and then writes it, each under `asyncio.wait_for`, which in Python 3.11 runs
  what it waits for in a task of its own: two tasks created, scheduled and awaited per chunk;
and while the agent speaks, it broadcasts a `BotSpeakingFrame` both ways every 0.2 s: through every processor of
the call, about ten queue hops, each handed to the call's observers. That is ~160 µs of CPU per broadcast
(`bench/bot_speaking.py`), ~0.8 ms per second of agent speech: nearly what its 25 chunks a second cost on their
way out (~1 ms, trimmed). Its only reader in a call is pipecat's idle watch, whose timeout is 300 s; the turn,
mute and user-idle rules go by the bot's started/stopped frames.

And it takes every frame through two queue hops of its own before it looks at it: its input task, then (for
anything but a system frame) its process task. Each hop is a turn of the event loop, and under load a turn is
milliseconds: with 40 calls on this VM a reply's first chunk waited 6 ms at the median, 16 ms at p95, between the
TTS handing it over and the output taking it, behind text and control frames that had waited as long each.

Here the chunk stops at the transport once written; the heartbeat comes once a second (and a call stops each copy
at its first push, where the idle watch sees it: `runtime/call_observer.py`); the output runs in pipecat's direct
mode, as a `Pipeline`'s own source and sink do: a frame is handled in the task that pushes it, in the order
pushed. What the output does with a frame is quick: a chunk or a text or control frame goes into the media
sender's queue (or its clock's), an interruption empties them and restarts the sender's task, and only an
EndFrame waits, for the sender to play out what it holds, in the pushing task as it did in the output's own. The
pacing, the writes and the frames the output pushes on stay in the sender's task. Direct mode cannot hold frames
(`pause_processing_all_frames_until`), which nothing asks of the output. The same two deadlines
are kept with `asyncio.timeout` in the sender's own task (a chunk already queued is taken without one): the
bot-stopped-speaking fallback when no audio comes, and pipecat's error when a peer stops reading.
`bench/transport_path.py` measures a chunk's way through the output, the heard-text gate and the assistant
aggregator: 124 → 33 µs of CPU (the AMD VM). Tied to pipecat 1.14's media senders (`_media_senders`,
`_next_frame`, `_internal_write_audio_frame`, `_bot_speaking_frame_period`, the fallback's
`_bot_stopped_speaking`), pinned like the other seams.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import Frame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_output import BOT_VAD_STOP_FALLBACK_SECS

from pipelines.queues import get_within

BOT_SPEAKING_EVERY_SECS = 1.0  # pipecat's is 0.2


def trim(output) -> None:
    """`output`: a call's pipecat output transport (before the pipeline starts)."""
    push_frame = output.push_frame

    async def push_unless_written_audio(frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, OutputAudioRawFrame):
            return
        await push_frame(frame, direction)

    output.push_frame = push_unless_written_audio
    output._enable_direct_mode = True  # read by queue_frame, and as the pipeline starts (no input or process task)
    output._media_senders = _TrimmedSenders(output._media_senders)


class _TrimmedSenders(dict):
    """The transport makes its media senders as it starts and starts each at once, which starts its audio task:
    they are changed as they are stored, before that."""

    def __setitem__(self, destination, sender) -> None:
        sender._internal_write_audio_frame = _write_inline(sender)
        sender._next_frame = _next_frame_inline(sender)
        sender._bot_speaking_frame_period = BOT_SPEAKING_EVERY_SECS
        super().__setitem__(destination, sender)


def _next_frame_inline(sender):
    pipecats = sender._next_frame

    def next_frame():
        return pipecats() if sender._mixer else _frames(sender, BOT_VAD_STOP_FALLBACK_SECS)

    return next_frame


async def _frames(sender, vad_stop_secs: float):
    """pipecat's `without_mixer` frames, without a task per frame."""
    while True:
        queue = sender._audio_queue
        try:
            frame = await get_within(queue, vad_stop_secs)
        except TimeoutError:
            # pipecat's fallback: no audio for this long, so the bot has stopped speaking
            await sender._bot_stopped_speaking()
            continue
        await sender._filter_audio(frame)
        sender._apply_volume(frame)
        yield frame
        queue.task_done()


def _write_inline(sender):
    transport = sender._transport

    async def write(frame: OutputAudioRawFrame) -> bool:
        if not transport.is_usable:
            return False
        timeout = sender._params.audio_out_write_timeout_secs
        try:
            async with asyncio.timeout(timeout):
                return await transport.write_audio_frame(frame)
        except TimeoutError as e:
            await transport.push_error(
                f"{transport} timed out after {timeout}s writing audio to the transport; the peer has stopped "
                "reading",
                exception=e,
                force_treat_as_permanent=True,
            )
            return False

    return write
