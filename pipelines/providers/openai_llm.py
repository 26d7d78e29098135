"""pipecat's OpenAI LLM service, with one TLS context for every call's client.

pipecat builds an AsyncOpenAI client per service, and its HTTP client loads the system's CA store into a new TLS
context (~60 ms, on the event loop, while every other call's audio waits). The context holds no per-connection
state, so calls share one, made once; each call still has its own client and connection pool.
"""

from __future__ import annotations

import ssl
import threading

import httpcore2
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.utils.http import connection_limits

_lock = threading.Lock()
_tls: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """The process's client TLS context, as httpx would make it (blocking the first time: warm it in a thread)."""
    global _tls
    if _tls is None:
        with _lock:
            if _tls is None:
                _tls = httpcore2.default_ssl_context()
    return _tls


class SharedTLSOpenAILLMService(OpenAILLMService):
    def create_client(self, api_key=None, base_url=None, organization=None, project=None, default_headers=None,
                      **kwargs):
        # As pipecat 1.14's BaseOpenAILLMService.create_client, with `verify` given.
        return AsyncOpenAI(
            api_key=api_key, base_url=base_url, organization=organization, project=project,
            http_client=DefaultAsyncHttpxClient(
                verify=tls_context(),
                limits=connection_limits(max_keepalive_connections=100, max_connections=1000, keepalive_expiry=None),
            ),
            default_headers=default_headers,
        )
