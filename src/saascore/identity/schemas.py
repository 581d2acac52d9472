"""Request and response bodies of `/v1/auth`, `/v1/me` and `/v1/api-keys`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from saascore.identity.permissions import Permission
from saascore.kit.validation import Instant
from saascore.models import ApiKeyEnvironment, UserRole
from saascore.tenancy.passwords import MAX_PASSWORD
from saascore.tenancy.schemas import UserCreate, UserOut, UserUpdate

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyOut",
    "LoginRequest",
    "MeResponse",
    "OrganizationRef",
    "ProvisionRequest",
    "ProvisionResponse",
    "RefreshRequest",
    "RegisterRequest",
    "TokenResponse",
    "UserOut",
    "publish_password_rules",
]

_EMAIL = Field(
    min_length=3,
    max_length=320,
    json_schema_extra={"format": "email"},
    examples=["ada@example.com"],
)
_PASSWORD = Field(min_length=1, max_length=256, examples=["correct horse battery staple"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterRequest(_Body):
    email: str = _EMAIL
    password: str = _PASSWORD
    name: str | None = Field(default=None, max_length=255, examples=["Ada Lovelace"])
    organization_name: str = Field(min_length=1, max_length=255, examples=["Analytical Engines"])


class LoginRequest(_Body):
    email: str = _EMAIL
    password: str = _PASSWORD
    #: The organisation's id or slug, when the e-mail has accounts in several.
    organization: str | None = Field(default=None, max_length=255, examples=[None])


class RefreshRequest(_Body):
    refresh_token: str = Field(min_length=1, max_length=4096)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the scheme, not a secret
    #: Seconds until the access token expires.
    expires_in: int = Field(examples=[900])
    refresh_expires_in: int = Field(examples=[2_592_000])
    user_id: uuid.UUID
    organization_id: uuid.UUID


class OrganizationRef(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    plan: str
    status: str


class MeResponse(BaseModel):
    """Who the credentials belong to."""

    kind: Literal["user", "api_key", "operator"]
    id: uuid.UUID
    role: UserRole | None
    permissions: list[Permission]
    user: UserOut | None
    organization: OrganizationRef | None


class ProvisionRequest(_Body):
    external_platform: str = Field(min_length=1, max_length=50, examples=["shopify"])
    external_user_id: str = Field(min_length=1, max_length=255, examples=["user-8812"])
    external_store_id: str | None = Field(default=None, max_length=255, examples=["store-17"])
    email: str = _EMAIL
    name: str | None = Field(default=None, max_length=255)
    organization_external_id: str = Field(min_length=1, max_length=255, examples=["store-17"])
    organization_name: str = Field(min_length=1, max_length=255, examples=["Ada's Shop"])
    plan: str | None = Field(default=None, max_length=50, examples=["pro"])


class ProvisionResponse(BaseModel):
    organization_id: uuid.UUID
    user_id: uuid.UUID
    organization_created: bool
    user_created: bool


class ApiKeyCreate(_Body):
    name: str = Field(min_length=1, max_length=255, examples=["ingest worker"])
    scopes: list[Permission] = Field(
        default_factory=lambda: [Permission.USAGE_WRITE, Permission.USAGE_READ],
        min_length=1,
        max_length=len(Permission),
    )
    expires_at: Instant | None = None
    environment: ApiKeyEnvironment = ApiKeyEnvironment.LIVE


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    #: The start of the key, to recognise it.
    key_prefix: str = Field(examples=["sk_live_Xk2f9QzA"])
    scopes: list[str]
    environment: ApiKeyEnvironment
    user_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    #: The key itself. Shown this once: only its hash is kept.
    key: str = Field(examples=["sk_live_Xk2f9QzA..."])


#: The bodies that set a password, whose rules the OpenAPI document states.
NEW_PASSWORD_BODIES = (RegisterRequest, UserCreate, UserUpdate)
_RULES = (
    "At least {minimum} characters (at most {maximum}). Refused: one character or pattern "
    "repeated, a run such as 1234567890, a common or breached password, and the e-mail "
    "address or a part of it (`weak_password`). No composition rules."
)


def publish_password_rules(document: dict[str, Any], minimum: int) -> None:
    """State in an OpenAPI `document` the password minimum the server enforces: it is a
    setting (`SAASCORE_PASSWORD_MIN_LENGTH`), so the request models cannot carry it, and the
    service's `weak_password` answers it rather than a validation error."""
    schemas = document.get("components", {}).get("schemas", {})
    for body in NEW_PASSWORD_BODIES:
        field = schemas.get(body.__name__, {}).get("properties", {}).get("password")
        if field is None:
            continue
        for option in [field, *field.get("anyOf", [])]:
            if option.get("type") == "string":
                option["minLength"] = minimum
        rules = _RULES.format(minimum=minimum, maximum=MAX_PASSWORD)
        before = field.get("description")
        field["description"] = f"{before}. {rules}" if before else rules
