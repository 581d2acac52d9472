"""`WebhookService`: an organisation's webhook endpoints, their secrets and their deliveries.

The rules: a URL is checked by the SSRF guard (syntax, and every address its host resolves
to) whenever it is set; an endpoint subscribes to public event types only (none named: all of
them); an organisation has at most `MAX_ENDPOINTS` endpoints; the signing secret is shown
once, when made or rotated, and a rotated secret keeps signing beside the new one for
`ROTATION_OVERLAP`. Every change emits an event (so it is
audited); sending is the dispatcher's, which a test event or a retry wakes by committing.
"""

from __future__ import annotations

import base64
import builtins
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.events.bus import Event, EventBus
from saascore.events.catalog import (
    PUBLIC_EVENTS,
    WebhookDeliveryRetried,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    WebhookEndpointSecretRotated,
    WebhookEndpointUpdated,
    WebhookTest,
)
from saascore.events.errors import (
    DeliveryInFlight,
    EndpointDisabled,
    TooManyEndpoints,
    UnknownEventType,
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
)
from saascore.events.guard import check_public_url
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_text
from saascore.models import (
    DeliveryStatus,
    Organization,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "ADMIN_DISABLED",
    "MAX_ENDPOINTS",
    "ROTATION_OVERLAP",
    "UNCHANGED",
    "DeliveryRecord",
    "WebhookService",
    "new_secret",
]

#: How long a rotated secret keeps signing beside its successor.
ROTATION_OVERLAP: Final = timedelta(hours=24)
#: The endpoints an organisation may have. Every event goes out once per endpoint that wants
#: it, from one dispatcher shared by every organisation: without a bound, one organisation's
#: thousands of endpoints (all at one victim's URL, say) would multiply each of its events by
#: thousands and hold up everyone else's deliveries.
MAX_ENDPOINTS: Final = 20
#: The `disabled_reason` of an endpoint an admin disabled.
ADMIN_DISABLED: Final = "disabled by an admin"
_SECRET_BYTES = 32
_MAX_EVENT_TYPES = 100
_MAX_DESCRIPTION = 500


class _Unchanged(Enum):
    UNCHANGED = "unchanged"


