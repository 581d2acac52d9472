"""Helpers for the tests of projects built on saascore (seed 004's `testing`).

A throw-away database, migrated with saascore's migrations and loaded with the default plan
catalog, dropped when the block ends: a SQLite file in a temporary directory, or a new schema
on a PostgreSQL server.

    async with temporary_database() as database:                   # SQLite
    async with temporary_database("postgresql://u@host/db") as database:  # a fresh schema
        core = Saascore(database.settings, database=database)
        app = create_app(database.settings, core=core)

Sessions for the test's own queries, on an engine without a pool (`NullPool`: each session
opens its connection and closes it after, so no connection outlives the event loop that
opened it, which pytest-asyncio may close after each test, and none holds the schema when it
is dropped):

    sessions = create_test_session_factory(database)
    async with sessions() as session: ...

And an account through the API: `register_and_login` gives the owner's `Authorization` header,
`register_tenant` the whole `TestTenant` (organisation and owner ids, credentials, tokens) and,
given `scopes`, an API key of the owner's with those scopes (the new organisation is on the
`default_plan`, which must then include API access; or move it to such a plan, then
`add_api_key`):

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        headers = await register_and_login(c)
        await c.get("/v1/me", headers=headers)
        tenant = await register_tenant(c, scopes=["usage:write"])
        await c.post("/v1/usage/events", json=event, headers=tenant.key_headers)

The database's sessions and services commit: give each test organisations of its own rather
than counting on an empty database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from saascore.config import DatabaseBackend, Settings, load_settings
from saascore.kit.db import Database
from saascore.kit.errors import ConfigurationError
from saascore.migrations import migrate
from saascore.plans import Catalog, PlanService, read_catalog

__all__ = [
    "FakeLLMGateway",
    "TestTenant",
    "add_api_key",
    "create_test_engine",
    "create_test_session_factory",
    "register_and_login",
    "register_tenant",
    "temporary_database",
]


@asynccontextmanager
async def temporary_database(
    url: str | None = None,
    *,
    catalog: Catalog | bool = True,
    **settings: Any,
) -> AsyncIterator[Database]:
    """A new database, migrated to saascore's newest revision, removed after the block.

    `url` None: a SQLite file in a temporary directory. A PostgreSQL URL: a schema of its own
    (`test_<random>`) on that server, dropped with everything in it. `catalog`: the default
    plan catalog (True), this one, or none (False). Other keyword arguments are `Settings`
    fields (`rate_limit_storage="redis://..."`); the temporary directory is `data_dir`, and
    tokens are signed with a random `jwt_secret` unless one is given.
    """
    with tempfile.TemporaryDirectory(prefix="saascore-test-") as directory:
        values: dict[str, Any] = {
            "environment": "test",
            "data_dir": Path(directory),
            "jwt_secret": secrets.token_urlsafe(32),
            **settings,
        }
        if url is None:
            values.update(database_url=f"sqlite:///{Path(directory) / 'test.db'}")
            values.update(database_schema=None)
            schema = None
        else:
            values.update(database_url=url)
            schema = f"test_{secrets.token_hex(6)}"
        base = load_settings(_env_file=None, **values)
        if schema is not None and base.database_backend is not DatabaseBackend.POSTGRESQL:
            raise ConfigurationError(
                "temporary_database takes a PostgreSQL URL, or none for SQLite"
            )
        if schema is not None:
            await _schema(base, f'CREATE SCHEMA "{schema}"')
        database = Database(base.model_copy(update={"database_schema": schema}))
        try:
            await migrate.upgrade(database)
            if catalog is not False:
                await PlanService(database).load_catalog(
                    read_catalog() if catalog is True else catalog
                )
            yield database
        finally:
            await database.dispose()
            if schema is not None:
                await _schema(base, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _schema(settings: Settings, statement: str) -> None:
    """Run one schema statement on the server, outside any schema of ours."""
    admin = Database(settings)
    try:
        async with admin.engine.begin() as connection:
            # A session left idle in a transaction would make DROP wait forever; fail instead.
            await connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            await connection.execute(sa.text(statement))
    finally:
        await admin.dispose()


def create_test_engine(database: Database) -> AsyncEngine:
    """An engine on `database` (its schema, its SQLite settings) without a connection pool.
    `dispose()` it when done; it holds no connection between sessions."""
    return database._create_engine(pooled=False)


def create_test_session_factory(
    database_or_engine: Database | AsyncEngine,
) -> async_sessionmaker[AsyncSession]:
    """Sessions (`expire_on_commit=False`, as saascore's own) on `create_test_engine`, or on
    the engine given."""
    engine = (
        create_test_engine(database_or_engine)
        if isinstance(database_or_engine, Database)
        else database_or_engine
    )
    return async_sessionmaker(engine, expire_on_commit=False)


@dataclasses.dataclass(frozen=True)
class TestTenant:
    """An organisation registered through the API: its id, its owner's id, e-mail, password
    and tokens, and the owner's API key if one was asked for."""

    __test__: ClassVar[bool] = False  # not a test class, whatever its name

    organization_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    password: str
    access_token: str
    refresh_token: str
    api_key: str | None = None
    api_key_id: uuid.UUID | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The owner's `Authorization` header."""
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def key_headers(self) -> dict[str, str]:
        """The `X-API-Key` header of the tenant's API key."""
        if self.api_key is None:
            raise AssertionError("this tenant was registered without an API key (scopes=...)")
        return {"X-API-Key": self.api_key}


async def register_tenant(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    password: str | None = None,
    organization_name: str | None = None,
    name: str | None = "Test User",
    scopes: Sequence[str] | None = None,
) -> TestTenant:
    """Register a new organisation and its owner through the API (`POST /v1/auth/register`),
    random e-mail, password and name unless given. With `scopes`, the owner also makes an API
    key with those scopes (`POST /v1/api-keys`: one request on the owner's rate limit)."""
    tag = secrets.token_hex(4)
    email = email or f"owner-{tag}@example.com"
    password = password or secrets.token_urlsafe(16)
    body: dict[str, Any] = {
        "email": email,
        "password": password,
        "name": name,
        "organization_name": organization_name or f"Test Organisation {tag}",
    }
    response = await client.post("/v1/auth/register", json=body)
    if response.status_code != 201:
        raise AssertionError(f"registration failed: {response.status_code} {response.text}")
    tokens = response.json()
    tenant = TestTenant(
        organization_id=uuid.UUID(tokens["organization_id"]),
        user_id=uuid.UUID(tokens["user_id"]),
        email=email,
        password=password,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )
    if scopes is None:
        return tenant
    return await add_api_key(client, tenant, scopes)


async def add_api_key(
    client: httpx.AsyncClient, tenant: TestTenant, scopes: Sequence[str], *, name: str = "test key"
) -> TestTenant:
    """The tenant with a new API key of its owner's (`POST /v1/api-keys`). The organisation's
    plan must include API access (in the default catalog, Pro and up): a tenant registered on
    the free plan is moved to such a plan first, or the host app's `default_plan` is one."""
    created = await client.post(
        "/v1/api-keys", json={"name": name, "scopes": list(scopes)}, headers=tenant.headers
    )
    if created.status_code != 201:
        raise AssertionError(f"API key refused: {created.status_code} {created.text}")
    key = created.json()
    return dataclasses.replace(tenant, api_key=key["key"], api_key_id=uuid.UUID(key["id"]))


async def register_and_login(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    password: str | None = None,
    organization_name: str | None = None,
    name: str | None = "Test User",
) -> dict[str, str]:
    """Register a new organisation and its owner through the API, and return the
    `Authorization` header for the owner's access token. Each call makes a new organisation
    (random e-mail and name unless given): `register_tenant(...).headers`."""
    tenant = await register_tenant(
        client, email=email, password=password, organization_name=organization_name, name=name
    )
    return tenant.headers


# --- a fake LLM gateway ---------------------------------------------------------------------------
class FakeLLMGateway:
    """An OpenAI-compatible chat completions server on loopback, for tests and benchmarks of
    `saascore.llm`: a real HTTP server (HTTP/1.1, keep-alive), so the client's timeouts,
    retries and connection pool are exercised for real.

    `async with FakeLLMGateway(...) as gateway:` serves at `gateway.url`; `gateway.requests`
    holds every request body it received. The first `fail_times` requests are answered with
    `fail_status`; each answer waits `delay` seconds first; usage reports `prompt_tokens`
    (default: a token per 4 characters of the messages) and `completion_tokens`.
    """

    def __init__(
        self,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int = 20,
        fail_times: int = 0,
        fail_status: int = 503,
        delay: float = 0.0,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.fail_times = fail_times
        self.fail_status = fail_status
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FakeLLMGateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The status and JSON body answering one request (override for other behaviour)."""
        if len(self.requests) <= self.fail_times:
            return self.fail_status, {"error": {"message": "the gateway is failing"}}
        messages = body.get("messages") or []
        prompt = self.prompt_tokens
        if prompt is None:
            prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4 + 1
        return 200, {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer {len(self.requests)}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens,
            },
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                raw = await reader.readexactly(length)
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                self.requests.append(body)
                if self.delay:
                    await asyncio.sleep(self.delay)
                status, answer = self.answer(body if isinstance(body, dict) else {})
                data = json.dumps(answer).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
