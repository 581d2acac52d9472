"""`create_webhooks_router()`: `/v1/webhook-endpoints`, an organisation's webhook endpoints and
their deliveries, for its admins; `document_webhooks(app)`: the event catalogue as the OpenAPI
document's `webhooks`."""

from __future__ import annotations

import functools
import inspect
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Response, status
from pydantic import BaseModel, Field, create_model

from saascore.api.deps import CoreDep, OriginDep, SessionDep, TenantDep, require
from saascore.api.errors import error_responses
from saascore.events.bus import EventPayload
from saascore.events.catalog import PUBLIC_EVENTS, WebhookTest
from saascore.events.errors import (
    DeliveryInFlight,
    EndpointDisabled,
    TooManyEndpoints,
    UnknownEventType,
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
    WebhookUrlInvalid,
    WebhookUrlNotHttps,
    WebhookUrlPrivate,
    WebhookUrlTooLong,
    WebhookUrlUnresolvable,
    WebhookUrlUserinfo,
)
from saascore.events.schemas import (
    EventTypeOut,
    WebhookDeliveryOut,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookTestSent,
    describe,
)
from saascore.events.service import UNCHANGED
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import InvalidInput
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    paginate,
    uuid_cursor,
)

__all__ = ["create_webhooks_router", "document_webhooks"]

Admin = Annotated[Principal, Depends(require(Permission.ADMIN))]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=200)]

URL_ERRORS = (
    WebhookUrlInvalid,
    WebhookUrlTooLong,
    WebhookUrlNotHttps,
    WebhookUrlUserinfo,
    WebhookUrlPrivate,
    WebhookUrlUnresolvable,
    UnknownEventType,
    InvalidInput,
)


