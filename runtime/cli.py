"""`voxline`: serve, map numbers, and call an agent the way Twilio does."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import NoReturn

import typer

from config.settings import get_settings
from runtime.logs import configure_logging, uvicorn_log_config

app = typer.Typer(help="voxline: a self-hostable real-time voice agent runtime for phone calls", no_args_is_help=True)
numbers_app = typer.Typer(help="Phone numbers and their agent mapping", no_args_is_help=True)
app.add_typer(numbers_app, name="numbers")
keys_app = typer.Typer(help="API keys", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8080, min=1, max=65535, help="TCP port"),
    workers: int = typer.Option(None, min=1, max=64, help="Server processes sharing the port, one event loop each "
                                "(default: VOXLINE_WORKERS, 1). About one per core; see runtime/workers.py"),
) -> None:
    """Run the server (API, Twilio webhook and media streams)."""
    from runtime.ws_protocol import protocol as ws_protocol

    settings = get_settings()
    workers = workers or settings.workers
    if settings.instance_id is None:
        import socket

        # Stable across restarts, unique per listening server on a host: what finds a crashed run's calls.
        settings.instance_id = f"{socket.gethostname()}:{port}"
    configure_logging(settings.log_level, settings.log_json)
    if settings.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        typer.echo("VOXLINE_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)", err=True)
        raise typer.Exit(2)
    options = dict(
        host=host, port=port, ws_max_size=settings.ws_max_message_bytes,
        # Compressing 20 ms of μ-law saves little and costs a zlib pass per message each way; browsers offer it.
        ws_per_message_deflate=False, ws=ws_protocol(),
        # uvloop (the default when installed) runs the loop's own work (sockets, timers, callbacks) in C: the
        # per-message work of every connected call's stream, and the talk burst's task hand-offs (bench/).
        loop=settings.event_loop,
        log_level=settings.log_level.lower(), log_config=uvicorn_log_config(settings.log_level), proxy_headers=True,
    )
    if workers == 1:
        from runtime import listen
        from runtime.app import create_app

        listen.run(create_app(settings), **options)
    else:
        from runtime.workers import serve_workers

        serve_workers(settings, workers, options)


@numbers_app.command("add")
def numbers_add(
    number: str = typer.Argument(..., help="E.164 number, e.g. +15550100000"),
    agent: str = typer.Option(..., "--agent", help="Agent name or id"),
) -> None:
    """Map a phone number to an agent (calls to it are answered by that agent)."""
    from runtime.agent_files import load_agent_files
    from runtime.phone import InvalidPhoneNumber, to_e164
    from runtime.store import db as store_db
    from runtime.store import repo

    settings = get_settings()
    configure_logging("WARNING")
    try:
        e164 = to_e164(number)
    except InvalidPhoneNumber as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    async def run() -> int:
        engine = store_db.create_engine(settings.resolved_database_url)
        try:
            await store_db.migrate(engine)
            db = store_db.sessionmaker(engine)
            await load_agent_files(db, settings.agents_dir)
            try:
                found = await repo.find_agent(db, agent)
            except LookupError as exc:
                typer.echo(f"error: {exc}", err=True)
                return 2
            if found is None:
                typer.echo(f"error: no agent named or with id {agent!r}", err=True)
                return 1
            await repo.map_number(db, e164, found)
            typer.echo(f"{e164} → agent {found.name!r} ({found.id})")
            return 0
        finally:
            await engine.dispose()

    raise typer.Exit(asyncio.run(run()))


@keys_app.command("create")
def keys_create(
    workspace: str = typer.Option(..., "--workspace", help="Workspace name (created if new; 'default' holds config/agents)"),
    role: str = typer.Option("admin", "--role", help="admin | developer"),
    name: str = typer.Option("", "--name", help="A label for the key"),
) -> None:
    """Create an API key and print it (shown once; only its hash is stored)."""
    from runtime.api.auth import create_key
    from runtime.store import db as store_db
    from runtime.store import repo

    from runtime.store.models import ApiKey, Workspace

    if role not in ("admin", "developer"):
        typer.echo("error: --role must be admin or developer", err=True)
        raise typer.Exit(2)
    for option, value, column, blank_ok in (("--workspace", workspace, Workspace.name, False),
                                            ("--name", name, ApiKey.name, True)):
        if why := _name_problem(value, column.type.length, blank_ok=blank_ok):
            typer.echo(f"error: {option} {why}", err=True)
            raise typer.Exit(2)
    settings = get_settings()
    configure_logging("WARNING")

    async def run() -> str:
        engine = store_db.create_engine(settings.resolved_database_url)
        try:
            await store_db.migrate(engine)
            db = store_db.sessionmaker(engine)
            ws = await repo.ensure_workspace(db, workspace)
            _, secret = await create_key(db, ws.id, name, role)  # type: ignore[arg-type]
            return secret
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(run()))


def _name_problem(value: str, max_length: int, *, blank_ok: bool) -> str | None:
    """Why a name given on the command line cannot be stored as one (it is shown in the API and the UI)."""
    import unicodedata

    if not value.strip() and not (blank_ok and not value):
        return "must not be empty or blank"
    if any(unicodedata.category(c) == "Cc" for c in value):  # NUL breaks PostgreSQL; the rest breaks every display
        return "must not contain control characters"
    if len(value) > max_length:
        return f"is {len(value)} characters long; at most {max_length}"
    return None


def _server_problem(server: str) -> str | None:
    import httpx

    try:
        url = httpx.URL(server)
    except httpx.InvalidURL as exc:
        return f"--server {server!r}: {exc}"
    if url.scheme not in ("http", "https") or not url.host:
        return f"--server {server!r}: not an http:// or https:// URL"
    return None


@app.command()
def call(
    wav: Path | None = typer.Option(None, "--wav", exists=True, dir_okay=False,
                                    help="What the caller says (any WAV): one turn, then hang up. Without an API "
                                         "key the call's record is not read, so a call the server ended as failed "
                                         "(e.g. a provider error answered with an apology) is not reported as one"),
    script: Path | None = typer.Option(None, "--script", exists=True, dir_okay=False,
                                       help="YAML steps: say, interrupt (spoken over the agent), play, wait_agent, "
                                            "pause, dtmf, tone, hangup"),
    mic: bool = typer.Option(False, "--mic", help="Live: your microphone and speaker (needs sounddevice)"),
    agent: str | None = typer.Option(None, "--agent", help="Call this agent (name or id) directly, no number "
                                                           "needed (uses the API: --api-key)"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="VOXLINE_API_KEY",
                                       help="An API key of the agent's workspace: --agent, and the call's record "
                                            "(its status and end reason; exit 1 when it failed) in the summary"),
    out: Path | None = typer.Option(None, "--out", help="Write what the agent said to this WAV (--wav)"),
    to: str = typer.Option("+15550100000", "--to", help="The number dialed"),
    from_: str = typer.Option("+15550199999", "--from", help="The caller's number"),
    server: str = typer.Option("http://127.0.0.1:8080", "--server", help="The voxline server"),
    reply_timeout: float = typer.Option(20.0, help="Seconds to wait for the agent's reply (--wav), > 0"),
) -> None:
    """Call an agent the way Twilio does (webhook, media stream, real-time audio) and print what happened. The exit
    status is 1 when the call could not be placed or failed (as far as the caller can tell: the record with an API
    key), 2 for bad options or input files."""
    import math

    from telephony import softphone_cli
    from telephony.audio import AudioFileError, wav_to_ulaw

    def refuse(why: str) -> NoReturn:
        typer.echo(f"error: {why}", err=True)
        raise typer.Exit(2)

    if sum(x is not None and x is not False for x in (wav, script, mic or None)) != 1:
        refuse("say what the caller does: one of --wav, --script or --mic")
    if why := _server_problem(server):
        refuse(why)
    if not (math.isfinite(reply_timeout) and reply_timeout > 0):  # click's FloatRange lets NaN through
        refuse(f"--reply-timeout must be a number of seconds > 0, not {reply_timeout:g}")
    settings = get_settings()
    configure_logging("WARNING")
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    if wav is not None:
        from telephony.caller_report import out_problem, run_call

        if agent:
            refuse("--wav calls a number; use --script with --agent")
        try:
            utterance = wav_to_ulaw(wav)
        except AudioFileError as exc:
            refuse(str(exc))
        if out is not None and (why := out_problem(out)):
            refuse(why)
        raise typer.Exit(asyncio.run(run_call(server, utterance, out, to, from_, token, settings.public_url,
                                              reply_timeout, api_key)))
    if mic:
        if why := softphone_cli.mic_unavailable():
            typer.echo(f"error: {why}", err=True)
            raise typer.Exit(2)
        raise typer.Exit(asyncio.run(softphone_cli.run_mic_call(
            server, agent=agent, api_key=api_key, to=to, from_=from_, token=token, public_url=settings.public_url)))
    try:
        steps = softphone_cli.load_script(script)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(asyncio.run(softphone_cli.run_script_call(
        server, steps, agent=agent, api_key=api_key, to=to, from_=from_, token=token, public_url=settings.public_url)))


@app.command()
def emulate(
    provider: str = typer.Argument(..., help="deepgram | openai | cartesia | openai-realtime | twilio"),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int | None = typer.Option(None, min=0, max=65535,
                                    help="TCP port (default: 8101 deepgram, 8102 openai, 8103 cartesia, "
                                               "8104 openai-realtime, 8105 twilio; 0 picks a free one)"),
    rules: Path | None = typer.Option(None, "--rules", exists=True, dir_okay=False,
                                      help="YAML/JSON rules: replies (openai, openai-realtime; default: echo) or "
                                           "numbers' outcomes and callee scripts (twilio)"),
    latency_ms: int = typer.Option(0, "--latency-ms", min=0, help="Delay before each first response, in ms"),
    token_ms: int = typer.Option(0, "--token-ms", min=0,
                                 help="openai: delay between a streamed reply's chunks, in ms (a real model: ~10-20)"),
) -> None:
    """Run a local emulator of a cloud provider's API (its real wire protocol; any non-empty key is accepted)."""
    from pipelines.providers import emulators

    if provider == "twilio":
        return _emulate_twilio(host, 8105 if port is None else port, rules)
    spec = emulators.PROVIDERS.get(provider)
    if spec is None:
        typer.echo(f"error: unknown provider {provider!r}; choose from {', '.join([*emulators.PROVIDERS, 'twilio'])}",
                   err=True)
        raise typer.Exit(2)
    if rules is not None and not spec.uses_rules:
        typer.echo(f"error: --rules applies to openai and openai-realtime, not {provider}", err=True)
        raise typer.Exit(2)
    if token_ms and provider != emulators.TOKEN_PACED:
        typer.echo(f"error: --token-ms applies to {emulators.TOKEN_PACED}, not {provider}", err=True)
        raise typer.Exit(2)
    try:
        parsed = emulators.Rules.load(rules)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {rules}: {exc}", err=True)
        raise typer.Exit(2) from exc
    port = spec.default_port if port is None else port
    _check_listen(host, port)  # before the models load, which takes seconds
    configure_logging(get_settings().log_level)

    def ready(running) -> None:
        typer.echo(f"{provider} emulator listening on {running.url}")
        for line in emulators.settings_hint(provider, running):
            typer.echo(f"  {line}")

    try:
        asyncio.run(emulators.serve(provider, host=host, port=port, rules=parsed, latency_ms=latency_ms, ready=ready,
                                    token_ms=token_ms))
    except KeyboardInterrupt:
        pass


