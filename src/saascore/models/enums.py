"""Enums shared by several domains' tables."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PaymentProvider", "SubscriptionStatus"]


class SubscriptionStatus(StrEnum):
    """The lifecycle of a subscription, unified from seeds 002, 003 and 004 (Stripe's names)."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    PAUSED = "paused"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    SUSPENDED = "suspended"
    CANCELED = "canceled"
    EXPIRED = "expired"


class PaymentProvider(StrEnum):
    MOCK = "mock"
    STRIPE = "stripe"
    LEMON_SQUEEZY = "lemon_squeezy"
    THARWATT = "tharwatt"
    MANUAL = "manual"
