"""What an architecture hands the call session: the pipeline plus the handles the session observes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipecat.frames.frames import Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameProcessor

from pipelines import frame_express, frame_push
from pipelines.turns.mute import ClosingMuteStrategy

frame_push.install()  # pipecat's push between processors, without formatting its trace line for no one
frame_express.install()  # a data frame for an idle processor skips the hop through its input task

# Phone audio is 8 kHz: keeping the whole pipeline there means no resampling on the per-frame path.
LINE_SAMPLE_RATE = 8000
# InputAudioRawFrame.metadata key under which a μ-law carrier leaves the bytes it received, so a provider that speaks
# μ-law (OpenAI Realtime, Deepgram) can send them on as they came.
ULAW_METADATA_KEY = "ulaw"


@dataclass
class CallPipeline:
    pipeline: Pipeline
    user_aggregator: FrameProcessor
    assistant_aggregator: FrameProcessor
    greeting: list[Frame] = field(default_factory=list)
    closing_mute: ClosingMuteStrategy | None = None
    llm: FrameProcessor | None = None
    audio_in_sample_rate: int = LINE_SAMPLE_RATE
    # After this much of the caller's audio below the VAD's loudness gate, a carrier may hand the pipeline larger
    # frames (TwilioMediaSerializer.coalesce_quiet); None where something downstream needs every frame on time.
    quiet_frames_after_secs: float | None = None
    # The VAD's "hears nothing" (SharedSileroVADAnalyzer.hears_nothing): with it, a line with a steady noise floor
    # may get larger frames too, while it holds.
    vad_hears_nothing: Callable[[], bool] | None = None
    audio_out_sample_rate: int = LINE_SAMPLE_RATE
