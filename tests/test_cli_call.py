"""`voxline call` against a running server, and a server started without a Twilio auth token."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.calls import converse
from tests.conftest import AUTH_TOKEN, PHRASES, ROOT, start_server, stop_server


def _espeak(text: str, path) -> None:
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True)


def test_voxline_call_plays_a_wav_and_reports_transcript_and_latency(server, tmp_path):
    wav, out = tmp_path / "in.wav", tmp_path / "reply.wav"
    _espeak(PHRASES["located"], wav)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXLINE_", "TWILIO_"))}
    env.update(TWILIO_AUTH_TOKEN=AUTH_TOKEN, VOXLINE_PUBLIC_URL=server.url)  # signs like Twilio
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "call", "--wav", str(wav), "--out", str(out), "--server", server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # What the caller heard, transcribed by Whisper tiny.en on 8 kHz audio: "Luigi's" comes back in several
    # spellings, the rest of the welcome reliably.
    assert any("thanks for calling" in l.lower() for l in lines if l.strip().startswith("agent")), result.stdout
    assert any("located" in l.lower() for l in lines if l.strip().startswith("caller")), result.stdout
    assert any("Main Street" in l for l in lines if l.strip().startswith("agent")), result.stdout
    latency = re.search(r"reply latency .*: (\d+) ms", result.stdout)
    assert latency and 0 < int(latency.group(1)) < 10000
    assert out.stat().st_size > 8000 * 2 * 2  # > 2 s of 8 kHz 16-bit audio


def test_voxline_call_reports_a_refused_call(server, tmp_path):
    wav = tmp_path / "in.wav"
    _espeak("hello", wav)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXLINE_", "TWILIO_"))}
    result = subprocess.run(  # unsigned, against a server that requires signatures
        [sys.executable, "-m", "runtime.cli", "call", "--wav", str(wav), "--server", server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "HTTP 403" in result.stderr


async def test_server_without_auth_token_warns_and_takes_unsigned_calls(tmp_path, speech):
    srv = start_server(tmp_path, auth_token=None)
    try:
        assert "TWILIO_AUTH_TOKEN is not set" in srv.log() and "UNAUTHENTICATED" in srv.log()
        caller, _, _ = await converse(srv, speech["located"])
        row = srv.wait_ended(caller.answer.parameters["call_id"])
        assert row["disconnection_reason"] == "caller_hangup"
    finally:
        stop_server(srv)
