"""The AI workspace of seed 000: folders and documents with storage accounting, processing
jobs with result caching, the generation cache and generation preferences (and, beside them,
memory, conversations and retrieval stores)."""
