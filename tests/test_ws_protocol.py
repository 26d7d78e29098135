"""runtime/ws_protocol.py's frame road against uvicorn's own protocol: the same bytes, split every way, must give the
app the same messages and the client the same frames back (pongs, the close and its code)."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from runtime.ws_protocol import DIRECT, HIGH_WATER, MediaStreamProtocol

MAX_SIZE = 100_000  # the server's ws_max_size in these tests, so that a frame over it is cheap to make


def frame(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = True, rsv1: bool = False) -> bytes:
    """A client's frame, built byte by byte so that frames websockets would refuse to build can be sent too."""
    key = b"\x01\x02\x03\x04"
    head = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(data)
    masked = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", head, masked | length)
    elif length < 65536:
        header = struct.pack("!BBH", head, masked | 126, length)
    else:
        header = struct.pack("!BBQ", head, masked | 127, length)
    if not mask:
        return header + data
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def media(n: int) -> bytes:
    payload = (b"%d" % n) * 60
    return frame(Opcode.TEXT, b'{"event":"media","media":{"payload":"' + payload + b'"}}')


TEXT, BINARY, CONT, PING, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.CLOSE

SCENARIOS = {
    "media messages": [media(n) for n in range(30)],
    "sizes around each length form": [frame(TEXT, b"x" * n) for n in (0, 1, 125, 126, 127, 65535, 65536, 70000)]
    + [frame(BINARY, bytes(range(256)) * 3), frame(BINARY, b"")],
    "a fragmented message with a ping inside": [
        media(1), frame(TEXT, b"ab", fin=False), frame(PING, b"p"), frame(CONT, b"cd", fin=False),
        frame(CONT, b"ef"), media(2), frame(BINARY, b"\x00\x01", fin=False), frame(CONT, b"\x02"), media(3)],
    "pings between messages": [media(1), frame(PING, b"1"), media(2), frame(PING, b""), media(3)],
    "an unmasked frame": [media(1), frame(TEXT, b"plain", mask=False), media(2)],
    "a frame over ws_max_size": [media(1), frame(TEXT, b"y" * (MAX_SIZE + 1)), media(2)],
    "invalid UTF-8": [media(1), frame(TEXT, b"ok \xff\xfe"), media(2)],
    "a reserved bit": [media(1), frame(TEXT, b"rsv", rsv1=True), media(2)],
    "a continuation with nothing to continue": [media(1), frame(CONT, b"lost"), media(2)],
    "a text frame inside a fragmented message": [media(0), frame(TEXT, b"a", fin=False), media(1), frame(CONT, b"b")],
    "the client closes, then sends more": [media(1), frame(CLOSE, struct.pack("!H", 1000) + b"bye"), media(2)],
}


class Transport(asyncio.Transport):
    """Just enough of a socket's transport for a uvicorn protocol: what it writes, and whether it closed."""

    def __init__(self):
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.protocol = None

    def get_extra_info(self, name, default=None):
        return default

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def converse(protocol_class: type, chunks: list[bytes], *, early: bytes = b"",
                   opened: list | None = None) -> tuple[list, list]:
    """Open a WebSocket on `protocol_class` as uvicorn would, feed it `chunks` one read at a time, and return what
    the app received and the frames the client got back. `early`: bytes sent in the handshake's own read, before
    the server's answer (a client may not, but one can); `opened` gets the protocol."""
    received: list = []

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                received.append(("disconnect", message.get("code")))
                return
            received.append(("text", message["text"]) if message.get("text") is not None
                            else ("bytes", message["bytes"]))

    config = uvicorn.Config(app, ws_max_size=MAX_SIZE, ws_per_message_deflate=False, ws_ping_interval=None,
                            lifespan="off", log_level="critical")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)

    client = ClientProtocol(parse_uri("ws://test/stream"))
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()) + early)
    if opened is not None:
        opened.append(protocol)
    for _ in range(100):
        if protocol.handshake_complete:
            break
        await asyncio.sleep(0)
    assert protocol.handshake_complete
    for chunk in chunks:
        if transport.closed:
            break
        protocol.data_received(chunk)
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    if not transport.closed:
        transport.close()
    for _ in range(20):
        await asyncio.sleep(0)

    client.receive_data(bytes(transport.written))
    events = client.events_received()
    assert isinstance(events[0], Response) and events[0].status_code == 101
    back = [(f.opcode, bytes(f.data)) for f in events[1:] if isinstance(f, Frame)]
    return received, back


