"""(In progress.)"""

from fastapi import APIRouter


def create_audit_router() -> APIRouter:
    return APIRouter()
