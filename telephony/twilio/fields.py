"""Checks on the values Twilio sends (webhook and status-callback form fields, the media stream's `start`) before
they reach the database.

A signature proves who sent a request, not that its values fit our columns: Twilio sends `sip:` addresses longer
than any phone number, and anything on the network can send a NUL or a 30-digit duration. PostgreSQL refuses such
values with an error (SQLite stores some, overflows on others), which surfaced as a 500 or a dropped socket. Each
check returns the clean value or raises `BadField`, whose message names the field and the problem for the log line
and the refusal.
"""

from __future__ import annotations

import re
import unicodedata

SID_MAX = 64  # calls.twilio_call_sid / calls.stream_sid (Twilio's own SIDs are 34 characters)
ADDRESS_MAX = 255  # calls.from_number / calls.to_number: a phone number, a `sip:` URI, `client:name`, `anonymous`
ANSWERED_BY_MAX = 32  # calls.answered_by (Twilio's values: human, machine_start, machine_end_beep, fax, …)
# Twilio ends every call after at most 24 hours (TimeLimit's maximum), so no CallDuration can be longer.
CALL_SECS_MAX = 86_400

_NAME = re.compile(r"[A-Za-z0-9_-]+")  # SIDs and keywords
_COUNT = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take " 7", "+7", "7_0" and "٧"


class BadField(ValueError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field = field


def shown(value: object, limit: int = 40) -> str:
    """A value for a log line: quoted and escaped (no raw NUL or newline reaches the log), and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(str(value))} characters)"


def _text(field: str, value: object, limit: int) -> str:
    if value is None:
        raise BadField(field, "is missing")
    if not isinstance(value, str):
        raise BadField(field, f"is not a string ({type(value).__name__})")
    if not value:
        raise BadField(field, "is empty")
    if len(value) > limit:
        raise BadField(field, f"is {len(value)} characters long (at most {limit})")
    return value


def sid(field: str, value: object) -> str:
    """A Twilio SID (CallSid, streamSid): letters, digits, `-` and `_`, at most SID_MAX characters."""
    value = _text(field, value, SID_MAX)
    if not _NAME.fullmatch(value):
        raise BadField(field, f"has characters other than letters, digits, '-' and '_': {shown(value)}")
    return value


def address(field: str, value: object) -> str:
    """A carrier address (From, To): any printable text up to ADDRESS_MAX characters."""
    value = _text(field, value, ADDRESS_MAX)
    for i, ch in enumerate(value):
        if unicodedata.category(ch) in ("Cc", "Cs"):  # NUL, newlines and other controls; lone surrogates
            raise BadField(field, f"has a control character (U+{ord(ch):04X}) at position {i}: {shown(value)}")
    return value


def word(field: str, value: object, limit: int) -> str:
    """A short keyword such as AnsweredBy."""
    value = _text(field, value, limit)
    if not _NAME.fullmatch(value):
        raise BadField(field, f"has characters other than letters, digits, '-' and '_': {shown(value)}")
    return value


def count(field: str, value: object, maximum: int) -> int:
    """A non-negative integer sent as text, at most `maximum` (Twilio sends integers as decimal strings)."""
    if not isinstance(value, str) or not _COUNT.fullmatch(value):
        raise BadField(field, f"is not a non-negative integer: {shown(value)}")
    if len(value) > len(str(maximum)) or int(value) > maximum:
        raise BadField(field, f"is out of range: {shown(value)} (at most {maximum})")
    return int(value)
