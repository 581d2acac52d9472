"""The metered LLM client: seed 004's `call_llm` to an LLM gateway, and `call_llm_mock`.

`core.llm.chat(org_id, messages, model=...)` reserves the estimated tokens, calls the gateway,
settles the real usage (priced from `model_pricing`) or releases the reservation on failure.
"""

from saascore.llm.client import (
    ChatMessage,
    ChatResult,
    Completion,
    Gateway,
    HttpGateway,
    LLMClient,
    MockGateway,
    estimate_tokens,
)
from saascore.llm.errors import InvalidChatRequest, LLMCallReplayed, LLMGatewayError

__all__ = [
    "ChatMessage",
    "ChatResult",
    "Completion",
    "Gateway",
    "HttpGateway",
    "InvalidChatRequest",
    "LLMCallReplayed",
    "LLMClient",
    "LLMGatewayError",
    "MockGateway",
    "estimate_tokens",
]