def splits(stream: bytes, seed: int) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    ways = {"one read": [stream], "byte by byte": [stream[i:i + 1] for i in range(len(stream))][:4000]}
    for name, top in (("1-7 bytes", 7), ("1-300 bytes", 300), ("1-5000 bytes", 5000)):
        chunks, at = [], 0
        while at < len(stream):
            n = rng.randint(1, top)
            chunks.append(stream[at:at + n])
            at += n
        ways[name] = chunks
    return ways


def data_messages(received: list) -> list:
    return [m for m in received if m[0] != "disconnect"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_frame_road_gives_the_app_and_the_client_what_uvicorns_parser_does(scenario):
    """The reference is uvicorn's parser fed a frame a read. Split any other way, the frame road gives the same;
    uvicorn's own does too, except that a read holding a frame it refuses loses the messages before it in that read
    (its `data_received` handles the parser's error before the frames it parsed), so there its messages need only
    be the start of the reference's."""
    frames = SCENARIOS[scenario]
    reference = await converse(WebSocketsSansIOProtocol, frames)
    assert data_messages(reference[0]), scenario  # the app heard something: no comparison of two silences
    stream = b"".join(frames)
    ways = splits(stream, seed=len(scenario))
    ways["a frame a read"] = frames
    if len(stream) > 4000:
        del ways["byte by byte"]  # the large frames are split finely enough by the others
    for way, chunks in ways.items():
        assert await converse(MediaStreamProtocol, chunks) == reference, (scenario, way)
        received, back = await converse(WebSocketsSansIOProtocol, chunks)
        assert back == reference[1] and received[-1] == reference[0][-1], (scenario, way)
        assert data_messages(reference[0])[:len(data_messages(received))] == data_messages(received), (scenario, way)


async def test_the_frame_road_is_taken_for_media_and_not_for_anything_else(monkeypatch):
    """The comparison above would pass if every frame went to websockets' parser: count what reaches it."""
    parsed: list[bytes] = []
    original = WebSocketsSansIOProtocol.data_received

    def counting(self, data):
        parsed.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(WebSocketsSansIOProtocol, "data_received", counting)
    frames = [media(n) for n in range(5)] + [frame(PING, b"p")] + [media(n) for n in range(5, 10)]
    stream = b"".join(frames)
    received, back = await converse(MediaStreamProtocol, [stream[:7], stream[7:500], stream[500:]])
    assert [kind for kind, _ in received[:10]] == ["text"] * 10 and back == [(Opcode.PONG, b"p")]
    # The handshake and the ping went to the parser, each whole; no media message did.
    assert parsed[0].startswith(b"GET /stream HTTP/1.1") and parsed[1:] == [frame(PING, b"p")]


@pytest.mark.parametrize("early", [2, 5, 6, 40, len(media(0))])  # 2 and 6: nothing left in its buffer
async def test_frames_sent_before_the_handshakes_answer_leave_the_parser_where_it_can_go_on(early):
    """A frame begun in the handshake's read may leave websockets' parser inside it: the connection then keeps to
    the parser, and gives the app what uvicorn's does; a whole one leaves it between frames, and the road opens."""
    stream = b"".join(media(n) for n in range(6))
    chunks = [stream[early:early + 150], stream[early + 150:]]
    opened: list = []
    ours = await converse(MediaStreamProtocol, chunks, early=stream[:early], opened=opened)
    assert ours == await converse(WebSocketsSansIOProtocol, chunks, early=stream[:early])
    assert [kind for kind, _ in ours[0]] == ["text"] * 6 + ["disconnect"], ours[0]
    assert opened[0]._road is (early == len(media(0))), early


async def _opened(app, transport: Transport) -> MediaStreamProtocol:
    config = uvicorn.Config(app, ws_per_message_deflate=False, ws_ping_interval=None, lifespan="off",
                            log_level="critical")
    config.load()
    protocol = MediaStreamProtocol(config=config, server_state=ServerState(), app_state={})
    transport.protocol = protocol
    protocol.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://test/stream"))
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))
    while not protocol.handshake_complete:
        await asyncio.sleep(0)
    return protocol


