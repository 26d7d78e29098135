"""What happens when the emulator dials a number: rules on the destination, each with an outcome and a callee script.

    default: {outcome: answer, ring_secs: 0.3}        # optional: for numbers no rule matches
    rules:                                           # first match wins (rules added by the API come first)
      - match: "+15550100020"                        # exact number, a glob ("+1555010*"), or "re:<regex>"
        outcome: busy                                # answer | busy | no-answer | failed | machine
      - match: ["+1555011*", "+1555012*"]
        outcome: answer
        ring_secs: 1.5                               # ringing longer than the call's Timeout means no-answer
        record: true                                 # keep the agent's audio: GET /_emulator/calls/{sid}/audio.wav
        max_call_secs: 120                           # the callee hangs up after this, whatever its script says
        callee:                                      # default: wait for the greeting, one sentence, wait, hang up
          - wait_agent: true                         # until the agent has spoken and gone quiet (or a timeout: 20)
          - say: "What are your opening hours?"      # bundled Piper voice, 8 kHz μ-law
          - interrupt: "Sorry, one more thing."      # said over the agent once it has talked for a second;
          - interrupt: {say: "Wait.", after: 3}      #   or for `after` seconds
          - play: answer.wav                         # any WAV, relative to the rules file
          - dtmf: "12#"
          - tone: 0.5                                # a 1 kHz beep (voicemail), seconds
          - pause: 1.0                               # silence, seconds
          - hangup: true

A top-level list is read as `rules`. JSON works too (it is YAML).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from telephony.audio import AudioFileError, check_wav

OUTCOMES = ("answer", "busy", "no-answer", "failed", "machine")
STEP_KINDS = ("say", "interrupt", "play", "wait_agent", "pause", "dtmf", "tone", "hangup")
DEFAULT_RING_SECS = 0.3
DEFAULT_WAIT_AGENT_SECS = 20.0
DEFAULT_MAX_CALL_SECS = 300.0
_DTMF = re.compile(r"^[0-9*#A-Da-d]+$")


@dataclass(frozen=True)
class Step:
    kind: str
    value: Any
    after: float = 1.0  # `interrupt`: how long the agent talks before the callee speaks over it

    def describe(self) -> dict:
        if self.kind == "interrupt":
            return {self.kind: {"say": self.value, "after": self.after}}
        return {self.kind: str(self.value) if isinstance(self.value, Path) else self.value}


# What a person (or a voicemail box) does once the call is answered, when the rule does not say.
DEFAULT_CALLEE = (Step("wait_agent", DEFAULT_WAIT_AGENT_SECS), Step("say", "Hello, what are your opening hours?"),
                  Step("wait_agent", DEFAULT_WAIT_AGENT_SECS), Step("hangup", True))
VOICEMAIL_CALLEE = (Step("say", "Hi, you have reached Sam. Please leave a message after the tone."),
                    Step("tone", 0.5), Step("wait_agent", DEFAULT_WAIT_AGENT_SECS), Step("hangup", True))


@dataclass
class Rule:
    match: tuple[str, ...] = ("*",)
    outcome: str = "answer"
    ring_secs: float = DEFAULT_RING_SECS
    callee: tuple[Step, ...] | None = None
    record: bool = False
    max_call_secs: float = DEFAULT_MAX_CALL_SECS
    _regexes: list[re.Pattern] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._regexes = [re.compile(p[3:]) for p in self.match if p.startswith("re:")]

    def matches(self, number: str) -> bool:
        globs = (p for p in self.match if not p.startswith("re:"))
        return any(fnmatchcase(number, p) for p in globs) or any(r.search(number) for r in self._regexes)

    @property
    def script(self) -> tuple[Step, ...]:
        if self.callee is not None:
            return self.callee
        return VOICEMAIL_CALLEE if self.outcome == "machine" else DEFAULT_CALLEE

    def describe(self) -> dict:
        return {"match": list(self.match), "outcome": self.outcome, "ring_secs": self.ring_secs,
                "record": self.record, "max_call_secs": self.max_call_secs,
                "callee": [s.describe() for s in self.script]}


def _number(where: str, raw: Any, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
    except OverflowError:  # an int past float's range
        value = None
    # isfinite: NaN passes `value < minimum` (every comparison with it is false), and infinity is no duration.
    if value is None or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{where}: must be a finite number >= {minimum:g}")
    return value


def parse_step(where: str, raw: Any, base_dir: Path) -> Step:
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in STEP_KINDS:
        raise ValueError(f"{where}: a step is one of {', '.join(f'{{{k}: …}}' for k in STEP_KINDS)}")
    kind, value = next(iter(raw.items()))
    if kind == "interrupt" and isinstance(value, dict):
        if set(value) - {"say", "after"} or "say" not in value:
            raise ValueError(f"{where}: interrupt is a sentence, or {{say: sentence, after: seconds}}")
        after = _number(f"{where} interrupt after", value.get("after", 1.0))
        return Step(kind, parse_step(where, {"say": value["say"]}, base_dir).value, after)
    if kind in ("say", "interrupt"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: {kind} needs some text")
    elif kind == "play":
        path = Path(str(value)) if value else None
        if path is None:
            raise ValueError(f"{where}: play needs a WAV path")
        value = path if path.is_absolute() else base_dir / path
        if not value.is_file():  # found now rather than in the middle of a call
            raise ValueError(f"{where}: no such WAV file {value}")
        try:
            check_wav(value)  # likewise a file that is not a WAV, or not one that can be read
        except AudioFileError as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif kind == "wait_agent":
        value = DEFAULT_WAIT_AGENT_SECS if value is True else _number(where + " wait_agent", value, minimum=0.1)
    elif kind in ("pause", "tone"):
        value = _number(f"{where} {kind}", value)
    elif kind == "dtmf":
        if not isinstance(value, (str, int)) or not _DTMF.match(str(value)):
            raise ValueError(f"{where}: dtmf takes digits, * and #")
        value = str(value)
    elif kind == "hangup" and value is not True:
        raise ValueError(f"{where}: write hangup: true")
    return Step(kind, value)


def parse_script(where: str, raw: Any, base_dir: Path) -> tuple[Step, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: callee must be a list of steps")
    return tuple(parse_step(f"{where} step {i}", s, base_dir) for i, s in enumerate(raw))


def parse_rule(where: str, raw: Any, base_dir: Path, *, needs_match: bool = True) -> Rule:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a mapping")
    unknown = set(raw) - {"match", "outcome", "ring_secs", "callee", "record", "max_call_secs"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    match = raw.get("match", "*" if not needs_match else None)
    patterns = match if isinstance(match, list) else [match]
    if not match or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{where}: needs 'match', a number, a glob or 're:<regex>' (or a list of them)")
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ValueError(f"{where}: bad regex {p!r}: {exc}") from None
    outcome = raw.get("outcome", "answer")
    if outcome not in OUTCOMES:
        raise ValueError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}")
    callee = raw.get("callee")
    return Rule(
        match=tuple(patterns), outcome=outcome,
        ring_secs=_number(f"{where} ring_secs", raw.get("ring_secs", DEFAULT_RING_SECS)),
        callee=None if callee is None else parse_script(f"{where} callee", callee, base_dir),
        record=bool(raw.get("record", False)),
        max_call_secs=_number(f"{where} max_call_secs", raw.get("max_call_secs", DEFAULT_MAX_CALL_SECS), minimum=1),
    )


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    default: Rule = field(default_factory=Rule)

    @classmethod
    def parse(cls, raw: Any, base_dir: Path = Path(".")) -> RuleSet:
        if raw is None:
            return cls()
        if isinstance(raw, list):
            raw = {"rules": raw}
        if not isinstance(raw, dict) or set(raw) - {"rules", "default"}:
            raise ValueError("expected a list of rules, or a mapping with 'rules' and optionally 'default'")
        items = raw.get("rules") or []
        if not isinstance(items, list):
            raise ValueError("'rules' must be a list")
        default = raw.get("default")
        return cls(
            rules=[parse_rule(f"rule {i}", r, base_dir) for i, r in enumerate(items)],
            default=Rule() if default is None else parse_rule("default", default, base_dir, needs_match=False),
        )

    @classmethod
    def load(cls, path: str | Path | None) -> RuleSet:
        if path is None:
            return cls()
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"not YAML/JSON: {exc}") from None
        return cls.parse(raw, path.resolve().parent)

    def for_number(self, number: str, extra: list[Rule] = ()) -> Rule:
        return next((r for r in [*extra, *self.rules] if r.matches(number)), self.default)
