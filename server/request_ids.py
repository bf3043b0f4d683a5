"""Which request an HTTP response is about: the id its ``x-fal-request-id`` header names.

A route names its request once it knows the id is this deployment's (``name_request``); every answer
of that HTTP exchange then carries it, errors included. An exchange that names none (a 401, a 422
before the route ran, a health check) gets a fresh id, kept for the rest of the exchange, so a 500's
body and its header agree. Only a well-formed id is ever written: never unvalidated input.
"""

from __future__ import annotations

import uuid

from starlette.types import Scope

from core.requests.records import is_request_id

STATE_KEY = "fal_request_id"  # in the ASGI scope's state (``request.state.fal_request_id``)


def name_request(scope: Scope, request_id: str) -> None:
    """This exchange is about ``request_id``: its response names it (when it is a well-formed id)."""
    scope.setdefault("state", {})[STATE_KEY] = request_id


def response_request_id(scope: Scope) -> str:
    """The id this exchange's response names: the one its route named, else a fresh one."""
    state = scope.setdefault("state", {})
    rid = state.get(STATE_KEY)
    if not is_request_id(rid):
        rid = state[STATE_KEY] = str(uuid.uuid4())
    return str(rid)
