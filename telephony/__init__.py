"""Carriers: each is a webhook/stream glue module plus a pipecat serializer. Twilio first."""
