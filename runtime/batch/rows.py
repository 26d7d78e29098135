"""Recipients as clients send them (JSON records, upserts, CSV files): each row normalised, or refused with the
field at fault. One bad row never costs the good ones; a CSV whose header is wrong is refused whole."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from runtime.phone import InvalidPhoneNumber, to_e164

TO = "to_phonenumber"
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUE_CHARS = 1000
MAX_ROWS = 10_000


class RowError(ValueError):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


class FileError(ValueError):
    """The whole CSV is unusable (encoding, header): no row can be judged."""


@dataclass
class Row:
    to_number: str
    variables: dict[str, str]


def unstorable(text: str) -> str | None:
    """Why `text` cannot go into the database, or None. PostgreSQL refuses NUL in text and lone surrogates in JSON."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def check_variable_names(names: list[str]) -> list[str]:
    """Names the agent's prompt refers to as {{name}}: identifiers, each once."""
    seen: set[str] = set()
    for name in names:
        if not VARIABLE_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits and _, not starting with a digit, "
                             "at most 64 characters)")
        if name == TO:
            raise ValueError(f"{TO!r} is the recipient's number, not a variable")
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return names


def _text(field: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(field, "must be a string or a number")
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 in JSON is inf: never a value anyone meant
        raise RowError(field, "must be a finite number")
    text = str(value).strip()
    if len(text) > MAX_VALUE_CHARS:
        raise RowError(field, f"longer than {MAX_VALUE_CHARS} characters")
    if why := unstorable(text):
        raise RowError(field, why)
    return text


def check_row(raw: Mapping[str, Any], variable_names: list[str]) -> Row:
    """`raw` holds `to_phonenumber` and one value per variable name, nothing else."""
    unknown = sorted(k for k in raw if k != TO and k not in variable_names)
    if unknown:
        allowed = ", ".join([TO, *variable_names])
        raise RowError(unknown[0], f"not a column of this batch (expected {allowed})")
    number = raw.get(TO)
    if number is None or (isinstance(number, str) and not number.strip()):
        raise RowError(TO, "required")
    try:
        to_number = to_e164(_text(TO, number))
    except InvalidPhoneNumber as exc:
        raise RowError(TO, str(exc)) from None
    variables = {}
    for name in variable_names:
        value = raw.get(name)
        text = "" if value is None else _text(name, value)
        if not text:
            raise RowError(name, "required by the batch's variable_names")
        variables[name] = text
    return Row(to_number, variables)


def parse_csv(data: bytes, variable_names: list[str]) -> list[tuple[int, Row | RowError]]:
    """(line number in the file, the row or why it was refused) for every non-blank record after the header.
    A record spanning lines (a quoted newline) is numbered by its first line."""
    try:
        text = data.decode("utf-8-sig")  # Excel writes a BOM
    except UnicodeDecodeError as exc:
        raise FileError(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise FileError("contains NUL characters")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    out: list[tuple[int, Row | RowError]] = []
    line = 1
    try:
        for record in reader:
            first_line, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = _check_header([cell.strip() for cell in record], variable_names)
                continue
            if len(out) >= MAX_ROWS:
                raise FileError(f"more than {MAX_ROWS} rows; split the file")
            if len(record) != len(header):
                out.append((first_line, RowError(None, f"{len(record)} columns where the header has {len(header)}")))
                continue
            try:
                out.append((first_line, check_row(dict(zip(header, record)), variable_names)))
            except RowError as exc:
                out.append((first_line, exc))
    except csv.Error as exc:
        raise FileError(f"line {reader.line_num}: {exc}") from None
    if header is None:
        raise FileError(f"empty; the first line must be a header with {TO}")
    return out


def _check_header(header: list[str], variable_names: list[str]) -> list[str]:
    expected = ", ".join([TO, *variable_names])
    if TO not in header:
        raise FileError(f"the header has no {TO!r} column (expected {expected})")
    if dupes := sorted({c for c in header if header.count(c) > 1}):
        raise FileError(f"column {dupes[0]!r} appears twice in the header")
    if unknown := [c for c in header if c != TO and c not in variable_names]:
        raise FileError(f"column {unknown[0]!r} is not one of the batch's variable_names (expected {expected})")
    if missing := [n for n in variable_names if n not in header]:
        raise FileError(f"the header lacks the variable column {missing[0]!r} (expected {expected})")
    return header
