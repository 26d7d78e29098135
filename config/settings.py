"""Process settings, read from the environment (and an optional `.env`).

Every setting has a documented default in the README; secrets are `SecretStr` so they never print in logs or reprs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLINE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None
    public_url: str | None = Field(
        default=None, description="Public https base URL that Twilio reaches, e.g. https://voice.example.com"
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Signs per-call stream tokens; generated into data_dir when unset"
    )
    agents_dir: Path = CONFIG_DIR / "agents"
    stream_token_ttl_secs: int = 60
    ws_max_message_bytes: int = 64 * 1024
    start_timeout_secs: float = 10.0
    log_level: str = "INFO"
    metrics_token: SecretStr | None = Field(default=None, description="When set, GET /metrics needs it as a Bearer "
                                            "token")
    log_json: bool = Field(default=False, description="One JSON object per log line (call id, stream SID, agent)")
    stall_warn_ms: float | None = Field(default=None, gt=0, description="Log the stack of whatever blocks the "
                                        "event loop longer than this (every call's audio waits meanwhile)")
    workers: int = Field(default=1, ge=1, le=64, description="Server processes sharing the port (`serve --workers`)")
    worker_start_timeout_secs: float = Field(
        default=60.0, gt=0, le=600, description="How long a new worker may take to start (migrations, local models) "
        "before a rolling restart (SIGHUP to `serve --workers`) gives up on it and keeps the old one")
    vad_batch_ms: float = Field(default=10.0, ge=1.0, le=50.0, description="Silero VAD runs score every call's "
                                "waiting window together, at most one run this often: longer scores more windows a "
                                "run (less CPU under load) and lets each wait longer (pipelines/providers/vad.py)")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="The server's event loop: uvloop (libuv) when installed, else asyncio's own")
    gc_gen2_threshold: int = Field(
        default=100, ge=1, description="CPython's third collection threshold (CPython's own is 10): how many "
        "collections of the middle generation come before a full one is considered; higher makes the full "
        "collections, which stop every call's audio for their length, rarer, and keeps what is in reference cycles "
        "longer (an ended call leaves none: runtime/app.py settle_heap)")
    max_calls: int | None = Field(
        default=None, ge=1, description="The most calls this server carries at once (all its workers): an inbound "
        "call past it is rejected busy, an outbound one refused 503 `at_capacity`, campaigns wait "
        "(runtime/capacity.py)")
    shed_loop_lag_ms: float | None = Field(
        default=None, gt=0, description="Refuse new calls, as past max_calls, while the event loop runs its timers "
        "this late on average over 3 s: the server is full, whatever the calls cost")
    instance_id: str | None = Field(
        default=None, description="This server's stable name among those sharing a database (default: host:port); "
        "at start-up it closes the calls a crashed process of the same name left open")
    call_heartbeat_secs: float = Field(default=10.0, gt=0, le=300, description="How often live calls are marked alive")
    call_stale_secs: float = Field(default=60.0, gt=0, le=3600, description="A live call not marked alive for this "
                                   "long belongs to a dead server and is closed as error_internal")
    recording_retention_days: int | None = Field(default=None, ge=1, description="Recordings older than this are "
                                                 "deleted (daily job); unset keeps them")
    recordings_dir: Path | None = Field(default=None, description="Where call recordings go; <data_dir>/recordings")

    # REST API guards
    rate_limit_per_minute: int = 600
    redis_url: str | None = Field(default=None, description="redis://host:6379/0 to share rate limits across processes")
    max_body_bytes: int = 1 << 20
    idempotency_ttl_hours: int = 24

    # Batch campaigns
    batch_poll_secs: float = Field(default=0.5, gt=0, le=60, description="How often each server's campaign engine "
                                   "claims, dials and settles batch rows")
    batch_carrier_check_secs: float = Field(
        default=60.0, gt=0, le=3600, description="A campaign call with no media stream on this server is checked "
        "with the carrier this long after it was placed, then as often: the carrier does not retry a status "
        "callback it could not deliver, and without one the call's row would wait forever")

    # Post-call analysis
    analysis_poll_secs: float = Field(default=5.0, gt=0, le=300, description="How often each server looks for "
                                      "calls waiting for analysis (besides being woken when one of its calls ends)")
    analysis_timeout_secs: float = Field(default=60.0, gt=0, le=600, description="One LLM request of an analysis")

    # Agent tools (HTTP calls made on the LLM's behalf)
    tools_allow_private_networks: bool = Field(
        default=False, description="Let tools reach private, loopback and link-local addresses (off: SSRF guard)"
    )
    tool_response_max_bytes: int = Field(default=16384, gt=0, description="A tool's response body is cut here")

    # Webhooks (signed deliveries of a workspace's events, from the outbox in the database)
    webhooks_allow_private_networks: bool = Field(
        default=False, description="Let webhooks target private, loopback and link-local addresses (off: SSRF guard)"
    )
    webhook_retry_secs: Annotated[list[float], NoDecode] = Field(
        default=[10, 30, 60, 180, 360, 900, 1800], min_length=1, max_length=50,
        description="Delays before each retry of a failed delivery (comma-separated seconds, each ±20% jitter); "
                    "one attempt more than there are delays",
    )
    webhook_timeout_secs: float = Field(default=10.0, gt=0, le=120, description="One delivery attempt, all told")
    webhook_poll_secs: float = Field(default=1.0, gt=0, le=60, description="How often each server looks for "
                                     "deliveries that are due (a new event wakes it at once)")

    twilio_account_sid: str | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "VOXLINE_TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "VOXLINE_TWILIO_AUTH_TOKEN")
    )
    twilio_api_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_API_BASE_URL", "VOXLINE_TWILIO_API_BASE_URL"),
        description="Twilio REST API base URL; point it at `voxline emulate twilio` to run without an account",
    )
    deepgram_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DEEPGRAM_API_KEY", "VOXLINE_DEEPGRAM_API_KEY")
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "VOXLINE_OPENAI_API_KEY")
    )
    cartesia_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CARTESIA_API_KEY", "VOXLINE_CARTESIA_API_KEY")
    )

    # Provider endpoints: point the real SDK clients at a proxy or a local emulator (`voxline emulate`, issue 4).
    deepgram_base_url: str = ""
    openai_base_url: str | None = None
    cartesia_url: str = "wss://api.cartesia.ai/tts/websocket"
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    provider_trusted_urls: Annotated[list[str], NoDecode] = Field(
        default=[], description="Further URL prefixes (comma-separated) that may receive this server's provider keys "
        "when an agent sets its own llm.base_url or realtime.base_url; besides the provider's own origin and the "
        "endpoints above, every other base URL gets requests without the server's key (config/provider_trust.py)",
    )

    providers_allow_private_networks: bool = Field(
        default=False, description="Let an agent's own llm.base_url or realtime.base_url reach private, loopback and "
        "link-local addresses (off: SSRF guard, as for tools and webhooks). The endpoints above and "
        "VOXLINE_PROVIDER_TRUSTED_URLS are the operator's own and always reachable",
    )

    @field_validator("webhook_retry_secs", mode="before")
    @classmethod
    def _secs_list(cls, value):
        if isinstance(value, str):
            value = [part for part in value.strip().strip("[]").replace(" ", "").split(",") if part]
        return value

    @field_validator("provider_trusted_urls", mode="before")
    @classmethod
    def _urls_list(cls, value):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("provider_trusted_urls")
    @classmethod
    def _plain_urls(cls, value: list[str]) -> list[str]:
        from config.provider_trust import parse

        # Refused at start-up rather than silently never matching: an operator's typo would withhold the key.
        bad = [url for url in value if parse(url) is None]
        if bad:
            raise ValueError(f"not a plain http(s)/ws(s) URL (no userinfo, query or fragment): {', '.join(bad)}")
        return value

    @field_validator("webhook_retry_secs")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(not (0 <= v <= 86400) for v in value):
            raise ValueError("each delay must be between 0 and 86400 seconds")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'voxline.db').resolve()}"

    @property
    def resolved_recordings_dir(self) -> Path:
        return self.recordings_dir or self.data_dir / "recordings"

    def resolved_secret_key(self) -> str:
        """The token-signing key: the configured one, else one generated once and kept in data_dir.

        Several server processes sharing a database must share this key (set VOXLINE_SECRET_KEY).
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / "secret_key"
        if not path.exists():
            import secrets

            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
