"""What an analysis rule is: the shape stored in `AnalysisRule.definition` (with the name in its own column), and
the validator of what an extractor returns for a set of rules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from config.text import no_nul

FieldType = Literal["string", "number", "boolean", "enum"]
MAX_FIELDS = 50
MAX_CHOICES = 50




class RuleField(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$", description="The key of its value in the results")
    type: FieldType
    description: str = Field(min_length=1, max_length=1000, description="Tells the LLM what to extract")
    choices: list[str] | None = Field(default=None, validate_default=True,
                                      description="The values an enum field may take (enum fields only)")
    required: bool = Field(default=False, description="The value may not be null")
    keywords: list[str] = Field(
        default_factory=list, max_length=50,
        description="Words that signal the field in a transcript: hints for an LLM, and what the scripted extractor "
                    "looks for (without them, the words of the field's name)")

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return no_nul(value)

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        kind = info.data.get("type")
        if kind is None:  # the type itself was invalid: that error is enough
            return value
        if kind != "enum":
            if value is not None:
                raise ValueError("only an enum field has choices")
            return value
        if not value:
            raise ValueError("an enum field needs at least one choice")
        if len(value) > MAX_CHOICES:
            raise ValueError(f"at most {MAX_CHOICES} choices")
        if any(not c.strip() or len(c) > 200 or "\x00" in c for c in value):
            raise ValueError("each choice must be 1 to 200 characters, not blank")
        if len(set(value)) != len(value):
            raise ValueError("a choice is listed twice")
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        for word in value:
            if not word.strip() or len(word) > 100:
                raise ValueError("each keyword must be 1 to 100 characters, not blank")
            no_nul(word)
        return value


class RuleDefinition(BaseModel):
    """A rule without its name: what `AnalysisRule.definition` holds."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=2000, description="What the rule is for (given to the LLM)")
    summary: bool = Field(default=False, description="Also write a short summary of the call")
    fields: list[RuleField] = Field(default_factory=list, max_length=MAX_FIELDS, validate_default=True)

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return no_nul(value)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[RuleField], info: ValidationInfo) -> list[RuleField]:
        names = [f.name for f in value]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"field names must be unique; listed twice: {', '.join(dupes)}")
        if not value and not info.data.get("summary", True):
            raise ValueError("a rule needs at least one field, or summary: true")
        return value


# --- a set of rules, as one analysis asks for it ------------------------------------------------------------------

class Wanted:
    """The fields and summary of the rules attached to an agent, in attach order. A field name defined by more
    than one rule is asked once, as the first rule defines it."""

    def __init__(self, rules: list[tuple[str, RuleDefinition]]):
        self.rule_ids = [rule_id for rule_id, _ in rules]
        self.descriptions = [d.description for _, d in rules if d.description]
        self.fields: dict[str, RuleField] = {}
        for _, definition in rules:
            for f in definition.fields:
                self.fields.setdefault(f.name, f)
        self.summary = any(d.summary for _, d in rules)
        self._model = _result_model(self)

    def json_schema(self) -> dict[str, Any]:
        return self._model.model_json_schema()

    def validate(self, raw: Any) -> dict[str, Any]:
        """`{"fields": {...}, "summary": str}` (summary only when wanted) from an extractor's output, or
        InvalidOutput naming what is wrong."""
        if not isinstance(raw, dict):
            raise InvalidOutput(f"not a JSON object but {type(raw).__name__}")
        try:
            checked = self._model.model_validate(raw)
        except ValidationError as exc:
            raise InvalidOutput(_describe(exc)) from None
        values = checked.fields.model_dump(by_alias=True)
        for name, value in values.items():  # JSON has one number type: 2.0 reads back as 2
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                values[name] = int(value)
        out: dict[str, Any] = {"fields": values}
        if self.summary:
            out["summary"] = checked.summary
        return out


class InvalidOutput(ValueError):
    pass


_TYPES: dict[str, Any] = {"string": StrictStr, "number": StrictFloat, "boolean": StrictBool}  # (ints are floats)


def _result_model(wanted: Wanted) -> type[BaseModel]:
    specs: dict[str, Any] = {}
    for i, f in enumerate(wanted.fields.values()):
        kind = Literal[tuple(f.choices)] if f.type == "enum" else _TYPES[f.type]  # type: ignore[misc]
        info = f.description + (f" (one of: {', '.join(f.choices)})" if f.choices else "")
        # Aliased: a rule's field may be called anything, `json` or `copy` included, without shadowing pydantic.
        if f.required:
            specs[f"f{i}"] = (kind, Field(alias=f.name, description=info))
        else:
            specs[f"f{i}"] = (kind | None, Field(default=None, alias=f.name, description=info + " (null when not known)"))
    fields_model = create_model("AnalysisFields", __config__=ConfigDict(extra="ignore"), **specs)
    top: dict[str, Any] = {"fields": (fields_model, ...)}
    if wanted.summary:
        top["summary"] = (StrictStr, Field(description="A short summary of the call, in two or three sentences"))
    return create_model("Analysis", __config__=ConfigDict(extra="ignore"), **top)


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:10]:
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "; ".join(parts)
