"""`get_session` / `SessionDep`: one transaction per request, settled before the response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import SessionDep
from saascore.api.errors import install_error_handlers
from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.models import Meter


@pytest_asyncio.fixture(loop_scope="session")
async def migrated(empty_database: Database) -> Database:
    """A database of its own: these requests really commit."""
    await migrate.upgrade(empty_database)
    return empty_database


@pytest_asyncio.fixture(loop_scope="session")
async def client(migrated: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.database = migrated
    install_error_handlers(app)

    @app.post("/meters/{code}")
    async def add(code: str, session: SessionDep) -> dict[str, str]:
        session.add(Meter(code=code, name=code))
        return {"created": code}

    @app.post("/meters/{code}/then-fail")
    async def add_then_fail(code: str, session: SessionDep) -> None:
        session.add(Meter(code=code, name=code))
        await session.flush()
        raise RuntimeError("the handler failed after writing")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def meter_codes(database: Database) -> set[str]:
    async with database.session(readonly=True) as session:
        return set(await session.scalars(sa.select(Meter.code)))


class TestRequestTransaction:
    async def test_commits_when_the_handler_succeeds(
        self, client: httpx.AsyncClient, migrated: Database
    ) -> None:
        response = await client.post("/meters/m1")
        assert response.status_code == 200
        assert "m1" in await meter_codes(migrated)

    async def test_rolls_back_when_the_handler_raises(
        self, client: httpx.AsyncClient, migrated: Database
    ) -> None:
        response = await client.post("/meters/m2/then-fail")
        assert response.status_code == 500
        assert "m2" not in await meter_codes(migrated)

    async def test_a_failed_commit_is_an_error_response_not_a_200(
        self, client: httpx.AsyncClient, migrated: Database
    ) -> None:
        assert (await client.post("/meters/dup")).status_code == 200
        # The same code again breaks the unique constraint at commit time, after the handler
        # returned: the client must not be told it worked.
        response = await client.post("/meters/dup")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert await meter_codes(migrated) == {"dup"}


def test_the_lazy_default_database_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import saascore

    monkeypatch.setattr(saascore, "_default_database", None)
    monkeypatch.chdir(str(tmp_path))
    for name in ("DATABASE_URL", "DATABASE_HOST", "DATABASE_NAME", "SAASCORE_DATABASE_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/lazy.db")
    from saascore import db

    assert isinstance(db, Database)
    assert db.url.database == f"{tmp_path}/lazy.db"
    assert saascore.db is db  # built once


async def test_losing_the_database_mid_request_is_a_503() -> None:
    from tests.helpers import make_settings

    app = FastAPI()
    app.state.database = Database(make_settings(database_url="postgresql://postgres@127.0.0.1:1/x"))
    install_error_handlers(app)

    @app.get("/meters")
    async def meters(session: SessionDep) -> list[str]:
        return list(await session.scalars(sa.select(Meter.code)))

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/meters")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
