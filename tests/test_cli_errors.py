"""`voxline` command-line failures: a failed call is reported as one, and ordinary mistakes (server down, a bad URL,
a file that is not a WAV, a bad script or option, a busy port, a bad workspace name) get a one-line `error:` and
the documented exit status (1: the call could not be placed or failed, 2: bad options or input), never a
traceback. Also the WAV formats `wave` gets wrong or refuses: 8-bit (unsigned) and 32-bit float."""

from __future__ import annotations

import audioop
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from telephony.audio import ulaw_rms, wav_to_ulaw
from tests.conftest import (ACCOUNT_SID, AUTH_TOKEN, PHRASES, ROOT, create_key_with_cli, free_port, server_env,
                            start_server, stop_server)
from tests.test_cli_call import _espeak, _voxline_call

DEAD_LLM_NUMBER = "+15550100030"


def _one_line_error(result: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """The command failed with `status` and said why in one `error:` line (and printed no traceback)."""
    err = result.stderr
    assert result.returncode == status, f"rc {result.returncode}\n{result.stdout}\n{err}"
    assert "Traceback" not in err and "Aborted" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert all(w in errors[0] for w in words), errors[0]
    return errors[0]


def _voxline(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env or server_env(ROOT / "nowhere"),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    wav = tmp_path_factory.mktemp("wav") / "located.wav"
    _espeak(PHRASES["located"], wav)
    return wav


# --- a call the server recorded as failed --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_llm_server(tmp_path_factory, twilio_api):
    """A server whose agent's LLM is a closed port: the caller hears an apology and the call is `failed`."""
    base = tmp_path_factory.mktemp("dead-llm")
    (base / "agents").mkdir()
    (base / "agents" / "dead_llm.yaml").write_text(f"""
name: dead-llm
phone_numbers: ["{DEAD_LLM_NUMBER}"]
system_prompt: Its LLM is down.
welcome_message: Hello there.
transcriber: {{provider: whisper}}
llm: {{provider: openai, model: gpt-4o-mini}}
tts: {{provider: piper}}
""")
    env = {"OPENAI_API_KEY": "sk-test", "VOXLINE_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
           "TWILIO_API_BASE_URL": twilio_api.url}
    srv = start_server(base, auth_token=AUTH_TOKEN, extra_env=env)
    srv.api_key = create_key_with_cli(server_env(base, env), "default", "developer", "cli errors")
    yield srv
    stop_server(srv)


def test_wav_call_the_server_recorded_as_failed_exits_1_with_its_reason(dead_llm_server, speech_wav):
    srv = dead_llm_server
    result = _voxline_call(srv, "--wav", str(speech_wav), "--to", DEAD_LLM_NUMBER, "--api-key", srv.api_key)
    _one_line_error(result, 1, "the call failed: error_llm", "openai")
    assert "record: call " in result.stdout and ": failed, error_llm" in result.stdout, result.stdout
    assert "reply latency" not in result.stdout, result.stdout  # what came back was the apology, not a reply
    # Without a key the record cannot be read: the caller is told so, and the call is judged by what was heard.
    keyless = _voxline_call(srv, "--wav", str(speech_wav), "--to", DEAD_LLM_NUMBER)
    assert keyless.returncode == 0, keyless.stdout + keyless.stderr
    assert "note: no API key" in keyless.stderr and "record was not read" in keyless.stderr, keyless.stderr


def test_server_gone_when_the_record_is_read_is_one_line(tmp_path):
    srv = start_server(tmp_path, auth_token=AUTH_TOKEN)
    try:
        key = create_key_with_cli(server_env(tmp_path), "default", "developer", "dies")
        script = tmp_path / "long.yaml"
        script.write_text("- wait_agent: true\n- pause: 60\n- hangup: true\n")
        env = server_env(tmp_path, {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "VOXLINE_PUBLIC_URL": srv.url,
                                    "VOXLINE_API_KEY": key})
        cli = subprocess.Popen([sys.executable, "-m", "runtime.cli", "call", "--server", srv.url, "--script",
                                str(script)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        deadline = time.monotonic() + 60
        while "media stream started" not in srv.log() and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.2)
        assert "media stream started" in srv.log(), srv.log()[-3000:]
        time.sleep(1.0)
    finally:
        stop_server(srv)  # SIGTERM mid-call: the server closes the call and is gone before the record is read
    out, err = cli.communicate(timeout=60)
    result = subprocess.CompletedProcess(cli.args, cli.returncode, out, err)
    _one_line_error(result, 1, "cannot read the call's record", "cannot reach", srv.url)


# --- ordinary failures: one line, the documented status -----------------------------------------------------


def test_server_down_or_not_a_url(server, speech_wav, tmp_path):
    script = tmp_path / "say.yaml"
    script.write_text("- say: hello\n")
    down = f"http://127.0.0.1:{free_port()}"
    for mode in (("--wav", str(speech_wav)), ("--script", str(script))):
        _one_line_error(_voxline_call(server, *mode, "--server", down), 1, f"cannot reach {down}",
                        "connection refused")
        for bad in ("notaurl", "ftp://127.0.0.1/", "http://"):
            _one_line_error(_voxline_call(server, *mode, "--server", bad), 2, "--server", "not an http")


def test_input_files_that_are_not_wavs_are_refused_before_dialing(server, speech_wav, tmp_path):
    calls_before = len(server.query("SELECT id FROM calls"))
    text = tmp_path / "text.wav"
    text.write_text("this is not audio, whatever its name says\n" * 10)
    stub = tmp_path / "stub.wav"
    stub.write_bytes(b"RIFF\0\0")
    _one_line_error(_voxline_call(server, "--wav", str(text)), 2, str(text), "RIFF")
    _one_line_error(_voxline_call(server, "--wav", str(stub)), 2, str(stub), "not a WAV")
    play = tmp_path / "play.yaml"
    play.write_text(f"- play: {text.name}\n- hangup: true\n")
    _one_line_error(_voxline_call(server, "--script", str(play)), 2, "step 0", str(text), "RIFF")
    out = tmp_path / "no-such-dir" / "reply.wav"
    _one_line_error(_voxline_call(server, "--wav", str(speech_wav), "--out", str(out)), 2, "--out",
                    "no such directory")
    _one_line_error(_voxline_call(server, "--wav", str(speech_wav), "--out", str(tmp_path)), 2, "--out",
                    "is a directory")
    assert len(server.query("SELECT id FROM calls")) == calls_before  # none of them dialed


def test_bad_script_values_and_options_are_refused(server, speech_wav, tmp_path):
    for name, text, words in (("nan.yaml", "- pause: .nan\n", ("step 0 pause", "finite")),
                              ("inf.yaml", "- pause: .inf\n", ("step 0 pause", "finite")),
                              ("tone.yaml", "- tone: .nan\n", ("step 0 tone", "finite")),
                              ("empty.yaml", "[]\n", ("no steps",)),
                              ("steps.yaml", "steps: []\n", ("no steps",))):
        script = tmp_path / name
        script.write_text(text)
        _one_line_error(_voxline_call(server, "--script", str(script)), 2, *words)
    for value in ("-1", "0", "nan", "inf"):
        _one_line_error(_voxline_call(server, "--wav", str(speech_wav), "--reply-timeout", value), 2,
                        "--reply-timeout")


def test_emulator_rules_refuse_non_finite_numbers(tmp_path):
    env = server_env(tmp_path, {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    for text in ("default: {ring_secs: .nan}\n", "- {match: '+1*', max_call_secs: .inf}\n",
                 "- {match: '+1*', callee: [{pause: .nan}]}\n"):
        rules = tmp_path / "rules.yaml"
        rules.write_text(text)
        # Accepted, the emulator would start serving: the timeout turns that into a failure.
        _one_line_error(_voxline("emulate", "twilio", "--port", "0", "--rules", str(rules), env=env, timeout=30), 2,
                        "finite")


def test_ports_out_of_range_busy_and_unknown_emulators(tmp_path):
    for command in (("serve",), ("emulate", "openai"), ("emulate", "twilio")):
        result = _voxline(*command, "--port", "70000")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "--port" in result.stderr and "65535" in result.stderr, result.stderr
    env = server_env(tmp_path, {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for provider in ("openai", "deepgram", "twilio"):
            _one_line_error(_voxline("emulate", provider, "--port", port, env=env), 1,
                            f"cannot listen on 127.0.0.1:{port}", "in use")
    unknown = _one_line_error(_voxline("emulate", "foo"), 2, "unknown provider 'foo'")
    for provider in ("deepgram", "openai", "cartesia", "openai-realtime", "twilio"):
        assert provider in unknown, unknown


def test_keys_create_refuses_names_a_workspace_cannot_have(tmp_path):
    env = server_env(tmp_path)
    for workspace, words in (("", ("--workspace", "empty")), ("   ", ("--workspace", "blank")),
                             ("team\x01", ("--workspace", "control characters")),
                             ("x" * 121, ("--workspace", "at most 120"))):
        _one_line_error(_voxline("keys", "create", "--workspace", workspace, env=env), 2, *words)
    _one_line_error(_voxline("keys", "create", "--workspace", "ok", "--name", "bell\x07", env=env), 2,
                    "--name", "control characters")
    assert _voxline("keys", "create", "--workspace", "x" * 120, env=env).returncode == 0  # the limit itself is fine


# --- WAV formats -----------------------------------------------------------------------------------------------


def _pcm(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype=np.int16).astype(np.float64)


def test_8_bit_and_float_wavs_convert_like_16_bit(speech_wav, tmp_path):
    reference = _pcm(wav_to_ulaw(speech_wav))
    for name, sox_format in (("u8.wav", ["-b", "8", "-e", "unsigned-integer"]),
                             ("float.wav", ["-b", "32", "-e", "floating-point"]),
                             ("s24.wav", ["-b", "24"])):
        converted = tmp_path / name
        subprocess.run(["sox", str(speech_wav), *sox_format, str(converted)], check=True)
        pcm = _pcm(wav_to_ulaw(converted))
        assert len(pcm) == len(reference), name
        assert np.corrcoef(pcm, reference)[0, 1] > 0.99, name
        assert abs(np.sqrt(np.mean(pcm ** 2)) / np.sqrt(np.mean(reference ** 2)) - 1) < 0.05, name
    silence = tmp_path / "silence8.wav"  # unsigned 8-bit silence is 128: read as signed, a full-scale offset
    subprocess.run(["sox", "-n", "-r", "8000", "-b", "8", "-e", "unsigned-integer", "-D", str(silence), "trim", "0",
                    "1"], check=True)
    assert ulaw_rms(wav_to_ulaw(silence)) < 50


def test_voxline_call_plays_a_float_wav(server, speech_wav, tmp_path):
    """Audacity's default export, which Python's `wave` refuses (format 3)."""
    wav = tmp_path / "float.wav"
    subprocess.run(["sox", str(speech_wav), "-r", "44100", "-b", "32", "-e", "floating-point", str(wav)], check=True)
    result = _voxline_call(server, "--wav", str(wav))
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("located" in line.lower() for line in result.stdout.splitlines() if "caller:" in line), result.stdout
    # Whisper hears the reply; its casing varies ("12 main street"), so compare lowered.
    assert any("main street" in line.lower() for line in result.stdout.splitlines() if "agent :" in line), result.stdout
