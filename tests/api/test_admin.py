"""`/v1/admin` as a whole, through the real app: every operator route, whichever domain serves
it, refuses a tenant's credentials (403, nothing changes) and anyone without credentials or
with a revoked operator key. Each domain's operator routes are tested in its own
`tests/<domain>/test_endpoints.py`."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi import FastAPI

from saascore.testing import TestTenant
from tests.admin import Admin, stored

pytestmark = pytest.mark.asyncio(loop_scope="session")


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/admin")
        for method in operations
    )


class TestOnlyOperators:
    async def test_a_tenants_credentials_get_403_everywhere_and_change_nothing(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        routes = admin_routes(admin.app)
        assert len(routes) >= 11, routes
        values = {
            "org_id": str(customer.organization_id),
            "metric": "tokens",
            "code": admin.plan,
            "invoice_id": str(uuid.uuid4()),
            "payment_id": str(uuid.uuid4()),
        }
        before = await stored(admin.core.database, customer.organization_id)
        for headers in (customer.headers, customer.key_headers):
            for method, template in routes:
                path = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], template)
                response = await admin.client.request(method, path, headers=headers)
                assert response.status_code == 403, (method, path, response.text)
                assert response.json()["error"]["code"] == "permission_denied"
        assert await stored(admin.core.database, customer.organization_id) == before

    async def test_without_credentials(self, admin: Admin) -> None:
        response = await admin.client.get("/v1/admin/organizations")
        assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthenticated")

    async def test_a_revoked_operator_key(self, admin: Admin) -> None:
        key, raw = await admin.core.api_keys.create_operator_key(name="leaver")
        await admin.core.api_keys.revoke_operator_key(key.id)
        response = await admin.client.get("/v1/admin/organizations", headers={"X-API-Key": raw})
        assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_token")
