"""Settings: every variable of SPEC section 2, read from the environment and `.env`."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from alice.core.files import private_dir

MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALICE_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        # A configuration error names the setting and the rule, never a value: pydantic's
        # message would carry `input_value=` (for the production check, every setting, the
        # secret key and ANTHROPIC_API_KEY among them).
        hide_input_in_errors=True,
    )

    env: Literal["development", "production", "test"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    database_url: str = "sqlite+aiosqlite:///./data/alice.db"
    database_pool_size: int = 10
    # Tests give each test a PostgreSQL schema and a Redis key prefix of its own.
    database_schema: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "alice"
    secret_key: SecretStr | None = None

    access_token_minutes: float = 15  # a float so that tests can inject seconds
    refresh_token_days: int = 7
    refresh_reuse_grace_seconds: float = 10
    session_max_days: float = 30

    # Argon2id cost. The defaults are argon2-cffi's RFC 9106 low-memory profile; tests lower them.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    argon2_max_concurrent: int = 4

    rate_limit_enabled: bool = True
    forwarded_allow_ips: str | None = None
    cors_origins: str = ""

    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL")
    )
    ai_model: str = "claude-sonnet-5-5"
    ai_max_tokens: int = 1024
    system_prompt: str = "You are ALICE, a helpful AI assistant."
    ai_context_messages: int = 40
    ai_timeout_seconds: float = 60
    mock_token_delay_ms: float = 30

    sse_ping_seconds: float = 15
    generation_on_disconnect: Literal["continue", "stop"] = "continue"
    generation_max_seconds: float = 600
    generation_heartbeat_seconds: float = 10
    stream_retention_seconds: float = 300
    sse_max_connection_seconds: float = 300

    log_format: Literal["text", "json"] = "text"
    shutdown_grace_seconds: float = 30

    # Hardening (SPEC sections 8, 9, 11).
    request_head_timeout_seconds: float = Field(default=10, gt=0)
    # None: 80 % of the open-file limit (after `alice serve` raised it to the hard limit).
    max_connections: int | None = Field(default=None, ge=1)
    user_max_streams: int = Field(default=20, ge=1)
    metrics_token: SecretStr | None = None
    # The longest a request waits for its turn at Argon2 before it is answered 503.
    argon2_max_wait_seconds: float = Field(default=5, gt=0)

    # Models a user may choose, and per-user budgets (SPEC 15). Unset = ALICE_AI_MODEL alone;
    # no token budget; no cap on running replies. Independent of ALICE_RATE_LIMIT_ENABLED.
    ai_models: str | None = None
    user_daily_tokens: int | None = Field(default=None, ge=1)
    user_max_running_replies: int | None = Field(default=None, ge=1)
    # Accounts (SPEC section 13): password-reset mail.
    public_url: str = "http://127.0.0.1:8000"
    smtp_url: SecretStr | None = None
    smtp_timeout_seconds: float = 30
    mail_from: str = "ALICE <no-reply@localhost>"
    mail_outbox: Path = Path("./data/outbox")
    password_reset_minutes: float = 30

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env == "production":
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if len(key.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    "ALICE_ENV=production needs ALICE_SECRET_KEY of at least 32 bytes; "
                    'make one with: python -c "import secrets; print(secrets.token_hex(32))"'
                )
        return self

    @model_validator(mode="after")
    def _models_listed(self) -> Settings:
        if self.ai_models is not None and not self.ai_model_list:
            raise ValueError(
                "ALICE_AI_MODELS must name at least one model (comma-separated), or be unset"
            )
        return self

    @property
    def ai_model_list(self) -> list[str]:
        """The models a user may choose; the first is the default (SPEC 15)."""
        if self.ai_models is None:
            return [self.ai_model]
        return list(dict.fromkeys(m.strip() for m in self.ai_models.split(",") if m.strip()))

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def forwarded_allow_list(self) -> list[str]:
        if not self.forwarded_allow_ips:
            return []
        return [ip.strip() for ip in self.forwarded_allow_ips.split(",") if ip.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def signing_key(self) -> str:
        """The HS256 key: the configured one, or the development key kept in the data dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return _development_key(self.data_dir)


def _development_key(data_dir: Path) -> str:
    path = data_dir / "secret.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_dir(data_dir, tighten=True)
    key = secrets.token_hex(32)
    # Written aside, then linked into place: when several workers start at once, the first
    # link wins and the others read a complete key, never a half-written file.
    tmp = data_dir / f".secret.key.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key


def describe_config_error(exc: ValidationError) -> str:
    """One line per broken setting, by its variable's name, with the rule it breaks; never a
    value (`alice serve` prints this and exits)."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        loc = [str(part) for part in err.get("loc", ())]
        if loc:
            lines.append(f"  {_variable(loc[0])}: {message}")
        else:
            lines.append(f"  {message}")
    return "\n".join(lines)


def _variable(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"ALICE_{field.upper()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
