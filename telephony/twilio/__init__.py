"""Twilio: voice webhook (TwiML), Media Streams socket and serializer, and a protocol-faithful caller."""
