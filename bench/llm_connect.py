"""What a call's first LLM request waits for before its first token, with and without the server's shared pool.

Each call (and each chat turn) builds its own LLM service. Before `openai_llm.shared_pool()`, each had its own
connection pool, so its first request dialled: TCP, then TLS, then the request. With the pool, it finds a kept
connection. This measures both, the way a call makes the request (the product's service and client), against the
OpenAI emulator served over TLS (a throwaway CA made with `openssl`) in a child process, through a relay (another
child) that delays every chunk each way by half of `--rtt-ms` (a network between the server and the provider; loopback has
none). The relay does not delay TCP's own handshake or model DNS, which a real first connection also pays.

    .venv/bin/python bench/llm_connect.py --calls 30 --rtt-ms 0
    .venv/bin/python bench/llm_connect.py --calls 30 --rtt-ms 40

Prints, per mode, the first request's time to its first streamed chunk (p50 / p95) and this process's CPU for it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_cert(d: Path) -> tuple[Path, Path]:
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def serve_emulator(port: int, key: str, cert: str) -> None:
    import uvicorn

    from pipelines.providers.emulators.openai_chat import ChatEmulator

    uvicorn.run(ChatEmulator().app(), host="127.0.0.1", port=port, log_level="warning", ssl_keyfile=key,
                ssl_certfile=cert)


def serve_relay(port: int, target_port: int, one_way: float) -> None:
    async def run() -> None:
        server = await relay(port, target_port, one_way)
        await server.serve_forever()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def relay(listen_port: int, target_port: int, one_way: float) -> asyncio.AbstractServer:
    """A TCP relay that hands each chunk on `one_way` seconds after it arrived, in order."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def later() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(later())
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + one_way, data))
        queue.put_nowait(None)
        await sender

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)
        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        except (OSError, asyncio.CancelledError):
            pass  # a side closed, or the benchmark is done

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)


async def listening(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


async def first_request(service) -> tuple[float, float]:
    t, cpu = time.perf_counter(), time.process_time()
    stream = await service._client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}])
    async for _ in stream:
        dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
        break
    async for _ in stream:  # read it out, as pipecat does: the connection goes back to its pool
        pass
    return dt * 1000, dcpu * 1000


async def main(args) -> None:
    from pipelines.providers.openai_llm import SharedTLSOpenAILLMService, shared_pool
    from pipelines.providers.tls import tls_context

    with tempfile.TemporaryDirectory() as d:
        key, cert = make_cert(Path(d))
        tls_context().load_verify_locations(cafile=str(cert))  # this process trusts the throwaway CA
        port = free_port()
        spawn = multiprocessing.get_context("spawn")
        proc = spawn.Process(target=serve_emulator, args=(port, str(key), str(cert)), daemon=True)
        proc.start()
        relaying = None
        try:
            await listening(port)
            front = free_port()
            relaying = spawn.Process(target=serve_relay, args=(front, port, args.rtt_ms / 2000), daemon=True)
            relaying.start()
            await listening(front)
            url = f"https://localhost:{front}/v1"
            await first_request(SharedTLSOpenAILLMService(api_key="k", base_url=url))  # the SDK's first-use costs
            pool = shared_pool()
            await first_request(SharedTLSOpenAILLMService(api_key="k", base_url=url, pool=pool))  # the pool's first
            results: dict[str, list[tuple[float, float]]] = {"own pool (before)": [], "server's pool": []}
            for _ in range(args.calls):  # alternating, so that drift falls on both
                own = SharedTLSOpenAILLMService(api_key="k", base_url=url)
                results["own pool (before)"].append(await first_request(own))
                shared = SharedTLSOpenAILLMService(api_key="k", base_url=url, pool=pool)
                results["server's pool"].append(await first_request(shared))
            await pool.aclose()
        finally:
            proc.terminate()
            if relaying is not None:
                relaying.terminate()
    print(f"first LLM request of a call, {args.calls} calls each, relay RTT {args.rtt_ms} ms, TLS on loopback:")
    for mode, rows in results.items():
        ttft = sorted(r[0] for r in rows)
        cpu = [r[1] for r in rows]
        print(f"  {mode:18s} time to first chunk p50 {statistics.median(ttft):6.1f} ms, "
              f"p95 {ttft[int(0.95 * (len(ttft) - 1))]:6.1f} ms; client CPU p50 {statistics.median(cpu):5.2f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="round trip the relay adds (default 0)")
    asyncio.run(main(ap.parse_args()))
