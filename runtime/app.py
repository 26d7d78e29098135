"""The FastAPI app: start-up (migrations, agent files, model preload), health, and the carrier routes."""

from __future__ import annotations

import asyncio
import gc
import hmac
import os
import socket
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select

from config.agent import AgentConfig
from config.settings import Settings, get_settings
from pipelines.factory import import_architectures, local_models_needed
from pipelines.providers import local_models, registry
from runtime import __version__, call_feed, capacity, retention, stall_watch, workers
from runtime.api import errors, guards
from runtime.context import Runtime
from runtime.prepare import prepare_store
from runtime.metrics import exposition
from runtime.reasons import DisconnectionReason
from runtime.store import db as store_db
from runtime.store.models import Agent
from runtime.tokens import StreamTokens
from telephony.twilio import rest as twilio_rest

SHUTDOWN_GRACE_SECS = 5.0


async def _preload_models(rt: Runtime) -> None:
    """Load the local models any stored agent uses, so no call waits for a model."""
    needed: set[str] = set()
    async with rt.db() as s:
        for config in await s.scalars(select(Agent.config)):
            needed |= local_models_needed(AgentConfig.model_validate(config))
    for name in sorted(needed):
        await local_models.load(name)


async def _end_live_calls(rt: Runtime) -> None:
    rt.shutting_down.set()
    sessions = list(rt.sessions.values())
    if not sessions:
        return
    logger.info(f"shutting down: ending {len(sessions)} live call(s)")
    for session in sessions:
        session.stop(DisconnectionReason.SERVER_SHUTDOWN, "server shutdown")
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_SECS
    while rt.sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


def _import_for_calls() -> None:
    """What a first call, or a first request to Twilio, would otherwise import on the event loop (blocking)."""
    registry.import_all()
    import_architectures()
    twilio_rest.warm_up()


WARM_UP_PATH = "/.voxline-warm-up"  # routes nothing: matching it walks every route


async def _build_routes(app: FastAPI) -> None:
    """FastAPI (0.165) builds its routes' parameter models on the first request that walks past them: ~20-190 ms on
    the event loop at the server's first request, a call's webhook as likely as anything. One request made inside
    the process, before the server takes any, builds them all."""
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        await client.get(WARM_UP_PATH)


def api_routers() -> list:
    from runtime.api.routes import (
        agents,
        analysis,
        analytics,
        batch_calls,
        calls,
        chat,
        keys,
        phone,
        providers,
        softphone,
        tools,
        webhooks,
    )

    return [keys.router, agents.router, providers.router, phone.router, tools.router, chat.router, calls.router,
            analytics.router, batch_calls.router, webhooks.router, analysis.router, softphone.router]


def openapi_schema(app: FastAPI) -> dict:
    """FastAPI documents request validation failures as 422 with its own body; ours are 400 with the common one."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for op in path.values():
            responses = op.get("responses", {})
            if "422" in responses:
                responses.pop("422")
                responses.setdefault("400", {
                    "description": "Invalid request (the message names the field)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                })
    schemas = schema.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def settle_heap(settings: Settings) -> None:
    """Everything loaded so far (modules, models, the app) lives as long as the process: out of the collector's
    sight, a full collection no longer walks ~250,000 objects, which stalled every call's audio ~150 ms.

    `VOXLINE_GC_GEN2_THRESHOLD` then sets CPython's third threshold: 100, where CPython's is 10. CPython runs a full
    collection once the objects that survived into the oldest generation since the last one are a quarter of those
    there, and each call's pipeline is such objects: with calls arriving while others talk, at 10 each worker ran
    one every ~3 s, 30–110 ms each, every call's audio stopped meanwhile; at 100, ~10 times less often. Rarer full
    collections only cost memory for what is left in reference cycles, and an ended call leaves none
    (runtime/call_teardown.py; tests/test_call_providers.py checks): RSS grew 0.96 % over 300 sequential calls at
    100, against 0.2 % at 10 (bench/HISTORY.md, session 37), where it grew 9.4 % before those cycles were broken.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, settings.gc_gen2_threshold)


