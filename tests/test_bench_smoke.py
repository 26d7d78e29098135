"""The load benchmark's smoke mode (bench/load.py --smoke): emulators, voxline and the stock pipecat baseline started
by the harness, 2 calls against voxline and 1 against the baseline, and every output produced with sane structure.
The figures themselves are never asserted: they are measurements, not pass/fail thresholds."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(360)

LATENCIES = ("turn_ms", "barge_in_ms", "overhead_ms", "overhead_runtime_ms")


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


SERVER_CPU = min(os.sched_getaffinity(0))  # the servers under test get one CPU, the load the others (--server-cpus)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--smoke", "--target", "both", "--no-plots", "--out", str(out),
         "--server-cpus", str(SERVER_CPU), "--keep-work", "--audio-cache", str(out / "audio")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "BENCH_SERVER_LOG_LEVEL": "INFO"},  # the servers' logs, for a failure to show
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    yield out, report, (out / "results.md").read_text()
    shutil.rmtree(report["work_dir"], ignore_errors=True)


def server_log(report: dict, target: str, lines: int = 40) -> str:
    """The end of a server's log: what a failed assertion on its figures shows, since figures alone say little."""
    path = Path(report["work_dir"]) / f"{target}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"no {path}"


@pytest.mark.parametrize("target,calls", [("voxline", 2), ("baseline", 1)])
def test_each_target_has_every_metric_measured(smoke, target, calls):
    _, report, _ = smoke
    (level,) = report["results"][target]["levels"]
    assert level["calls"] == calls and level["connected"] == calls and level["errors"] == [], level["errors"]
    for key in LATENCIES:
        stats = level[key]
        assert stats["n"] > 0, (key, stats, level["per_call"], server_log(report, target))
        assert all(finite(stats[q]) and stats[q] >= 0 for q in ("p50", "p95", "p99")), (key, stats)
    for key in ("turn_ms", "barge_in_ms", "overhead_ms"):
        assert level[key]["p50"] > 0, (key, level[key])
    assert len(level["raw"]["turn_ms"]) == level["turn_ms"]["n"]
    pacing = level["pacing"]
    assert pacing["interarrival_ms"]["n"] > 0 and pacing["interarrival_ms"]["p50"] > 0, pacing
    assert pacing["agent_audio_secs"] > 0
    assert all(isinstance(pacing[k], int) and pacing[k] >= 0 for k in ("late_gaps", "underruns", "bursts"))
    server = level["server"]
    for window in ("idle", "hold", "talk"):
        assert finite(server[window]["cpu_pct"]) and server[window]["cpu_pct"] >= 0, server
        assert finite(server[window]["rss_mb_max"]) and server[window]["rss_mb_max"] > 10, server
    for key in ("cpu_pct_per_call_connected", "cpu_pct_per_call_talking", "rss_mb_per_call", "rss_mb_before"):
        assert finite(server[key]), (key, server)
    assert len(level["per_call"]) == calls


def test_the_comparison_and_the_markdown_table(smoke):
    _, report, md = smoke
    assert report["machine"]["cpus"] >= 1 and report["config"]["targets"] == ["voxline", "baseline"]
    assert report["machine"]["python_executable"] == os.path.realpath(sys.executable)  # the servers' interpreter
    rows = report["comparison"]
    assert rows and {r["metric"] for r in rows} >= {"barge-in p95", "runtime overhead, less LLM/TTS TTFB p95"}
    barge = next(r for r in rows if r["metric"] == "barge-in p95")
    assert finite(barge["voxline"]) and finite(barge["baseline"]) and finite(barge["baseline_over_voxline"])
    assert "| N calls | metric | goal | voxline | baseline | ratio |" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1  # the header, then one line a row
    assert "barge-in" in md and "ms" in md


def test_the_audio_made_for_the_run_is_kept_for_a_host_without_espeak_or_piper(smoke):
    out, report, _ = smoke
    assert report["config"]["audio_cache"] == str(out / "audio")
    kept = sorted(p.stat().st_size for p in (out / "audio").iterdir())
    # the caller's two lines (espeak-ng, 8 kHz μ-law) and the emulated voice's sentences (Piper), none cut short
    assert len(kept) >= 4 and kept[0] > 4000, kept
    assert not list((out / "audio").glob("*.tmp")), "a file left half-written"


