"""Billing: subscriptions, invoices with gapless numbers, payments and the billing run."""
