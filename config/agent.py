"""The agent config: one typed model shared by the store, the pipeline factory and the API.

Defaults are documented here and in the README; a config that cannot run is refused with the field it concerns.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config import catalog
from config.text import no_nul

Architecture = Literal["pipeline", "realtime", "text"]

# Upper bounds on what a client may store (the request body limit alone allows 1 MB of prompt): far above any real
# agent, low enough that one agent cannot make every call and every LLM request it starts absurdly large.
MAX_PROMPT_CHARS = 100_000  # system_prompt: a long prompt with inlined reference material still fits
MAX_SPOKEN_CHARS = 2_000  # welcome_message and script replies: about two minutes of speech
MAX_LLM_TOKENS = 128_000  # llm.max_tokens: the largest completion any current model produces


# Which config sections each architecture needs and refuses (the seed platform's rules).
REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {"pipeline": ("transcriber", "llm", "tts"), "realtime": ("realtime",),
                                                 "text": ("llm",)}
FORBIDDEN_SECTIONS: dict[str, tuple[str, ...]] = {"text": ("transcriber", "tts", "realtime")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranscriberConfig(_Strict):
    provider: str = "whisper"
    model: str | None = None
    language: str = "en"


class ScriptRule(_Strict):
    """Reply with `reply` when the caller's words contain any of `keywords` (case-insensitive, whole words).

    With `tool`, the rule first calls that tool with `arguments` (through the LLM's function calling, like a real
    model would); `{result}` in `reply` is then replaced by the tool's result, and a failed call gets an apology."""

    keywords: list[str] = Field(min_length=1)
    reply: str = Field(min_length=1, max_length=MAX_SPOKEN_CHARS,
                       description="With `tool`: said once the tool has answered")
    tool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    arguments: dict[str, object] = Field(default_factory=dict, description="The tool's arguments")

    @model_validator(mode="after")
    def _check_tool(self) -> ScriptRule:
        if self.arguments and not self.tool:
            raise ValueError("arguments: only meaningful with `tool`")
        return self


class ScriptConfig(_Strict):
    """Drives the `scripted` LLM: rules in order, the first match wins; `goodbye` ends the call after its reply."""

    rules: list[ScriptRule] = []
    fallback: str = Field(default="Sorry, I didn't catch that. Could you say it another way?",
                          max_length=MAX_SPOKEN_CHARS)
    goodbye: ScriptRule | None = None

    @model_validator(mode="after")
    def _check_goodbye(self) -> ScriptConfig:
        if self.goodbye is not None and self.goodbye.tool:
            raise ValueError("goodbye.tool: the goodbye rule cannot call a tool")
        return self


class LLMConfig(_Strict):
    provider: str = "scripted"
    model: str | None = None
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_LLM_TOKENS)
    base_url: str | None = None
    # 10 s: a real model's first token comes in 0.3-3 s, and a long prompt or a busy server can take several times
    # that, so 10 s leaves room for a slow answer; beyond it a caller has sat in silence long enough that an apology
    # and a hang-up beat waiting (without a bound, only call.max_duration_secs would end the call).
    timeout_secs: float = Field(
        default=10.0, gt=0, le=120,
        description="OpenAI: how long a reply may take to start, and may pause between chunks, before the turn "
                    "fails (a call then gets `call.apology` and ends `error_llm`; a chat turn ends in `error`)",
    )
    script: ScriptConfig | None = None


class TTSConfig(_Strict):
    provider: str = "piper"
    voice: str | None = None
    model: str | None = None


class RealtimeConfig(_Strict):
    provider: str = "openai"
    model: str | None = None
    voice: str | None = None
    base_url: str | None = None
    # 10 s: a Realtime server answers within a second or two (session.created at once, a reply's first audio in
    # 0.3-2 s, then deltas every few tens of ms), so 10 s without a single event while one is owed is no slow
    # answer but a hung server; by then a caller has sat in silence long enough that an apology and a hang-up beat
    # waiting (without a bound, only call.max_duration_secs would end the call). As llm.timeout_secs.
    timeout_secs: float = Field(
        default=10.0, gt=0, le=120,
        description="OpenAI Realtime: how long the server may send nothing while an answer is owed (after "
                    "connecting, after a response is asked for or the caller's turn ends) before the call gets "
                    "`call.apology` and ends `error_realtime`",
    )


class VADConfig(_Strict):
    """Silero VAD thresholds. `start_secs` and `min_volume` are lower than pipecat's (0.2, 0.6): the caller's voice
    over the agent only *holds* the agent's audio, and a hold with no words after it resumes (`interruption`), so a
    fast trigger costs little when it is wrong, and barge-in drops from ~340 ms to ~140 ms (bench/)."""

    confidence: float = Field(default=0.7, ge=0.0, le=1.0)
    start_secs: float = Field(default=0.1, ge=0.0, le=2.0)
    stop_secs: float = Field(default=0.2, ge=0.0, le=5.0)
    min_volume: float = Field(default=0.3, ge=0.0, le=1.0)


ACK_PHRASES = ["okay", "ok", "yeah", "yes", "uh-huh", "uh huh", "right", "mm-hmm", "mhm", "sure", "got it"]
ALWAYS_PHRASES = ["stop", "wait", "hold on", "hang on", "excuse me"]


