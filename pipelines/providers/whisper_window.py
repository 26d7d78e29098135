"""Whisper on a window as long as the utterance, not its fixed 30 s.

faster-whisper pads every input's log-mel to 3,000 frames (30 s), and tiny.en's encoder cost grows with that
window: on a 2-core VM it took ~400 ms of a ~500 ms transcription of a 3 s question. CTranslate2's encoder takes a
shorter window (its positional table is sliced), so the utterance is padded only to `PAD_SECS` past its end:
~100 ms for the same question. Whisper never saw short windows in training and, given one, sometimes loops on a
word ("Yes. Yes. Yes. ...") or runs on. So a decode that does not end by itself within its token budget, or that
repeats itself by Whisper's own measure (gzip compression ratio over 2.4, where faster-whisper falls back), is
done again on the full window, as is an utterance too long for a shorter one.

Measured with bench/whisper_window.py (216 espeak utterances through the call's VAD, given to Whisper as the STT
gives them; 2-core AMD EPYC VM): word error rate 0.489 against 0.518 on the full window on a silent line, 0.566
against 0.600 with -55 dBFS noise; p50 103 / 111 ms per transcription against 533 / 547; 3 of 233 and 6 of 236
decodes done again on the full window. A pad of 2 s was faster still but worse (0.691 / 0.917).
"""

from __future__ import annotations

from functools import lru_cache

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

PAD_SECS = 5.0  # silence after the utterance: the window's length is the utterance's plus this
FULL_WINDOW_FRAMES = 3000  # 30 s of 10 ms mel frames: what Whisper was trained on
FRAMES_PER_SEC = 100
TOKENS_PER_SEC = 10.0  # the decode's budget: speech measured here ran to 5.5 tokens per second of input
MAX_COMPRESSION_RATIO = 2.4
NO_SPEECH_PROB = 0.6  # a window more likely silence than speech gives no words (as on the full window)
FIRST_TIMESTAMP_MAX_SECS = 1.0  # faster-whisper's default max_initial_timestamp


@lru_cache(maxsize=4)
def _decoding(model, language: str) -> tuple[Tokenizer, list[int], list[int]]:
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
    return tokenizer, list(tokenizer.sot_sequence), list(get_suppressed_tokens(tokenizer, [-1]))


def transcribe_short(model, audio: np.ndarray, *, language: str = "en", beam_size: int = 1,
                     pad_secs: float | None = None, tokens_per_sec: float | None = None) -> str | None:
    """`audio`: float32 mono at 16 kHz. The transcript, or None where the full window must decide (see above)."""
    pad_secs = PAD_SECS if pad_secs is None else pad_secs
    tokens_per_sec = TOKENS_PER_SEC if tokens_per_sec is None else tokens_per_sec
    features = model.feature_extractor(audio)
    frames = features.shape[-1]
    window = frames + int(pad_secs * FRAMES_PER_SEC)
    window += window % 2  # the encoder's convolution halves the frames
    if window > FULL_WINDOW_FRAMES:
        return None
    features = np.pad(features, ((0, 0), (0, window - frames)))  # zeros, as faster-whisper pads to 30 s
    tokenizer, prompt, suppress = _decoding(model, language)
    budget = len(prompt) + int(len(audio) / 16000 * tokens_per_sec) + 3
    result = model.model.generate(
        ctranslate2.StorageView.from_array(features[np.newaxis]), [prompt], beam_size=beam_size, max_length=budget,
        return_no_speech_prob=True, suppress_blank=True, suppress_tokens=suppress,
        max_initial_timestamp_index=round(FIRST_TIMESTAMP_MAX_SECS / 0.02),
    )[0]
    tokens = result.sequences_ids[0]
    text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()  # timestamps are above eot
    if not _ended(tokens, tokenizer) or get_compression_ratio(text) > MAX_COMPRESSION_RATIO:
        return None
    return "" if result.no_speech_prob >= NO_SPEECH_PROB else text


def _ended(tokens: list[int], tokenizer: Tokenizer) -> bool:
    """Whether the decode ended by itself rather than on its budget. CTranslate2 returns neither the end token nor
    why it stopped, and its cut does not fall at `max_length` exactly; but a timestamped decode that ends by itself
    closes its last segment with a timestamp, and a cut one stops inside a segment (on a word, or on the opening
    timestamp alone). An empty decode is Whisper's end at once: no speech."""
    if not tokens:
        return True
    return tokens[-1] >= tokenizer.timestamp_begin and len(tokens) > 1
