"""uvicorn's WebSocket protocol (websockets sans-I/O), with read flow control and frame parsing that suit a media
stream.

uvicorn pauses the socket after every message and resumes it when the app has read its queue empty: for a Twilio stream
that is an epoll unregister and register (two system calls) per 20 ms message per call, about 8 % of the server's busy
time with 20 idle calls. Here the socket is paused only when `HIGH_WATER` messages wait unread (a second of audio: the
app has truly fallen behind), and resumed, as uvicorn does, when the app has caught up.

websockets' parser reads every frame through a chain of generators (the header, the length, the mask, the payload, each
a `read_exact`, and an `Opcode` enum per frame). A media message is the plainest frame there is: whole, masked,
unfragmented text. `data_received` reads the frame headers itself and hands the app each such frame as uvicorn's own
`handle_text` would, unmasked by websockets' `apply_mask`. Every other frame (ping, pong, close, a fragment, a
continuation) goes to the parser whole, so the parser always starts on a frame boundary and rules on it as before; a
frame it must refuse (unmasked, over `ws_max_size`) goes to it at once with everything after. Before the handshake and
once closing, everything goes to the parser, and a connection whose client sent frame bytes before the handshake's
answer (which it may not) keeps to the parser if they left it inside a frame. tests/test_ws_protocol.py sends the same
bytes, split every way, through both classes and compares what the app receives and what the socket is sent. The
server's CPU per media message received, protocol to parsed JSON (`bench/ws_receive.py`, 40 streams, 6 rounds): 63.5 µs
against 68.2 with the flow control alone and 75.8 with uvicorn's class; side by side, idle calls cost 0.910 of the CPU.

An app may also take a connection's text messages as they are read, with no ASGI event, queue or task wake-up per
message (`DIRECT`, an ASGI extension in the scope): the call's transport does, for the caller's media
(telephony/audio_in.py `direct`). Messages queued before it are handed over first, in order; a message it does not take,
every binary message, and the close still reach the app's `receive`. Idle calls cost 0.838 of the CPU with it
(bench/side_by_side.py --phase idle, 30 calls, 4 rounds).

One difference, on purpose: uvicorn handles the parser's error before the frames it parsed, so messages that share a TCP
read with a frame it refuses never reach the app; here they do, as they would had they come a read earlier.

Tied to uvicorn's `read_paused`, `send_receive_event_to_app`, `frames`, `curr_msg_data_type`, `handshake_complete`,
`handle_connect`, `scope`, `response`, `queue` and `close_sent`, and websockets' `state`, `extensions`,
`max_message_size`, `parser`, `reader` and `apply_mask`. A missing import or method hands back uvicorn's own class
(`protocol()`); the attributes are held by tests/test_ws_protocol.py.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

HIGH_WATER = 50
# The ASGI extension (in the scope's "extensions") through which an app takes a connection's text messages as they
# arrive: `scope["extensions"][DIRECT](take)`, where `take(text)` returns whether it took the message; a message not
# taken reaches the app's `receive` as before. `(None)` ends it.
DIRECT = "voxline.direct_text"
_TEXT, _BINARY = 0x81, 0x82  # the first byte of a whole text or binary frame: FIN, no RSV bits


def _frame(data: bytes | bytearray, at: int) -> tuple[int, int, bool] | None:
    """The frame at `at`: (its size, its payload's length, whether it is a whole masked text or binary frame), or
    None while its length has not all arrived. The size counts the header, so a frame cut off anywhere, its header
    included, is longer than what has arrived."""
    end = len(data)
    if end - at < 2:
        return None
    first, second = data[at], data[at + 1]
    length = second & 0x7F
    header = 2 + (4 if second & 0x80 else 0)
    if length == 126:
        if end - at < 4:
            return None
        length = int.from_bytes(data[at + 2:at + 4], "big")
        header += 2
    elif length == 127:
        if end - at < 10:
            return None
        length = int.from_bytes(data[at + 2:at + 10], "big")
        header += 8
    return header + length, length, (first == _TEXT or first == _BINARY) and bool(second & 0x80)


def _between_frames(conn) -> bool:
    """Whether websockets' parser waits for the first byte of a frame. Only whole frames reach it once the road is
    taken, so it stays so; before, a client that sent frames before the handshake's answer may have left it inside
    one, and then the connection keeps to the parser."""
    step = conn.parser
    while getattr(step, "gi_yieldfrom", None) is not None:
        step = step.gi_yieldfrom
    return getattr(step, "gi_code", None) is not None and step.gi_code.co_name == "at_eof" and not conn.reader.buffer


try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.frames import apply_mask
    from websockets.protocol import OPEN, Protocol
except ImportError:  # pragma: no cover - uvicorn without the sans-I/O implementation
    WebSocketsSansIOProtocol = None

_SEAMS = WebSocketsSansIOProtocol is not None and all(
    hasattr(WebSocketsSansIOProtocol, name)
    for name in ("send_receive_event_to_app", "data_received", "handle_connect")) \
    and all(hasattr(Protocol, name) for name in ("receive_data", "events_received"))

if _SEAMS:
    # At module level: `serve --workers` pickles uvicorn's config, this class with it, into each worker.
    class MediaStreamProtocol(WebSocketsSansIOProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._partial = bytearray()  # the start of a frame whose end has not arrived
            self._road: bool | None = None  # whether this connection's plain frames skip the parser; known once open
            self._take: Callable[[str], bool] | None = None  # DIRECT's taker, while the app has one

        def handle_connect(self, event) -> None:
            super().handle_connect(event)
            if self.response.status_code == 101:  # the app's task is made, not yet run: the scope is still ours
                self.scope["extensions"][DIRECT] = self._direct

        def connection_lost(self, exc: Exception | None) -> None:
            # The scope outlives the connection in the app's objects, and its bound method is a cycle back here.
            extensions = getattr(self, "scope", None) and self.scope.get("extensions")
            if extensions:
                extensions.pop(DIRECT, None)
            super().connection_lost(exc)

        def _direct(self, take: Callable[[str], bool] | None) -> None:
            self._take = take
            if take is None:
                return
            # Messages queued before it, in their order, so none is overtaken by one that comes after it.
            waiting = []
            while not self.queue.empty():
                event = self.queue.get_nowait()
                if not (self._take is not None and event["type"] == "websocket.receive"
                        and event.get("text") is not None and self._give(event["text"])):
                    waiting.append(event)
            for event in waiting:
                self.queue.put_nowait(event)
            if self.read_paused and self.queue.empty():  # the app's receive resumes only after a message
                self.read_paused = False
                self.transport.resume_reading()

        def _give(self, text: str) -> bool:
            try:
                return self._take(text)
            except Exception:  # noqa: BLE001 - the taker's bug is logged; the call goes on through the app's receive
                logger.exception("a media socket's direct taker failed; its messages go to the app's receive")
                self._take = None
                return False

        def data_received(self, data: bytes) -> None:
            conn = self.conn
            if self._partial:
                self._partial += data
                data = self._partial
            if conn.state is not OPEN or not self.handshake_complete or conn.extensions:
                self._to_parser(data, 0)
                return
            if self._road is None:
                self._road = _between_frames(conn)
            if not self._road:
                self._to_parser(data, 0)
                return
            at = 0
            end = len(data)
            while at < end:
                frame = _frame(data, at)
                if frame is None:
                    break
                size, length, plain = frame
                limit = conn.max_message_size
                if not data[at + 1] & 0x80 or (limit is not None and length > limit):
                    self._to_parser(data, at)  # refused as soon as its header is read, as it always was
                    return
                if size > end - at:
                    break
                stop = at + size
                if plain and not self.frames:  # uvicorn holds an open fragmented message there
                    # What uvicorn does with a whole text or binary frame from the parser (handle_text, handle_bytes).
                    self.curr_msg_data_type = "text" if data[at] == _TEXT else "bytes"
                    self.frames = [apply_mask(data[stop - length:stop], data[stop - length - 4:stop - length])]
                    self.send_receive_event_to_app()
                else:
                    super().data_received(bytes(data[at:stop]))  # whole: the parser ends on a boundary again
                at = stop
                if conn.state is not OPEN:  # closing: a close frame, or uvicorn refusing a message (bad UTF-8)
                    self._to_parser(data, at)
                    return
            if data is self._partial:
                del self._partial[:at]
            elif at < end:
                self._partial += data[at:]

        def _to_parser(self, data: bytes | bytearray, at: int) -> None:
            rest = bytes(data[at:])
            self._partial.clear()
            if rest:
                super().data_received(rest)

        def send_receive_event_to_app(self) -> None:
            if self._take is not None and self.curr_msg_data_type == "text" and not self.close_sent:
                data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    text = None  # uvicorn's own road refuses it (1007)
                if text is not None and self._give(text):
                    self.frames = []
                    return
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
