"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from saascore import SessionDep
from saascore.core import Saascore

__all__ = ["CoreDep", "SessionDep", "get_core"]


def get_core(request: Request) -> Saascore:
    core: Saascore = request.app.state.saascore
    return core


CoreDep = Annotated[Saascore, Depends(get_core)]
