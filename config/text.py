"""Checks on client text shared by the config models, the API and the tools: one rule, one message."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def no_nul(value: str) -> str:
    """PostgreSQL cannot store NUL in a text column (a 500 where a 400 was due), and in a prompt or a request it
    cuts the text short: never meant, so refused."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Annotated[str | None, Query(...), NoNul] for query parameters; absent ones stay None (defaults are not validated).
NoNul = AfterValidator(lambda value: value if value is None else no_nul(value))
NoNulText = Annotated[str, AfterValidator(no_nul)]
