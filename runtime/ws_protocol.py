"""uvicorn's WebSocket protocol (websockets sans-I/O), with read flow control that suits a media stream.

uvicorn pauses the socket after every message and resumes it when the app has read its queue empty: for a Twilio
stream that is an epoll unregister and register (two system calls) per 20 ms message per call, about 8 % of the
server's busy time with 20 idle calls. Here the socket is paused only when `HIGH_WATER` messages wait unread (a
second of audio: the app has truly fallen behind), and resumed, as uvicorn does, when the app has caught up.
Tied to uvicorn's `read_paused` flag and `send_receive_event_to_app`; if a future uvicorn drops them, `protocol()`
hands back uvicorn's own class.
"""

from __future__ import annotations

HIGH_WATER = 50


try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - uvicorn without the sans-I/O implementation
    WebSocketsSansIOProtocol = None

if WebSocketsSansIOProtocol is not None and hasattr(WebSocketsSansIOProtocol, "send_receive_event_to_app"):
    # At module level: `serve --workers` pickles uvicorn's config, this class with it, into each worker.
    class MediaStreamProtocol(WebSocketsSansIOProtocol):
        def send_receive_event_to_app(self) -> None:
            paused = self.read_paused
            self.read_paused = True  # uvicorn pauses unless it believes it already has
            super().send_receive_event_to_app()
            self.read_paused = paused
            if not paused and self.queue.qsize() >= HIGH_WATER:
                self.read_paused = True
                self.transport.pause_reading()
else:  # pragma: no cover
    MediaStreamProtocol = None


def protocol() -> type | str:
    return MediaStreamProtocol or "auto"