def create_webhooks_router() -> APIRouter:
    """`/v1/webhook-endpoints`: where the organisation's events are sent, signed per Standard
    Webhooks, and what happened to each delivery. For admins (`admin` permission)."""
    router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])

    @router.get(
        "/event-types",
        summary="List event types",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied),
    )
    async def list_event_types(principal: TenantDep) -> list[EventTypeOut]:
        """The event types an endpoint may subscribe to, each with the JSON schema of its
        `data`."""
        return [EventTypeOut.of(name, payload) for name, payload in sorted(PUBLIC_EVENTS.items())]

    @router.post(
        "",
        summary="Create a webhook endpoint",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, *URL_ERRORS, TooManyEndpoints),
    )
    async def create_webhook_endpoint(
        body: WebhookEndpointCreate,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> WebhookEndpointWithSecret:
        """Add an endpoint. The answer holds its signing secret: keep it, it is not shown
        again (rotate it to get a new one). An organisation has at most 20 endpoints (409
        `too_many_webhook_endpoints` beyond)."""
        endpoint, secret = await core.webhooks.create(
            principal.tenant,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
            actor=principal.actor(origin),
            session=session,
        )
        return WebhookEndpointWithSecret(
            **WebhookEndpointOut.model_validate(endpoint).model_dump(), secret=secret
        )

    @router.get(
        "",
        summary="List webhook endpoints",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_webhook_endpoints(
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[WebhookEndpointOut]:
        """The organisation's endpoints, newest first, without their secrets."""
        endpoints = await core.webhooks.list(
            principal.tenant, limit=limit + 1, after=uuid_cursor(cursor), session=session
        )
        items, next_cursor = paginate(endpoints, limit, lambda e: e.id)
        return Page(
            items=[WebhookEndpointOut.model_validate(e) for e in items], next_cursor=next_cursor
        )

    @router.get(
        "/{endpoint_id}",
        summary="Get a webhook endpoint",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound),
    )
    async def get_webhook_endpoint(
        endpoint_id: uuid.UUID, principal: Admin, core: CoreDep, session: SessionDep
    ) -> WebhookEndpointOut:
        """One endpoint, without its secret."""
        endpoint = await core.webhooks.get(principal.tenant, endpoint_id, session=session)
        return WebhookEndpointOut.model_validate(endpoint)

    @router.patch(
        "/{endpoint_id}",
        summary="Update a webhook endpoint",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound, *URL_ERRORS
        ),
    )
    async def update_webhook_endpoint(
        endpoint_id: uuid.UUID,
        body: WebhookEndpointUpdate,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> WebhookEndpointOut:
        """Change the URL, the event types, the description, or enable (`enabled: true`,
        which clears the failure record) or disable it (`enabled: false`, as
        `POST .../disable`). Fields left out stay as they are."""
        given = body.model_fields_set
        endpoint = await core.webhooks.update(
            principal.tenant,
            endpoint_id,
            url=body.url if body.url is not None else UNCHANGED,
            event_types=body.event_types if body.event_types is not None else UNCHANGED,
            description=body.description if "description" in given else UNCHANGED,
            enabled=body.enabled if body.enabled is not None else UNCHANGED,
            actor=principal.actor(origin),
            session=session,
        )
        return WebhookEndpointOut.model_validate(endpoint)

    @router.post(
        "/{endpoint_id}/disable",
        summary="Disable a webhook endpoint",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound),
    )
    async def disable_webhook_endpoint(
        endpoint_id: uuid.UUID,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> WebhookEndpointOut:
        """Stop sending to the endpoint; its deliveries wait until it is enabled again
        (`PATCH` with `enabled: true`)."""
        endpoint = await core.webhooks.disable(
            principal.tenant, endpoint_id, actor=principal.actor(origin), session=session
        )
        return WebhookEndpointOut.model_validate(endpoint)

    @router.delete(
        "/{endpoint_id}",
        summary="Delete a webhook endpoint",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound),
    )
    async def delete_webhook_endpoint(
        endpoint_id: uuid.UUID,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> None:
        """Delete the endpoint, with its deliveries and their history."""
        await core.webhooks.delete(
            principal.tenant, endpoint_id, actor=principal.actor(origin), session=session
        )

    @router.post(
        "/{endpoint_id}/rotate-secret",
        summary="Rotate a webhook endpoint's secret",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound),
    )
    async def rotate_webhook_secret(
        endpoint_id: uuid.UUID,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> WebhookEndpointWithSecret:
        """A new signing secret, shown only in this answer. For 24 hours each delivery is
        signed with both the new and the previous secret, so receivers can switch over."""
        endpoint, secret = await core.webhooks.rotate_secret(
            principal.tenant, endpoint_id, actor=principal.actor(origin), session=session
        )
        return WebhookEndpointWithSecret(
            **WebhookEndpointOut.model_validate(endpoint).model_dump(), secret=secret
        )

    @router.post(
        "/{endpoint_id}/test",
        summary="Send a test event",
        status_code=status.HTTP_202_ACCEPTED,
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound, EndpointDisabled
        ),
    )
    async def send_webhook_test(
        endpoint_id: uuid.UUID,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> WebhookTestSent:
        """Send a `webhook.test` event to this endpoint (only); follow it in its deliveries."""
        emitted = await core.webhooks.send_test(
            principal.tenant, endpoint_id, actor=principal.actor(origin), session=session
        )
        return WebhookTestSent(event_id=emitted.id)

    @router.get(
        "/{endpoint_id}/deliveries",
        summary="List an endpoint's deliveries",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, WebhookEndpointNotFound, InvalidCursor
        ),
    )
    async def list_webhook_deliveries(
        endpoint_id: uuid.UUID,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[WebhookDeliveryOut]:
        """The endpoint's deliveries, newest first, each with its attempts: status code,
        duration and error."""
        records = await core.webhooks.deliveries(
            principal.tenant,
            endpoint_id,
            limit=limit + 1,
            before=uuid_cursor(cursor),
            session=session,
        )
        items, next_cursor = paginate(records, limit, lambda r: r.delivery.id)
        return Page(items=[WebhookDeliveryOut.of(r) for r in items], next_cursor=next_cursor)

    @router.post(
        "/{endpoint_id}/deliveries/{delivery_id}/retry",
        summary="Retry a delivery",
        status_code=status.HTTP_202_ACCEPTED,
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            WebhookEndpointNotFound,
            WebhookDeliveryNotFound,
            EndpointDisabled,
            DeliveryInFlight,
        ),
    )
    async def retry_webhook_delivery(
        endpoint_id: uuid.UUID,
        delivery_id: uuid.UUID,
        principal: Admin,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> WebhookDeliveryOut:
        """Send the delivery again now, with the same `webhook-id` (back to `pending`)."""
        record = await core.webhooks.retry_delivery(
            principal.tenant,
            endpoint_id,
            delivery_id,
            actor=principal.actor(origin),
            session=session,
        )
        return WebhookDeliveryOut.of(record)

    return router


# --- the catalogue in the OpenAPI document -------------------------------------------------------
def _envelope(name: str, payload: type[EventPayload]) -> type[BaseModel]:
    """The body a receiver gets for `name`: Standard Webhooks' `type`, `timestamp`, `data`."""
    model: type[BaseModel] = create_model(
        f"{payload.__name__}Webhook",
        __doc__=f"The body of the `{name}` webhook.",
        type=(Literal[name], Field(description="The event type")),  # type: ignore[arg-type]
        timestamp=(datetime, Field(description="When the event happened")),
        data=(payload, Field(description="The event's payload")),
    )
    return model


def document_webhooks(app: FastAPI) -> None:
    """List every public event type (and `webhook.test`) in the OpenAPI document's `webhooks`
    (OpenAPI 3.1), the body each one POSTs and the headers it is signed with."""
    app.webhooks.include_router(_webhook_receivers())


@functools.cache
def _webhook_receivers() -> APIRouter:
    """The documented receivers, built once per process (a model per event type)."""
    receivers = APIRouter()
    signed = (
        "Signed per Standard Webhooks: verify `webhook-signature` over `webhook-id`, "
        "`webhook-timestamp` and the raw body with the endpoint's secret "
        "(`standardwebhooks.Webhook(secret).verify(body, headers)`); `webhook-id` is the "
        "same on every retry of an event. Answer 2xx within 10 s."
    )
    catalogue: dict[str, type[EventPayload]] = {**PUBLIC_EVENTS, WebhookTest.type: WebhookTest}
    for name, payload in sorted(catalogue.items()):
        body_model = _envelope(name, payload)

        async def receive(body: Any) -> None:  # documentation only: never called
            raise NotImplementedError

        receive.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    "body",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=Annotated[body_model, Body()],
                )
            ],
            return_annotation=None,
        )
        receivers.add_api_route(
            name,
            receive,
            methods=["POST"],
            summary=name,
            description=f"{describe(payload)}\n\n{signed}",
            operation_id=f"webhook_{name.replace('.', '_')}",
            tags=["webhooks"],
            response_class=Response,
            status_code=status.HTTP_200_OK,
            responses={200: {"description": "Received (any 2xx)"}},
        )
    return receivers