def test_the_servers_ran_on_their_cpus_and_the_load_on_the_others(smoke):
    _, report, md = smoke
    harness = sorted(os.sched_getaffinity(0) - {SERVER_CPU})
    assert report["config"]["server_cpus"] == [SERVER_CPU] and report["config"]["harness_cpus"] == harness
    for target in ("voxline", "baseline"):
        pinned = report["results"][target]["cpu_affinity"]
        assert pinned["server"] == [SERVER_CPU], pinned
        assert all(cpus == harness for name, cpus in pinned.items() if name != "server"), pinned
    assert f"ran on CPUs [{SERVER_CPU}]" in md


def test_calls_arriving_one_after_another_at_a_server_that_takes_one_at_a_time(smoke, tmp_path):
    """--arrivals: calls arriving at random, each talking once greeted; the server limited to one call turns the
    others away busy, and the report counts them apart from failures."""
    out, _, _ = smoke
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--target", "voxline", "--arrivals", "1", "--arrival-secs",
         "4", "--turns", "1", "--spread", "0", "--no-plots", "--out", str(tmp_path), "--audio-cache",
         str(out / "audio")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "VOXLINE_MAX_CALLS": "1", "BENCH_SERVER_LOG_LEVEL": "INFO"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    run = report["results"]["voxline"]
    assert run["levels"] == []
    level, arrived = run["arrivals"], run["arrivals"]["arrivals"]
    assert arrived["offered"] == level["calls"] >= 3 and level["errors"] == [], (arrived, level["errors"])
    # One call talks (~10 s) while the others arrive: they are turned away, and counted as such.
    assert arrived["let_in"] >= 1 and level["refused"] >= 1, (arrived, level["refused"])
    assert arrived["let_in"] + level["refused"] == arrived["offered"]
    assert level["turn_ms"]["n"] >= 1 and level["barge_in_ms"]["n"] >= 1, level
    assert 1 <= arrived["most_at_once"] <= 2 and arrived["mean_at_once"] > 0, arrived
    md = (tmp_path / "results.md").read_text()
    assert f"- voxline arrivals: {arrived['offered']} calls at 1 a second over 4 s, {arrived['let_in']} let in" in md


def _figures(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?) (?:µs|ms)", line)]


def test_the_transport_path_bench_measures_both_directions():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "transport_path.py"), "--secs", "1", "--rounds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if " µs per 20 ms " in line]
    assert [line.split(":")[0] for line in lines] == [
        "pipecat's output transport", "with audio_out.trim", "pipecat's input transport", "with audio_in.trim"]
    assert all(_figures(line) and all(0 < v < 100_000 for v in _figures(line)) for line in lines), lines


def test_side_by_side_runs_two_servers_through_the_talking_cycle():
    """This tree against itself (`--old` the same checkout): one call each through a question and an interruption."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "side_by_side.py"), "--old", str(ROOT), "--calls", "1",
                           "--rounds", "1", "--phase", "talking"],
                          cwd=ROOT, capture_output=True, text=True, timeout=200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("talking, 1 calls each, 1 rounds"))
    figures = re.search(r"this tree ([\d.e+]+), --old ([\d.e+]+) ms CPU per cycle", summary)
    assert figures and float(figures[1]) > 0 and float(figures[2]) > 0, summary
    assert re.search(r"ratio median \d+\.\d{3}", summary), summary
    for label in ("this tree", "--old"):  # each server's latencies over the cycles, as bench/load.py times them
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"  {label}, all rounds' cycles"))
        timed = re.search(r"turn p50 / p95 / mean ([\d.]+) / .* barge-in ([\d.]+) / .*\(missed 0\), runtime "
                          r"overhead p50 / p95 ([\d.]+) / ([\d.]+) ms", line)
        assert timed and 0 < float(timed[1]) < 5000 and 0 < float(timed[2]) < 2000, line
        assert 0 <= float(timed[3]) <= float(timed[4]), line


def _run_under(tool: str, out_variable: str, program: Path, out: Path, *, checkout: bool = False) -> Path:
    """Run `program` with bench/<tool>'s sitecustomize loaded and writing to `out`, as its docstring says to;
    `checkout`: with this checkout on PYTHONPATH after it, as the load benchmark runs its servers."""
    path = [str(ROOT / "bench" / tool), *([str(ROOT)] if checkout else [])]
    env = {**os.environ, out_variable: str(out), "PYTHONPATH": os.pathsep.join(path)}
    subprocess.run([sys.executable, str(program)], env=env, cwd=ROOT, timeout=60, check=True, capture_output=True)
    return out


def _task_line(report: str, task: str) -> str:
    return next(line for line in report.splitlines() if line.endswith(f" {task}"))


def _ms(line: str) -> float:
    return float(line.split("%")[1].split("ms")[0])


def test_loop_busy_times_a_processs_event_loop_by_task(tmp_path):
    """bench/loop_busy: the sitecustomize times a child process's callbacks by task name; the report reads them.
    The process ends before the sitecustomize's writer would first write (2 s): what it reports is written at exit."""
    program = tmp_path / "busy_loop.py"
    program.write_text(
        "import asyncio, time\n"
        "async def work():\n"
        "    for _ in range(20):\n"
        "        t = time.perf_counter()\n"
        "        while time.perf_counter() - t < 0.04:\n"
        "            pass\n"
        "        await asyncio.sleep(0.01)\n"
        "async def main():\n"
        "    await asyncio.create_task(work(), name='Crunching#1')\n"
        "asyncio.run(main())\n")
    out = _run_under("loop_busy", "LOOP_BUSY_OUT", program, tmp_path / "lb")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "loop_busy.py"), str(out), "--match", "busy_loop.py",
                           "--busy-over", "20"], capture_output=True, text=True, timeout=60, check=True)
    assert "busy % per second" in proc.stdout, proc.stdout
    assert 500 <= _ms(_task_line(proc.stdout, "Crunching")) <= 2000, proc.stdout  # 20 × 40 ms of work


