"""A database that accepts connections but never answers, or answers too slowly: every request
ends in 503 `database_unavailable` with `Retry-After`, within the configured timeouts (connect,
pool checkout, statement), never in a 500 or a wait of a minute."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from saascore.kit.db import Database
from saascore.kit.errors import DatabaseUnavailable
from tests.api.conftest import SilentServer
from tests.helpers import make_settings, only_postgresql
from tests.http import api_app, serving, tenant

#: Far above every timeout the tests configure, far below the defaults they replace (30 s to
#: 90 s): a request that hangs fails the test instead of the run.
GUARD_SECONDS = 20


class StallingProxy:
    """A TCP proxy to PostgreSQL that can stop passing the server's answers on, as a server
    that hangs (or a network that drops packets) would: the connections stay open, silent."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.stalled = False
        self.server: asyncio.Server | None = None
        self.transports: list[asyncio.BaseTransport] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for transport in self.transports:
            transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.transports += [writer.transport, upstream_writer.transport]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65_536):
                    if not self.stalled:
                        sink.write(data)
                        await sink.drain()
            except OSError:
                pass

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0


async def get(client: httpx.AsyncClient, path: str, **options: Any) -> httpx.Response:
    async with asyncio.timeout(GUARD_SECONDS):
        return await client.get(path, **options)


class TestASilentServer:
    """The database host accepts TCP connections and never answers."""

    def settings(self, silent: SilentServer, **values: Any) -> Any:
        values = {"db_connect_timeout": 0.5, "db_pool_timeout": 0.5, **values}
        return make_settings(
            database_url=f"postgresql://postgres@127.0.0.1:{silent.port}/test",
            auto_migrate=False,
            **values,
        )

    async def test_an_authenticated_request_is_503(self, silent: SilentServer) -> None:
        # Authentication reads the key through the raw driver (`Database.read_row`).
        application, core = api_app(Database(self.settings(silent)))
        async with serving(application, core) as client:
            response = await get(client, "/v1/me", headers={"X-API-Key": "sk_live_" + "a" * 40})
        assert_unavailable(response)

    async def test_a_request_on_a_session_is_503(self, silent: SilentServer) -> None:
        application, core = api_app(Database(self.settings(silent)))
        async with serving(application, core) as client:
            response = await get(client, "/v1/plans")
        assert_unavailable(response)

    async def test_waiting_for_a_pooled_connection_is_503(self, silent: SilentServer) -> None:
        # One connection, held connecting; the other requests wait for the pool, then give up.
        settings = self.settings(silent, db_pool_size=1, db_max_overflow=0, db_connect_timeout=3.0)
        application, core = api_app(Database(settings))
        async with serving(application, core) as client:
            responses = await asyncio.gather(*(get(client, "/v1/plans") for _ in range(3)))
        for response in responses:
            assert_unavailable(response)


@only_postgresql
class TestASlowDatabase:
    async def test_a_statement_past_its_timeout_is_503(self, scratch: Database) -> None:
        database = Database(scratch.settings.model_copy(update={"db_statement_timeout": 0.5}))
        application, core = api_app(database)
        async with serving(application, core) as client:
            owner = await tenant(client, scratch)
            # Another transaction holds the organisation's row: the update waits for it.
            async with scratch.transaction() as session:
                await session.execute(
                    sa.text("SELECT 1 FROM organizations WHERE id = :id FOR UPDATE").bindparams(
                        id=owner.organization_id
                    )
                )
                async with asyncio.timeout(GUARD_SECONDS):
                    response = await client.patch(
                        "/v1/organization", json={"name": "Renamed"}, headers=owner.headers
                    )
            assert_unavailable(response)
            async with asyncio.timeout(GUARD_SECONDS):
                again = await client.patch(
                    "/v1/organization", json={"name": "Renamed"}, headers=owner.headers
                )
            assert again.status_code == 200, again.text
        await database.dispose()

    async def test_a_server_that_stops_answering_is_503(self, scratch: Database) -> None:
        url = make_url(scratch.settings.database_url or "")
        proxy = StallingProxy(url.host or "127.0.0.1", url.port or 5432)
        await proxy.start()
        proxied = Database(
            scratch.settings.model_copy(
                update={
                    "database_url": url.set(port=proxy.port).render_as_string(hide_password=False),
                    "db_statement_timeout": 0.2,
                    "db_connect_timeout": 0.5,
                }
            )
        )
        try:
            application, core = api_app(proxied)
            async with serving(application, core) as client:
                owner = await tenant(client, proxied, scopes=["usage:read"])
                assert (await get(client, "/v1/me", headers=owner.key_headers)).status_code == 200
                assert (await get(client, "/v1/plans")).status_code == 200
                proxy.stalled = True
                # On a pooled connection: the raw driver's read, then a session's statement.
                assert_unavailable(await get(client, "/v1/me", headers=owner.key_headers))
                assert_unavailable(await get(client, "/v1/plans"))
                assert_unavailable(await get(client, "/v1/usage/limits", headers=owner.headers))
        finally:
            await proxied.dispose()
            await proxy.stop()


@only_postgresql
class TestTheRawDriverPath:
    async def test_a_statement_past_its_timeout_is_unavailable(self, scratch: Database) -> None:
        database = Database(scratch.settings.model_copy(update={"db_statement_timeout": 0.2}))
        try:
            with pytest.raises(DatabaseUnavailable, match="did not answer in time"):
                async with asyncio.timeout(GUARD_SECONDS), database.driver() as driver:
                    await driver.execute("SELECT pg_sleep(5)")
            async with database.driver() as driver:  # the next caller is served
                assert await driver.fetchval("SELECT 1") == 1
        finally:
            await database.dispose()

    async def test_migrations_run_without_the_statement_timeout(self, scratch: Database) -> None:
        database = Database(scratch.settings.model_copy(update={"db_statement_timeout": 0.2}))
        try:
            async with database.unbounded_connection() as connection:
                assert (await connection.exec_driver_sql("SHOW statement_timeout")).scalar() == "0"
            async with database.driver() as driver:
                assert await driver.fetchval("SHOW statement_timeout") == "200ms"
        finally:
            await database.dispose()
