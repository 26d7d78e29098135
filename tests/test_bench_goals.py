"""The ramp's verdict on one level (bench/report.py `holds_goals`): every way a level can miss the issue's goals
fails it, including a barge-in whose `clear` never came (it has no latency to count in the p95). The pacing
figures (bench/loadgen.py `pacing`) count a gap by how late it is, whatever the messages' length. And a turn is
timed from the caller's last loud frame, also when the reply comes before the utterance's trailing silence is sent."""

from __future__ import annotations

import base64
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from loadgen import BenchCaller, CallResult, Utterance, pacing, time_reply  # noqa: E402
from report import cdf_runs, holds_goals  # noqa: E402

from telephony.twilio.caller import Answer, Received  # noqa: E402


def level(**changes) -> dict:
    lv = {"calls": 30, "connected": 30, "errors": [], "missed_replies": 0, "missed_clears": 0,
          "barge_in_ms": {"n": 30, "p95": 210.0}, "overhead_runtime_ms": {"n": 30, "p95": 18.0},
          "pacing": {"underruns": 0}}
    return lv | changes


def test_a_level_inside_every_goal_holds():
    assert holds_goals(level())


@pytest.mark.parametrize("changes", [
    {"missed_clears": 1},
    {"missed_replies": 1},
    {"connected": 29},
    {"errors": ["talk: TimeoutError"]},
    {"barge_in_ms": {"n": 30, "p95": 251.0}},
    {"barge_in_ms": {"n": 0}},
    {"overhead_runtime_ms": {"n": 30, "p95": 30.5}},
    {"overhead_runtime_ms": {"n": 0}},
    {"pacing": {"underruns": 1}},
], ids=lambda c: next(iter(c)))
def test_each_miss_fails_the_level(changes):
    assert not holds_goals(level(**changes))


def paced(chunk_ms: int, gaps_ms: list[float]) -> CallResult:
    """Agent `media` messages of `chunk_ms` of audio each: three at once (the server's lead), then `gaps_ms` apart."""
    payload = base64.b64encode(bytes(8 * chunk_ms)).decode()
    at, received = 100.0, []
    for gap in [0.0, 0.0, 0.0, *gaps_ms]:
        at += gap / 1000
        received.append(Received(at, {"event": "media", "media": {"payload": payload}}))
    res = CallResult(index=0)
    pacing(SimpleNamespace(received=received), res)
    return res


@pytest.mark.parametrize("chunk_ms, gaps_ms, late, underruns", [
    (20, [20, 20, 59, 20], 0, 0),
    (20, [20, 20, 61, 20], 1, 0),     # 41 ms late: a gap, as in earlier rounds (> 60 ms)
    (40, [40, 40, 61, 40], 0, 0),     # 21 ms late between 40 ms messages: not a gap
    (40, [40, 40, 81, 40], 1, 0),
    (40, [40, 40, 40, 40, 200], 1, 1),  # after all it had received has played: the caller hears silence
])
def test_a_gap_is_counted_by_how_late_it_is(chunk_ms, gaps_ms, late, underruns):
    res = paced(chunk_ms, gaps_ms)
    assert (res.late_gaps, res.underruns) == (late, underruns)
    assert res.agent_audio_secs == pytest.approx(chunk_ms * (len(gaps_ms) + 3) / 1000)


async def test_a_reply_inside_the_trailing_silence_is_timed_from_the_last_loud_frame():
    caller = BenchCaller(Answer(status_code=200, twiml="", stream_url="ws://127.0.0.1:9/never", parameters={}))
    said = Utterance(ulaw=b"\xff" * 12568, lead=0.0, trail=0.44)
    sent_at = 100.0  # the last frame, trailing silence included; the words ended at 99.56
    caller.media_times = [99.0, 99.86, 99.88, 100.02]  # the greeting's last message, then the reply from 99.86 on
    assert await time_reply(caller, said, sent_at, timeout=0.1) == pytest.approx(300.0)
    caller.media_times = [99.0]
    assert await time_reply(caller, said, sent_at, timeout=0.1) is None


def test_the_latency_plot_draws_an_arrivals_run_and_every_level():
    """bench/load.py --arrivals has no levels: its calls let in are one curve of the CDFs, not an empty plot."""
    arrived = level(calls=247) | {"arrivals": {"let_in": 80, "offered": 247}}
    runs = cdf_runs({"voxline": {"arrivals": arrived}}, "voxline")
    assert runs == [(arrived, "voxline arrivals, 80 let in")]
    ramp = {"voxline": {"levels": [level(calls=20), level(calls=30)]}, "baseline": {"levels": [level(calls=20)]}}
    assert [label for _, label in cdf_runs(ramp, "voxline")] == ["voxline N=20", "voxline N=30"]
    assert [label for _, label in cdf_runs(ramp, "baseline")] == ["baseline N=20"]
    assert cdf_runs(ramp, "nobody") == []
