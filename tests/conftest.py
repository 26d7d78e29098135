"""Shared fixtures: real synthesized speech (espeak-ng) and a real `voxline serve` process on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from loguru import logger

from telephony.audio import wav_to_ulaw

ROOT = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "1" * 32
DEMO_NUMBER = "+15550100000"
LONG_WELCOME_NUMBER = "+15550100001"
BROKEN_NUMBER = "+15550100002"
TEXT_NUMBER = "+15550100003"
SHORT_CALL_NUMBER = "+15550100004"
SILENCE_NUMBER = "+15550100005"
STEADY_WELCOME_NUMBER = "+15550100006"
CALL_TOOLS_NUMBER = "+15550100007"
SMART_TURN_NUMBER = "+15550100008"
RECORDED_NUMBER = "+15550100009"
TRANSFER_TARGET = "+15550100099"

# Phrases Whisper tiny.en reliably recovers from espeak-ng speech on an 8 kHz μ-law line (checked by hand;
# many others come back garbled, which says more about espeak than about the runtime).
PHRASES = {
    "located": "Where are you located?",
    "goodbye": "Goodbye.",
    "table": "Hello, I would like to book a table for two people tonight.",
    "ack": "Uh huh.",  # → "Uh-huh."
    # One breath with an always-interrupt word. Tiny.en hears "Please stop." right from any segment start (75 of 75
    # offsets tried); "Please wait." came back as "please wave" for some, and "Wait, wait." is two VAD segments.
    "stop": "Please stop.",
}

TEST_AGENTS = {
    "recorded.yaml": f"""
name: recorded
phone_numbers: ["{RECORDED_NUMBER}"]
system_prompt: Its calls are recorded.
welcome_message: Hello, this call is recorded.
transcriber: {{provider: whisper}}
llm:
  provider: scripted
  script:
    rules: [{{keywords: [where, located, address], reply: We are at twelve Main Street.}}]
tts: {{provider: piper}}
call: {{record: true}}
""",
    "smart_turn.yaml": f"""
name: smart-turn
phone_numbers: ["{SMART_TURN_NUMBER}"]
system_prompt: Ends turns with the smart-turn model.
welcome_message: Hello.
turn: {{strategy: smart_turn, smart_turn_max_secs: 2.0}}
transcriber: {{provider: whisper}}
llm:
  provider: scripted
  script:
    rules: [{{keywords: [where, located, address], reply: We are at twelve Main Street.}}]
tts: {{provider: piper}}
""",
    "call_tools.yaml": f"""
name: call-tools
phone_numbers: ["{CALL_TOOLS_NUMBER}"]
system_prompt: Uses the call's own tools.
welcome_message: Hello.
transcriber: {{provider: whisper}}
llm:
  provider: scripted
  script:
    rules:
      - {{keywords: [where, located], tool: transfer_call, reply: Transferring.}}
      - {{keywords: [table, book, tonight], tool: end_call, arguments: {{reason: booking}}, reply: Bye.}}
tts: {{provider: piper}}
call: {{transfer: {{number: "{TRANSFER_TARGET}", message: Please hold while I transfer you.}}}}
""",
    "long_welcome.yaml": f"""
name: long-welcome
phone_numbers: ["{LONG_WELCOME_NUMBER}"]
system_prompt: Test agent whose welcome is long enough to talk over.
welcome_message: >-
  Hello and welcome to Luigi's. Before you ask, let me tell you about our specials, because today we have
  fresh pasta with wild mushrooms, a wood fired pizza with roasted peppers, and a lemon tart for dessert.
  We also have a set menu for groups of six or more people.
transcriber: {{provider: whisper}}
llm:
  provider: scripted
  script:
    rules: [{{keywords: [where, located, address], reply: We are at twelve Main Street.}}]
    fallback: Sorry, could you say that again?
tts: {{provider: piper}}
# Three words interrupt, so a two-word "Please stop." interrupts only because "stop" always does.
interruption: {{min_words: 3}}
""",
    "steady_welcome.yaml": f"""
name: steady-welcome
phone_numbers: ["{STEADY_WELCOME_NUMBER}"]
system_prompt: Its welcome cannot be interrupted.
welcome_message: >-
  Hello and welcome to Luigi's. This call may be recorded for quality purposes, and our opening hours
  are from noon until ten in the evening, every day of the week.
interruption: {{welcome_interruptible: false}}
transcriber: {{provider: whisper}}
llm:
  provider: scripted
  script:
    rules: [{{keywords: [where, located, address], reply: We are at twelve Main Street.}}]
tts: {{provider: piper}}
""",
    "broken.yaml": f"""
