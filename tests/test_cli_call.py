"""`voxline call` against a running server, and a server started without a Twilio auth token."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.calls import converse
from tests.conftest import (AUTH_TOKEN, LONG_WELCOME_NUMBER, PHRASES, ROOT, create_key_with_cli, server_env,
                            start_server, stop_server)


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
    assert any("main street" in l.lower() for l in lines if l.strip().startswith("agent")), result.stdout
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


def _voxline_call(server, *args, api_key: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXLINE_", "TWILIO_"))}
    env.update(TWILIO_AUTH_TOKEN=AUTH_TOKEN, VOXLINE_PUBLIC_URL=server.url, HF_HUB_OFFLINE="1")
    if api_key:
        env["VOXLINE_API_KEY"] = api_key
    return subprocess.run([sys.executable, "-m", "runtime.cli", "call", "--server", server.url, *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


BARGE_IN_SCRIPT = """
- interrupt: {say: "Where are you located?", after: 3.5}   # over the long welcome, after its first sentence
- wait_agent: true
- hangup: true
"""


def test_voxline_call_script_reports_the_barge_in_and_the_record(server, tmp_path):
    script = tmp_path / "barge_in.yaml"
    script.write_text(BARGE_IN_SCRIPT)
    key = create_key_with_cli(server_env(server.data_dir.parent), "default", "developer", "cli call")
    result = _voxline_call(server, "--script", str(script), "--to", LONG_WELCOME_NUMBER, api_key=key)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^call [0-9a-f]{32} \(inbound\): completed, caller_hangup$", out, re.M), out
    welcome = next(line for line in out.splitlines() if "agent: Hello and welcome to Luigi's." in line)
    assert welcome.endswith("[interrupted]"), out  # the caller spoke over it, and heard its first sentence
    assert re.search(r"caller: .*located", out, re.I), out
    assert re.search(r"agent: We are at twelve Main Street\.\s+\[\d+ ms\]", out), out
    barge_in = re.search(r"barge-in \(caller speech onset → clear\): (\d+) ms", out)
    assert barge_in and 0 < int(barge_in.group(1)) < 2000, out
    assert re.search(r"turn latency .*p50 \d+ ms", out), out


def test_voxline_call_agent_needs_no_number_mapping(server, tmp_path):
    script = tmp_path / "ask.yaml"
    script.write_text('- interrupt: "Where are you located?"\n- wait_agent: true\n- hangup: true\n')
    key = create_key_with_cli(server_env(server.data_dir.parent), "default", "developer", "cli agent")
    result = _voxline_call(server, "--script", str(script), "--agent", "demo", api_key=key)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^call [0-9a-f]{32} \(softphone\): completed, caller_hangup$", out, re.M), out
    assert re.search(r"agent: .*\[interrupted\]", out) and "Main Street" in out, out  # the demo agent, talked over
    assert re.search(r"barge-in \(caller speech onset → clear\): \d+ ms", out), out
    unknown = _voxline_call(server, "--script", str(script), "--agent", "nobody-by-that-name", api_key=key)
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr, unknown.stderr
    keyless = _voxline_call(server, "--script", str(script), "--agent", "demo")
    assert keyless.returncode == 1 and "API key" in keyless.stderr


def test_voxline_call_refuses_bad_scripts_and_missing_sound_devices(server, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- shout: hello\n")
    result = _voxline_call(server, "--script", str(bad))
    assert result.returncode == 2 and "step 0" in result.stderr and "interrupt" in result.stderr, result.stderr
    nothing = _voxline_call(server)
    assert nothing.returncode == 2 and "--wav, --script or --mic" in nothing.stderr
    mic = _voxline_call(server, "--mic")  # no sounddevice package (nor a sound card) on a test machine
    assert mic.returncode == 2 and "--mic needs" in mic.stderr, mic.stderr
