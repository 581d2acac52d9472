from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from saascore import Saascore, __version__
from saascore.api import create_app
from saascore.kit.db import Database
from tests.helpers import make_settings
from tests.http import api_app, serving


class TestLiveness:
    async def test_health_answers_without_the_database(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["service"] == "saascore"


class TestReadiness:
    async def test_healthz_is_healthy_on_the_test_database(
        self, client: httpx.AsyncClient, database: Database
    ) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "service": "saascore",
            "version": __version__,
            "database": {"status": "healthy", "database": database.backend.value},
            "rate_limiter": {"status": "healthy", "storage": "memory"},
        }

    @pytest.mark.parametrize("backend_name", ["postgresql", "sqlite"])
    async def test_healthz_is_503_when_the_database_is_unreachable(
        self, backend_name: str, tmp_path: Path
    ) -> None:
        # Nothing listens on port 1; a SQLite file cannot live under a regular file.
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        url = {
            "postgresql": "postgresql://postgres@127.0.0.1:1/test",
            "sqlite": f"sqlite:///{blocker}/saascore.db",
        }[backend_name]
        settings = make_settings(database_url=url, auto_migrate=False)
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as http,
        ):
            response = await http.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["database"] == {"status": "unhealthy", "database": settings.database_backend}

    @pytest.mark.redis
    async def test_healthz_reports_the_rate_limiters_redis(
        self, database: Database, redis_url: str
    ) -> None:
        application, core = api_app(database, rate_limit_storage=redis_url)
        async with serving(application, core) as http:
            response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.json()["rate_limiter"] == {"status": "healthy", "storage": "redis"}

    async def test_healthz_is_503_when_the_rate_limiters_redis_is_down(
        self, database: Database
    ) -> None:
        """Nothing listens on port 1. Every authenticated request would answer 503: so does
        readiness, naming the rate limiter, while the database is healthy."""
        application, core = api_app(database, rate_limit_storage="redis://127.0.0.1:1/0")
        async with serving(application, core) as http:
            response = await http.get("/healthz")
            head = await http.head("/healthz")
        assert response.status_code == head.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["database"] == {"status": "healthy", "database": database.backend.value}
        assert body["rate_limiter"] == {"status": "unhealthy", "storage": "redis"}

    async def test_a_host_app_mounts_the_health_router_alone(self, database: Database) -> None:
        from fastapi import FastAPI

        from saascore.api import create_health_router

        host = FastAPI()
        host.state.database = database
        host.include_router(create_health_router("billing-core"))
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.json()["service"] == "billing-core"
        assert "rate_limiter" not in response.json()  # it has none


async def test_lifespan_builds_and_closes_its_own_database(tmp_path: Path) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/own.db", auto_migrate=True)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        core: Saascore = app.state.saascore
        assert app.state.database is core.database
        # auto_migrate ran the real migrations at start
        from saascore.migrations import migrate

        assert await migrate.current(core.database) == migrate.head()
