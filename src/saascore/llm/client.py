"""`LLMClient`: chat completions through an LLM gateway, metered as tokens.

One call is four steps, each in a transaction of its own (the gateway call must hold no
database connection while it waits):

1. **reserve** the estimated tokens (prompt estimate plus `max_tokens`) under the call id. Over
   a hard token limit this raises `LimitExceeded` and no request leaves the process;
2. **call** the gateway (httpx, timeouts, bounded retries with backoff on a 5xx, a timeout or a
   dropped connection);
3. **settle** the reservation with the real usage the gateway reports: the usage event is
   priced from `model_pricing` (micro-units) and keyed by the reservation, so recording is
   idempotent per call. If the real usage passes a hard limit that the estimate did not, the
   tokens are spent anyway: the reservation is released and the call is recorded with
   `log_token_usage` semantics (never refused), under the same call id;
4. on any failure of the call, **release** the reservation: a failed call costs nothing.

The gateway is a `Gateway`: `HttpGateway` (seed 004's `call_llm`, OpenAI-compatible
`POST /v1/chat/completions`) or `MockGateway` (seed 004's `call_llm_mock`, deterministic for
the same input); both take the same metered path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

from saascore.kit.ids import new_id
from saascore.kit.validation import control_character
from saascore.llm.errors import InvalidChatRequest, LLMCallReplayed, LLMGatewayError
from saascore.metering.errors import LimitExceeded
from saascore.metering.service import UsageService
from saascore.metering.values import TOKENS
from saascore.models import ReservationStatus

if TYPE_CHECKING:
    # Imported by `HttpGateway` when one is built: the mock gateway needs no HTTP client.
    import httpx

__all__ = [
    "ChatMessage",
    "ChatResult",
    "Completion",
    "Gateway",
    "HttpGateway",
    "LLMClient",
    "MockGateway",
    "estimate_tokens",
]

logger = logging.getLogger("saascore.llm")

ROLES: Final = frozenset({"system", "user", "assistant", "tool"})
MAX_MESSAGES: Final = 1000
#: The most characters of all messages together (about 250,000 tokens by the estimate).
MAX_CHARS: Final = 1_000_000
MAX_OUTPUT_TOKENS: Final = 1_000_000
#: Tokens reported by a gateway beyond this are not believed (a misreport, not a bill).
MAX_REPORTED_TOKENS: Final = 10**9
#: The estimate: a token per 4 characters, rounded up, and 4 tokens of framing per message.
CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Completion:
    """What the gateway answered: the text and the real token usage."""

    content: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    model: str | None = None


@dataclass(frozen=True)
class ChatResult:
    """A metered call: the answer, its usage and what it cost (micro-units of the price's
    currency; 0 for a model without a price)."""

    call_id: str
    model: str
    content: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reserved_tokens: int
    cost_micros: int
    event_id: uuid.UUID | None


class Gateway(Protocol):
    async def complete(
        self, model: str, messages: Sequence[ChatMessage], max_tokens: int
    ) -> Completion: ...

    async def aclose(self) -> None: ...


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """The prompt's tokens, estimated from its characters (an over-estimate for English)."""
    return sum(TOKENS_PER_MESSAGE + math.ceil(len(m.content) / CHARS_PER_TOKEN) for m in messages)