@pytest.mark.parametrize("cpu_clock", [False, True])
def test_loop_busy_on_the_cpu_clock_leaves_out_what_the_thread_did_not_run(tmp_path, monkeypatch, cpu_clock):
    """With LOOP_BUSY_CPU=1 a step is timed on the thread's CPU clock: a step that holds the loop without running
    (here a blocking sleep; on a full box, the thread preempted) counts on the wall clock only. Steps are counted
    either way, and `--per` gives each task's cost per call."""
    program = tmp_path / "two_tasks.py"
    program.write_text(
        "import asyncio, time\n"
        "async def crunch():\n"
        "    for _ in range(10):\n"
        "        t = time.thread_time()\n"
        "        while time.thread_time() - t < 0.03:\n"
        "            pass\n"
        "        await asyncio.sleep(0.01)\n"
        "async def doze():\n"
        "    for _ in range(10):\n"
        "        time.sleep(0.03)\n"
        "        await asyncio.sleep(0.01)\n"
        "async def main():\n"
        "    await asyncio.gather(asyncio.create_task(crunch(), name='Crunching#1'),\n"
        "                         asyncio.create_task(doze(), name='Dozing#2'))\n"
        "asyncio.run(main())\n")
    if cpu_clock:
        monkeypatch.setenv("LOOP_BUSY_CPU", "1")
    else:
        monkeypatch.delenv("LOOP_BUSY_CPU", raising=False)
    out = _run_under("loop_busy", "LOOP_BUSY_OUT", program, tmp_path / "lb")
    # Every second with any work: the program's ~0.7 s can straddle a second boundary, and with `--busy-over 5` a
    # second holding one 30 ms step (3 %) fell out of the window, and its step out of the count.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "loop_busy.py"), str(out), "--match", "two_tasks.py",
                           "--busy-over", "0", "--per", "2"], capture_output=True, text=True, timeout=60, check=True)
    crunching, dozing = _task_line(proc.stdout, "Crunching"), _task_line(proc.stdout, "Dozing")
    assert 250 <= _ms(crunching) <= 900, proc.stdout  # 10 × 30 ms of CPU on either clock
    if cpu_clock:
        assert "ms of the loop thread's CPU (" in proc.stdout and _ms(dozing) < 60, proc.stdout
    else:
        assert " ms busy (" in proc.stdout and _ms(dozing) >= 250, proc.stdout  # 10 × 30 ms asleep on the loop
    steps = re.search(r"ms/call\s+(\d+) steps\s+([\d.]+) µs/step", crunching)
    assert steps and 10 <= int(steps[1]) <= 12, crunching  # a step per sleep, and the first and last
    # the total is printed to the millisecond, the cost per call to the hundredth
    assert float(crunching.split("ms/call")[0].split("ms")[-1]) == pytest.approx(_ms(crunching) / 2, abs=0.26)


