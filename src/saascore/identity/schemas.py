"""Request and response bodies of `/v1/auth`, `/v1/me` and `/v1/api-keys`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from saascore.identity.permissions import Permission
from saascore.kit.validation import Instant, Label
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
    description="The user's e-mail address",
    min_length=3,
    max_length=320,
    json_schema_extra={"format": "email"},
    examples=["ada@example.com"],
)
_PASSWORD = Field(
    description="The user's password",
    min_length=1,
    max_length=256,
    examples=["correct horse battery staple"],
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterRequest(_Body):
    email: str = _EMAIL
    password: str = _PASSWORD
    name: Label | None = Field(
        description="Your full name", default=None, max_length=255, examples=["Ada Lovelace"]
    )
    organization_name: Label = Field(
        description=("The name of the organisation to create; its slug is made from it"),
        min_length=1,
        max_length=255,
        examples=["Analytical Engines"],
    )


class LoginRequest(_Body):
    email: str = _EMAIL
    password: str = _PASSWORD
    #: The organisation's id or slug, when the e-mail has accounts in several.
    organization: str | None = Field(
        description=("The organisation's id or slug, when the e-mail has accounts in several."),
        default=None,
        max_length=255,
        examples=[None],
    )


class RefreshRequest(_Body):
    refresh_token: str = Field(
        description=("A refresh token from a login or an earlier refresh (single use)"),
        examples=["rt_9Zq1xv..."],
        min_length=1,
        max_length=4096,
    )


class TokenResponse(BaseModel):
    access_token: str = Field(
        description="A JWT for `Authorization: Bearer ...`", examples=["eyJhbGciOiJIUzI1NiIs..."]
    )
    refresh_token: str = Field(
        description="Spend it at `/v1/auth/refresh` for new tokens; it works once",
        examples=["rt_9Zq1xv..."],
    )
    token_type: Literal["bearer"] = Field(default="bearer", description="Always `bearer`")
    #: Seconds until the access token expires.
    expires_in: int = Field(description="Seconds until the access token expires", examples=[900])
    refresh_expires_in: int = Field(
        description="Seconds until the refresh token expires", examples=[2_592_000]
    )
    user_id: uuid.UUID = Field(description="The logged-in user's id")
    organization_id: uuid.UUID = Field(description="The user's organisation's id")


class OrganizationRef(BaseModel):
    id: uuid.UUID = Field(description="The organisation's id")
    name: str = Field(description="The organisation's name", examples=["Analytical Engines"])
    slug: str = Field(
        description="Its URL-safe short name, unique", examples=["analytical-engines"]
    )
    plan: str = Field(description="The code of its plan", examples=["pro"])
    status: str = Field(description="`active` or `suspended`", examples=["active"])


class MeResponse(BaseModel):
    """Who the credentials belong to."""

    kind: Literal["user", "api_key", "operator"] = Field(
        description="`user` (an access token), `api_key` or `operator`", examples=["user"]
    )
    id: uuid.UUID = Field(description="The user's, the key's or the operator key's id")
    role: UserRole | None = Field(
        description=("The user's role (a key's user's role); null for operators and service keys")
    )
    permissions: list[Permission] = Field(
        description=("What the credentials may do: the role's permissions, or the key's scopes")
    )
    user: UserOut | None = Field(
        description="The user, when the credentials are a user's or a user's key"
    )
    organization: OrganizationRef | None = Field(description="The organisation; null for operators")


class ProvisionRequest(_Body):
    external_platform: str = Field(
        description="The platform the ids come from",
        min_length=1,
        max_length=50,
        examples=["shopify"],
    )
    external_user_id: str = Field(
        description="The user's id on that platform",
        min_length=1,
        max_length=255,
        examples=["user-8812"],
    )
    external_store_id: str | None = Field(
        description="The store or account the user belongs to there, if any",
        default=None,
        max_length=255,
        examples=["store-17"],
    )
    email: str = _EMAIL
    name: Label | None = Field(
        description="The user's full name", examples=["Ada Lovelace"], default=None, max_length=255
    )
    organization_external_id: str = Field(
        description="The organisation's id on that platform",
        min_length=1,
        max_length=255,
        examples=["store-17"],
    )
    organization_name: Label = Field(
        description="The organisation's name, when it is created",
        min_length=1,
        max_length=255,
        examples=["Ada's Shop"],
    )
    plan: str | None = Field(
        description=("The plan code of a new organisation (default: the default plan)"),
        default=None,
        max_length=50,
        examples=["pro"],
    )


class ProvisionResponse(BaseModel):
    organization_id: uuid.UUID = Field(description="The organisation found or created")
    user_id: uuid.UUID = Field(description="The user found or created")
    organization_created: bool = Field(
        description="Whether the organisation was created by this call"
    )
    user_created: bool = Field(description="Whether the user was created by this call")


class ApiKeyCreate(_Body):
    name: Label = Field(
        description="A name to recognise the key by",
        min_length=1,
        max_length=255,
        examples=["ingest worker"],
    )
    scopes: list[Permission] = Field(
        description="What the key may do; within your own permissions",
        examples=[["usage:write", "usage:read"]],
        default_factory=lambda: [Permission.USAGE_WRITE, Permission.USAGE_READ],
        min_length=1,
        max_length=len(Permission),
    )
    expires_at: Instant | None = Field(
        default=None, description="When the key stops working; null: never"
    )
    environment: ApiKeyEnvironment = Field(
        default=ApiKeyEnvironment.LIVE,
        description="`live` (keys start `sk_live_`) or `test` (`sk_test_`)",
    )


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The key's id, to revoke it")
    name: str = Field(description="The key's name", examples=["ingest worker"])
    #: The start of the key, to recognise it.
    key_prefix: str = Field(
        description="The start of the key, to recognise it.", examples=["sk_live_Xk2f9QzA"]
    )
    scopes: list[str] = Field(
        description="What the key may do", examples=[["usage:write", "usage:read"]]
    )
    environment: ApiKeyEnvironment = Field(description="`live` or `test`")
    user_id: uuid.UUID | None = Field(
        description=("The user the key acts for; null: a service key of the organisation")
    )
    created_at: datetime = Field(description="When it was created")
    expires_at: datetime | None = Field(description="When it stops working; null: never")
    last_used_at: datetime | None = Field(description="When it last authenticated a request")
    revoked_at: datetime | None = Field(description="When it was revoked; null: it works")


class ApiKeyCreated(ApiKeyOut):
    #: The key itself. Shown this once: only its hash is kept.
    key: str = Field(
        description="The key itself. Shown this once: only its hash is kept.",
        examples=["sk_live_Xk2f9QzA..."],
    )


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
