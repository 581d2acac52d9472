"""The AI workspace of seed 000: folders and documents with storage accounting, processing
jobs with result caching, the generation cache and generation preferences, memory
(conversation summaries, key-value entries) and retrieval (RAG) stores."""
