"""The HTTP API: `create_app`, the error envelope, health and shared dependencies."""

from saascore.api.app import app_factory, create_app, install, saascore_lifespan, setup_cors
from saascore.api.errors import ErrorResponse, error_response
from saascore.api.health import create_health_router

__all__ = [
    "ErrorResponse",
    "app_factory",
    "create_app",
    "create_health_router",
    "error_response",
    "install",
    "saascore_lifespan",
    "setup_cors",
]
