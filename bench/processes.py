"""The load benchmark's processes: the provider emulators and the servers under test (voxline, the stock pipecat
baseline), each a child process on a free loopback port with its log in the work dir, and the CPU/RSS sampler of a
process (psutil). Used by bench/load.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from telephony.twilio.caller import Answer, post_incoming_call  # noqa: E402

REPLY = ("We are at twelve Main Street, next to the old cinema, and we are open every day from noon until ten "
         "in the evening.")
GREETING = "Hello, thanks for calling Luigi's."
CLOUD_NUMBER = "+15550100800"
LOCAL_NUMBER = "+15550100801"

AGENT_FILES = {
    "bench_cloud.yaml": f"""
name: bench-cloud
phone_numbers: ["{CLOUD_NUMBER}"]
system_prompt: You are the front desk of Luigi's, a small restaurant. Answer briefly and politely.
welcome_message: {GREETING}
transcriber: {{provider: deepgram, model: nova-3}}
llm: {{provider: openai, model: gpt-4o-mini}}
tts: {{provider: cartesia}}
call: {{silence_timeout_secs: 0}}
""",
    "bench_local.yaml": f"""
name: bench-local
phone_numbers: ["{LOCAL_NUMBER}"]
system_prompt: You are the front desk of Luigi's, a small restaurant. Answer briefly and politely.
welcome_message: {GREETING}
transcriber: {{provider: whisper, model: tiny.en, language: en}}
llm:
  provider: scripted
  script:
    rules: []
    fallback: {REPLY}
