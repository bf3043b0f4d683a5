"""FastAPI dependencies that fetch the per-app service objects from ``app.state``."""

from __future__ import annotations

from fastapi import Request

from server.jobs import JobStore
from server.settings import Settings
from server.storage import LocalStorage


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def job_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.jobs
    return store


def storage_of(request: Request) -> LocalStorage:
    storage: LocalStorage = request.app.state.storage
    return storage
