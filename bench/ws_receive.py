"""The server's CPU per Twilio media message received, WebSocket protocol alone: voxline's `MediaStreamProtocol`
(runtime/ws_protocol.py) against uvicorn's own sans-I/O protocol, or against another checkout's.

    .venv/bin/python bench/ws_receive.py [--streams 40] [--secs 10] [--rounds 4] [--old /tmp/wt-old]

Each round starts a bare FastAPI app on uvicorn and uvloop (the server's settings: no permessage-deflate) whose one
WebSocket route reads text messages and parses their JSON, as pipecat's transport does, and `--streams` clients
(a process of their own at niceness 19) send it a 20 ms media message each, paced, for `--secs`. The server's CPU
time over the messages, in microseconds; the variants take turns within each round, so the VM's drift falls on
both. Figures, never assertions.
"""


import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(variant: str, port: int) -> None:
    # No `from __future__ import annotations` in this file: FastAPI reads the route's `WebSocket` annotation.
    import uvicorn
    from fastapi import FastAPI, WebSocket

    if variant == "uvicorn":
        ws = "websockets-sansio"
    else:
        if variant != "this tree":
            sys.path.insert(0, variant)
        from runtime.ws_protocol import protocol

        ws = protocol()
    app = FastAPI()

    @app.websocket("/stream")
    async def stream(websocket: WebSocket):
        await websocket.accept()
        async for text in websocket.iter_text():
            json.loads(text)

    uvicorn.run(app, host="127.0.0.1", port=port, ws=ws, loop="uvloop", log_level="warning",
                ws_per_message_deflate=False)


def call(port: int, streams: int, secs: float) -> None:
    import websockets

    payload = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law silence, as Twilio sends it

    async def one() -> int:
        async with websockets.connect(f"ws://127.0.0.1:{port}/stream", compression=None) as ws:
            start, n = time.monotonic(), 0
            while time.monotonic() - start < secs:
                n += 1
                await ws.send(json.dumps({"event": "media", "sequenceNumber": str(n), "streamSid": "MZ" + "0" * 32,
                                          "media": {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n),
                                                    "payload": payload}}))
                await asyncio.sleep(max(0.0, start + 0.02 * n - time.monotonic()))
            return n

    async def main() -> None:
        print(sum(await asyncio.gather(*(one() for _ in range(streams)))))

    asyncio.run(main())


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(variant: str, streams: int, secs: float) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", variant, "--port", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        before = cpu_secs(server.pid)
        out = subprocess.run(["nice", "-n", "19", sys.executable, __file__, "--call", "--port", str(port),
                              "--streams", str(streams), "--secs", str(secs)], capture_output=True, text=True,
                             check=True)
        used = cpu_secs(server.pid) - before
        return used / int(out.stdout.strip()) * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--old", help="a checkout whose runtime/ws_protocol.py to compare with, instead of uvicorn's")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--call", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.port)
    if args.call:
        return call(args.port, args.streams, args.secs)
    other = str(Path(args.old).resolve()) if args.old else "uvicorn"
    results: dict[str, list[float]] = {"this tree": [], other: []}
    for n in range(args.rounds):
        order = ["this tree", other] if n % 2 == 0 else [other, "this tree"]
        for variant in order:
            results[variant].append(measure(variant, args.streams, args.secs))
        print(f"round {n + 1}: " + ", ".join(f"{v} {results[v][-1]:.1f}" for v in results) + " µs per message",
              flush=True)
    ours, theirs = statistics.median(results["this tree"]), statistics.median(results[other])
    print(f"{args.streams} streams, {args.rounds} rounds: this tree {ours:.1f}, {other} {theirs:.1f} µs of server CPU "
          f"per message (medians); ratio {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
