"""Prometheus metrics that saascore's services count (exposed by the app at `/metrics`).

Label values are bounded: every series costs memory in each process and in Prometheus, so a
label never takes a value a tenant chose freely. A model or provider name is its own label
only when the operator's catalog knows it (`model_pricing`, or one of the well-known
providers); anything else is counted under `other` (`bounded_label`).
"""

from __future__ import annotations

import os
from collections.abc import Container
from typing import Final

from prometheus_client import Counter

__all__ = [
    "KNOWN_PROVIDERS",
    "OTHER",
    "USAGE_LOG_FAILURES",
    "USAGE_RECORDED",
    "USAGE_REFUSED",
    "USAGE_UNPRICED_MODEL",
    "bounded_label",
]

#: The label value of everything a label does not name on its own.
OTHER: Final = "other"

#: LLM providers known without a price in the catalog.
KNOWN_PROVIDERS: Final = frozenset(
    {
        "anthropic",
        "azure",
        "bedrock",
        "cohere",
        "deepseek",
        "google",
        "groq",
        "mistral",
        "mock",
        "ollama",
        "openai",
        "openrouter",
        "together",
        "vertex",
        "xai",
    }
)


def bounded_label(value: str | None, known: Container[str]) -> str:
    """`value` if it is one of `known`, `""` when there is none, else `other`."""
    if not value:
        return ""
    return value if value in known else OTHER


# In multiprocess mode each metric writes a file there as soon as it exists: a directory that
# is named but missing would break every command at import.
if multiprocess_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(multiprocess_dir, exist_ok=True)

USAGE_RECORDED = Counter(
    "saascore_usage_recorded_total", "Usage events recorded, by metric.", ["metric"]
)
USAGE_REFUSED = Counter(
    "saascore_usage_refused_total", "Usage refused by a hard limit, by metric.", ["metric"]
)
USAGE_LOG_FAILURES = Counter(
    "saascore_usage_log_failures_total",
    "Token usage that log_token_usage could not record (each is logged with the whole event).",
)
USAGE_UNPRICED_MODEL = Counter(
    "saascore_usage_unpriced_model_total",
    "Token usage recorded at cost zero because model_pricing has no price for the model "
    "(models and providers the catalog does not name are counted as `other`).",
    ["provider", "model"],
)
