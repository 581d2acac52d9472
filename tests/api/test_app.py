"""`create_app`: the order its routes are matched in."""

from __future__ import annotations

from starlette.routing import compile_path

from saascore.api import create_app
from tests.helpers import make_settings


class TestRouteOrder:
    def test_only_the_provider_webhook_route_takes_its_paths(self) -> None:
        """The providers' webhooks are matched right after recording usage, for
        speed: that is safe only while no other route takes a path of theirs, whatever
        the method (an earlier partial match would answer 405 in their place)."""
        app = create_app(make_settings(database_url="sqlite+aiosqlite:///:memory:"))
        paths = [
            template
            for template in app.openapi()["paths"]
            for path in ("/v1/webhooks/stripe", "/v1/webhooks/lemonsqueezy", "/v1/webhooks/mock")
            if compile_path(template)[0].match(path)
        ]
        assert set(paths) == {"/v1/webhooks/{provider}"}
