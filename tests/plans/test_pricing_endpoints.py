"""`/v1/admin/model-pricing`: operators list model prices and set one price version, with the
input validated (422 `validation_error`, nothing written)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from saascore.plans import read_default_pricing
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.factories import random_code

pytestmark = pytest.mark.asyncio(loop_scope="session")

URL = "/v1/admin/model-pricing"


def body(model: str, **values: Any) -> dict[str, Any]:
    return {
        "provider": "acme",
        "model": model,
        "input_micros_per_million": 1_000_000,
        "output_micros_per_million": 4_000_000,
        "effective_from": "2025-01-01",
        "source": "https://acme.example/pricing",
        "as_of": "2025-01-02",
        **values,
    }


async def listed(admin: Admin, **params: str) -> list[dict[str, Any]]:
    response = await admin.client.get(URL, params=params, headers=admin.operator)
    assert response.status_code == 200, response.text
    prices: list[dict[str, Any]] = response.json()["prices"]
    return prices


class TestList:
    async def test_lists_the_default_prices_with_their_date_and_source(self, admin: Admin) -> None:
        prices = await listed(admin)
        assert len(prices) >= len(read_default_pricing().model_pricing)
        (gpt4o,) = [p for p in prices if (p["provider"], p["model"]) == ("openai", "gpt-4o")]
        assert gpt4o["input_micros_per_million"] == 2_500_000
        assert gpt4o["as_of"] == "2025-09-01"
        assert gpt4o["source"] == "https://openai.com/api/pricing/"

    async def test_a_tenant_gets_403(self, admin: Admin, customer: TestTenant) -> None:
        response = await admin.client.get(URL, headers=customer.key_headers)
        assert response.status_code == 403


class TestPut:
    @pytest.mark.parametrize("method", ["PUT", "POST"])
    async def test_create_replay_correct_and_version(self, admin: Admin, method: str) -> None:
        model = random_code("model")

        async def send(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            response = await admin.client.request(method, URL, json=payload, headers=admin.operator)
            return response.status_code, response.json()

        status, created = await send(body(model))
        assert (status, created["outcome"]) == (201, "created")
        assert created["effective_from"].startswith("2025-01-01T00:00:00")
        assert created["cached_input_micros_per_million"] == 1_000_000  # defaults to input
        assert created["as_of"] == "2025-01-02"
        status, replay = await send(body(model))
        assert (status, replay["outcome"]) == (200, "unchanged")
        status, corrected = await send(body(model, output_micros_per_million=5_000_000))
        assert (status, corrected["outcome"]) == (200, "updated")
        status, newer = await send(body(model, effective_from="2025-06-01T00:00:00Z"))
        assert (status, newer["outcome"]) == (201, "created")
        prices = await listed(admin, provider="acme", model=model)
        assert [(p["effective_from"][:10], p["output_micros_per_million"]) for p in prices] == [
            ("2025-06-01", 4_000_000),
            ("2025-01-01", 5_000_000),
        ]

    @pytest.mark.parametrize(
        ("field", "value", "location"),
        [
            ("input_micros_per_million", -1, "body.input_micros_per_million"),
            ("output_micros_per_million", 2**63, "body.output_micros_per_million"),
            ("cached_input_micros_per_million", 1.5, "body.cached_input_micros_per_million"),
            ("input_micros_per_million", "1000", "body.input_micros_per_million"),
            ("model", "", "body.model"),
            ("model", "  ", "body.model"),
            ("provider", "", "body.provider"),
            ("currency", "EUR", "body.currency"),
            ("effective_from", "1700000000", "body.effective_from"),
            ("effective_from", "2025-01-01T00:00:00", "body.effective_from"),  # no time zone
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(
        self, admin: Admin, field: str, value: Any, location: str
    ) -> None:
        model = random_code("model")
        payload = {**body(model), field: value}
        response = await admin.client.put(URL, json=payload, headers=admin.operator)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"]["errors"][0]["location"] == location
        assert await listed(admin, model=model) == []

    async def test_nan_is_422(self, admin: Admin) -> None:
        model = random_code("model")
        text = json.dumps(body(model)).replace("1000000", "NaN", 1)
        assert "NaN" in text
        response = await admin.client.put(
            URL, content=text, headers={**admin.operator, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert await listed(admin, model=model) == []