def _check_listen(host: str, port: int) -> int:
    """The port (a free one for 0) if `host:port` can be listened on; else exit 1 with uvicorn's one-line kind of
    error rather than a traceback from deep in asyncio."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
            sock.bind(address)
            return sock.getsockname()[1]
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


def _emulate_twilio(host: str, port: int, rules: Path | None = None) -> None:
    """Twilio as a carrier: the REST calls resource (Basic auth against TWILIO_ACCOUNT_SID/AUTH_TOKEN), created calls
    that ring and end by the rules on their number, signed status callbacks, media streams with a scripted callee,
    and inbound calls placed on a voxline server (`POST /_emulator/inbound`)."""
    import uvicorn

    from telephony.twilio.emulator import RuleSet, create_emulator_app

    settings = get_settings()
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        typer.echo("error: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: the emulator checks them like Twilio", err=True)
        raise typer.Exit(2)
    try:
        parsed = RuleSet.load(rules)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {rules}: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level)
    port = _check_listen(host, port)  # port 0 is picked now, so that the URL printed is the one to use
    url = f"http://{host}:{port}"
    typer.echo(f"twilio emulator listening on {url}\n"
               f"  point voxline at it: TWILIO_API_BASE_URL={url} (same TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)\n"
               f"  rules: {f'{len(parsed.rules)} from {rules}' if rules else 'none'}; "
               f"other numbers: {parsed.default.outcome}\n"
               f"  place an inbound call: curl -X POST {url}/_emulator/inbound -H 'content-type: application/json' "
               "-d '{\"to\": \"+15550100000\", \"server\": \"http://127.0.0.1:8080\"}'")
    app_ = create_emulator_app(settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value(), parsed)
    uvicorn.run(app_, host=host, port=port, log_level=settings.log_level.lower())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