def test_cpu_split_gives_each_benchmark_threads_cpu_second_by_second(tmp_path):
    """bench/cpu_split.py: a stand-in load generator (a script at bench/load.py) spins one thread for ~1.5 s while
    its main thread sleeps; the rows give that thread's CPU under the generator's role, and the exit status passes."""
    fake = tmp_path / "bench" / "load.py"
    fake.parent.mkdir()
    fake.write_text(
        "import sys, threading, time\n"
        "def spin():\n"
        "    t = time.thread_time()\n"
        "    while time.thread_time() - t < 1.5:\n"
        "        pass\n"
        "worker = threading.Thread(target=spin)\n"
        "worker.start()\n"
        "worker.join()\n"
        "time.sleep(0.5)\n"
        "sys.exit(3)\n")
    out = tmp_path / "split.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_split.py"), "--every", "0.5", "--out", str(out),
                           "--", sys.executable, str(fake)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    spun = sum(row["threads"].get("generator:threads", 0) for row in rows)
    slept = sum(row["threads"].get("generator:main", 0) for row in rows)
    assert 1.2 <= spun <= 2.5 and slept < 0.5, rows  # all 1.5 s of it, its first half-second too
    assert all(set(row["box"]) >= {"idle", "system", "user"} for row in rows), rows
    assert "idle" in proc.stdout and "generator:threads" in proc.stdout, proc.stdout


@pytest.mark.parametrize("express", [False, True])
def test_frame_census_counts_the_frames_processors_take_in(tmp_path, express):
    """bench/frame_census: the sitecustomize counts each frame a processor takes in, by type and direction; with
    voxline's pipelines/frame_express.py installed too, as a call's pipeline has it (it replaces `queue_frame`)."""
    program = tmp_path / "three_hops.py"
    program.write_text(
        ("from pipelines import frame_express\nframe_express.install()\n" if express else "") +
        "import asyncio\n"
        "from pipecat.frames.frames import EndFrame, TextFrame\n"
        "from pipecat.pipeline.pipeline import Pipeline\n"
        "from pipecat.pipeline.worker import PipelineWorker\n"
        "from pipecat.processors.frame_processor import FrameProcessor\n"
        "from pipecat.workers.runner import WorkerRunner\n"
        "class Through(FrameProcessor):\n"
        "    async def process_frame(self, frame, direction):\n"
        "        await super().process_frame(frame, direction)\n"
        "        await self.push_frame(frame, direction)\n"
        "async def main():\n"
        "    worker = PipelineWorker(Pipeline([Through(), Through(), Through()]), enable_rtvi=False,\n"
        "                            enable_turn_tracking=False, idle_timeout_secs=None)\n"
        "    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)\n"
        "    await runner.add_workers(worker)\n"
        "    await worker.queue_frames([TextFrame(str(i)) for i in range(7)] + [EndFrame()])\n"
        "    await runner.run()\n"
        "asyncio.run(main())\n")
    out = _run_under("frame_census", "FRAME_CENSUS_OUT", program, tmp_path / "census", checkout=express)
    (report,) = out.glob("*.txt")
    counts = {" ".join(line.split()[1:]): int(line.split()[0]) for line in report.read_text().splitlines()}
    # each TextFrame into the three processors, and the pipeline's own source and sink, and the worker's
    assert counts["DO TextFrame"] % 7 == 0 and counts["DO TextFrame"] >= 7 * 5, counts
    assert counts["DO EndFrame"] * 7 == counts["DO TextFrame"], counts


def test_gc_watch_tells_a_released_pipeline_from_a_collected_one(tmp_path):
    """bench/gc_watch: a worker emptied by call_teardown is freed by reference counting, one left alone only by
    the cyclic collector, and the collections are counted."""
    program = tmp_path / "two_workers.py"
    program.write_text(
        "import gc, time\n"
        "from pipecat.pipeline.pipeline import Pipeline\n"
        "from pipecat.pipeline.worker import PipelineWorker\n"
        "from runtime import call_teardown\n"
        "deadline = time.monotonic() + 20  # the watch patches PipelineWorker once pipecat is imported\n"
        "while PipelineWorker.__init__.__name__ != 'counted' and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "released = PipelineWorker(Pipeline([]))\n"
        "call_teardown.release(call_teardown.call_objects(released))\n"
        "del released\n"
        "left = PipelineWorker(Pipeline([]))\n"
        "del left\n"
        "gc.collect()\n")
    out = tmp_path / "gw"
    env = {**os.environ, "GC_WATCH_OUT": str(out), "PYTHONPATH": f"{ROOT / 'bench' / 'gc_watch'}{os.pathsep}{ROOT}"}
    subprocess.run([sys.executable, str(program)], env=env, cwd=ROOT, timeout=60, check=True)
    (written,) = out.glob("*.json")
    state = json.loads(written.read_text())
    assert state["pipelines"] == {"made": 2, "by_refcount": 1, "by_collector": 1}, state
    assert state["collections"]["2"]["n"] >= 1 and state["collections"]["2"]["total_ms"] > 0, state