async def test_the_socket_pauses_only_when_the_app_falls_a_second_behind():
    """HIGH_WATER: messages the app has not read yet pause reading at 50, not after each one as uvicorn does."""
    pauses: list[int] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(3600)  # never reads

    transport = Transport()
    transport.pause_reading = lambda: pauses.append(transport.protocol.queue.qsize())
    protocol = await _opened(app, transport)
    for n in range(HIGH_WATER + 5):
        protocol.data_received(media(n))
    assert pauses == [HIGH_WATER]
    transport.close()
    await asyncio.sleep(0)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_direct_taker_gets_the_text_it_takes_in_order_and_the_app_the_rest():
    """DIRECT: text messages go to the app's taker as they are read, those queued before it first; what it does not
    take (and every binary message) reaches the app's receive, and a taker that fails is logged and dropped."""
    taken: list[str] = []
    received: list = []
    go, installed = asyncio.Event(), asyncio.Event()

    def take(text: str) -> bool:
        if text == "boom":
            raise ValueError("a bug in the taker")
        if text.startswith("m"):
            taken.append(text)
            return True
        return False

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        scope["extensions"][DIRECT](take)
        installed.set()
        while (message := await receive())["type"] != "websocket.disconnect":
            received.append(message.get("text") if message.get("text") is not None else message["bytes"])

    transport = Transport()
    protocol = await _opened(app, transport)
    for text in (b"m0", b"x-mark", b"m1"):  # before the taker: queued for the app
        protocol.data_received(frame(TEXT, text))
    await _settle()
    assert taken == [] and received == []
    go.set()
    await installed.wait()
    await _settle()
    assert taken == ["m0", "m1"] and received == ["x-mark"]

    protocol.data_received(frame(TEXT, b"m2") + frame(BINARY, b"m-bytes") + frame(TEXT, b"stop") + frame(TEXT, b"m3"))
    await _settle()
    assert taken == ["m0", "m1", "m2", "m3"] and received == ["x-mark", b"m-bytes", "stop"]

    protocol.data_received(frame(TEXT, b"boom") + frame(TEXT, b"m4"))
    await _settle()
    assert taken == ["m0", "m1", "m2", "m3"] and received == ["x-mark", b"m-bytes", "stop", "boom", "m4"]
    assert protocol._take is None
    transport.close()
    await _settle()


async def test_a_direct_taker_ends_with_none_and_resumes_a_socket_paused_for_the_app():
    """Installed on a socket paused for HIGH_WATER unread messages, the taker empties the queue, so reading resumes
    (uvicorn's receive would resume it only after a message it will now never get); `(None)` hands messages back."""
    taken: list[str] = []
    received: list[str] = []
    go, installed, handed_back = asyncio.Event(), asyncio.Event(), asyncio.Event()
    resumed: list[int] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        direct = scope["extensions"][DIRECT]
        direct(lambda text: taken.append(text) is None)
        installed.set()
        await handed_back.wait()
        direct(None)
        while (message := await receive())["type"] != "websocket.disconnect":
            received.append(message["text"])

    transport = Transport()
    transport.resume_reading = lambda: resumed.append(len(taken))
    protocol = await _opened(app, transport)
    for n in range(HIGH_WATER):
        protocol.data_received(frame(TEXT, b"m%d" % n))
    assert protocol.read_paused
    go.set()
    await installed.wait()
    assert taken == [f"m{n}" for n in range(HIGH_WATER)] and resumed == [HIGH_WATER]
    assert not protocol.read_paused
    protocol.data_received(frame(TEXT, b"late"))
    assert taken[-1] == "late"
    handed_back.set()
    await _settle()
    protocol.data_received(frame(TEXT, b"after"))
    await _settle()
    assert received == ["after"] and taken[-1] == "late"
    transport.close()
    await _settle()
