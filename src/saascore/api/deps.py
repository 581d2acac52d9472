"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from saascore import get_session
from saascore.core import Saascore

__all__ = ["CoreDep", "SessionDep", "get_core"]


def get_core(request: Request) -> Saascore:
    core: Saascore = request.app.state.saascore
    return core


SessionDep = Annotated[AsyncSession, Depends(get_session)]
CoreDep = Annotated[Saascore, Depends(get_core)]
