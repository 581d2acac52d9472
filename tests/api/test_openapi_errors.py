"""The OpenAPI document lists every error code the app answers, where it answers it, each with
an example a client can read: collected from the error classes, so a new one cannot be missed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
from fastapi import FastAPI

from saascore.api.app import create_app
from saascore.config import Settings
from saascore.kit.errors import SaascoreError

#: Codes of error classes that no HTTP route answers, and why.
NOT_ON_HTTP = {
    # Category bases: routes raise and declare their specific subclasses.
    "domain_error": "the base of every refusal",
    "already_exists": "a category: `organization_exists`, `user_exists`",
    "conflict": "a category: `idempotency_conflict`, `last_owner`, ...",
    # Services answer it for an unknown organisation; every route looks the organisation up
    # first and answers `organization_not_found`.
    "not_found": "a category: `user_not_found`, `organization_not_found`, ...",
    # Library calls with no route yet.
    "credit_transaction_not_found": "`core.credits.refund` only",
    "not_refundable": "`core.credits.refund` only",
    "storage_underflow": "`update_storage_used` only",
    "invoice_not_draft": "`core.invoices.add_line` and `remove_line` only",
    # Billing's library, ahead of its routes (subscriptions, payments, the billing run).
    "currency_mismatch": "`Money` arithmetic",
    "invalid_amount": "`Money.parse`",
    "invalid_proration": "`prorate`",
    "unknown_locale": "`format_money`",
    "naive_datetime": "billing periods",
    "period_out_of_range": "billing periods",
    "outside_period": "`prorate_change`",
    # Payment providers: the webhook intake records these on the stored event.
    "webhook_rejected": "a category: `invalid_signature`, `stale_webhook`, ...",
    "provider_customer_conflict": "a webhook's reason for ignoring an event",
    "provider_price_unknown": "a webhook's failure (500 `webhook_failed`), then retried",
    "webhook_event_not_found": "`saascore webhooks replay` only",
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app: FastAPI = create_app(Settings(metrics_token="m" * 32))
    return app.openapi()


def subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def error_codes() -> set[str]:
    return {
        cls.code
        for cls in subclasses(SaascoreError)
        if isinstance(getattr(cls, "code", None), str) and cls.__module__.startswith("saascore.")
    }


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def codes(operation: dict[str, Any], status: int) -> set[str]:
    response = operation["responses"].get(str(status), {})
    return set(response.get("content", {}).get("application/json", {}).get("examples", {}))


def examples(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, operation in operations(document):
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json", {})
            for code, example in content.get("examples", {}).items():
                yield f"{name} {status}", code, example


class TestEveryCodeIsDocumented:
    def test_every_code_of_the_error_classes_is_in_the_document(
        self, document: dict[str, Any]
    ) -> None:
        found = error_codes()
        assert {"validation_error", "invalid_character", "payload_too_large"} <= found
        assert {"bad_request", "database_unavailable", "rate_limiter_unavailable"} <= found
        listed = {code for _, code, _ in examples(document)}
        assert found - set(NOT_ON_HTTP) - listed == set()

    def test_the_codes_left_out_are_still_error_codes(self) -> None:
        assert set(NOT_ON_HTTP) <= error_codes()

    def test_every_example_carries_its_own_code(self, document: dict[str, Any]) -> None:
        for where, code, example in examples(document):
            assert example["value"]["error"]["code"] == code, where


class TestExamplesAreReal:
    def test_no_message_is_a_reason_phrase_or_cut_off(self, document: dict[str, Any]) -> None:
        phrases = {status.phrase for status in HTTPStatus}
        for where, code, example in examples(document):
            message = example["value"]["error"]["message"]
            for text in (message, example["summary"]):
                assert text not in phrases, (where, code, text)
                assert text.endswith((".", ")")), (where, code, text)
                assert not text.startswith("("), (where, code, text)

    def test_the_messages_found_cut_off_are_whole(self, document: dict[str, Any]) -> None:
        text = json.dumps(document)
        assert "a few minutes ahead. Backfill is for operators." in text
        assert "what its column holds (a BIGINT); nothing was recorded" in text


class TestAppWideErrors:
    def test_a_body_can_be_unreadable_too_large_or_refused(self, document: dict[str, Any]) -> None:
        event = document["paths"]["/v1/usage/events"]["post"]
        assert "bad_request" in codes(event, 400)
        assert "payload_too_large" in codes(event, 413)
        assert {"validation_error", "invalid_character", "invalid_input"} <= codes(event, 422)
        assert {"database_unavailable", "rate_limiter_unavailable"} <= codes(event, 503)
        assert "validation_error" in event["description"].split("**Errors:**")[1]

    def test_every_api_operation_lists_what_the_app_answers_around_it(
        self, document: dict[str, Any]
    ) -> None:
        for name, operation in operations(document):
            if not name.split()[1].startswith("/v1/"):
                continue
            assert "invalid_character" in codes(operation, 422), name
            assert "database_unavailable" in codes(operation, 503), name
            if "requestBody" in operation:
                assert "bad_request" in codes(operation, 400), name
                assert "validation_error" in codes(operation, 422), name
            if name.startswith(("POST", "PUT", "PATCH", "DELETE")):
                assert "payload_too_large" in codes(operation, 413), name
            if "rate_limited" in codes(operation, 429):
                assert "rate_limiter_unavailable" in codes(operation, 503), name
            assert "HTTPValidationError" not in json.dumps(operation["responses"]), name

    def test_an_operation_without_a_body_lists_no_body_errors(
        self, document: dict[str, Any]
    ) -> None:
        me = document["paths"]["/v1/me"]["get"]
        assert codes(me, 400) == codes(me, 413) == set()
        assert codes(me, 422) == {"invalid_character"}
        liveness = document["paths"]["/health"]["get"]
        assert codes(liveness, 503) == set()


class TestPerCredential:
    def test_an_operator_route_lists_no_tenant_refusals(self, document: dict[str, Any]) -> None:
        admin = [(name, op) for name, op in operations(document) if "/v1/admin/" in name]
        assert len(admin) > 10
        for name, operation in admin:
            assert codes(operation, 403) == {"permission_denied"}, name
            assert "account_disabled" not in operation["description"], name

    def test_a_tenant_route_still_lists_them(self, document: dict[str, Any]) -> None:
        usage = document["paths"]["/v1/usage"]["get"]
        assert {"account_disabled", "organization_suspended"} <= codes(usage, 403)


class TestNoBillingYet:
    """Billing is not built yet: nothing the newcomer reads first may promise it."""

    def test_the_service_and_the_cli_do_not_claim_billing(self, document: dict[str, Any]) -> None:
        import tomllib
        from pathlib import Path

        from saascore.cli import _root

        assert "billing" not in document["info"]["description"].lower()
        assert "billing" not in (_root.__doc__ or "").split("\n")[0].lower()
        pyproject = Path(__file__).parents[2] / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text())["project"]
        assert "billing" not in project["description"].lower()