name: needs-deepgram
phone_numbers: ["{BROKEN_NUMBER}"]
system_prompt: Uses a cloud STT whose key is not configured.
transcriber: {{provider: deepgram}}
llm: {{provider: scripted}}
tts: {{provider: piper}}
""",
    "text.yaml": f"""
name: chat-only
architecture: text
phone_numbers: ["{TEXT_NUMBER}"]
system_prompt: A text agent.
llm: {{provider: scripted}}
""",
    "short_call.yaml": f"""
name: short-call
phone_numbers: ["{SHORT_CALL_NUMBER}"]
system_prompt: Calls last six seconds.
welcome_message: Hi.
transcriber: {{provider: whisper}}
llm: {{provider: scripted}}
tts: {{provider: piper}}
call: {{max_duration_secs: 6, max_duration_message: "Time is up. Goodbye.", silence_timeout_secs: 0}}
""",
    "silence.yaml": f"""
name: silence
phone_numbers: ["{SILENCE_NUMBER}"]
system_prompt: Reminds a silent caller once, then hangs up.
welcome_message: Hello.
transcriber: {{provider: whisper}}
llm:
  provider: scripted
  script:
    rules: [{{keywords: ["1"], reply: You pressed one.}}, {{keywords: ["2"], reply: You pressed two.}}]
tts: {{provider: piper}}
call: {{silence_timeout_secs: 2, silence_max_reminders: 1, silence_reminder: "Are you still there?",
        silence_goodbye: "Goodbye for now."}}
""",
    "invalid.yaml": """
name: invalid
system_prompt: Refers to a provider that does not exist.
transcriber: {provider: nosuch}
llm: {provider: scripted}
tts: {provider: piper}
""",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen
    auth_token: str | None

    @property
    def stream_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/telephony/twilio/stream"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, sql: str, *params) -> list[sqlite3.Row]:
        con = sqlite3.connect(self.data_dir / "voxline.db", timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def call_row(self, call_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM calls WHERE id = ?", call_id)
        return rows[0] if rows else None

    def turns(self, call_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM transcript_entries WHERE call_id = ? ORDER BY id", call_id)

    def wait_ended(self, call_id: str, timeout: float = 5.0) -> sqlite3.Row:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.call_row(call_id)
            if row is not None and row["ended_at"] is not None:
                return row
            time.sleep(0.05)
        raise AssertionError(f"call {call_id} not closed within {timeout}s: {dict(self.call_row(call_id) or {})}")


def start_server(base: Path, *, auth_token: str | None, extra_env: dict | None = None,
                 args: tuple[str, ...] = ()) -> Server:
    agents = base / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config" / "agents" / "demo.yaml", agents / "demo.yaml")
    for name, text in TEST_AGENTS.items():
        (agents / name).write_text(text)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(base, {"VOXLINE_PUBLIC_URL": url, "VOXLINE_LOG_LEVEL": "DEBUG"})
    if auth_token:
        env.update(TWILIO_AUTH_TOKEN=auth_token, TWILIO_ACCOUNT_SID=ACCOUNT_SID)
    env.update(extra_env or {})
    # A second server in the same folder (a restart, a second process) logs beside the first, not over it: a
    # failure's post-mortem needs both.
    log_path, n = base / "server.log", 2
    while log_path.exists():
        log_path, n = base / f"server.{n}.log", n + 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--port", str(port), *args],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, cwd=base,
    )
    server = Server(url, port, base / "data", log_path, proc, auth_token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            # The socket listens before the app has started, so this waits for start-up rather than polling it.
            if httpx.get(url + "/health", timeout=30).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{server.log()[-4000:]}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@dataclass
class TwilioApi:
    """The Twilio REST emulator (telephony/twilio/emulator.py) on a loopback port, with what it was asked."""

    url: str

    def requests(self, call_sid: str) -> list[dict]:
        return httpx.get(f"{self.url}/_emulator/requests", params={"call_sid": call_sid}).json()["requests"]

    def call(self, call_sid: str) -> dict | None:
        """The call as the emulated Twilio now holds it (status, and the TwiML it was redirected to)."""
        r = httpx.get(f"{self.url}/_emulator/calls/{call_sid}")
        return r.json() if r.status_code == 200 else None

    def wait_requests(self, call_sid: str, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not (found := self.requests(call_sid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


@pytest.fixture(scope="session")
def twilio_api() -> TwilioApi:
    import threading

    import uvicorn

    from telephony.twilio.emulator import create_emulator_app

    port = free_port()
    config = uvicorn.Config(create_emulator_app(ACCOUNT_SID, AUTH_TOKEN), host="127.0.0.1", port=port,
                            log_level="warning")
    emulator = uvicorn.Server(config)
    thread = threading.Thread(target=emulator.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not emulator.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield TwilioApi(f"http://127.0.0.1:{port}")
    emulator.should_exit = True
    thread.join(5)


@pytest.fixture(scope="session")
def server(tmp_path_factory, twilio_api) -> Server:
    srv = start_server(tmp_path_factory.mktemp("server"), auth_token=AUTH_TOKEN,
                       extra_env={"TWILIO_API_BASE_URL": twilio_api.url})
    yield srv
    stop_server(srv)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(srv.log_path, artifacts / "server.log")


@pytest.fixture(scope="module")
def listener():
    """An OpenAI-compatible server on loopback that records what it is asked (tests/openai_listener.py)."""
    from tests.openai_listener import Listener

    srv = Listener()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, bytes]:
    """8 kHz μ-law utterances synthesized by espeak-ng (a system package the test command installs)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run the README's test command (./dev test), which installs it")
    out = tmp_path_factory.mktemp("speech")
    result = {}
    for key, text in PHRASES.items():
        wav = out / f"{key}.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
        result[key] = wav_to_ulaw(wav)
    return result


