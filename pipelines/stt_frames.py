"""What a streaming STT tells the turn rules that pipecat has no frame for."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipecat.frames.frames import DataFrame


@dataclass
class NothingMoreHeardFrame(DataFrame):
    """The STT's answer to the latest finalize (pipecat asks for one at each VAD stop) came back empty: it has sent
    every word it will make of the caller's audio so far. pipecat pushes nothing for an empty final, so without
    this a rule waiting for the caller's words (an interim's final, or any transcript of sound heard over the
    agent) could only time out. Queued in order with the transcripts, and never dropped by an interruption, as
    the caller's final transcripts are not (pipelines/turns/user_aggregator.py)."""

    interruptible: bool = field(default=False, init=False)