def _check(model: str, messages: Sequence[ChatMessage], max_tokens: int, call_id: str) -> None:
    if (
        not isinstance(model, str)
        or not 0 < len(model) <= 255
        or control_character(model) is not None
    ):
        raise InvalidChatRequest("model is 1 to 255 characters", field="model")
    if not messages:
        raise InvalidChatRequest("a chat needs at least one message", field="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidChatRequest(f"at most {MAX_MESSAGES} messages", field="messages")
    if sum(len(m.content) for m in messages) > MAX_CHARS:
        raise InvalidChatRequest(f"at most {MAX_CHARS} characters in all", field="messages")
    for message in messages:
        if message.role not in ROLES:
            raise InvalidChatRequest(
                f"a message's role is one of {', '.join(sorted(ROLES))}", field="messages"
            )
    if isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidChatRequest(f"max_tokens is 1 to {MAX_OUTPUT_TOKENS}", field="max_tokens")
    if not 0 < len(call_id) <= 200 or control_character(call_id) is not None:
        raise InvalidChatRequest("call_id is 1 to 200 characters", field="call_id")


def _tokens(value: Any, name: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_REPORTED_TOKENS
    ):
        raise LLMGatewayError(f"the gateway reported {name} that are not a token count")
    return value


def parse_completion(body: Any) -> Completion:
    """An OpenAI-compatible chat completion's text and usage; `LLMGatewayError` otherwise."""
    try:
        choice = body["choices"][0]["message"]
        content = choice.get("content") or ""
        usage = body["usage"]
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
        model = body.get("model")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise LLMGatewayError("the gateway's answer is not a chat completion") from None
    if not isinstance(content, str):
        raise LLMGatewayError("the gateway's answer is not a chat completion")
    input_tokens = _tokens(usage.get("prompt_tokens"), "prompt tokens")
    cached_tokens = min(_tokens(cached, "cached tokens"), input_tokens)
    return Completion(
        content=content,
        input_tokens=input_tokens,
        output_tokens=_tokens(usage.get("completion_tokens"), "completion tokens"),
        cached_tokens=cached_tokens,
        model=model if isinstance(model, str) else None,
    )


class HttpGateway:
    """Seed 004's `call_llm`: `POST {base_url}/v1/chat/completions` with a bearer key.

    A 5xx, a timeout or a failed connection is tried again up to `max_retries` times, waiting
    `backoff`, then twice that, and so on; a 4xx is not (the request itself is refused).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_retries = max_retries
        self.backoff = backoff
        self._client: httpx.AsyncClient = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def complete(
        self, model: str, messages: Sequence[ChatMessage], max_tokens: int
    ) -> Completion:
        import httpx  # imported when this gateway was built

        payload = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
        }
        attempt = 0
        while True:
            try:
                response = await self._client.post("/v1/chat/completions", json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as error:
                failure = f"the LLM gateway did not answer ({type(error).__name__})"
            else:
                if response.status_code < 300:
                    try:
                        body = response.json()
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise LLMGatewayError("the gateway's answer is not JSON") from None
                    return parse_completion(body)
                if response.status_code < 500:
                    raise LLMGatewayError(
                        f"the LLM gateway refused the request ({response.status_code})",
                        status=response.status_code,
                    )
                failure = f"the LLM gateway failed ({response.status_code})"
            if attempt >= self.max_retries:
                raise LLMGatewayError(f"{failure} after {attempt + 1} attempt(s)")
            await asyncio.sleep(self.backoff * 2**attempt)
            attempt += 1

    async def aclose(self) -> None:
        await self._client.aclose()


class MockGateway:
    """Seed 004's `call_llm_mock`: the same input always gets the same answer and usage (a hash
    of the model, the messages and `max_tokens`); no network."""

    async def complete(
        self, model: str, messages: Sequence[ChatMessage], max_tokens: int
    ) -> Completion:
        digest = hashlib.sha256(
            json.dumps(
                [model, [[m.role, m.content] for m in messages], max_tokens],
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
        ).hexdigest()
        output_tokens = min(max_tokens, 8 + int(digest[:2], 16) % 24)
        return Completion(
            content=f"mock answer {digest[:16]}",
            input_tokens=estimate_tokens(messages),
            output_tokens=output_tokens,
            model=model,
        )

    async def aclose(self) -> None:
        return None


class LLMClient:
    """`core.llm`: metered chat completions (see the module docstring)."""

    def __init__(
        self,
        usage: UsageService,
        gateway: Gateway,
        *,
        provider: str | None = None,
        reservation_seconds: float = 600.0,
    ) -> None:
        self.usage = usage
        self.gateway = gateway
        #: The provider the calls are priced as (`model_pricing.provider`); None: any price
        #: of the model.
        self.provider = provider
        self.reservation_seconds = reservation_seconds

    async def chat(
        self,
        org_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int = 1024,
        user_id: uuid.UUID | None = None,
        feature: str | None = None,
        call_id: str | None = None,
    ) -> ChatResult:
        """Call the gateway for the organisation, metered (see the module docstring).

        `LimitExceeded` before any request when the estimate passes a hard token limit;
        `LLMGatewayError` when the gateway fails (the reservation released);
        `LLMCallReplayed` when `call_id` was used by an earlier call.
        """
        call_id = call_id if call_id is not None else str(new_id())
        _check(model, messages, max_tokens, call_id)
        key = f"llm:{call_id}"
        estimate = estimate_tokens(messages) + max_tokens
        reservation = await self.usage.reserve(
            org_id,
            TOKENS,
            estimate,
            ttl=timedelta(seconds=self.reservation_seconds),
            idempotency_key=key,
        )
        if reservation.status is not ReservationStatus.HELD:
            raise LLMCallReplayed(f"the call {call_id!r} was made already", call_id=call_id)
        try:
            completion = await self.gateway.complete(model, messages, max_tokens)
        except BaseException:
            await asyncio.shield(self._release(org_id, reservation.id))
            raise
        fields: dict[str, Any] = {
            "model": model,
            "provider": self.provider,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "cached_tokens": completion.cached_tokens,
            "user_id": user_id,
            "feature": feature,
            "request_id": call_id,
        }
        # Shielded: the tokens are spent, and are recorded even if the caller goes away now
        # (a cancelled call's usage event would otherwise be dropped from its queue).
        event_id, cost = await asyncio.shield(
            self._account(org_id, reservation.id, key, completion, fields)
        )
        return ChatResult(
            call_id=call_id,
            model=model,
            content=completion.content,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_tokens=completion.cached_tokens,
            reserved_tokens=estimate,
            cost_micros=cost,
            event_id=event_id,
        )

    async def _account(
        self,
        org_id: uuid.UUID,
        reservation_id: uuid.UUID,
        key: str,
        completion: Completion,
        fields: dict[str, Any],
    ) -> tuple[uuid.UUID | None, int]:
        """Settle the reservation with what the call spent (its usage event's id and cost)."""
        actual = completion.input_tokens + completion.output_tokens
        try:
            recorded = await self.usage.settle(reservation_id, actual, org_id=org_id, **fields)
        except LimitExceeded:
            # Spent past the limit that the estimate kept to: record it all the same.
            await self._release(org_id, reservation_id)
            logged = await self.usage.log_token_usage(org_id=org_id, idempotency_key=key, **fields)
            return (logged.event_id, logged.cost_micros) if logged is not None else (None, 0)
        return recorded.event_id, recorded.cost_micros

    async def _release(self, org_id: uuid.UUID, reservation_id: uuid.UUID) -> None:
        try:
            await self.usage.release(reservation_id, org_id=org_id)
        except Exception:  # it expires by itself; the caller's error matters more
            logger.exception("LLM reservation %s not released", reservation_id)

    async def aclose(self) -> None:
        await self.gateway.aclose()
