"""The API docs (Swagger UI, ReDoc) and the home page `/`, served without the internet.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine
that is offline or behind a firewall. `install_docs` serves the same pages with their scripts,
styles and icon taken from the `fastapi-offline` package, under `assets_url`. Every URL a page
names is prefixed with the request's `root_path`, so the pages keep working when the app is
mounted under a path of a host app (`host.mount("/saas", create_app())`).
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS_PACKAGE", "home_page", "install_docs", "install_home"]

#: The package whose `static/` folder holds swagger-ui-bundle.js, swagger-ui.css,
#: redoc.standalone.js and favicon.png.
ASSETS_PACKAGE = "fastapi_offline"

#: ReDoc's sidebar shows Redocly's logo from their CDN; an image that cannot load is dropped, so
#: the bundle is served with an empty image in its place.
REDOC_LOGO = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
NO_IMAGE = b'src:"data:,"'

#: Swagger UI checks the document against a public validator and shows its badge: off, since
#: it is a request to the internet.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}


def _root(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/")


@cache
def redoc_bundle() -> bytes:
    """ReDoc's standalone bundle, asking nothing of another host."""
    bundle = (files(ASSETS_PACKAGE) / "static" / "redoc.standalone.js").read_bytes()
    return bundle.replace(REDOC_LOGO, NO_IMAGE)


def install_docs(
    app: FastAPI,
    *,
    docs_url: str | None = "/docs",
    redoc_url: str | None = "/redoc",
    assets_url: str = "/docs/static",
) -> None:
    """Serve Swagger UI at `docs_url` (with its OAuth2 redirect page at
    `app.swagger_ui_oauth2_redirect_url`) and ReDoc at `redoc_url` (None leaves one out), their
    assets under `assets_url`, on `app`'s OpenAPI document. Make `app` with
    `FastAPI(docs_url=None, redoc_url=None)`, or FastAPI adds its CDN pages first."""
    openapi_url = app.openapi_url
    if openapi_url is None or (docs_url is None and redoc_url is None):
        return
    app.docs_url = docs_url
    app.redoc_url = redoc_url

    async def redoc_script(request: Request) -> Response:
        return Response(redoc_bundle(), media_type="text/javascript; charset=utf-8")

    # Before the mount, which would serve the file as it is.
    app.add_route(f"{assets_url}/redoc.standalone.js", redoc_script, include_in_schema=False)
    app.mount(assets_url, StaticFiles(packages=[(ASSETS_PACKAGE, "static")]), name="docs-assets")
    favicon = f"{assets_url}/favicon.png"

    if docs_url is not None:
        redirect_url = app.swagger_ui_oauth2_redirect_url
        parameters = {**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})}

        async def swagger_ui(request: Request) -> HTMLResponse:
            root = _root(request)
            return get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{assets_url}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{assets_url}/swagger-ui.css",
                swagger_favicon_url=root + favicon,
                oauth2_redirect_url=root + redirect_url if redirect_url else None,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=parameters,
            )

        app.add_route(docs_url, swagger_ui, include_in_schema=False)
        if redirect_url:

            async def swagger_ui_redirect(request: Request) -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

            app.add_route(redirect_url, swagger_ui_redirect, include_in_schema=False)

    if redoc_url is not None:

        async def redoc(request: Request) -> HTMLResponse:
            root = _root(request)
            return get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{assets_url}/redoc.standalone.js",
                redoc_favicon_url=root + favicon,
                with_google_fonts=False,
            )

        app.add_route(redoc_url, redoc, include_in_schema=False)


def home_page(app: FastAPI, root: str, health_urls: dict[str, str]) -> str:
    """The HTML of `/`: the app's name and version, and links to what `app` serves (the docs
    pages it has, the health endpoints `health_urls` (label: path) and the OpenAPI schema),
    each under `root`. Nothing in it is loaded from elsewhere."""
    links: list[tuple[str, str, str]] = []
    if app.docs_url is not None:
        links.append(("API docs", app.docs_url, "Swagger UI: read and try every endpoint"))
    if app.redoc_url is not None:
        links.append(("API reference", app.redoc_url, "the same document, rendered by ReDoc"))
    if app.openapi_url is not None:
        links.append(("OpenAPI schema", app.openapi_url, "the document itself, as JSON"))
    links.extend((path, path, label) for label, path in health_urls.items())
    items = "\n".join(
        f'      <li><a href="{escape(root + path)}">{escape(name)}</a> - {escape(note)}</li>'
        for name, path, note in links
    )
    title = escape(f"{app.title} {app.version}")
    description = escape(app.description or "")
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>{title}</title>
    <style>
      body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto;
              padding: 0 1rem; line-height: 1.5; color: #1f2328; }}
      h1 {{ font-size: 1.6rem; margin-bottom: 0.2rem; }}
      li {{ margin: 0.4rem 0; }}
      a {{ color: #0969da; }}
    </style>
  </head>
  <body>
    <h1>{title}</h1>
    <p>{description}</p>
    <ul>
{items}
    </ul>
  </body>
</html>
"""


def install_home(app: FastAPI, *, health_urls: dict[str, str] | None = None) -> None:
    """Answer `/` with `home_page`, left out of the OpenAPI schema."""
    health = health_urls if health_urls is not None else {}

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(home_page(app, _root(request), health))

    app.add_route("/", home, include_in_schema=False)
