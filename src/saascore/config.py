"""Settings, read from the environment and `.env`.

The database variables keep the names the existing deployments use (`DATABASE_URL`,
`DATABASE_HOST`, `DB_POOL_SIZE`, ...); everything else is under the `SAASCORE_` prefix.
With no database configured, saascore uses an embedded SQLite file under `./.saascore/`.
"""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Mapping
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from saascore.kit.errors import ConfigurationError

__all__ = [
    "INVOICE_NUMBER_MAX_LENGTH",
    "INVOICE_TEMPLATE_FIELDS",
    "SEED_ALIASES",
    "DatabaseBackend",
    "InvoiceSequenceScope",
    "PaymentProviderChoice",
    "Settings",
    "invoice_template_fields",
    "load_settings",
]

ENV_PREFIX = "SAASCORE_"

logger = logging.getLogger("saascore.config")

#: Seed 002's database variables and the saascore variables they are read as. `DB_TYPE` has no
#: variable of its own: it picks the backend (`postgresql` or `sqlite`) of the parts.
SEED_ALIASES: dict[str, str] = {
    "DB_HOST": "DATABASE_HOST",
    "DB_PORT": "DATABASE_PORT",
    "DB_NAME": "DATABASE_NAME",
    "DB_USER": "DATABASE_USER",
    "DB_PASSWORD": "DATABASE_PASSWORD",
}
#: The aliases already warned about in this process (each is said once).
_warned: set[str] = set()


class DatabaseBackend(StrEnum):
    POSTGRESQL = "postgresql"
    SQLITE = "sqlite"


#: The values of seed 002's `DB_TYPE` and the backend each picks.
_DB_TYPES = {
    "postgresql": DatabaseBackend.POSTGRESQL,
    "postgres": DatabaseBackend.POSTGRESQL,
    "sqlite": DatabaseBackend.SQLITE,
}


class PaymentProviderChoice(StrEnum):
    """The payment provider a deployment sells through (`SAASCORE_PAYMENT_PROVIDER`)."""

    MOCK = "mock"
    STRIPE = "stripe"
    LEMONSQUEEZY = "lemonsqueezy"


#: The settings each provider cannot start without.
PROVIDER_REQUIRED: dict[PaymentProviderChoice, tuple[str, ...]] = {
    PaymentProviderChoice.MOCK: (),
    PaymentProviderChoice.STRIPE: ("stripe_secret_key", "stripe_webhook_secret"),
    PaymentProviderChoice.LEMONSQUEEZY: (
        "lemonsqueezy_api_key",
        "lemonsqueezy_store_id",
        "lemonsqueezy_signing_secret",
    ),
}


class InvoiceSequenceScope(StrEnum):
    """Whose invoices share one gapless series of numbers."""

    PLATFORM = "platform"
    ORGANIZATION = "organization"


#: The placeholders an invoice number template may use; `seq` is required.
INVOICE_TEMPLATE_FIELDS = frozenset({"prefix", "year", "seq"})
#: The longest invoice number (`invoices.number`).
INVOICE_NUMBER_MAX_LENGTH = 64


def invoice_template_fields(template: str) -> frozenset[str]:
    """The placeholders of an invoice number template, checked; ValueError says what is wrong.

    A template is a `str.format` string over `prefix` (text), `year` (int) and `seq` (int):
    `{prefix}-{year}-{seq:04d}`. It must contain `{seq}`, and nothing else in braces.
    """
    fields: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in INVOICE_TEMPLATE_FIELDS:
            known = ", ".join(f"{{{field}}}" for field in sorted(INVOICE_TEMPLATE_FIELDS))
            raise ValueError(f"unknown placeholder {{{name}}}: use {known}")
        fields.add(name)
    if "seq" not in fields:
        raise ValueError("the template must contain {seq}, the number in the series")
    try:
        sample = template.format(prefix="X", year=2025, seq=1)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    if len(sample) > INVOICE_NUMBER_MAX_LENGTH:
        raise ValueError(f"the numbers would exceed {INVOICE_NUMBER_MAX_LENGTH} characters")
    return frozenset(fields)


def _warn_once(name: str, message: str) -> None:
    if name not in _warned:
        _warned.add(name)
        logger.warning(message)


