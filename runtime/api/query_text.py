"""Query-string text that reaches a database column: NUL is refused (400 naming the parameter), since PostgreSQL
cannot compare a text column with it and would answer a 500."""

from __future__ import annotations

from pydantic import AfterValidator

from pipelines.tools.attachment import no_nul

# Annotated[str | None, Query(...), NoNul]: absent parameters stay None (defaults are not validated).
NoNul = AfterValidator(lambda value: value if value is None else no_nul(value))
