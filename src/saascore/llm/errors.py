"""Errors of the metered LLM client.

DomainError
├── InvalidInput
│   └── InvalidChatRequest      (422) `invalid_chat_request`: no messages, too large, bad model
├── Conflict
│   └── LLMCallReplayed         (409) `llm_call_replayed`: this call id has been made already
└── LLMGatewayError             (502) `llm_gateway_error`: the gateway failed after its retries

A call over the organisation's token limit is `saascore.metering.errors.LimitExceeded`, raised
before any request leaves.
"""

from __future__ import annotations

from saascore.kit.errors import Conflict, DomainError, InvalidInput

__all__ = ["InvalidChatRequest", "LLMCallReplayed", "LLMGatewayError"]


class InvalidChatRequest(InvalidInput):
    """The chat request is refused before it is metered or sent."""

    code = "invalid_chat_request"


class LLMCallReplayed(Conflict):
    """A call id names a call that was already made (settled or released): a call id is spent
    once, so a retry never pays twice."""

    code = "llm_call_replayed"


class LLMGatewayError(DomainError):
    """(502) The LLM gateway failed (a 5xx or a timeout after the retries, a refusal, an answer
    that is not a chat completion). Its reservation was released: nothing was charged."""

    code = "llm_gateway_error"
    status_code = 502