def test_whisper_tail_compares_transcripts_with_and_without_the_silent_tail():
    """bench/whisper_tail.py on two phrases in one voice: both word error rates measured, against the phrases."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "whisper_tail.py"), "--voices", "en", "--speeds", "150",
                           "--phrases", "2"], cwd=ROOT, capture_output=True, text=True, timeout=200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = re.search(r"^2 utterances, (\d+) words, line noise None dBFS: word error rate ([\d.]+) as the VAD hands "
                        r"segments over, ([\d.]+) without their near-silent tails; (\d+) utterances' words differ$",
                        proc.stdout, re.MULTILINE)
    assert summary, proc.stdout[-3000:]
    assert int(summary[1]) == 9  # "Wait, where is that exactly?" and "Where are you located?"
    assert 0 <= float(summary[2]) <= 1.5 and 0 <= float(summary[3]) <= 1.5 and int(summary[4]) <= 2


def test_whisper_window_compares_the_short_window_with_the_full_one():
    """bench/whisper_window.py on two phrases in one voice: both windows' word error rates and times, and how many
    short decodes were done again."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "whisper_window.py"), "--voices", "en", "--speeds",
                           "150", "--phrases", "2"], cwd=ROOT, capture_output=True, text=True, timeout=200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^(\d+) transcriptions, 9 words, line noise None dBFS, pad 5.0 s$", proc.stdout, re.MULTILINE), \
        proc.stdout[-3000:]
    rates = dict(re.findall(r"^  (full|short) +window: word error rate ([\d.]+), time p50 \d+ ms, p95 \d+ ms$",
                            proc.stdout, re.MULTILINE))
    assert set(rates) == {"full", "short"} and all(0 <= float(r) <= 1.5 for r in rates.values()), proc.stdout[-3000:]
    again = re.search(r"^  short-window decodes done again on the full window: (\d+) of (\d+)$", proc.stdout, re.MULTILINE)
    assert again and int(again[2]) >= 2 and int(again[1]) <= int(again[2]), proc.stdout[-3000:]


def test_call_setup_times_a_cloud_calls_start_on_the_loop_and_counts_ca_loads():
    """bench/call_setup.py builds a cloud call's three services and dials its two wss sockets against a local TLS
    server: this code loads no CA store for it."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "call_setup.py"), "--calls", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = re.search(r"^2 cloud calls' setup on the event loop .*: CPU p50 ([\d.]+) ms, max ([\d.]+) ms; "
                     r"CA stores loaded per call ([\d.]+)$", proc.stdout, re.MULTILINE)
    assert line, proc.stdout[-3000:]
    assert 0 < float(line[1]) <= float(line[2]) and float(line[3]) == 0, line[0]
    first = re.search(r"^the first call after start-up: CPU ([\d.]+) ms, CA stores loaded (\d+)$", proc.stdout,
                      re.MULTILINE)
    assert first and float(first[1]) > 0 and first[2] == "0", proc.stdout[-3000:]


def _before_and_after(script: str, args: list[str], line: str) -> list[tuple[str, str, str]]:
    """Runs a bench script that prints one line per size, `line` capturing (size, before, after); checks that it
    ran and that both figures were measured."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.findall(line, proc.stdout, re.M)
    assert lines and all(float(before) > 0 and float(after) > 0 for _, before, after in lines), proc.stdout
    return lines


def test_llm_request_times_a_turns_request_with_and_without_the_sdks_walk():
    lines = _before_and_after("llm_request.py", ["--requests", "3", "--rounds", "1"],
                              r"^(\d+) messages: ([\d.]+) ms a request with the SDK's walk, ([\d.]+) ms around it")
    assert [int(n) for n, _, _ in lines] == [6, 22, 42], lines


def test_tts_words_times_a_sentences_words_with_pipecats_matching_and_voxlines():
    lines = _before_and_after("tts_words.py", ["--sentences", "3", "--rounds", "1"],
                              r"^(\d+) words: ([\d.]+) µs a word with pipecat's matching, ([\d.]+) µs with voxline's$")
    assert [int(n) for n, _, _ in lines] == [24, 53], lines
