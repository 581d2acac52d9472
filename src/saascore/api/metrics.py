"""Prometheus metrics over HTTP: `GET /metrics`, and a middleware that counts every request.

    install_metrics(app)                          # count requests: method, route, status, latency
    app.include_router(create_metrics_router())   # serve them at GET /metrics

`create_app` does both; a host app mounting saascore's routers does it itself.

What is counted:

- `saascore_http_requests_total{method, route, status}` and
  `saascore_http_request_duration_seconds{method, route}` (a histogram), where `route` is the
  route's template (`/v1/api-keys/{key_id}`), never the raw path: ids in paths would make a
  new series per object. A request no route matches is counted under `route="<unmatched>"`,
  and a method outside the standard ones under `method="OTHER"`.
- `saascore_http_errors_total{status, code}`: every error envelope answered, by its `code`
  (`rate_limited`, `limit_exceeded`, `validation_error`, ...), counted in `api.errors`.
- The services' own counters (`saascore.kit.metrics`): usage recorded and refused by metric,
  token usage that could not be logged, usage of unpriced models.

**Several processes** (`saascore serve --workers N`, gunicorn): each worker counts in its own
memory, so a scrape would see only the worker that answered it. Set `PROMETHEUS_MULTIPROC_DIR`
to an existing directory that every worker can write, in the server's environment (it must be
set before `prometheus_client` is first imported, so in the environment, not in code): each
process then keeps its values in files there, and `/metrics` answers the sum over every
process. `saascore serve` removes the files a previous run left (they would otherwise be added
to the new run's counts); under another process manager, empty the directory before the
workers start. In that mode `/metrics` serves only what the files hold: no
`process_*` or `python_*` metrics, and no `_created` samples.

**Who may read it.** The metrics describe every tenant's traffic, so `create_app` serves
`/metrics` only with `SAASCORE_METRICS_TOKEN` set, and then only to a request that carries it
(`Authorization: Bearer <token>`; 401 otherwise). Without the token the route does not exist
(404). `SAASCORE_METRICS_PORT` makes `saascore serve` open a second listener that serves only
the metrics, without a token, for a scraper on a private network (`serve_metrics`).

Label values are bounded (route templates, status codes, error codes, meter codes, and model
and provider names only when the catalog knows them, else `other`): a client cannot grow the
exposition by inventing names.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import threading
import time
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import HTTPException
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "HTTP_ERRORS",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "MULTIPROC_DIR_VARIABLE",
    "MetricsMiddleware",
    "create_metrics_router",
    "install_metrics",
    "metrics_registry",
    "serve_metrics",
]

MULTIPROC_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED: Final = "<unmatched>"
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)

HTTP_REQUESTS = Counter(
    "saascore_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "saascore_http_request_duration_seconds",
    "Time from a request's arrival to its response's last byte, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_ERRORS = Counter(
    "saascore_http_errors_total",
    "Error responses answered, by status and error code.",
    ["status", "code"],
)


def metrics_registry() -> CollectorRegistry:
    """What `/metrics` serves: this process's registry, or with `PROMETHEUS_MULTIPROC_DIR` set,
    the sum over every process's files."""
    directory = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def create_metrics_router(*, token: str | None) -> APIRouter:
    """`GET /metrics` in Prometheus' text format (OpenMetrics when the scraper asks for it),
    only to requests with `Authorization: Bearer <token>`. `token=None` serves it to anyone:
    only for an app that the public cannot reach."""
    from saascore.api.errors import ErrorResponse  # here: errors counts into this module

    router = APIRouter(tags=["health"])
    expected = None if token is None else f"Bearer {token}".encode()
    refused: dict[int | str, dict[str, Any]] = {
        401: {
            "model": ErrorResponse,
            "description": "`unauthorized`: the token is missing or wrong",
        }
    }

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The metrics in Prometheus' text exposition format.",
                "content": {
                    "text/plain": {
                        "schema": {"type": "string"},
                        "example": (
                            "# TYPE saascore_http_requests_total counter\n"
                            'saascore_http_requests_total{method="GET",route="/v1/me",'
                            'status="200"} 42.0\n'
                        ),
                    },
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            },
            **(refused if expected is not None else {}),
        },
    )
    async def metrics(request: Request) -> Response:
        """Requests, latency, errors by code, usage recorded and refused.

        **Credentials:** the metrics token (`Authorization: Bearer ...`,
        `SAASCORE_METRICS_TOKEN`), not a user's or a key's."""
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, expected):
                raise HTTPException(
                    401, "the metrics token is missing or wrong", {"WWW-Authenticate": "Bearer"}
                )
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(metrics_registry()), media_type=content_type)

    return router


class MetricsMiddleware:
    """Counts each HTTP request by method, route template and status, and observes its
    latency. Pure ASGI (no per-request task or body buffering), and outside the app's error
    handling for what escapes it: an exception that reaches this middleware is counted as a
    500, which is what the server error middleware outside it answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled children, looked up once per combination rather than per request.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self._observe(scope, root_path, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, root_path: str, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = _route_template(scope, root_path)
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = HTTP_REQUESTS.labels(method, route, str(status))
            self._counters[(method, route, status)] = counter
        counter.inc()
        histogram = self._histograms.get((method, route))
        if histogram is None:
            histogram = HTTP_REQUEST_DURATION.labels(method, route)
            self._histograms[(method, route)] = histogram
        histogram.observe(seconds)


def _route_template(scope: Scope, root_path: str) -> str:
    """The template of the route that answered, with the prefixes of the mounts and included
    routers it was reached through. Never the raw path: a prefix is kept only when it is
    literal (a prefix with parameters is left out rather than have its values in a label)."""
    # The routers write the route they chose into the scope.
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    regex = getattr(route, "path_regex", None)
    if not isinstance(template, str) or not template or not isinstance(regex, re.Pattern):
        return UNMATCHED
    # Mounts lengthen root_path by the part of the path they matched.
    current: str = scope.get("root_path", "")
    mounted = current[len(root_path) :]
    path: str = scope["path"]
    if current and path.startswith(current):
        path = path[len(current) :]
    if regex.match(path):
        return mounted + template
    # Under a router included with a prefix, the route's own template is the path's tail.
    tail = _tail_pattern(regex.pattern).match(path)
    converted = getattr(route, "param_convertors", {})
    if tail is None or not set(scope.get("path_params", ())) <= set(converted):
        return mounted + template
    prefix: str = tail.group("_prefix")
    return mounted + prefix + template


@functools.lru_cache(maxsize=1024)
def _tail_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("(?P<_prefix>/.*?)" + pattern.removeprefix("^"))


def install_metrics(app: FastAPI) -> None:
    """Count the app's requests. Call it before the app starts (middleware cannot be added
    later) and after its other middleware, so that their time is counted too. Calling it
    again changes nothing (each request is counted once)."""
    installed: list[object] = [middleware.cls for middleware in app.user_middleware]
    if MetricsMiddleware not in installed:
        app.add_middleware(MetricsMiddleware)


def serve_metrics(host: str, port: int) -> threading.Thread:
    """Serve `/metrics` (and only that, without a token) on `host:port` from a daemon thread
    of this process, as `saascore serve` does with `SAASCORE_METRICS_PORT`: this process's
    registry, or with `PROMETHEUS_MULTIPROC_DIR` set, the sum over every worker."""
    _server, thread = start_http_server(port, host, registry=metrics_registry())
    return thread
