"""Signing webhooks per the Standard Webhooks specification.

Every request carries three headers:

- `webhook-id`: `msg_` and the outbox event's id in hex, the same on every retry and for every
  endpoint the event goes to, so a receiver can de-duplicate;
- `webhook-timestamp`: when this attempt was signed, in integer Unix seconds (receivers refuse
  a timestamp far from their own clock, which is what stops a replay);
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, once per secret,
  separated by spaces. During a rotation's overlap the endpoint's previous secret signs
  beside the new one, so a receiver that still has either verifies.

The signatures come from the `standardwebhooks` package itself, the reference implementation.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from standardwebhooks import Webhook

__all__ = ["message_id", "signature_headers", "signing_secrets"]


def message_id(event_id: uuid.UUID) -> str:
    """The `webhook-id` of every delivery of an event."""
    return f"msg_{event_id.hex}"


def signing_secrets(
    secret: str,
    previous_secret: str | None,
    previous_secret_expires_at: datetime | None,
    now: datetime,
) -> list[str]:
    """The secrets that sign at `now`: the current one, and the previous one while its overlap
    lasts (`previous_secret_expires_at` still in the future)."""
    secrets = [secret]
    if (
        previous_secret
        and previous_secret_expires_at is not None
        and previous_secret_expires_at > now
    ):
        secrets.append(previous_secret)
    return secrets


def signature_headers(
    message_id: str, timestamp: datetime, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """The Standard Webhooks headers for sending `body` (the exact bytes sent) at `timestamp`."""
    if not secrets:
        raise ValueError("a webhook is signed with at least one secret")
    signatures = [Webhook(secret).sign(message_id, timestamp, body) for secret in secrets]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
