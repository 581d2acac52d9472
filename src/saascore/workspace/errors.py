"""The workspace's refusals.

```
DomainError
├── NotFound (404)
│   ├── FolderNotFound              folder_not_found
│   ├── DocumentNotFound            document_not_found
│   ├── JobNotFound                 job_not_found
│   ├── GenerationNotFound          generation_not_found
│   ├── MemoryEntryNotFound         memory_entry_not_found
│   ├── ConversationNotFound        conversation_not_found
│   ├── RagStoreNotFound            rag_store_not_found
│   └── RagFolderNotFound           rag_folder_not_found
├── AlreadyExists (409)
│   ├── FolderNameTaken             folder_name_taken
│   └── RagStoreExists              rag_store_exists: one store per organisation
├── Conflict (409)
│   ├── FolderNotEmpty              folder_not_empty
│   └── JobStateConflict            job_state_conflict
└── InvalidInput (422)
    ├── FolderCycle                 folder_cycle
    ├── PreferencesNeedUser         preferences_need_user
    ├── InvalidMemoryEntry          invalid_memory_entry: namespace, key, value, expiry
    ├── InvalidConversation         invalid_conversation
    └── InvalidRagStore             invalid_rag_store: store or folder values
```

A registration past the storage limit is metering's `LimitExceeded` (402
`limit_exceeded`), the same refusal as `update_storage_used`.
"""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, Conflict, InvalidInput, NotFound

__all__ = [
    "ConversationNotFound",
    "DocumentNotFound",
    "FolderCycle",
    "FolderNameTaken",
    "FolderNotEmpty",
    "FolderNotFound",
    "GenerationNotFound",
    "InvalidConversation",
    "InvalidMemoryEntry",
    "InvalidRagStore",
    "JobNotFound",
    "JobStateConflict",
    "MemoryEntryNotFound",
    "PreferencesNeedUser",
    "RagFolderNotFound",
    "RagStoreExists",
    "RagStoreNotFound",
]


class FolderNotFound(NotFound):
    """No folder with this id in the organisation."""

    code = "folder_not_found"


class DocumentNotFound(NotFound):
    """No document with this id in the organisation."""

    code = "document_not_found"


class JobNotFound(NotFound):
    """No processing job with this id in the organisation."""

    code = "job_not_found"


class GenerationNotFound(NotFound):
    """No generation with this id in the organisation."""

    code = "generation_not_found"


class FolderNameTaken(AlreadyExists):
    """A sibling folder already has this name (names compare exactly, case included)."""

    code = "folder_name_taken"


class FolderNotEmpty(Conflict):
    """The folder holds folders or documents: delete it with `recursive=true`."""

    code = "folder_not_empty"


class JobStateConflict(Conflict):
    """The job's status does not allow this change (a finished job stays finished)."""

    code = "job_state_conflict"


class FolderCycle(InvalidInput):
    """The move would put a folder inside itself or inside one of its own folders."""

    code = "folder_cycle"
    stateful = True


class PreferencesNeedUser(InvalidInput):
    """Generation preferences belong to a user: a service key has none."""

    code = "preferences_need_user"
    stateful = True


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
