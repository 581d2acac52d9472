"""The document and AI workspace of seed 000: folders, documents, processing jobs, the
generation cache, memory (conversation summaries, key-value entries) and RAG stores."""
