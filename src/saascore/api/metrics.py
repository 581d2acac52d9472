"""(In progress.)"""

from fastapi import APIRouter


def create_metrics_router() -> APIRouter:
    return APIRouter()
