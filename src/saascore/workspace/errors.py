"""The workspace's refusals.

```
DomainError
├── NotFound (404)
│   ├── FolderNotFound              folder_not_found
│   ├── DocumentNotFound            document_not_found
│   ├── JobNotFound                 job_not_found
│   └── GenerationNotFound          generation_not_found
├── AlreadyExists (409)
│   └── FolderNameTaken             folder_name_taken
├── Conflict (409)
│   ├── FolderNotEmpty              folder_not_empty
│   └── JobStateConflict            job_state_conflict
└── InvalidInput (422)
    ├── FolderCycle                 folder_cycle
    └── PreferencesNeedUser         preferences_need_user
```

A registration past the storage limit is metering's `LimitExceeded` (402
`limit_exceeded`), the same refusal as `update_storage_used`.
"""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, Conflict, InvalidInput, NotFound

__all__ = [
    "DocumentNotFound",
    "FolderCycle",
    "FolderNameTaken",
    "FolderNotEmpty",
    "FolderNotFound",
    "GenerationNotFound",
    "JobNotFound",
    "JobStateConflict",
    "PreferencesNeedUser",
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
