"""A local stand-in for Twilio, speaking its wire formats, so the real `twilio` client and voxline's webhook and
media stream can be exercised with no account: `voxline emulate twilio [--rules FILE]`, or in-process in tests.

- `rest.py`: the calls resource (create, fetch, update; Basic auth; Twilio's errors) and the `/_emulator/*` routes.
- `carrier.py`: what a created call does next: ringing, busy/no-answer/failed or answered, its TwiML (inline or
  fetched signed from its Url), `<Connect><Stream>` to a media stream, `<Dial>` as a transfer; inbound calls placed
  on a voxline server's voice webhook.
- `callee.py`: the far end on the stream, playing a script (Piper speech, WAVs, DTMF, waiting for the agent).
- `rules.py`: which outcome and script a destination number gets.
- `state.py`: calls, status callbacks (signed, in order, never retried), the request log, stats.
"""

from telephony.twilio.emulator.rest import create_emulator_app
from telephony.twilio.emulator.rules import RuleSet
from telephony.twilio.emulator.state import EmulatedCall, TwilioEmulator

__all__ = ["EmulatedCall", "RuleSet", "TwilioEmulator", "create_emulator_app"]
