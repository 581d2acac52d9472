"""`create_llm_router()`: `POST /v1/llm/chat`, a chat completion through the metered client."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends

from saascore.api.deps import CoreDep, require
from saascore.api.errors import error_responses
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.llm.client import ChatMessage
from saascore.llm.errors import InvalidChatRequest, LLMCallReplayed, LLMGatewayError
from saascore.llm.schemas import ChatIn, ChatOut
from saascore.metering.errors import LimitExceeded

__all__ = ["create_llm_router"]

UsageWriter = Annotated[Principal, Depends(require(Permission.USAGE_WRITE))]


def create_llm_router() -> APIRouter:
    """`/v1/llm`: chat completions metered as the organisation's tokens."""
    router = APIRouter(prefix="/v1/llm", tags=["llm"])

    @router.post(
        "/chat",
        summary="Chat completion",
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            LimitExceeded,
            InvalidChatRequest,
            LLMCallReplayed,
            LLMGatewayError,
        ),
    )
    async def chat(body: ChatIn, principal: UsageWriter, core: CoreDep) -> ChatOut:
        """Ask the model (needs `usage:write`). The estimated tokens are held against your
        token limit first (over it: 402 `limit_exceeded`, and nothing is sent); the real usage
        is recorded and priced after, and a failed call costs nothing."""
        result = await core.llm.chat(
            principal.tenant,
            [ChatMessage(m.role, m.content) for m in body.messages],
            model=body.model,
            max_tokens=body.max_tokens,
            user_id=principal.user_id,
            feature=body.feature,
            call_id=body.call_id,
        )
        return ChatOut(**asdict(result))

    return router
