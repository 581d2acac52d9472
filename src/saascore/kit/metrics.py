"""Prometheus metrics that saascore's services count (exposed by the app at `/metrics`)."""

from __future__ import annotations

import os

from prometheus_client import Counter

__all__ = [
    "USAGE_LOG_FAILURES",
    "USAGE_RECORDED",
    "USAGE_REFUSED",
    "USAGE_UNPRICED_MODEL",
]

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
    "Token usage recorded at cost zero because model_pricing has no price for the model.",
    ["provider", "model"],
)