class InterruptionConfig(_Strict):
    """Barge-in. When the caller starts speaking over the agent, the agent goes quiet at once (Twilio's buffer is
    cleared) and waits for the caller's words: an acknowledgement alone ("uh-huh") or nothing at all within
    `resume_secs` makes it carry on where it stopped; `min_words` words, or any of `always_phrases`, interrupt it."""

    enabled: bool = True
    welcome_interruptible: bool = True
    min_words: int = Field(default=1, ge=1, le=20, description="Words (not counting acknowledgements) that interrupt")
    ack_phrases: list[str] = Field(default_factory=lambda: list(ACK_PHRASES),
                                   description="Said alone while the agent speaks, never interrupt")
    always_phrases: list[str] = Field(default_factory=lambda: list(ALWAYS_PHRASES),
                                      description="Always interrupt, however short")
    resume_secs: float = Field(default=1.5, ge=0.2, le=10.0,
                               description="After the caller stops, how long to wait for words before resuming")
    transcript_wait_secs: float = Field(default=2.0, ge=0.0, le=10.0,
                                        description="Past resume_secs, how much longer to wait for a transcript "
                                                    "the STT is still working on")


class TurnConfig(_Strict):
    """End of the caller's turn. `silence`: the turn ends once the caller has been silent `silence_secs` since their
    last word (the VAD's `stop_secs` counts towards it, and the transcript must be in), or only `sentence_end_secs`
    when their words end a sentence (pipelines/turns/sentence_end.py).
    `smart_turn`: the bundled smart-turn v3 model decides from the audio, and a turn it keeps calling incomplete
    ends anyway after `smart_turn_max_secs` of silence."""

    strategy: Literal["silence", "smart_turn"] = "silence"
    silence_secs: float = Field(default=0.7, ge=0.0, le=5.0)
    sentence_end_secs: float | None = Field(
        default=0.3, ge=0.0, le=5.0, description="`silence` strategy: the silence that ends a turn whose transcript "
        "ends a sentence (. ? ! but not '...', a number, or a word like 'for'); null: always `silence_secs`")
    smart_turn_max_secs: float = Field(default=1.5, ge=0.3, le=5.0)


class TransferConfig(_Strict):
    """Lets the LLM call `transfer_call`: the caller is moved to `number` (Twilio <Dial>)."""

    number: str = Field(description="E.164 number to transfer to")
    description: str = "Transfer the caller to a human colleague when they ask for one or you cannot help."
    message: str = "Please hold while I transfer your call."

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        from runtime.phone import to_e164  # the one place numbers are parsed

        return to_e164(value)


class CallConfig(_Strict):
    """Call controls. The agent says the message, then hangs up."""

    max_duration_secs: int = Field(default=600, ge=1, le=4 * 3600)
    max_duration_message: str = "We have reached the time limit for this call. Thank you for calling. Goodbye!"
    silence_timeout_secs: float = Field(default=10.0, ge=0.0, le=600.0, description="0 turns silence handling off")
    silence_reminder: str = "Are you still there?"
    silence_max_reminders: int = Field(default=2, ge=0, le=10)
    silence_goodbye: str = "I haven't heard from you, so I'll hang up now. Goodbye!"
    dtmf: bool = Field(default=True, description="Keypad digits reach the LLM as caller input ('DTMF: 12#')")
    end_call_tool: bool = Field(default=True, description="Offer the LLM an `end_call` tool (says goodbye, hangs up)")
    transfer: TransferConfig | None = None
    apology: str = "I'm sorry, we're having technical difficulties. Please call again later. Goodbye."
    record: bool = Field(default=False, description="Keep a stereo WAV of the call (caller left, agent right)")
    answering_machine_detection: bool = Field(
        default=False, description="Outbound calls: ask Twilio whether a machine answered, and hang up on one")


class AgentConfig(_Strict):
    name: str = Field(min_length=1, max_length=120)
    architecture: Architecture = "pipeline"
    system_prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    welcome_message: str | None = Field(default=None, max_length=MAX_SPOKEN_CHARS)
    transcriber: TranscriberConfig | None = None
    llm: LLMConfig | None = None
    tts: TTSConfig | None = None
    realtime: RealtimeConfig | None = None
    vad: VADConfig = VADConfig()
    interruption: InterruptionConfig = InterruptionConfig()
    turn: TurnConfig = TurnConfig()
    call: CallConfig = CallConfig()

    @field_validator("name")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return no_nul(value)  # the name is a text column too

    @model_validator(mode="after")
    def _check_architecture(self) -> AgentConfig:
        for field in REQUIRED_SECTIONS[self.architecture]:
            if getattr(self, field) is None:
                raise ValueError(f"{field}: required for a {self.architecture!r} agent")
        for field in FORBIDDEN_SECTIONS.get(self.architecture, ()):
            if getattr(self, field) is not None:
                raise ValueError(f"{field}: not allowed for a 'text' agent")
        self._check_catalog()
        return self

    def _check_catalog(self) -> None:
        checks = (
            ("transcriber", "stt", self.transcriber),
            ("llm", "llm", self.llm),
            ("tts", "tts", self.tts),
            ("realtime", "realtime", self.realtime),
        )
        for field, kind, section in checks:
            if section is None:
                continue
            entry = catalog.provider(kind, section.provider)
            if entry is None:
                known = ", ".join(catalog.provider_names(kind))
                raise ValueError(f"{field}.provider: unknown provider {section.provider!r}; known: {known}")
            model = getattr(section, "model", None)
            if model is not None:
                reason = entry.check_model(model, base_url=getattr(section, "base_url", None))
                if reason:
                    raise ValueError(f"{field}.model: {reason}")
            voice = getattr(section, "voice", None)
            if voice is not None and (reason := entry.check_voice(voice)):
                raise ValueError(f"{field}.voice: {reason}")
            language = getattr(section, "language", None)
            if language is not None and entry.languages and language not in entry.languages:
                raise ValueError(f"{field}.language: {language!r} not supported by {section.provider}")


def explain(exc: ValidationError) -> str:
    """A validation error as `field: problem` lines, the way API and CLI users should read it."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)
