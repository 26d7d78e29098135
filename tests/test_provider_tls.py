"""Every connection to a provider uses the process's one TLS context (pipelines/providers/tls.py): building a call's
services and dialling their `wss://` sockets load no CA store (each load is 20-60 ms on the event loop, while every
other call's audio waits). The sockets dial a local TLS server whose throwaway CA only the shared context trusts,
so a connection made with a context of its own fails its handshake."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.providers import registry, tls

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from llm_connect import make_cert  # noqa: E402  (a throwaway CA, as the TLS benchmarks make)

KEYS = dict(OPENAI_API_KEY="sk-test", DEEPGRAM_API_KEY="dg-test", CARTESIA_API_KEY="ca-test")


@pytest.fixture
def ca_loads(monkeypatch) -> list[str]:
    """Every CA store loaded into a TLS context from here on (a file, a directory, or the system's defaults)."""
    tls.tls_context()  # the server makes it at start-up
    loads: list[str] = []
    for name in ("load_verify_locations", "set_default_verify_paths", "load_default_certs"):
        original = getattr(ssl.SSLContext, name)
        monkeypatch.setattr(ssl.SSLContext, name,
                            lambda ctx, *a, _n=name, _o=original, **k: (loads.append(_n), _o(ctx, *a, **k))[1])
    return loads


def build_call_services(s: Settings) -> list:
    cascade = AgentConfig(name="cloud", system_prompt="p", transcriber={"provider": "deepgram"},
                          llm={"provider": "openai", "model": "gpt-4o-mini"}, tts={"provider": "cartesia"})
    realtime = AgentConfig(name="rt", architecture="realtime", system_prompt="p", realtime={"provider": "openai"})
    ctx = registry.BuildContext(agent=cascade, settings=s)
    return [registry.build("stt", cascade.transcriber, ctx), registry.build("llm", cascade.llm, ctx),
            registry.build("tts", cascade.tts, ctx),
            registry.build("realtime", realtime.realtime, registry.BuildContext(agent=realtime, settings=s))]


def test_building_a_calls_provider_services_loads_no_ca_store(ca_loads):
    s = Settings(_env_file=None, **KEYS, deepgram_base_url="wss://api.deepgram.example",
                 openai_base_url="https://llm.example/v1")
    for _ in range(2):  # two calls
        services = build_call_services(s)
    assert [type(x).__name__ for x in services] == [
        "QuietBatchingDeepgramSTT", "SharedTLSOpenAILLMService", "SharedTLSCartesiaTTS", "PhoneRealtimeService"]
    assert ca_loads == []
    # The Deepgram SDK's HTTP client, which the streaming STT never uses, has the shared context too.
    assert services[0]._client._client_wrapper.httpx_client.httpx_client._transport._pool._ssl_context \
        is tls.tls_context()


@pytest.fixture
def throwaway_ca(tmp_path: Path, monkeypatch) -> ssl.SSLContext:
    """A server context for localhost, whose CA only the shared client context trusts."""
    key, cert = make_cert(tmp_path)
    client = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(tls, "_context", client)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    return server


async def test_provider_sockets_dial_wss_with_the_shared_context(throwaway_ca, ca_loads):
    paths: list[str] = []

    async def accept(ws):
        paths.append(ws.request.path)
        await ws.wait_closed()

    async with serve(accept, "127.0.0.1", 0, ssl=throwaway_ca) as server:
        port = server.sockets[0].getsockname()[1]
        base = f"wss://localhost:{port}"
        s = Settings(_env_file=None, **KEYS, deepgram_base_url=base, cartesia_url=f"{base}/tts/websocket",
                     openai_realtime_url=f"{base}/v1/realtime")
        stt, _, tts, realtime = build_call_services(s)
        # Each through the seam pipecat 1.14 dials with: the SDK's listen client, WebsocketService's connect,
        # and the Realtime service's connect.
        async with stt._client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000):
            pass
        ws = await tts._websocket_connect(tts._url, additional_headers={"X-API-Key": "ca-test"})
        await ws.close()
        ws = await realtime._open_socket()
        await ws.close()
        await asyncio.sleep(0.05)
    assert [p.split("?")[0] for p in paths] == ["/v1/listen", "/tts/websocket", "/v1/realtime"]
    assert ca_loads == []


async def test_deepgram_connections_send_the_sdks_headers_without_reading_its_version_each_time(throwaway_ca,
                                                                                               monkeypatch):
    """The SDK reads its version from the installed metadata for each connection's headers (a scan of
    site-packages on the event loop); here it is read once, and the headers are still the SDK's own."""
    import importlib.metadata

    from deepgram.core.client_wrapper import BaseClientWrapper

    from pipelines.providers import deepgram

    headers: list = []

    async def accept(ws):
        headers.append(dict(ws.request.headers))
        await ws.wait_closed()

    lookups: list[str] = []
    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: lookups.append(name) or version(name))
    async with serve(accept, "127.0.0.1", 0, ssl=throwaway_ca) as server:
        s = Settings(_env_file=None, **KEYS, deepgram_base_url=f"wss://localhost:{server.sockets[0].getsockname()[1]}")
        clients = [build_call_services(s)[0]._client for _ in range(3)]  # a call's STT each
        for client in clients:
            async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000):
                pass
        await asyncio.sleep(0.05)
    assert len(headers) == 3 and lookups.count("deepgram-sdk") <= 1, lookups  # at most the first, if not yet read
    assert BaseClientWrapper.get_headers is deepgram._get_headers
    for client, sent in zip(clients, headers):
        sdk = deepgram._sdk_get_headers(client._client_wrapper)  # the SDK's own, reading its version now
        assert sdk["Authorization"] == "Token dg-test" and sdk["User-Agent"].startswith("deepgram-sdk/")
        assert {k.lower(): v for k, v in sdk.items()}.items() <= {k.lower(): v for k, v in sent.items()}.items()


async def test_a_context_of_its_own_would_not_have_connected(throwaway_ca):
    """The check above is sound: the default a websocket client makes does not trust the throwaway CA."""
    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, ssl=throwaway_ca) as server:
        from websockets.asyncio.client import connect

        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://localhost:{server.sockets[0].getsockname()[1]}/")


async def test_a_tool_call_and_a_webhook_delivery_load_no_ca_store(ca_loads):
    """Both make an HTTP client per request, on the calls' event loop."""
    from pipelines.tools import HttpToolSpec, call_http_tool
    from runtime.webhooks.delivery import post
    from tests.tool_server import ToolServer

    with ToolServer() as server:
        tool = HttpToolSpec(name="book", description="Books a table.", url=f"{server.url}/echo")
        result = await call_http_tool(tool, {}, allow_private=True, max_bytes=16384)
        assert result.ok and result.status == 200, result
        outcome = await post(f"{server.url}/echo", b"{}", {}, allow_private=True, timeout=5)
        assert outcome.ok and outcome.status_code == 200, outcome
    assert ca_loads == []
