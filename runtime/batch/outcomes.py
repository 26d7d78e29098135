"""What an ended call means for its campaign row. Kupe has three outcomes: completed, failed, no_answer.

- `completed`: someone answered and the conversation ran, however it ended (either side hanging up, a transfer,
  the maximum duration, the silence timeout).
- `no_answer`: nobody took the call: no answer, busy, or an answering machine (`voicemail`). These are the rows a
  campaign would try again later, which is what sets them apart from failures.
- `failed`: the call could not be placed or broke (`dial_failed`, `error_*`, `server_shutdown`), with the reason in
  the row's `error_message`.
"""

from __future__ import annotations

from runtime.reasons import DisconnectionReason as R

ITEM_STATUSES = ("not_started", "calling", "completed", "failed", "no_answer")
TERMINAL = ("completed", "failed", "no_answer")

_NO_ANSWER = {R.DIAL_NO_ANSWER, R.DIAL_BUSY, R.VOICEMAIL}
_CONVERSATION = {R.CALLER_HANGUP, R.AGENT_HANGUP, R.TRANSFER, R.MAX_DURATION, R.SILENCE_TIMEOUT}


def outcome(reason: str | None, detail: str | None) -> tuple[str, str | None]:
    """(item status, error message) for a call that ended with `reason`."""
    if reason in _CONVERSATION:
        return "completed", None
    if reason in _NO_ANSWER:
        return "no_answer", reason
    why = reason or "ended without a reason"
    return "failed", f"{why}: {detail}" if detail else why
