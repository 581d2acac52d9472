"""Domain events, the transactional outbox, and signed webhooks to tenants."""

from saascore.events.bus import Event, EventBus, EventPayload
from saascore.events.catalog import EVENT_TYPES, PUBLIC_EVENTS

__all__ = ["EVENT_TYPES", "PUBLIC_EVENTS", "Event", "EventBus", "EventPayload"]