class SeedAliasSource(PydanticBaseSettingsSource):
    """Seed 002's `DB_*` variables, read where the saascore variable is not set.

    It reads what the environment and `.env` sources read (so an alias in `.env` counts too),
    and comes after them: a saascore variable set in either always wins. Every alias in use is
    warned about once per process, so that deployments rename them.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._sources = sources

    def _variables(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        for source in reversed(self._sources):  # the environment over `.env`
            env_vars: Mapping[str, str | None] = getattr(source, "env_vars", {})
            variables.update({k.upper(): v for k, v in env_vars.items() if v is not None})
        return variables

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the variables at once

    def __call__(self) -> dict[str, Any]:
        variables = self._variables()
        db_type = variables.get("DB_TYPE")
        backend = None if db_type is None else _DB_TYPES.get(db_type.strip().lower())
        if db_type is not None and backend is None:
            raise ConfigurationError(
                f"invalid setting DB_TYPE: use postgresql or sqlite (got {db_type!r})"
            )
        if backend is not None and "DATABASE_URL" in variables:
            _warn_once("DB_TYPE", "DB_TYPE is ignored: DATABASE_URL is set and wins; remove it")
            backend = None
        values: dict[str, Any] = {}
        for alias, name in SEED_ALIASES.items():
            if alias not in variables:
                continue
            if name in variables:
                _warn_once(alias, f"{alias} is ignored: {name} is set and wins; remove {alias}")
            elif backend is DatabaseBackend.SQLITE:
                if alias == "DB_NAME":  # the file, said with DB_TYPE below
                    values[name.lower()] = variables[alias]
                else:
                    _warn_once(alias, f"{alias} is ignored with DB_TYPE=sqlite; remove it")
            else:
                _warn_once(alias, f"{alias} is read as {name}; rename it")
                values[name.lower()] = variables[alias]
        if backend is DatabaseBackend.SQLITE:
            # DB_NAME names the SQLite file; without it, the embedded database is used.
            path = values.pop("database_name", None)
            if path is not None:
                values["database_url"] = f"sqlite:///{path}"
            _warn_once(
                "DB_TYPE",
                "DB_TYPE=sqlite is read as "
                + ("the embedded database" if path is None else f"DATABASE_URL=sqlite:///{path}")
                + "; remove it",
            )
        elif backend is DatabaseBackend.POSTGRESQL:
            if not ({"DATABASE_HOST", "DATABASE_NAME"} & variables.keys()) and not (
                {"database_host", "database_name"} & values.keys()
            ):
                values["database_host"] = "localhost"  # PostgreSQL from the default parts
            _warn_once("DB_TYPE", "DB_TYPE=postgresql is implied by DATABASE_HOST; remove it")
        return values


def _env(name: str) -> Any:
    """A field read from an unprefixed variable, as the seeds document it."""
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        aliases = SeedAliasSource(settings_cls, env_settings, dotenv_settings)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, aliases

    # --- the database, named as the seeds name it -------------------------------------------
    database_url: str | None = Field(
        default=None, validation_alias=_env("DATABASE_URL"), repr=False
    )
    database_host: str | None = Field(default=None, validation_alias=_env("DATABASE_HOST"))
    database_port: int = Field(default=5432, ge=1, le=65535, validation_alias=_env("DATABASE_PORT"))
    database_user: str = Field(default="postgres", validation_alias=_env("DATABASE_USER"))
    database_password: str | None = Field(
        default=None, validation_alias=_env("DATABASE_PASSWORD"), repr=False
    )
    database_name: str | None = Field(default=None, validation_alias=_env("DATABASE_NAME"))
    use_cloud_sql_connector: bool = Field(
        default=False, validation_alias=_env("USE_CLOUD_SQL_CONNECTOR")
    )
    cloud_sql_instance: str | None = Field(
        default=None, validation_alias=_env("CLOUD_SQL_INSTANCE")
    )
    cloud_sql_ip_type: Literal["PUBLIC", "PRIVATE", "PSC"] = Field(
        default="PUBLIC", validation_alias=_env("CLOUD_SQL_IP_TYPE")
    )
    db_pool_size: int = Field(default=5, ge=1, validation_alias=_env("DB_POOL_SIZE"))
    db_max_overflow: int = Field(default=10, ge=0, validation_alias=_env("DB_MAX_OVERFLOW"))
    #: Seconds a request waits for a pooled connection when all are in use; then 503.
    db_pool_timeout: float = Field(default=5.0, gt=0, validation_alias=_env("DB_POOL_TIMEOUT"))
    db_pool_recycle: int = Field(default=1800, ge=-1, validation_alias=_env("DB_POOL_RECYCLE"))
    #: Test each pooled connection with a round trip before use. Off by default: it costs a
    #: round trip per checkout, and a connection found dead in use is discarded with its pool
    #: (the request answers 503; the next one reconnects). Turn on behind proxies that drop
    #: idle connections sooner than DB_POOL_RECYCLE.
    db_pool_pre_ping: bool = False
    #: Seconds to open a connection to PostgreSQL (TCP, TLS and the startup handshake); a
    #: server that accepts connections but never answers ends the request in 503 after it.
    db_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    #: Seconds one statement may run: PostgreSQL's `statement_timeout` (the server cancels it),
    #: and on the client a few seconds more, for a server that stopped answering. Both end the
    #: request in 503. 0 turns both off. Migrations run without it.
    db_statement_timeout: float = Field(default=10.0, ge=0, le=3600)

    # --- saascore's own ---------------------------------------------------------------------
    service_name: str = "saascore"
    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".saascore")
    #: Upgrade the schema to the newest migration at start. Unset means: on for the embedded
    #: SQLite database, off for a configured server (run `saascore db upgrade` in deploys).
    auto_migrate: bool | None = None
    #: Milliseconds a SQLite writer waits for the write lock before giving up (503).
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)
    #: A PostgreSQL schema to use instead of `public` (tests give each run its own).
    database_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    sql_echo: bool = False
    default_plan: str = "free"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: A comma-separated list (or a JSON array) of origins allowed to call the API.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: On PostgreSQL, `record` calls (and document registrations) that arrive together in one
    #: process share a transaction (each is acknowledged after that commit; limits stay
    #: exact, in arrival order).
    group_commit: bool = True
    #: The most events (or registrations) one shared transaction takes.
    group_commit_max_events: int = Field(default=256, ge=1, le=10_000)
    #: Where rate-limit windows live: `memory://` (one process) or `redis://host:port/db`,
    #: which every process of a deployment shares.
    rate_limit_storage: str = Field(
        default="memory://", pattern=r"^(memory|redis|rediss)://", repr=False
    )
    #: Seconds to connect to the rate-limit Redis and for each of its answers; past them the
    #: request answers 503 `rate_limiter_unavailable` (one immediate retry on a broken connection).
    rate_limit_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    #: Plan rate limits apply per organisation, across all its users and keys. This adds a limit
    #: per credential (each user, each API key): requests per minute, counted atomically with the
    #: organisation's (None: off).
    rate_limit_per_credential_per_minute: int | None = Field(default=None, ge=1)
    #: The HMAC key that signs access and refresh tokens (HS256), at least 32 characters. Unset,
    #: a random one is made and kept in `data_dir` (refused in production: every process of
    #: a deployment must share one, and it must survive deploys).
    jwt_secret: SecretStr | None = Field(default=None, min_length=32)
    jwt_issuer: str = "saascore"
    jwt_audience: str = "saascore-api"
    access_token_minutes: int = Field(default=15, ge=1, le=24 * 60)
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    password_min_length: int = Field(default=10, ge=8, le=128)
    #: The largest request body the API reads (a batch of 1,000 usage events fits easily).
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Requests per minute to register, log in, refresh or log out from one client address.
    auth_requests_per_minute: int | None = Field(default=30, ge=1)
    #: Failed logins per hour for one e-mail address (any organisation) from one client
    #: address, and five times that from all addresses together; past either, logins for
    #: that e-mail (from that address) answer 429 until the oldest attempt is an hour old.
    #: Moving windows: an attacker slows the account down, never locks it for good, and an
    #: attacker on a few addresses does not lock out its owner on another.
    login_failures_per_email_per_hour: int | None = Field(default=20, ge=1)
    #: The proxies whose `X-Forwarded-For` names the client: a comma-separated list (or JSON
    #: array) of addresses or networks (`10.0.0.0/8`, `::1`). Empty (the default) trusts no
    #: proxy: the client is the peer that connected, whatever the header says.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    #: Keep authenticated principals this many seconds in each process (0: read them on every
    #: request). A change made by another process then takes up to this long there.
    auth_cache_seconds: float = Field(default=0, ge=0, le=300)
    #: Requests per minute that one operator key may make on `/v1/admin` (None: unlimited).
    operator_requests_per_minute: int | None = Field(default=600, ge=1)
    #: The bearer token that `GET /metrics` requires on the API's own address. Unset, the API
    #: does not serve `/metrics` at all (404): set this, or `metrics_port`.
    metrics_token: SecretStr | None = Field(default=None, min_length=16, repr=False)
    #: Where `saascore serve` opens a second listener that serves only `/metrics`, without a
    #: token (bind it where only the scraper reaches). Unset: no such listener.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    #: Let webhook endpoints use http and loopback, private or link-local addresses (the SSRF
    #: guard refuses them by default): for tests and receivers on a private network.
    webhooks_allow_private: bool = False
    #: Run the webhook dispatcher inside `saascore serve` (in every worker; they share the work
    #: safely). Unset means on, except in the `test` environment, where tests start their own.
    dispatch: bool | None = None
    #: Seconds one webhook attempt may take (connect, send, answer).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    #: Seconds a dispatcher holds a delivery it is sending; past it, another dispatcher may send
    #: it again (the first one died). Longer than the timeout.
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    #: Seconds between looks at the outbox when no commit has rung the dispatcher's doorbell.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    #: Deliveries one dispatcher sends at once.
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)

    # --- billing ----------------------------------------------------------------------------
    #: How invoice numbers read: a `str.format` template over `{prefix}`, `{year}` (the year of
    #: finalisation, UTC) and `{seq}` (the gapless number in the series). With `{year}` in it,
    #: the series restarts at 1 each year.
    invoice_number_template: str = "{prefix}-{year}-{seq:04d}"
    #: The `{prefix}` of invoice numbers (seed 003 used `SAH`).
    invoice_prefix: str = Field(default="INV", pattern=r"^[^\s{}]{1,20}$")
    #: One series of invoice numbers for the whole platform, or one per organisation.
    invoice_sequence_scope: InvoiceSequenceScope = InvoiceSequenceScope.PLATFORM
    #: Days from an invoice's finalisation to its due date.
    invoice_due_days: int = Field(default=14, ge=0, le=365)
    #: Days an invoice may stay overdue before its organisation is suspended.
    dunning_grace_days: int = Field(default=7, ge=0, le=365)
    #: The seller printed at the top of every rendered invoice (HTML and PDF).
    invoice_issuer_name: str = Field(default="saascore", min_length=1, max_length=200)
    #: The seller's postal address on rendered invoices; lines separated by newlines.
    invoice_issuer_address: str = Field(default="", max_length=1000)
    #: How many invoice PDFs a process renders at once; more requests wait their turn. A
    #: rendering takes a CPU for 0.2 to 3 s, so the rest of the service keeps the others.
    pdf_concurrency: int = Field(default=2, ge=1, le=64)
    #: How many rendered PDFs a process keeps, by the hash of their page: a tenant asking for
    #: the same invoice again gets it without rendering (0 keeps none).
    pdf_cache_size: int = Field(default=32, ge=0, le=10_000)
    #: Run the billing run (`saascore billing run`) inside the webhook dispatcher's loop, so a
    #: deployment running `saascore events dispatch` needs no scheduler of its own.
    billing_autorun: bool = False
    #: Seconds between two autoruns (the first one runs when the dispatcher starts). A run
    #: does nothing twice, so a short interval only costs its queries.
    billing_autorun_interval: float = Field(default=300.0, ge=1, le=86_400)

    # --- payment providers --------------------------------------------------------------------
    #: Where checkouts, portals and subscription changes go: `mock` (the default: a checkout
    #: completes at once on a local confirmation page), `stripe` or `lemonsqueezy`. An
    #: organisation keeps the provider it started with.
    payment_provider: PaymentProviderChoice = PaymentProviderChoice.MOCK
    stripe_secret_key: SecretStr | None = Field(default=None, min_length=1, repr=False)
    #: The `whsec_...` secret that Stripe signs this endpoint's webhooks with.
    stripe_webhook_secret: SecretStr | None = Field(default=None, min_length=1, repr=False)
    #: Stripe's API base URL, for a proxy or a test server (unset: Stripe's own).
    stripe_api_base: str | None = Field(default=None, pattern=r"^https?://")
    lemonsqueezy_api_key: SecretStr | None = Field(default=None, min_length=1, repr=False)
    lemonsqueezy_store_id: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    #: The secret Lemon Squeezy signs webhooks with (`X-Signature`, HMAC-SHA256).
    lemonsqueezy_signing_secret: SecretStr | None = Field(default=None, min_length=1, repr=False)
    #: Lemon Squeezy's API base URL, for a proxy or a test server (unset: its own).
    lemonsqueezy_api_base: str | None = Field(default=None, pattern=r"^https?://")
    #: Where a provider sends the customer after a checkout, and after they abandon it.
    checkout_success_url: str = Field(
        default="http://127.0.0.1:8000/?checkout=success", pattern=r"^https?://"
    )
    checkout_cancel_url: str = Field(
        default="http://127.0.0.1:8000/?checkout=cancel", pattern=r"^https?://"
    )
    #: The largest provider webhook body accepted, in bytes (larger ones get 413).
    provider_webhook_max_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)

    # --- the LLM gateway (seed 004's `call_llm`) -------------------------------------------------
    #: The gateway's base URL; `POST {url}/v1/chat/completions` in the OpenAI-compatible shape.
    #: Unset: `core.llm` answers from the deterministic mock (`call_llm_mock`).
    llm_gateway_url: str | None = Field(default=None, pattern=r"^https?://")
    llm_api_key: SecretStr | None = Field(default=None, min_length=1, repr=False)
    #: Seconds to wait for the gateway's answer (connecting gets at most 5 of them).
    llm_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    #: How many times a 5xx, a timeout or a dropped connection is tried again (with backoff).
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    #: The first retry's wait in seconds; each next one waits twice as long.
    llm_retry_backoff_seconds: float = Field(default=0.25, ge=0, le=30)

    @field_validator("invoice_number_template")
    @classmethod
    def _check_invoice_template(cls, value: str) -> str:
        invoice_template_fields(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        _async_url(value)  # raises ValueError with the reason
        return value.strip()

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _strip_token(cls, value: Any) -> Any:
        # Blank padding is no secret: sixteen spaces must not pass for a token.
        return value.strip() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                value = json.loads(value)
            else:
                value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            return [
                ip_network(item, strict=False) if isinstance(item, str) else item for item in value
            ]
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.use_cloud_sql_connector and not self.cloud_sql_instance:
            raise ValueError("CLOUD_SQL_INSTANCE is required when USE_CLOUD_SQL_CONNECTOR is true")
        if self.use_cloud_sql_connector and self.database_url is not None:
            raise ValueError(
                "USE_CLOUD_SQL_CONNECTOR takes DATABASE_USER/PASSWORD/NAME, not DATABASE_URL: "
                "set one or the other"
            )
        if self.database_schema is not None and self.database_backend is DatabaseBackend.SQLITE:
            raise ValueError("SAASCORE_DATABASE_SCHEMA applies to PostgreSQL only")
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                "SAASCORE_WEBHOOK_LEASE_SECONDS must exceed SAASCORE_WEBHOOK_TIMEOUT_SECONDS: "
                "a delivery still being sent would be sent again"
            )
        for name in PROVIDER_REQUIRED[self.payment_provider]:
            if getattr(self, name) is None:
                raise ValueError(
                    f"SAASCORE_PAYMENT_PROVIDER={self.payment_provider.value} needs "
                    f"{ENV_PREFIX}{name.upper()}"
                )
        first = self.invoice_number_template.format(prefix=self.invoice_prefix, year=2025, seq=1)
        if len(first) > INVOICE_NUMBER_MAX_LENGTH:
            raise ValueError(
                f"SAASCORE_INVOICE_PREFIX is too long for SAASCORE_INVOICE_NUMBER_TEMPLATE: "
                f"{first!r} exceeds {INVOICE_NUMBER_MAX_LENGTH} characters"
            )
        return self

    # --- derived --------------------------------------------------------------------------------
    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "saascore.db"

    @property
    def database_backend(self) -> DatabaseBackend:
        return DatabaseBackend(self.sqlalchemy_url.get_backend_name())

    @property
    def is_embedded(self) -> bool:
        """True when no database was configured and the embedded SQLite file is used."""
        return (
            self.database_url is None
            and self.database_host is None
            and self.database_name is None
            and not self.use_cloud_sql_connector
        )

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_embedded if self.auto_migrate is None else self.auto_migrate

    @property
    def should_dispatch(self) -> bool:
        """Whether `saascore serve` runs the webhook dispatcher (see `dispatch`)."""
        return self.environment != "test" if self.dispatch is None else self.dispatch

    @property
    def sqlalchemy_url(self) -> URL:
        """The async SQLAlchemy URL: asyncpg for PostgreSQL, aiosqlite for SQLite."""
        if self.database_url is not None:
            return _async_url(self.database_url)
        if self.use_cloud_sql_connector:
            # The connection itself comes from the connector (see kit.db); the URL names the
            # dialect, and the user and database for the connector.
            return URL.create(
                "postgresql+asyncpg",
                username=self.database_user,
                password=self.database_password,
                database=self.database_name or "postgres",
            )
        if self.database_host is not None or self.database_name is not None:
            return URL.create(
                "postgresql+asyncpg",
                username=self.database_user,
                password=self.database_password,
                host=self.database_host or "localhost",
                port=self.database_port,
                database=self.database_name or "postgres",
            )
        return URL.create("sqlite+aiosqlite", database=str(self.sqlite_path))


def _async_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(
            "not a database URL (expected postgresql://... or sqlite:///...)"
        ) from None
    # Read the names from the URL itself: asking SQLAlchemy would import the dialect first.
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg", "psycopg2", "psycopg"):
            raise ValueError(f"driver {driver!r} is not supported; use postgresql:// (asyncpg)")
        url = url.set(drivername="postgresql+asyncpg")
        if "sslmode" in url.query:  # libpq's name; asyncpg calls it `ssl` and takes the same modes
            query = dict(url.query)
            query["ssl"] = query.pop("sslmode")
            url = url.set(query=query)
        return url
    if backend == "sqlite":
        if driver not in ("", "aiosqlite", "pysqlite"):
            raise ValueError(f"driver {driver!r} is not supported; use sqlite:///PATH")
        return url.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"database {backend!r} is not supported; use postgresql:// or sqlite:///")


def _variable_name(field: str) -> str:
    """The environment variable that sets `field` (a field name or one of its aliases)."""
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = (
            [c for c in alias.choices if isinstance(c, str)]
            if isinstance(alias, AliasChoices)
            else []
        )
        if field == name or field in choices:
            return choices[0] if choices else f"{ENV_PREFIX}{name.upper()}"
    return f"{ENV_PREFIX}{field.upper()}"


def _alias_in_use(name: str) -> str | None:
    """The seed alias that set the variable `name`, if the environment has it instead."""
    present = {key.upper() for key in os.environ}
    for alias, target in SEED_ALIASES.items():
        if target == name and alias in present and name not in present:
            return alias
    return None


_SECRET = {
    "database_url",
    "database_password",
    "jwt_secret",
    "metrics_token",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "lemonsqueezy_api_key",
    "lemonsqueezy_signing_secret",
}


def _without_password(value: Any) -> Any:
    """A database URL with its password masked; any other secret not shown at all."""
    if isinstance(value, str) and "://" in value:
        try:
            return make_url(value).render_as_string(hide_password=True)
        except ArgumentError:
            return None
    return None


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings`, turning a validation error into one line that names the variable."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if not field:
            raise ConfigurationError(f"invalid settings: {message}") from None
        name = _variable_name(field)
        name = _alias_in_use(name) or name
        value = error.get("input")
        if field in _SECRET or name in ("DATABASE_URL", "DATABASE_PASSWORD", "DB_PASSWORD"):
            value = _without_password(value)
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        raise ConfigurationError(f"invalid setting {name}: {message}{shown}") from None
