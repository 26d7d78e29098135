"""Phone number parsing: every number the runtime stores or dials is E.164."""

from __future__ import annotations

import phonenumbers


class InvalidPhoneNumber(ValueError):
    pass


# What may separate the digits of a number as people write it. phonenumbers itself accepts far more (letters,
# extensions, `tel:` URIs, other scripts' digits, ...) and quietly drops or converts it, which would dial a number
# the client never wrote.
_SEPARATORS = frozenset(" -.()")


def to_e164(raw: str) -> str:
    """Normalise `raw` to E.164, or raise InvalidPhoneNumber saying why.

    "Possible" (right length for its country) rather than "valid" (allocated): reserved test ranges such as
    +1 555 01xx must work for demos and tests, and carriers refuse unallocated numbers themselves.
    Only ASCII digits, one leading `+` and the usual separators are accepted: an extension, vanity letters or a
    `tel:` URI are refused rather than silently dropped or converted.
    """
    if "\x00" in raw:
        raise InvalidPhoneNumber(f"{raw!r} must not contain NUL characters")
    if not raw.isascii():
        raise InvalidPhoneNumber(f"{raw!r} must be written with ASCII digits (0-9) and separators only")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number in E.164 form (+<country><number>): {exc}") from exc
    if parsed.extension:
        raise InvalidPhoneNumber(f"{raw!r} has an extension ({parsed.extension}), which cannot be dialed; "
                                 "give the number alone")
    if raw.strip().lower().startswith("tel:"):
        raise InvalidPhoneNumber(f"{raw!r} is a tel: URI; give the number alone, e.g. +15550104242")
    if any(c.isalpha() for c in raw):
        raise InvalidPhoneNumber(f"{raw!r} contains letters; give a vanity number as digits")
    body = raw.strip().removeprefix("+")
    if stray := next((c for c in body if not c.isdigit() and c not in _SEPARATORS), None):
        raise InvalidPhoneNumber(f"{raw!r} contains {stray!r}; only digits, a leading + and spaces, dashes, dots "
                                 "or brackets are accepted")
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidPhoneNumber(f"{raw!r} has the wrong length for its country code")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
