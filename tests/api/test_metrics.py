"""`/metrics`: requests by method, route template and status, latency, errors by code; and
with `PROMETHEUS_MULTIPROC_DIR`, one sum over every worker of `saascore serve --workers 2`."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, FastAPI
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from saascore.api.metrics import MetricsMiddleware, create_metrics_router, install_metrics
from saascore.kit.db import Database
from saascore.models import ModelPricing
from saascore.testing import register_and_login
from tests.cli.runner import SAASCORE, Cli, Server, clean_environment, free_port
from tests.helpers import only_sqlite, settings_env
from tests.http import api_app, serving, tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUESTS = "saascore_http_requests_total"
DURATION = "saascore_http_request_duration_seconds"
ERRORS = "saascore_http_errors_total"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


#: The metrics token of the apps these tests serve.
TOKEN = "metrics-" + secrets.token_hex(16)
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every series of an exposition: its name and labels."""
    return {
        (found.name, tuple(sorted(found.labels.items())))
        for family in text_string_to_metric_families(text)
        for found in family.samples
    }


@pytest_asyncio.fixture(loop_scope="session")
async def metered(scratch: Database) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """A client of the real app on the module's scratch database, its requests counted, its
    metrics served with `TOKEN`."""
    application, core = api_app(
        scratch, auth_requests_per_minute=None, metrics_token=SecretStr(TOKEN)
    )
    install_metrics(application)
    async with serving(application, core) as client:
        yield client, application


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics", headers=AUTHORIZED)
    assert response.status_code == 200, response.text
    return response.text


