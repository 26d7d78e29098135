"""The event loop's CPU for starting one cloud call's providers: building the Deepgram STT, OpenAI LLM and Cartesia
TTS services as the server does (the provider registry), then dialling Deepgram's and Cartesia's `wss://` sockets,
as a call's pipeline does when it starts. Every other call's audio waits while it runs. It also counts the CA
stores loaded into new TLS contexts, which were most of it.

    .venv/bin/python bench/call_setup.py [--calls 20]

The sockets go to a local TLS WebSocket server in another process (so its CPU is not counted) with a throwaway CA
made by `openssl`, trusted through SSL_CERT_FILE (with certifi's CAs), which a TLS context made anew honours as
the shared one does. Run
it with `PYTHONPATH=<another checkout>` to measure that checkout's code (bench/HISTORY.md has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import certifi

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH, so that another checkout given there is the one measured

from llm_connect import make_cert  # noqa: E402  (this folder: the throwaway CA)


def serve_tls(port: int, key: str, cert: str, ready) -> None:
    from websockets.asyncio.server import serve

    async def main():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", port, ssl=context):
            ready.set()
            await asyncio.Event().wait()

    asyncio.run(main())


async def one_call(settings, agent) -> tuple[float, int]:
    """(ms of this thread's CPU, CA stores loaded) to build the call's services and dial its two sockets."""
    from pipelines.providers import registry

    loads = [0]
    originals = {n: getattr(ssl.SSLContext, n) for n in ("load_verify_locations", "set_default_verify_paths")}
    for name, original in originals.items():
        setattr(ssl.SSLContext, name, lambda ctx, *a, _o=original, **k: (loads.__setitem__(0, loads[0] + 1),
                                                                        _o(ctx, *a, **k))[1])
    try:
        cpu = time.thread_time()
        ctx = registry.BuildContext(agent=agent, settings=settings)
        stt = registry.build("stt", agent.transcriber, ctx)
        registry.build("llm", agent.llm, ctx)
        tts = registry.build("tts", agent.tts, ctx)
        async with stt._client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000):
            ws = await tts._websocket_connect(tts._url, additional_headers={"X-API-Key": "k"})
            await ws.close()
        return (time.thread_time() - cpu) * 1000, loads[0]
    finally:
        for name, original in originals.items():
            setattr(ssl.SSLContext, name, original)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        key, cert = make_cert(Path(d))
        # Trusted as one more CA beside a real store (certifi's, as httpx loads), since a load's cost grows with the
        # store: a file with the throwaway CA alone would make every new context look cheap.
        trust = Path(d) / "trust.pem"
        trust.write_text(Path(certifi.where()).read_text() + cert.read_text())
        os.environ["SSL_CERT_FILE"] = str(trust)
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Event()
        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = spawn.Process(target=serve_tls, args=(port, str(key), str(cert), ready), daemon=True)
        server.start()
        ready.wait(30)
        try:
            from config.agent import AgentConfig
            from config.settings import Settings
            from pipelines.providers import registry

            registry.import_all()  # as the server at start-up (the shared TLS context included, where there is one)
            base = f"wss://localhost:{port}"
            settings = Settings(_env_file=None, OPENAI_API_KEY="k", DEEPGRAM_API_KEY="k", CARTESIA_API_KEY="k",
                                deepgram_base_url=base, cartesia_url=f"{base}/tts/websocket",
                                openai_base_url="https://llm.example/v1")
            agent = AgentConfig(name="cloud", system_prompt="p", transcriber={"provider": "deepgram"},
                                llm={"provider": "openai", "model": "gpt-4o-mini"}, tts={"provider": "cartesia"})

            async def run():
                first = await one_call(settings, agent)  # with what is left to import or build at a first call
                return first, [await one_call(settings, agent) for _ in range(args.calls)]

            first, results = asyncio.run(run())
        finally:
            server.kill()
    cpu = sorted(r[0] for r in results)
    print(f"{args.calls} cloud calls' setup on the event loop (build 3 services, dial 2 wss sockets): "
          f"CPU p50 {statistics.median(cpu):.1f} ms, max {cpu[-1]:.1f} ms; "
          f"CA stores loaded per call {statistics.mean(r[1] for r in results):.1f}")
    print(f"the first call after start-up: CPU {first[0]:.1f} ms, CA stores loaded {first[1]}")


if __name__ == "__main__":
    main()
