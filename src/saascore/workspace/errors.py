"""Errors of the workspace.

DomainError
├── NotFound
│   ├── MemoryEntryNotFound          (404) `memory_entry_not_found`
│   ├── ConversationNotFound         (404) `conversation_not_found`
│   ├── RagStoreNotFound             (404) `rag_store_not_found`
│   └── RagFolderNotFound            (404) `rag_folder_not_found`
├── AlreadyExists
│   └── RagStoreExists               (409) `rag_store_exists`: one store per organisation
└── InvalidInput
    ├── InvalidMemoryEntry           (422) `invalid_memory_entry`: namespace, key, value, expiry
    ├── InvalidConversation          (422) `invalid_conversation`
    └── InvalidRagStore              (422) `invalid_rag_store`: store or folder values
"""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, InvalidInput, NotFound

__all__ = [
    "ConversationNotFound",
    "InvalidConversation",
    "InvalidMemoryEntry",
    "InvalidRagStore",
    "MemoryEntryNotFound",
    "RagFolderNotFound",
    "RagStoreExists",
    "RagStoreNotFound",
]


# --- memory, conversations and RAG stores ------------------------------------------------------
class MemoryEntryNotFound(NotFound):
    """No live entry under this namespace and key (an expired entry is not found)."""

    code = "memory_entry_not_found"


class InvalidMemoryEntry(InvalidInput):
    code = "invalid_memory_entry"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"


class InvalidConversation(InvalidInput):
    code = "invalid_conversation"


class RagStoreNotFound(NotFound):
    """The organisation has no RAG store (yet)."""

    code = "rag_store_not_found"


class RagStoreExists(AlreadyExists):
    """The organisation has its RAG store already: one each."""

    code = "rag_store_exists"


class RagFolderNotFound(NotFound):
    code = "rag_folder_not_found"


class InvalidRagStore(InvalidInput):
    code = "invalid_rag_store"