class TestRequests:
    async def test_counted_by_method_route_template_and_status(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        headers = await register_and_login(client)
        missing = uuid.uuid4()
        labels = {"method": "DELETE", "route": "/v1/api-keys/{key_id}", "status": "404"}
        before = await scrape(client)
        for _ in range(3):
            response = await client.delete(f"/v1/api-keys/{missing}", headers=headers)
            assert response.status_code == 404, response.text
        after = await scrape(client)
        assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 3
        assert str(missing) not in after

    async def test_a_path_no_route_matches_is_one_series(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        labels = {"method": "GET", "route": "<unmatched>", "status": "404"}
        before = await scrape(client)
        paths = [f"/nowhere/{secrets.token_hex(6)}" for _ in range(4)]
        for path in paths:
            assert (await client.get(path)).status_code == 404
        after = await scrape(client)
        assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 4
        assert not any(path in after for path in paths)

    async def test_an_unknown_method_is_counted_as_other(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        labels = {"method": "OTHER", "route": "/health", "status": "405"}
        before = await scrape(client)
        assert (await client.request("BREW", "/health")).status_code == 405
        after = await scrape(client)
        assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 1
        assert 'method="BREW"' not in after

    async def test_latency_is_observed_for_each_request(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        labels = {"method": "GET", "route": "/health"}
        before = await scrape(client)
        for _ in range(5):
            assert (await client.get("/health")).status_code == 200
        after = await scrape(client)
        count = f"{DURATION}_count"
        assert sample(after, count, **labels) - sample(before, count, **labels) == 5
        # Every observation falls in the last bucket; the sum of durations only grows.
        infinite = {**labels, "le": "+Inf"}
        bucket = f"{DURATION}_bucket"
        assert sample(after, bucket, **infinite) == sample(after, count, **labels)
        assert sample(after, f"{DURATION}_sum", **labels) > sample(
            before, f"{DURATION}_sum", **labels
        )

    async def test_an_exception_that_escapes_the_app_is_a_500(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, application = metered

        @application.get("/_test/metrics-crash")
        async def crash() -> None:
            raise RuntimeError("boom")

        labels = {"method": "GET", "route": "/_test/metrics-crash", "status": "500"}
        before = await scrape(client)
        response = await client.get("/_test/metrics-crash")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        after = await scrape(client)
        assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 1
        internal = {"status": "500", "code": "internal_error"}
        assert sample(after, ERRORS, **internal) - sample(before, ERRORS, **internal) == 1

    async def test_installing_twice_counts_once(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        _, application = metered
        install_metrics(application)
        installed = [m for m in application.user_middleware if m.cls is MetricsMiddleware]
        assert len(installed) == 1


class TestRouteTemplates:
    """In a host app: the prefixes of mounts and included routers are part of the template."""

    @pytest_asyncio.fixture(loop_scope="session")
    async def host(self) -> AsyncIterator[httpx.AsyncClient]:
        things = APIRouter(prefix="/v1/things")

        @things.get("/{thing_id}")
        async def thing(thing_id: str) -> dict[str, str]:
            return {"id": thing_id}

        mounted = FastAPI()

        @mounted.get("/items/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        app = FastAPI()
        app.include_router(things, prefix="/tenant")
        app.include_router(things, prefix="/orgs/{org}")
        app.mount("/sub", mounted)
        install_metrics(app)
        app.include_router(create_metrics_router(token=None))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            yield client

    @pytest.mark.parametrize(
        ("path", "status", "route"),
        [
            ("/tenant/v1/things/t-1", 200, "/tenant/v1/things/{thing_id}"),
            ("/sub/items/7", 200, "/sub/items/{item_id}"),
            ("/sub/nothing-here/x", 404, "<unmatched>"),
            # A prefix with parameters is left out rather than have their values in a label.
            ("/orgs/o-1/v1/things/t-2", 200, "/v1/things/{thing_id}"),
        ],
    )
    async def test_prefixes_are_kept_and_values_never_are(
        self, host: httpx.AsyncClient, path: str, status: int, route: str
    ) -> None:
        labels = {"method": "GET", "route": route, "status": str(status)}
        before = await scrape(host)
        assert (await host.get(path)).status_code == status
        after = await scrape(host)
        assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 1
        assert not any(value in after for value in ("t-1", "t-2", "o-1", "nothing-here"))


class TestErrors:
    async def test_error_responses_are_counted_by_code(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        before = await scrape(client)
        assert (await client.get("/v1/me")).status_code == 401
        forged = await client.get("/v1/me", headers={"X-API-Key": "sk_live_nope"})
        assert forged.status_code == 401
        invalid = await client.post("/v1/auth/login", json={"email": "x"})
        assert invalid.status_code == 422
        after = await scrape(client)

        def delta(status: str, code: str) -> float:
            return sample(after, ERRORS, status=status, code=code) - sample(
                before, ERRORS, status=status, code=code
            )

        assert delta("401", "unauthenticated") == 1
        assert delta("401", "invalid_token") == 1
        assert delta("422", "validation_error") == 1


class TestExposition:
    async def test_text_format_with_the_services_counters(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        response = await client.get("/metrics", headers=AUTHORIZED)
        assert response.headers["content-type"].startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {
            "saascore_http_requests",
            "saascore_http_request_duration_seconds",
            "saascore_http_errors",
            "saascore_usage_recorded",
            "saascore_usage_refused",
        } <= names

    async def test_openmetrics_when_the_scraper_asks(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        response = await client.get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0", **AUTHORIZED},
        )
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")

    async def test_documented_as_text(self, metered: tuple[httpx.AsyncClient, FastAPI]) -> None:
        client, _ = metered
        operation = (await client.get("/openapi.json")).json()["paths"]["/metrics"]["get"]
        assert set(operation["responses"]["200"]["content"]) == {
            "text/plain",
            "application/openmetrics-text",
        }


class TestAccess:
    """`/metrics` describes every tenant's traffic: only the scraper may read it."""

    async def test_not_served_without_a_token_configured(self, scratch: Database) -> None:
        application, core = api_app(scratch)
        async with serving(application, core) as client:
            response = await client.get("/metrics")
            assert response.status_code == 404
            assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]

    async def test_a_configured_token_is_required(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "saascore_" not in response.text
        assert (await client.get("/metrics", headers=AUTHORIZED)).status_code == 200

    async def test_the_document_states_the_401(
        self, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        """Found by schemathesis (ST103): the 401 was an undocumented status."""
        client, _ = metered
        document = (await client.get("/openapi.json")).json()
        refused = document["paths"]["/metrics"]["get"]["responses"]["401"]
        schema = refused["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


class TestLabelsAreBounded:
    async def test_200_model_names_add_no_series(
        self, scratch: Database, metered: tuple[httpx.AsyncClient, FastAPI]
    ) -> None:
        client, _ = metered
        owner = await tenant(client, scratch, scopes=["usage:write"])
        events = [
            {
                "id": f"m{n}",
                "metric": "tokens",
                "quantity": 1,
                "model": f"tenant-model-{uuid.uuid4().hex}",
                "provider": f"tenant-provider-{n}",
                "input_tokens": 1,
            }
            for n in range(200)
        ]

        async def post(batch: list[dict[str, object]]) -> None:
            response = await client.post(
                "/v1/usage/events", json={"events": batch}, headers=owner.key_headers
            )
            assert response.status_code == 200, response.text
            assert all(item["status"] == "accepted" for item in response.json()["results"])

        await post(events[:1])  # the route's and the counters' series exist from here on
        await scrape(client)  # and the scrape's own (else only a test run before it made them)
        before = await scrape(client)
        await post(events[1:])
        after = await scrape(client)
        assert "tenant-model-" not in after
        assert "tenant-provider-" not in after
        assert series(after) == series(before)
        assert len(after) < len(before) + 500  # only values moved
        unpriced = {"provider": "other", "model": "other"}
        assert sample(after, "saascore_usage_unpriced_model_total", **unpriced) == 199 + sample(
            before, "saascore_usage_unpriced_model_total", **unpriced
        )

    async def test_a_model_the_catalog_prices_keeps_its_name(self, scratch: Database) -> None:
        model = f"catalog-model-{uuid.uuid4().hex[:8]}"
        async with scratch.transaction() as session:
            session.add(
                ModelPricing(
                    provider="acme",
                    model=model,
                    input_micros_per_million=1_000_000,
                    output_micros_per_million=0,
                    effective_from=datetime(1970, 1, 1, tzinfo=UTC),
                )
            )
        application, core = api_app(scratch, metrics_token=SecretStr(TOKEN))
        async with serving(application, core) as client:
            owner = await tenant(client, scratch, scopes=["usage:write"])
            labels = {"provider": "other", "model": model}  # priced, but not at this provider
            event = {"id": "k", "metric": "tokens", "quantity": 1, "input_tokens": 1}
            response = await client.post(
                "/v1/usage/events",
                json={**event, "model": model, "provider": "unheard-of"},
                headers=owner.key_headers,
            )
            assert response.status_code == 201, response.text
            assert (
                sample(await scrape(client), "saascore_usage_unpriced_model_total", **labels) == 1
            )


# --- several worker processes ---------------------------------------------------------------
def per_process(directory: Path, code: str) -> dict[str, float]:
    """Each process's count of error responses with `code`, read from its own file."""
    counts: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for found in metric.samples:
                if found.name == ERRORS and found.labels.get("code") == code:
                    counts[pid] = counts.get(pid, 0.0) + found.value
    return counts


@asynccontextmanager
async def connections_on_each_worker(
    server: Server, directory: Path, per_worker: int, workers: int = 2
) -> AsyncIterator[dict[str, list[httpx.AsyncClient]]]:
    """Clients of one kept-alive connection each, `per_worker` held by each worker process
    (by pid), closed after the block.

    Which worker accepts a new connection is the kernel's choice, and a worker accepts every
    connection pending when it wakes, so connections opened all at once mostly land on one.
    These are opened one at a time; each asks for a path no route has, and the worker whose
    `not_found` count grew holds it."""
    held: dict[str, list[httpx.AsyncClient]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(held) < workers or any(len(c) < per_worker for c in held.values()):
            if time.monotonic() > deadline:
                pytest.fail(f"connections did not reach {workers} workers: {held}")
            client = httpx.AsyncClient(
                base_url=server.url(""), limits=httpx.Limits(max_connections=1), timeout=30
            )
            before = per_process(directory, "not_found")
            assert (await client.get(f"/warm-up/{secrets.token_hex(4)}")).status_code == 404
            after = per_process(directory, "not_found")
            (pid,) = [p for p, n in after.items() if n > before.get(p, 0.0)]
            clients = held.setdefault(pid, [])
            if len(clients) < per_worker:
                clients.append(client)
            else:
                await client.aclose()
        yield held
    finally:
        for clients in held.values():
            for client in clients:
                await client.aclose()


def workers_cli(tmp_path: Path, database: Database, directory: Path) -> Cli:
    """`saascore` on `database`, its metrics in `directory`, with the secret workers share."""
    if not SAASCORE.exists():
        pytest.fail(f"the saascore console script is not installed at {SAASCORE}")
    return Cli(tmp_path, clean_environment()).with_env(
        {
            **settings_env(database.settings),
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "SAASCORE_JWT_SECRET": secrets.token_urlsafe(32),
            "SAASCORE_METRICS_TOKEN": TOKEN,
        }
    )


@only_sqlite
async def test_workers_are_summed_and_an_earlier_run_forgotten(
    database: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    cli = workers_cli(tmp_path, database, directory)

    port = free_port()
    with cli.server("serve", "--workers", "2", "--port", str(port), port=port) as earlier:
        await asyncio.to_thread(earlier.wait_until_healthy)
        async with httpx.AsyncClient() as client:
            for n in range(3):
                assert (await client.get(earlier.url(f"/missing/{n}"))).status_code == 404
    assert sum(per_process(directory, "not_found").values()) == 3

    port = free_port()
    with cli.server("serve", "--workers", "2", "--port", str(port), port=port) as server:
        await asyncio.to_thread(server.wait_until_healthy)
        assert sum(per_process(directory, "not_found").values()) == 0
        async with connections_on_each_worker(server, directory, per_worker=3) as held:
            warmed_up = sum(per_process(directory, "not_found").values())
            for group in held.values():
                for client in group:
                    for n in range(5):
                        assert (await client.get(f"/missing/{n}")).status_code == 404
            total = warmed_up + 5 * sum(len(group) for group in held.values())
            own = per_process(directory, "not_found")
            assert sum(own.values()) == total
            for pid, group in held.items():
                # Each worker answered only part of the requests, and its scrape shows all.
                assert 0 < own[pid] < total
                text = (await group[0].get("/metrics", headers=AUTHORIZED)).text
                assert sample(text, ERRORS, status="404", code="not_found") == total
    assert "Traceback" not in server.stderr


@only_sqlite
async def test_serve_opens_a_metrics_listener(database: Database, tmp_path: Path) -> None:
    metrics_port = free_port()
    cli = Cli(tmp_path, clean_environment()).with_env(
        {
            **settings_env(database.settings),
            "SAASCORE_JWT_SECRET": secrets.token_urlsafe(32),
            "SAASCORE_METRICS_PORT": str(metrics_port),
        }
    )
    refused = cli("serve", "--workers", "2", "--port", str(free_port()))
    assert "PROMETHEUS_MULTIPROC_DIR" in refused.error_line(2)
    port = free_port()
    with cli.server("serve", "--port", str(port), port=port) as server:
        await asyncio.to_thread(server.wait_until_healthy)
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url("/metrics"))).status_code == 404
            private = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert private.status_code == 200
        assert sample(private.text, REQUESTS, method="GET", route="/healthz", status="200") >= 1
    assert "Traceback" not in server.stderr
