"""Phone number parsing: every number the runtime stores or dials is E.164."""

from __future__ import annotations

import phonenumbers


class InvalidPhoneNumber(ValueError):
    pass


def to_e164(raw: str) -> str:
    """Normalise `raw` to E.164, or raise InvalidPhoneNumber saying why.

    "Possible" (right length for its country) rather than "valid" (allocated): reserved test ranges such as
    +1 555 01xx must work for demos and tests, and carriers refuse unallocated numbers themselves.
    """
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number in E.164 form (+<country><number>): {exc}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidPhoneNumber(f"{raw!r} has the wrong length for its country code")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
