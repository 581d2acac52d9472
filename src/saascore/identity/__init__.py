"""Identity: passwords, tokens, API keys and the principals they authenticate."""

from saascore.identity.api_keys import ApiKeyService
from saascore.identity.errors import (
    AccountDisabled,
    ApiKeyNotFound,
    InvalidCredentials,
    InvalidToken,
    LastOwner,
    OrganizationRequired,
    OrganizationSuspended,
    PermissionDenied,
    TokenReused,
    Unauthenticated,
    UserExists,
    UserNotFound,
    WeakPassword,
)
from saascore.identity.permissions import ROLE_PERMISSIONS, Permission
from saascore.identity.principal import Principal, PrincipalKind
from saascore.identity.service import IdentityService, Provisioned, TokenPair, normalize_email
from saascore.identity.tokens import TokenCodec

__all__ = [
    "ROLE_PERMISSIONS",
    "AccountDisabled",
    "ApiKeyNotFound",
    "ApiKeyService",
    "IdentityService",
    "InvalidCredentials",
    "InvalidToken",
    "LastOwner",
    "OrganizationRequired",
    "OrganizationSuspended",
    "Permission",
    "PermissionDenied",
    "Principal",
    "PrincipalKind",
    "Provisioned",
    "TokenCodec",
    "TokenPair",
    "TokenReused",
    "Unauthenticated",
    "UserExists",
    "UserNotFound",
    "WeakPassword",
    "normalize_email",
]
