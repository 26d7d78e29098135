"""Call recordings: a stereo WAV with the caller on the left and the agent on the right, aligned in time."""

from __future__ import annotations

import asyncio
import audioop
import time
import wave

import httpx
import pytest

from tests.calls import converse
from tests.conftest import DEMO_NUMBER, RECORDED_NUMBER, create_key_with_cli, server_env

WINDOW = 1600  # 0.2 s at 8 kHz


def loudness(pcm: bytes, start_secs: float, end_secs: float) -> int:
    a, b = int(start_secs * 8000) * 2, int(end_secs * 8000) * 2
    return audioop.rms(pcm[a:b], 2) if b > a else 0


@pytest.fixture(scope="module")
def recorded(server, speech):
    """One recorded call for the module: (call id, start, end of the caller's speech, first reply, end)."""
    started = time.monotonic()
    caller, spoke_at, replied_at = asyncio.run(converse(server, speech["located"], RECORDED_NUMBER))
    call_id = caller.answer.parameters["call_id"]
    server.wait_ended(call_id)
    return call_id, started, spoke_at, replied_at, time.monotonic()


def test_a_recorded_call_has_the_caller_left_and_the_agent_right(server, speech, recorded):
    call_id, started, spoke_at, replied_at, ended = recorded
    path = server.data_dir / "recordings" / f"{call_id}.wav"
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = wav.readframes(wav.getnframes())
        seconds = wav.getnframes() / 8000
    left, right = audioop.tomono(frames, 2, 1, 0), audioop.tomono(frames, 2, 0, 1)
    assert 3.0 < seconds <= ended - started + 1.0, seconds
    # The caller's question sits on the left, at the time it was said, with the agent quiet on the right.
    said_end = spoke_at - started
    said_start = said_end - len(speech["located"]) / 8000
    assert loudness(left, said_start + 0.3, said_end - 0.3) > 300
    assert loudness(right, said_start + 0.3, said_end - 0.3) < 50
    # The agent's reply is on the right, after it, and the caller's channel is silent then.
    reply = replied_at - started
    assert loudness(right, reply, reply + 1.0) > 300
    assert loudness(left, reply, reply + 1.0) < 50


async def test_calls_are_not_recorded_unless_the_agent_says_so(server, speech):
    caller, _, _ = await converse(server, speech["located"], DEMO_NUMBER)
    server.wait_ended(caller.answer.parameters["call_id"])
    assert not (server.data_dir / "recordings" / f"{caller.answer.parameters['call_id']}.wav").exists()


@pytest.fixture(scope="module")
def keys(server):
    env = server_env(server.data_dir.parent)
    return {"own": create_key_with_cli(env, "default", "developer", "recording ranges"),
            "other": create_key_with_cli(env, "recording-other", "admin", "recording ranges other")}


def test_the_recording_answers_ranges_and_head_and_range_errors_in_the_error_shape(server, recorded, keys):
    call_id = recorded[0]
    url = f"{server.url}/api/v1/calls/{call_id}/recording"

    def get(key: str = keys["own"], method: str = "GET", **headers) -> httpx.Response:
        return httpx.request(method, url, headers={"x-api-key": key, **headers}, timeout=30)

    whole = get()
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    wav, size = whole.content, len(whole.content)
    assert size > 8000 * 4 * 3  # > 3 s of 8 kHz 16-bit stereo

    # Ranges that worked before still do: one range, a suffix, several (multipart).
    one = get(Range="bytes=0-43")
    assert one.status_code == 206 and one.content == wav[:44] and one.headers["content-range"] == f"bytes 0-43/{size}"
    tail = get(Range="bytes=-100")
    assert tail.status_code == 206 and tail.content == wav[-100:]
    several = get(Range="bytes=0-3,1000-1003")
    assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")
    assert f"Content-Range: bytes 1000-1003/{size}".encode() in several.content and wav[1000:1004] in several.content

    # Past the end: 416 in the API's error body, still with the size in Content-Range (RFC 9110).
    for past in ("bytes=99999999-", f"bytes={size}-", "bytes=-0"):
        r = get(Range=past)
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}", (past, r.text)
        error = r.json()["error"]
        assert (error["code"], error["status"]) == ("range_not_satisfiable", 416), error
        assert str(size) in error["message"] and error["details"][0]["field"] == "Range", error

    # A Range that cannot be parsed (or in another unit) is ignored, as RFC 9110 allows: the whole file, 200.
    for bad in ("bytes=abc", "bytes=5-2", "items=0-1", "bytes"):
        r = get(Range=bad)
        assert r.status_code == 200 and r.content == wav and "content-range" not in r.headers, (bad, r.text)

    # HEAD: GET's status and headers, no body; a range and a range error alike.
    head = get(method="HEAD")
    assert head.status_code == 200 and head.content == b"", head.text
    for name in ("content-type", "content-length", "content-disposition", "accept-ranges", "etag", "last-modified"):
        assert head.headers[name] == whole.headers[name], name
    ranged = get(method="HEAD", Range="bytes=0-43")
    assert ranged.status_code == 206 and ranged.headers["content-length"] == "44" and ranged.content == b""
    past = get(method="HEAD", Range="bytes=99999999-")
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}" and past.content == b""
    # ... under GET's rules: another workspace's call and an unknown call are not found, a wrong key is refused.
    assert get(keys["other"], "HEAD").status_code == 404
    assert httpx.head(f"{server.url}/api/v1/calls/nosuchcall/recording", headers={"x-api-key": keys["own"]},
                      timeout=30).status_code == 404
    assert get("vxl_wrong", "HEAD").status_code == 401