tts: {{provider: piper, voice: en_US-joe-medium}}
call: {{silence_timeout_secs: 0}}
""",
}
# The baseline asks its LLM for the greeting, as pipecat's examples do ("Say hello and briefly introduce yourself").
OPENAI_RULES = {"greeting": GREETING, "fallback": REPLY, "rules": [{"keywords": ["introduce"], "reply": GREETING}]}


def agent_files(agent: str, turn_silence: float | None = None, sentence_end: str | None = None,
                only_agent: bool = False) -> dict[str, str]:
    """The voxline server's agent files: both bench agents (it loads Whisper and Piper at start-up for the local
    one), or with `only_agent` the one under test alone, so that a cloud run loads no local model."""
    turn = {k: v for k, v in (("silence_secs", turn_silence), ("sentence_end_secs", sentence_end)) if v is not None}
    suffix = "turn: {" + ", ".join(f"{k}: {v}" for k, v in turn.items()) + "}\n" if turn else ""
    return {fname: text + suffix for fname, text in AGENT_FILES.items()
            if not only_agent or fname == f"bench_{agent}.yaml"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes ---------------------------------------------------------------------------------------------------

class Proc:
    """A child process with its log in the work dir; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path, cwd: Path = ROOT,
                 cpus: set[int] | None = None, nice: int | None = None, sched_other: bool = False):
        """`cpus`: the CPUs it (and every process it starts, e.g. `serve --workers`) may run on. `nice`: its
        niceness, where it is not to inherit this process's (a server under a niced load, `nice_harness`).
        `sched_other`: it runs under SCHED_OTHER whatever this process runs under (a server under an idle load,
        `idle_harness`)."""
        self.name, self.log = name, log
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
        # Both at once, while it is still importing: long before it starts a thread or a worker, which inherit them.
        if cpus:
            os.sched_setaffinity(self.popen.pid, cpus)
        if nice is not None and nice != os.getpriority(os.PRIO_PROCESS, self.popen.pid):
            try:
                os.setpriority(os.PRIO_PROCESS, self.popen.pid, nice)
            except PermissionError:
                self.popen.kill()
                raise SystemExit(f"--harness-nice: {name} could not be kept at niceness {nice} under the niced load "
                                 "(lowering a niceness needs root or CAP_SYS_NICE)") from None
        if sched_other and os.sched_getscheduler(self.popen.pid) != os.SCHED_OTHER:
            try:
                os.sched_setscheduler(self.popen.pid, os.SCHED_OTHER, os.sched_param(0))
            except PermissionError:
                self.popen.kill()
                raise SystemExit(f"--harness-idle: {name} could not be set back to SCHED_OTHER under the idle load "
                                 "(leaving SCHED_IDLE needs root, CAP_SYS_NICE or an RLIMIT_NICE that allows "
                                 "its niceness)") from None
        self.ps = psutil.Process(self.popen.pid)

    def niceness(self, label: str) -> dict[str, int]:
        """Its niceness under `label`, and each worker's where a server started some."""
        found = {label: self.ps.nice()}
        for child in self.ps.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[f"{label} worker {child.pid}"] = child.nice()
        return found

    def scheduling(self, label: str) -> dict[str, str]:
        """Its scheduling policy under `label`, and each worker's where a server started some."""
        found = {label: policy(self.ps.pid)}
        for child in self.ps.children(recursive=True):
            with contextlib.suppress(OSError):
                found[f"{label} worker {child.pid}"] = policy(child.pid)
        return found

    def cpu_affinity(self) -> list[int]:
        """Every CPU that it or a process it started (a worker) may run on."""
        cpus: set[int] = set(self.ps.cpu_affinity())
        for child in self.ps.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cpus.update(child.cpu_affinity())
        return sorted(cpus)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def nice_harness(by: int) -> int:
    """`--harness-nice`: this process (the load generator, every thread of it) and every process it starts from
    now on run `by` nicer; returns the niceness the servers under test are to keep (`Proc(nice=)`). On a host
    where the load shares the server's cores, the load then takes what the server leaves, as if it ran elsewhere.
    On Linux a niceness is a thread's, so each thread is set."""
    kept = os.getpriority(os.PRIO_PROCESS, 0)
    for tid in os.listdir("/proc/self/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), min(19, kept + by))
    return kept


def idle_harness() -> None:
    """`--harness-idle`: this process (the load generator, every thread of it) and every process it starts from now
    on run under SCHED_IDLE; the servers under test are set back to SCHED_OTHER as they start
    (`Proc(sched_other=True)`). Niceness only weights a thread's share of a core; a SCHED_IDLE thread gives the core
    up as soon as a normal thread wakes, so the load runs only on the time the server leaves, as `--harness-nice`
    means it to. At 100 calls on two cores, five pairs of the same code alternating, the server's barge-in p95 was
    13-36 % lower under an idle load than under one at niceness 19, and its overhead p95 6-44 % lower; its loops'
    time waiting for a core fell by less than a tenth, so where the gain comes from is not pinned down
    (bench/HISTORY.md, session 39). The
    load's own figures still come out: its loop's lateness is in the report (`generator_loop_lag_ms`), and an
    emulator that waits for a core can only make the server's figures later, never sooner."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))


_POLICIES = {os.SCHED_OTHER: "other", os.SCHED_IDLE: "idle", os.SCHED_BATCH: "batch", os.SCHED_FIFO: "fifo",
             os.SCHED_RR: "rr"}


def policy(pid: int = 0) -> str:
    """A process's (its main thread's) scheduling policy, as `SCHED_<name>` without the prefix, lowered."""
    found = os.sched_getscheduler(pid)
    return _POLICIES.get(found, str(found))


def base_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOXLINE_"))}
    # The voxline server runs in its work dir, so `-m runtime.cli` imported whatever tree the virtual environment
    # has installed (its editable install), not the checkout this benchmark is in: the benchmark of another
    # checkout, run with this one's environment, measured this one's code. A PYTHONPATH given still comes first
    # (bench/side_by_side.py, bench/loop_busy).
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [os.environ.get("PYTHONPATH")]), str(ROOT)])
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", DEEPGRAM_API_KEY="bench", OPENAI_API_KEY="bench",
               CARTESIA_API_KEY="bench")
    env.update(extra or {})
    return env


def wait_until(check, timeout: float, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: {what} not within {timeout:.0f}s:\n{proc.tail()}")


class Emulators:
    """deepgram, openai and cartesia emulators, each in its own process (their CPU is not the server's); `fast`:
    the same emulators with their models swapped for cheap ones (bench/fast_providers.py)."""

    def __init__(self, work: Path, latency_ms: int, fast: bool = True, cpus: set[int] | None = None,
                 audio_cache: Path | None = None, token_ms: int = 0):
        """`audio_cache`: the fast emulators keep Piper's sentences there (bench/audio_cache.py); `token_ms`: the
        OpenAI emulator's pace between a reply's chunks."""
        self.procs: dict[str, Proc] = {}
        self.urls: dict[str, str] = {}
        rules = work / "openai_rules.json"
        rules.write_text(json.dumps(OPENAI_RULES))
        for name in ("deepgram", "openai", "cartesia"):
            port = free_port()
            launcher = ([str(ROOT / "bench" / "fast_providers.py")] if fast else ["-m", "runtime.cli", "emulate"])
            argv = [sys.executable, *launcher, name, "--port", str(port),
                    "--latency-ms", str(latency_ms)] + (["--rules", str(rules)] if name == "openai" else [])
            if name == "openai" and token_ms:
                argv += ["--token-ms", str(token_ms)]
            if fast and audio_cache:
                argv += ["--audio-cache", str(audio_cache)]
            self.procs[name] = Proc(f"{name} emulator", argv, base_env({"VOXLINE_LOG_LEVEL": "WARNING"}),
                                    work / f"emulator-{name}.log", cpus=cpus)
            self.urls[name] = {"deepgram": f"ws://127.0.0.1:{port}", "openai": f"http://127.0.0.1:{port}/v1",
                               "cartesia": f"ws://127.0.0.1:{port}/tts/websocket"}[name]
        for proc in self.procs.values():
            wait_until(lambda p=proc: "listening on" in p.log.read_text(errors="replace"), 120, proc, "ready")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


class Target:
    """A server under test: its process, and how a call reaches it."""

    name: str
    proc: Proc
    url: str

    async def answer(self, client: httpx.AsyncClient) -> Answer:
        raise NotImplementedError

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        self.proc.stop()


class Voxline(Target):
    def __init__(self, work: Path, emulators: Emulators, agent: str, turn_silence: float | None = None,
                 workers: int = 1, sentence_end: str | None = None, cpus: set[int] | None = None,
                 only_agent: bool = False, nice: int | None = None, sched_other: bool = False):
        """`only_agent`: the server gets only the agent under test, so a cloud run loads no local model."""
        self.name = "voxline"
        base = work / "voxline"
        (base / "agents").mkdir(parents=True, exist_ok=True)
        for fname, text in agent_files(agent, turn_silence, sentence_end, only_agent).items():
            (base / "agents" / fname).write_text(text)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.number = CLOUD_NUMBER if agent == "cloud" else LOCAL_NUMBER
        env = base_env({
            "VOXLINE_DATA_DIR": str(base / "data"), "VOXLINE_AGENTS_DIR": str(base / "agents"),
            "VOXLINE_PUBLIC_URL": self.url, "VOXLINE_LOG_LEVEL": os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
            "VOXLINE_DEEPGRAM_BASE_URL": emulators.urls["deepgram"],
            "VOXLINE_OPENAI_BASE_URL": emulators.urls["openai"],
            "VOXLINE_CARTESIA_URL": emulators.urls["cartesia"],
            # Forwarded: the first names in the server log whatever blocks its event loop (runtime/stall_watch.py),
            # the second sets how often Silero runs (pipelines/providers/vad.py), the next two when the server turns
            # calls away (runtime/capacity.py), the last how rarely it makes full collections (runtime/app.py).
            **{name: os.environ[name] for name in ("VOXLINE_STALL_WARN_MS", "VOXLINE_VAD_BATCH_MS",
                                                   "VOXLINE_MAX_CALLS", "VOXLINE_SHED_LOOP_LAG_MS",
                                                   "VOXLINE_GC_GEN2_THRESHOLD")
               if os.environ.get(name)},
        })
        self.proc = Proc("voxline", [sys.executable, "-m", "runtime.cli", "serve", "--port", str(port),
                                     "--workers", str(workers)], env, work / "voxline.log", cwd=base, cpus=cpus,
                         nice=nice, sched_other=sched_other)
        wait_until(lambda: httpx.get(self.url + "/health", timeout=30).status_code == 200, 120, self.proc, "healthy")
        seen: set[str] = set()  # every worker answering, not just the first one up

        def all_workers() -> bool:
            seen.add(httpx.get(self.url + "/health", timeout=1).json()["instance"])
            return len(seen) >= workers

        wait_until(all_workers, 120, self.proc, f"{workers} workers answering")

    async def answer(self, client: httpx.AsyncClient) -> Answer:
        answer = await post_incoming_call(self.url, self.number, client=client)
        if answer.rejected:
            raise Refused(f"the server rejected the call: {answer.rejected}")
        if answer.status_code != 200 or not answer.stream_url:
            raise RuntimeError(f"webhook answered {answer.status_code}: {answer.twiml[:300]}")
        return answer


class Refused(RuntimeError):
    """The server turned the call away (VOXLINE_MAX_CALLS, VOXLINE_SHED_LOOP_LAG_MS): a result, not a failure."""


class Baseline(Target):
    def __init__(self, work: Path, emulators: Emulators, sample_rate: int, turn: str, stack: str = "cloud",
                 cpus: set[int] | None = None, nice: int | None = None, sched_other: bool = False):
        self.name = "baseline"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, str(ROOT / "bench" / "baseline_bot.py"), "--port", str(port),
                "--deepgram-url", emulators.urls["deepgram"], "--openai-url", emulators.urls["openai"],
                "--cartesia-url", emulators.urls["cartesia"], "--sample-rate", str(sample_rate), "--turn", turn,
                "--stack", stack]
        self.proc = Proc("baseline", argv, base_env(), work / "baseline.log", cpus=cpus, nice=nice,
                         sched_other=sched_other)
        wait_until(lambda: httpx.get(self.url + "/health", timeout=1).status_code == 200, 120, self.proc, "healthy")

    async def answer(self, client: httpx.AsyncClient) -> Answer:
        return Answer(status_code=200, twiml="", stream_url=self.url.replace("http://", "ws://") + "/ws",
                      parameters={})


# --- sampling the server process ---------------------------------------------------------------------------------

class Sampler:
    """CPU (% of one core) and RSS (MB) of one process, every `every` seconds, with labelled windows."""

    def __init__(self, ps: psutil.Process, every: float = 0.5, tree: bool = True):
        self.ps, self.every, self.tree = ps, every, tree
        self.samples: list[tuple[float, float, float]] = []  # (t, cpu seconds so far, rss MB)
        self._task: asyncio.Task | None = None

    def sample(self) -> tuple[float, float, float]:
        cpu, rss = 0.0, 0.0
        # a server with worker processes counts them all (the generator's own children are the servers: not it)
        for p in [self.ps, *(self.ps.children(recursive=True) if self.tree else ())]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                cpu, rss = cpu + t.user + t.system, rss + p.memory_info().rss / 2**20
        s = (time.monotonic(), cpu, rss)
        self.samples.append(s)
        return s

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, t0: float, t1: float) -> dict:
        """CPU % of one core over [t0, t1] (from the samples bracketing it) and RSS max/mean inside it."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {"cpu_pct": None, "rss_mb_max": None, "rss_mb_mean": None, "secs": round(t1 - t0, 2)}
        cpu = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * 100
        rss = [s[2] for s in inside]
        return {"cpu_pct": round(cpu, 2), "rss_mb_max": round(max(rss), 1), "rss_mb_mean": round(sum(rss) / len(rss), 1),
                "secs": round(inside[-1][0] - inside[0][0], 2)}
