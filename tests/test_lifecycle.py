"""A server stopped mid-call still closes the call record, with the reason saying so."""

from __future__ import annotations

import asyncio
import signal

from tests.calls import dial
from tests.conftest import start_server


async def test_graceful_shutdown_closes_live_calls_as_server_shutdown(tmp_path):
    srv = start_server(tmp_path, auth_token=None)
    try:
        caller = await dial(srv)
        call_id = caller.answer.parameters["call_id"]
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0)
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(caller.closed.wait(), 10)
        srv.proc.wait(timeout=15)
        row = srv.wait_ended(call_id)
        assert row["status"] == "completed" and row["disconnection_reason"] == "server_shutdown", dict(row)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
