"""pipecat's Cartesia TTS, dialling `wss://` with the process's one TLS context (pipelines/providers/tls.py) instead
of a new one per call, whose CA store load (~33 ms) stalled every call's audio on the event loop."""

from __future__ import annotations

from pipecat.services.cartesia.tts import CartesiaTTSService

from pipelines.providers.tls import ws_tls


class SharedTLSCartesiaTTS(CartesiaTTSService):
    async def _websocket_connect(self, uri: str, **kwargs):
        return await super()._websocket_connect(uri, **ws_tls(uri, kwargs))
