"""The OpenAPI document reads well: declared tags, described operations and fields.

Walks the document the app serves, so an endpoint or a field added without its text fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from saascore.api.app import create_app
from saascore.api.openapi import OPENAPI_TAGS
from saascore.config import Settings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # The metrics route exists only with a token: document it too.
    app: FastAPI = create_app(Settings(metrics_token="m" * 32))
    return app.openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [
        (f"{method.upper()} {path}", operation)
        for section in ("paths", "webhooks")
        for path, item in document.get(section, {}).items()
        for method, operation in item.items()
    ]
    assert len(found) > 50
    return found


class TestTags:
    def test_every_tag_used_is_declared_with_a_description(self, document: dict[str, Any]) -> None:
        declared = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
        used = {tag for _, operation in operations(document) for tag in operation["tags"]}
        assert used <= set(declared), used - set(declared)
        assert all(len(description) > 20 for description in declared.values()), declared

    def test_the_tags_are_in_reading_order(self, document: dict[str, Any]) -> None:
        names = [tag["name"] for tag in document["tags"]]
        assert names == [tag["name"] for tag in OPENAPI_TAGS]
        assert names[0] == "health"
        assert names[-1] == "admin"
        assert names.index("auth") < names.index("usage") < names.index("audit")


class TestOperations:
    def test_every_operation_has_one_tag_a_summary_and_a_description(
        self, document: dict[str, Any]
    ) -> None:
        for name, operation in operations(document):
            assert len(operation.get("tags", [])) == 1, name
            assert operation.get("summary"), name
            assert len(operation.get("description", "")) > 20, name

    def test_summaries_are_written_not_derived_from_function_names(
        self, document: dict[str, Any]
    ) -> None:
        """FastAPI titles the function name (`create_api_key`: "Create Api Key") when no
        summary is given; a written one is a phrase."""
        for name, operation in operations(document):
            operation_id = operation.get("operationId", "")
            derived = operation_id.split("_v1_")[0].replace("_", " ").title()
            assert operation["summary"] != derived or " " not in derived, name

    def test_each_api_operation_says_who_may_call_it(self, document: dict[str, Any]) -> None:
        for path, item in document["paths"].items():
            for method, operation in item.items():
                assert "**Credentials:**" in operation["description"], f"{method} {path}"

    def test_the_credentials_are_read_from_the_route(self, document: dict[str, Any]) -> None:
        paths = document["paths"]
        assert "`usage:write`" in paths["/v1/usage/events"]["post"]["description"]
        assert "an operator key" in paths["/v1/admin/plans/load"]["post"]["description"]
        assert "**Credentials:** none." in paths["/v1/auth/login"]["post"]["description"]
        errors = paths["/v1/usage/events"]["post"]["description"].split("**Errors:**")[1]
        assert "402 `limit_exceeded`" in errors


def schemas_with_properties(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: schema
        for name, schema in document["components"]["schemas"].items()
        if schema.get("properties")
    }


class TestFields:
    def test_every_property_of_every_schema_has_a_description(
        self, document: dict[str, Any]
    ) -> None:
        undescribed = [
            f"{name}.{field}"
            for name, schema in schemas_with_properties(document).items()
            for field, spec in schema["properties"].items()
            if not spec.get("description")
        ]
        assert undescribed == []

    def test_examples_are_given(self, document: dict[str, Any]) -> None:
        schemas = document["components"]["schemas"]
        event = schemas["UsageEventRequest"]["properties"]
        assert event["metric"]["examples"] == ["tokens"]
        assert schemas["ErrorBody"]["properties"]["code"]["examples"]
