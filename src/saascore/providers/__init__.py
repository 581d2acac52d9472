"""Payment providers (mock, Stripe, Lemon Squeezy) behind one protocol, and their webhooks.

`base` holds the protocol and the events a provider's webhooks become; each provider is one
module beside it. The billing domain stays the source of truth: a webhook becomes a billing
operation.
"""
