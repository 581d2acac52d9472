"""(In progress.)"""

from fastapi import APIRouter


def create_credits_router() -> APIRouter:
    return APIRouter()
