"""Asking Twilio how a call ended, for calls whose own process went away before it heard (a restart, a crash):
its status callbacks went to a server that was not there, so the carrier is the only one left who knows."""

from __future__ import annotations

from config.settings import Settings
from runtime.reasons import DisconnectionReason as R
from telephony.twilio.rest import TwilioCalls
from telephony.twilio.status import _UNCONNECTED


class CarrierUnreachable(RuntimeError):
    pass


async def call_status(settings: Settings, call_sid: str) -> str | None:
    """Twilio's status of the call (queued, ringing, in-progress, or a final one); None when Twilio does not know
    the call."""
    from twilio.base.exceptions import TwilioRestException

    twilio = TwilioCalls(settings)
    if not twilio.configured:
        raise CarrierUnreachable("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set")
    async with twilio._client() as client:  # the one place the Twilio client is set up (base URL, timeout)
        try:
            return (await client.calls(call_sid).fetch_async()).status
        except TwilioRestException as exc:
            if exc.status == 404:
                return None
            raise CarrierUnreachable(f"Twilio refused to show call {call_sid}: {exc.status} {exc.code} {exc.msg}") \
                from None
        except Exception as exc:
            raise CarrierUnreachable(f"Twilio unreachable fetching call {call_sid}: {type(exc).__name__}: {exc}") \
                from None


def ending(status: str | None, connected: bool) -> tuple[R, str]:
    """The reason and detail to close our record of a call the carrier says is over (or does not know)."""
    if status is None:
        return R.ERROR_CARRIER, "the carrier does not know this call"
    if status == "completed" and connected:
        return R.SERVER_SHUTDOWN, "the server handling the call went away before it ended"
    # The reasons the status callback would have given, had it reached a live server.
    return _UNCONNECTED[status]
