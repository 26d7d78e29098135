"""The ramp's verdict on one level (bench/report.py `holds_goals`): every way a level can miss the issue's goals
fails it, including a barge-in whose `clear` never came (it has no latency to count in the p95)."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from report import holds_goals  # noqa: E402


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