@dataclass
class Postgres:
    port: int
    url: str  # postgresql+asyncpg://...


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    if shutil.which(name):
        return shutil.which(name)
    pytest.fail("PostgreSQL server binaries are not installed: run the README's test command (./dev test)")


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """A throwaway PostgreSQL cluster on a loopback port, owned by this test session."""
    # Not under pytest's tmp dir: that is private to root, and the server runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="voxline-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "voxline", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(
        [*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(base / "pg.log"), "-o",
         f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
        check=True, capture_output=True,
    )
    try:
        yield Postgres(port, f"postgresql+asyncpg://voxline@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class ApiServer:
    """A running server with keys: admin and developer keys of workspace `default` (which holds the agents from
    config/agents) and an admin key of another workspace, `other`."""

    server: Server
    backend: str
    admin_key: str
    developer_key: str
    other_admin_key: str
    database_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None = "admin") -> httpx.Client:
        keys = {"admin": self.admin_key, "developer": self.developer_key, "other": self.other_admin_key}
        headers = {"x-api-key": keys.get(key, key)} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def create_key_with_cli(env: dict, workspace: str, role: str, name: str = "") -> str:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "keys", "create", "--workspace", workspace, "--role", role,
         "--name", name], env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return result.stdout.strip()


def server_env(base: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOXLINE_"))}
    env.update(VOXLINE_DATA_DIR=str(base / "data"), VOXLINE_AGENTS_DIR=str(base / "agents"), HF_HUB_OFFLINE="1")
    env.update(extra or {})
    return env


def start_api_server(base: Path, backend: str, extra_env: dict | None = None,
                     postgres: Postgres | None = None) -> ApiServer:
    extra = dict(extra_env or {})
    if backend == "postgresql":
        import asyncio

        import asyncpg

        db = "api_" + base.name.replace("-", "_").lower()

        async def create_db():
            conn = await asyncpg.connect(postgres.url.replace("+asyncpg", ""))
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
            await conn.execute(f'CREATE DATABASE "{db}"')
            await conn.close()

        asyncio.run(create_db())
        extra["VOXLINE_DATABASE_URL"] = postgres.url.rsplit("/", 1)[0] + "/" + db
    srv = start_server(base, auth_token=None, extra_env=extra)
    env = server_env(base, extra)
    return ApiServer(
        srv, backend,
        database_url=extra.get("VOXLINE_DATABASE_URL") or f"sqlite+aiosqlite:///{base / 'data' / 'voxline.db'}",
        admin_key=create_key_with_cli(env, "default", "admin", "test admin"),
        developer_key=create_key_with_cli(env, "default", "developer", "test developer"),
        other_admin_key=create_key_with_cli(env, "other", "admin", "other admin"),
    )


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory) -> ApiServer:
    """The API under test, once on SQLite and once on PostgreSQL."""
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    srv = start_api_server(tmp_path_factory.mktemp(f"api-{request.param}"), request.param,
                           {"VOXLINE_RATE_LIMIT_PER_MINUTE": "100000"}, pg)
    yield srv
    stop_server(srv.server)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A throwaway redis-server on a loopback port (a system package the test command installs)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run the README's test command (./dev test)")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def logged():
    """The WARNING and worse lines this process logs while the test runs (loguru's messages alone)."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING", format="{message}")
    yield lines
    logger.remove(sink)
