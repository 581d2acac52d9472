"""The HTTP API: `create_app`, the error envelope, health and shared dependencies."""

from saascore.api.app import (
    app_factory,
    create_app,
    install,
    mounted_lifespan,
    saascore_lifespan,
    setup_cors,
)
from saascore.api.docs import install_docs, install_home
from saascore.api.errors import ErrorResponse, error_response
from saascore.api.health import create_health_router
from saascore.api.metrics import create_metrics_router, install_metrics

__all__ = [
    "ErrorResponse",
    "app_factory",
    "create_app",
    "create_health_router",
    "create_metrics_router",
    "error_response",
    "install",
    "install_docs",
    "install_home",
    "install_metrics",
    "mounted_lifespan",
    "saascore_lifespan",
    "setup_cors",
]
