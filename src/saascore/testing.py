"""Helpers for the tests of projects built on saascore (seed 004's `testing`).

async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
    headers = await register_and_login(c)
    await c.get("/v1/me", headers=headers)
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx

__all__ = ["register_and_login"]


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
    (random e-mail and name unless given)."""
    tag = secrets.token_hex(4)
    body: dict[str, Any] = {
        "email": email or f"owner-{tag}@example.com",
        "password": password or secrets.token_urlsafe(16),
        "name": name,
        "organization_name": organization_name or f"Test Organisation {tag}",
    }
    response = await client.post("/v1/auth/register", json=body)
    if response.status_code != 201:
        raise AssertionError(f"registration failed: {response.status_code} {response.text}")
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