#: `update`'s default for a field left as it is.
UNCHANGED: Final = _Unchanged.UNCHANGED


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format: `whsec_` and base64 of 32 random
    bytes (what `standardwebhooks.Webhook(secret)` takes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A delivery and its attempts, oldest attempt first."""

    delivery: WebhookDelivery
    attempts: builtins.list[WebhookAttempt]


def _check_event_types(event_types: Iterable[str]) -> builtins.list[str]:
    """The types, without repeats, sorted; each one public (see `PUBLIC_EVENTS`)."""
    wanted = sorted(set(event_types))
    if len(wanted) > _MAX_EVENT_TYPES:
        raise InvalidInput("too many event types", field="event_types")
    unknown = [name for name in wanted if name not in PUBLIC_EVENTS]
    if unknown:
        raise UnknownEventType(
            f"unknown event types: {', '.join(unknown)}",
            field="event_types",
            unknown=unknown,
            known=sorted(PUBLIC_EVENTS),
        )
    return wanted


def _check_description(description: str | None) -> str | None:
    if description is None:
        return None
    description = checked_text(description, field="description").strip()
    if len(description) > _MAX_DESCRIPTION:
        raise InvalidInput(
            f"a description has at most {_MAX_DESCRIPTION} characters", field="description"
        )
    return description or None


class WebhookService:
    """An organisation's webhook endpoints. Every method takes the organisation: an endpoint
    or delivery of another one is `...NotFound`, exactly like one that does not exist."""

    def __init__(
        self,
        database: Database,
        events: EventBus,
        *,
        allow_private: bool = False,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.events = events
        self.allow_private = allow_private
        self.clock = clock

    async def _check_url(self, url: str) -> str:
        return await check_public_url(url, allow_private=self.allow_private)

    # --- endpoints ---------------------------------------------------------------------------
    async def create(
        self,
        org_id: uuid.UUID,
        *,
        url: str,
        event_types: Iterable[str] = (),
        description: str | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its signing secret, which is shown only now (and at rotation)."""
        wanted = _check_event_types(event_types)
        description = _check_description(description)
        checked = await self._check_url(url)
        secret = new_secret()
        async with self.database.scope(session) as s:
            # The organisation's row lock serializes its creations: of two racing ones, the
            # second counts the first's endpoint.
            await s.execute(
                sa.select(Organization.id).where(Organization.id == org_id).with_for_update()
            )
            count = await s.scalar(
                sa.select(sa.func.count())
                .select_from(WebhookEndpoint)
                .where(WebhookEndpoint.organization_id == org_id)
            )
            if int(count or 0) >= MAX_ENDPOINTS:
                raise TooManyEndpoints(
                    f"an organisation has at most {MAX_ENDPOINTS} webhook endpoints: delete "
                    "one to make another",
                    endpoints=int(count or 0),
                    limit=MAX_ENDPOINTS,
                )
            now = self.clock()
            endpoint = WebhookEndpoint(
                organization_id=org_id,
                url=checked,
                description=description,
                event_types=wanted,
                enabled=True,
                secret=secret,
                created_at=now,
                updated_at=now,
            )
            s.add(endpoint)
            await s.flush()
            await self.events.emit(
                s,
                org_id,
                WebhookEndpointCreated(
                    endpoint_id=endpoint.id,
                    url=checked,
                    event_types=wanted,
                    description=description,
                ),
                actor=actor,
                target_id=endpoint.id,
            )
        return endpoint, secret

    async def list(
        self,
        org_id: uuid.UUID,
        *,
        limit: int = 50,
        after: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[WebhookEndpoint]:
        """The organisation's endpoints, newest first; `after` pages on."""
        query = (
            sa.select(WebhookEndpoint)
            .where(WebhookEndpoint.organization_id == org_id)
            .order_by(WebhookEndpoint.id.desc())
            .limit(limit)
        )
        if after is not None:
            query = query.where(WebhookEndpoint.id < after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def get(
        self, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> WebhookEndpoint:
        async with self.database.scope(session, readonly=True) as s:
            return await self._endpoint(s, org_id, endpoint_id)

    async def _endpoint(
        self, s: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
    ) -> WebhookEndpoint:
        query = sa.select(WebhookEndpoint).where(
            WebhookEndpoint.organization_id == org_id, WebhookEndpoint.id == endpoint_id
        )
        if lock:
            query = query.with_for_update()
        endpoint = await s.scalar(query)
        if endpoint is None:
            raise WebhookEndpointNotFound(
                f"no webhook endpoint {endpoint_id}", endpoint_id=str(endpoint_id)
            )
        return endpoint

    async def update(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        url: str | Literal[_Unchanged.UNCHANGED] = UNCHANGED,
        event_types: Iterable[str] | Literal[_Unchanged.UNCHANGED] = UNCHANGED,
        description: str | Literal[_Unchanged.UNCHANGED] | None = UNCHANGED,
        enabled: bool | Literal[_Unchanged.UNCHANGED] = UNCHANGED,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> WebhookEndpoint:
        """Change what is given. Enabling a disabled endpoint clears its `disabled_reason` and
        `failing_since` (its failures start afresh); disabling is `disable`'s rule. A change
        that changes nothing emits nothing."""
        new: dict[str, Any] = {}
        if url is not UNCHANGED:
            new["url"] = await self._check_url(url)
        if event_types is not UNCHANGED:
            new["event_types"] = _check_event_types(event_types)
        if description is not UNCHANGED:
            new["description"] = _check_description(description)
        async with self.database.scope(session) as s:
            endpoint = await self._endpoint(s, org_id, endpoint_id, lock=True)
            changes = {
                name: {"from": getattr(endpoint, name), "to": value}
                for name, value in new.items()
                if getattr(endpoint, name) != value
            }
            for name, change in changes.items():
                setattr(endpoint, name, change["to"])
            if enabled is True and not endpoint.enabled:
                changes["enabled"] = {"from": False, "to": True}
                endpoint.enabled = True
                endpoint.disabled_reason = None
                endpoint.failing_since = None
            if changes:
                endpoint.updated_at = self.clock()
                await s.flush()
                await self.events.emit(
                    s,
                    org_id,
                    WebhookEndpointUpdated(endpoint_id=endpoint.id, changes=changes),
                    actor=actor,
                    target_id=endpoint.id,
                )
            if enabled is False:
                await self._disable(s, endpoint, ADMIN_DISABLED, actor=actor)
        return endpoint

    async def disable(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        reason: str = ADMIN_DISABLED,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> WebhookEndpoint:
        """Stop sending to the endpoint (its pending deliveries wait until it is enabled).
        Disabling a disabled endpoint changes nothing."""
        async with self.database.scope(session) as s:
            endpoint = await self._endpoint(s, org_id, endpoint_id, lock=True)
            await self._disable(s, endpoint, reason, actor=actor)
        return endpoint

    async def _disable(
        self, s: AsyncSession, endpoint: WebhookEndpoint, reason: str, *, actor: Actor
    ) -> None:
        if not endpoint.enabled:
            return
        endpoint.enabled = False
        endpoint.disabled_reason = reason
        endpoint.updated_at = self.clock()
        await s.flush()
        await self.events.emit(
            s,
            endpoint.organization_id,
            WebhookEndpointDisabled(endpoint_id=endpoint.id, url=endpoint.url, reason=reason),
            actor=actor,
            target_id=endpoint.id,
        )

    async def delete(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> None:
        """Delete the endpoint; its deliveries and their attempts go with it (the foreign
        keys cascade)."""
        async with self.database.scope(session) as s:
            endpoint = await self._endpoint(s, org_id, endpoint_id, lock=True)
            url = endpoint.url
            await s.delete(endpoint)
            await s.flush()
            await self.events.emit(
                s,
                org_id,
                WebhookEndpointDeleted(endpoint_id=endpoint_id, url=url),
                actor=actor,
                target_id=endpoint_id,
            )

    async def rotate_secret(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> tuple[WebhookEndpoint, str]:
        """A new signing secret, shown only now; the current one keeps signing beside it for
        `ROTATION_OVERLAP` (a secret rotated twice in a day drops the oldest)."""
        secret = new_secret()
        async with self.database.scope(session) as s:
            endpoint = await self._endpoint(s, org_id, endpoint_id, lock=True)
            now = self.clock()
            endpoint.previous_secret = endpoint.secret
            endpoint.previous_secret_expires_at = now + ROTATION_OVERLAP
            endpoint.secret = secret
            endpoint.updated_at = now
            await s.flush()
            await self.events.emit(
                s,
                org_id,
                WebhookEndpointSecretRotated(
                    endpoint_id=endpoint.id, previous_expires_at=now + ROTATION_OVERLAP
                ),
                actor=actor,
                target_id=endpoint.id,
            )
        return endpoint, secret

    async def send_test(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Event:
        """Emit a `webhook.test` event for this endpoint only; the dispatcher sends it."""
        async with self.database.scope(session) as s:
            endpoint = await self._endpoint(s, org_id, endpoint_id)
            if not endpoint.enabled:
                raise EndpointDisabled(
                    "the endpoint is disabled: enable it before testing it",
                    endpoint_id=str(endpoint_id),
                )
            return await self.events.emit(
                s, org_id, WebhookTest(endpoint_id=endpoint.id), actor=actor, target_id=endpoint.id
            )

    # --- deliveries --------------------------------------------------------------------------
    async def deliveries(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        limit: int = 50,
        before: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> builtins.list[DeliveryRecord]:
        """The endpoint's deliveries, newest first, each with its attempts."""
        query = (
            sa.select(WebhookDelivery)
            .where(
                WebhookDelivery.organization_id == org_id,
                WebhookDelivery.endpoint_id == endpoint_id,
            )
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(WebhookDelivery.id < before)
        async with self.database.scope(session, readonly=True) as s:
            await self._endpoint(s, org_id, endpoint_id)
            deliveries = (await s.scalars(query)).all()
            return await _with_attempts(s, org_id, deliveries)

    async def retry_delivery(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        delivery_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> DeliveryRecord:
        """Send a delivery again now: back to pending, due at once (whatever its state). One
        that a dispatcher is sending at this moment is `DeliveryInFlight`."""
        async with self.database.scope(session) as s:
            endpoint = await self._endpoint(s, org_id, endpoint_id)
            if not endpoint.enabled:
                raise EndpointDisabled(
                    "the endpoint is disabled: enable it before retrying its deliveries",
                    endpoint_id=str(endpoint_id),
                )
            now = self.clock()
            where = (
                WebhookDelivery.organization_id == org_id,
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.id == delivery_id,
            )
            # One statement: a dispatcher may be claiming the same row.
            retried = await s.execute(
                sa.update(WebhookDelivery)
                .where(
                    *where,
                    sa.or_(
                        WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now
                    ),
                )
                .values(
                    status=DeliveryStatus.PENDING,
                    next_attempt_at=now,
                    lease_until=None,
                    completed_at=None,
                )
                .returning(WebhookDelivery.id)
                .execution_options(synchronize_session=False)
            )
            if retried.first() is None:
                exists = await s.scalar(sa.select(WebhookDelivery.id).where(*where))
                if exists is None:
                    raise WebhookDeliveryNotFound(
                        f"no delivery {delivery_id} of this endpoint", delivery_id=str(delivery_id)
                    )
                raise DeliveryInFlight(
                    "a dispatcher is sending this delivery now", delivery_id=str(delivery_id)
                )
            delivery = await s.scalar(
                sa.select(WebhookDelivery).where(*where).execution_options(populate_existing=True)
            )
            assert delivery is not None
            await self.events.emit(
                s,
                org_id,
                WebhookDeliveryRetried(
                    endpoint_id=endpoint_id,
                    delivery_id=delivery_id,
                    event_id=delivery.event_id,
                    event_type=delivery.event_type,
                ),
                actor=actor,
                target_id=delivery_id,
            )
            return (await _with_attempts(s, org_id, [delivery]))[0]


async def _with_attempts(
    s: AsyncSession, org_id: uuid.UUID, deliveries: Sequence[WebhookDelivery]
) -> builtins.list[DeliveryRecord]:
    """The deliveries with their attempts (one query for all of them)."""
    by_delivery: dict[uuid.UUID, builtins.list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if by_delivery:
        attempts = await s.scalars(
            sa.select(WebhookAttempt)
            .where(
                WebhookAttempt.organization_id == org_id,
                WebhookAttempt.delivery_id.in_(list(by_delivery)),
            )
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        )
        for attempt in attempts:
            by_delivery[attempt.delivery_id].append(attempt)
    return [DeliveryRecord(d, by_delivery[d.id]) for d in deliveries]