def create_app(settings: Settings | None = None, *, prepared: bool = False) -> FastAPI:
    """`prepared`: migrations and agent files were done by the parent of `voxline serve --workers N`."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.stall_warn_ms:
            stall_watch.start(asyncio.get_running_loop(), settings.stall_warn_ms)
        from pipelines.providers import vad

        vad.set_batch_window(settings.vad_batch_ms / 1000)
        engine = store_db.create_engine(settings.resolved_database_url)
        if not prepared:
            await prepare_store(engine, settings)
        rt = Runtime(
            settings=settings,
            engine=engine,
            db=store_db.sessionmaker(engine),
            tokens=StreamTokens(settings.resolved_secret_key(), settings.stream_token_ttl_secs),
            instance_id=settings.instance_id or f"{socket.gethostname()}:{os.getpid()}",
        )
        lag = rt.admission.lag = capacity.LoopLag(asyncio.get_running_loop())
        rt.admission.start()
        app.state.runtime = rt
        if settings.twilio_auth_token is None:
            logger.warning(
                "TWILIO_AUTH_TOKEN is not set: Twilio webhooks and media streams are UNAUTHENTICATED. "
                "Anyone who can reach this server can place calls into it. Set it in production."
            )
        elif not settings.public_url:
            logger.warning("VOXLINE_PUBLIC_URL is not set: signatures are checked against the URL this server sees, "
                           "which is wrong behind a proxy or tunnel")
        feed_hub = None
        if hub := os.environ.get(workers.ENV_FEED_HUB):
            feed_hub = await call_feed.link_to_hub(workers.hub_address(hub))
        await _preload_models(rt)
        from runtime.analysis.worker import AnalysisWorker
        from runtime.batch.engine import BatchEngine
        from runtime.recovery import CallKeeper
        from runtime.webhooks.dispatcher import Dispatcher

        keeper = CallKeeper(rt)
        await keeper.start()  # first: calls a crashed run of this server left open are closed before any new one
        retention_job = asyncio.create_task(retention.run(rt), name="recording-retention")
        # Before the workers: post-call analyses use it too. In a thread: the first TLS context loads the CA store.
        from pipelines.providers.openai_llm import shared_pool

        rt.http_pool = await asyncio.to_thread(shared_pool)
        batches, webhooks, analyses = BatchEngine(rt), Dispatcher(rt), AnalysisWorker(rt)
        for worker in (batches, webhooks, analyses):
            worker.start()
        await asyncio.to_thread(_import_for_calls)
        await _build_routes(app)
        settle_heap(settings)
        # From here: the start-up's own blocking steps (imports, models, the collection above) say nothing of the
        # calls' load, and counted, they refused the first calls of a server just started (VOXLINE_SHED_LOOP_LAG_MS).
        lag.start()
        loop = type(asyncio.get_running_loop())
        logger.info(f"voxline {__version__} ready (database: {engine.url.render_as_string(hide_password=True)}, "
                    f"event loop: {loop.__module__.split('.')[0]})")
        try:
            yield
        finally:
            await batches.stop()  # first: no campaign dials into a server that is going away
            await analyses.stop()  # an analysis cut short is redone by the next server (its lease lapses)
            await _end_live_calls(rt)
            await rt.http_pool.aclose()
            await webhooks.stop()  # after the calls: their call.ended events go out now if they can
            await keeper.stop()
            retention_job.cancel()
            if feed_hub is not None:
                feed_hub.cancel()
            lag.stop()
            await rt.admission.stop()
            await engine.dispose()

    app = FastAPI(
        title="voxline",
        version=__version__,
        lifespan=lifespan,
        description="Real-time voice agents for phone calls. Every /api route needs `x-api-key: KEY` or "
        "`Authorization: Bearer KEY` (create one with `voxline keys create`).",
    )
    errors.install(app)

    from telephony.twilio import status, stream, webhook

    app.include_router(webhook.router)
    app.include_router(status.router)
    app.include_router(stream.router)
    for router in api_routers():
        app.include_router(router)
    # Outermost first: size before anything reads the body, then rate limit, then idempotent replay.
    ttl = timedelta(hours=settings.idempotency_ttl_hours)
    app.add_middleware(guards.Idempotency, db_getter=lambda scope: scope["app"].state.runtime.db, ttl=ttl)
    app.add_middleware(guards.RateLimit, per_minute=settings.rate_limit_per_minute, redis_url=settings.redis_url)
    app.add_middleware(guards.BodyLimit, max_bytes=settings.max_body_bytes)
    app.openapi = lambda: openapi_schema(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request):
        """Prometheus text format. With VOXLINE_METRICS_TOKEN set, scrapers send `Authorization: Bearer TOKEN`."""
        token = settings.metrics_token
        if token is not None:
            # Only the Bearer scheme (any case, as for API keys): a bare token is refused.
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            is_bearer = scheme.lower() == "bearer"
            # compare_digest runs in constant time whatever the scheme: a timing difference tells a prober nothing.
            matches = hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
            if not (is_bearer and matches):
                return errors.error_response(401, "unauthorized",
                                             "send the metrics token as Authorization: Bearer TOKEN",
                                             headers={"WWW-Authenticate": "Bearer"})
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    async def health_state() -> tuple[bool, str | None, dict]:
        rt: Runtime = app.state.runtime
        ok = await store_db.ping(rt.engine)
        refusal, room = await rt.admission.status()
        body = {
            "status": "ok" if ok else "degraded",
            "version": __version__,
            "database": {"status": "ok" if ok else "unreachable", "dialect": rt.engine.dialect.name},
            "live_calls": len(rt.sessions),
            # The server's own limits (When the server is full): whether a new call would be let in now, why not,
            # and how many more may start (null: no limit set). For a load balancer routing webhooks: see /ready.
            "accepting_calls": refusal is None,
            "refusal": refusal,
            "room": room,
            "instance": rt.instance_id,
        }
        return ok, refusal, body

    @app.get("/health")
    async def health():
        ok, _, body = await health_state()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/ready")
    async def ready():
        """503 while this server would turn a new call away (or its database is unreachable), so a load balancer's
        readiness check sends the next webhook to a server with room; /health stays 200 for a full server."""
        ok, refusal, body = await health_state()
        return JSONResponse(body, status_code=200 if ok and refusal is None else 503)

    return app
