"""How a call ended, for calls whose own process went away before it heard (a restart, a crash): its status
callbacks went to a server that was not there, so the carrier (`TwilioCalls.fetch_status`) is the only one left who
knows."""

from __future__ import annotations

from runtime.reasons import DisconnectionReason as R
from telephony.twilio.status import UNCONNECTED_ENDINGS


def ending(status: str | None, connected: bool) -> tuple[R, str]:
    """The reason and detail to close our record of a call the carrier says is over (or does not know)."""
    if status is None:
        return R.ERROR_CARRIER, "the carrier does not know this call"
    if status == "completed" and connected:
        return R.SERVER_SHUTDOWN, "the server handling the call went away before it ended"
    # The reasons the status callback would have given, had it reached a live server.
    return UNCONNECTED_ENDINGS[status]
