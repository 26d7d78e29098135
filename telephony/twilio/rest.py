"""Telling Twilio what to do with calls: place one, hang one up, or move it to another number. Uses the `twilio`
SDK's async client, whose API base URL is configurable (`TWILIO_API_BASE_URL`) so tests and users can point it at
`voxline emulate twilio`."""

from __future__ import annotations

from contextlib import asynccontextmanager

from loguru import logger
from twilio.twiml.voice_response import VoiceResponse

from config.settings import Settings


class CarrierError(RuntimeError):
    pass


def warm_up() -> None:
    """Import what the first request to Twilio would (blocking: run it in a thread at start-up): the SDK's async HTTP
    client, and the Calls API's ~40 modules, which its client loads when first asked for them. ~200 ms on the event
    loop at the server's first outbound call, hang-up or transfer, under every call in progress."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient  # noqa: F401
    from twilio.rest import Client

    Client("AC" + "0" * 32, "warm-up").calls  # builds the resources only: no request is made


class TwilioCalls:
    def __init__(self, settings: Settings):
        self._settings = settings

    @property
    def configured(self) -> bool:
        s = self._settings
        return bool(s.twilio_account_sid and s.twilio_auth_token)

    async def place(self, *, to: str, from_: str, twiml: str, status_callback: str, events: list[str],
                    machine_detection: bool = False, timeout_secs: int | None = None,
                    machine_detection_timeout_secs: int | None = None) -> str:
        """Create the call; returns its CallSid. CarrierError when Twilio refuses it or cannot be reached."""
        from twilio.base.exceptions import TwilioRestException

        fields = {"to": to, "from_": from_, "twiml": twiml, "status_callback": status_callback,
                  "status_callback_event": events, "status_callback_method": "POST"}
        if timeout_secs is not None:
            fields["timeout"] = timeout_secs
        if machine_detection:
            fields["machine_detection"] = "Enable"
            if machine_detection_timeout_secs is not None:
                fields["machine_detection_timeout"] = machine_detection_timeout_secs
        async with self._client() as client:
            try:
                call = await client.calls.create_async(**fields)
            except TwilioRestException as exc:
                raise CarrierError(f"Twilio refused the call: {exc.status} {exc.code} {exc.msg}") from None
            except Exception as exc:
                raise CarrierError(f"Twilio unreachable placing the call: {type(exc).__name__}: {exc}") from None
        logger.info(f"twilio: call {call.sid} placed {from_} → {to}")
        return call.sid

    async def hang_up(self, call_sid: str) -> None:
        await self._update(call_sid, status="completed")

    async def transfer(self, call_sid: str, number: str, *, caller_id: str | None = None) -> None:
        twiml = VoiceResponse()
        twiml.dial(number, caller_id=caller_id)
        await self._update(call_sid, twiml=str(twiml))

    @asynccontextmanager
    async def _client(self):
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        s = self._settings
        http = AsyncTwilioHttpClient(timeout=10)
        client = Client(s.twilio_account_sid, s.twilio_auth_token.get_secret_value(), http_client=http)
        if s.twilio_api_base_url:
            client.api.base_url = s.twilio_api_base_url.rstrip("/")
        try:
            yield client
        finally:
            await http.close()

    async def fetch_status(self, call_sid: str) -> str | None:
        """Twilio's status of the call (queued, ringing, in-progress, or a final one); None when Twilio does not
        know the call."""
        from twilio.base.exceptions import TwilioRestException

        if not self.configured:
            raise CarrierError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set")
        async with self._client() as client:
            try:
                return (await client.calls(call_sid).fetch_async()).status
            except TwilioRestException as exc:
                if exc.status == 404:
                    return None
                raise CarrierError(f"Twilio refused to show call {call_sid}: {exc.status} {exc.code} {exc.msg}") \
                    from None
            except Exception as exc:
                raise CarrierError(f"Twilio unreachable fetching call {call_sid}: {type(exc).__name__}: {exc}") \
                    from None

    async def _update(self, call_sid: str, **fields) -> None:
        from twilio.base.exceptions import TwilioRestException

        async with self._client() as client:
            try:
                await client.calls(call_sid).update_async(**fields)
            except TwilioRestException as exc:
                raise CarrierError(
                    f"Twilio refused to update call {call_sid}: {exc.status} {exc.code} {exc.msg}") from None
            except Exception as exc:
                raise CarrierError(f"Twilio unreachable updating call {call_sid}: {type(exc).__name__}: {exc}") from None
        logger.info(f"twilio: call {call_sid} updated ({', '.join(fields)})")
