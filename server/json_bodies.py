"""JSON request bodies parsed with a nesting bound: ``JsonBoundedRoute``, the route class of every
router whose routes take a JSON body (queue, run, storage; the proxy dispatches to those).

No input of this API nests deeper than a few levels, but Python's parser and everything that walks
a parsed value (validation, the 422's echo of it, encoding it into Redis) recurse once per level:
a 1 KB body of 500 brackets ran ``server.error_handlers.json_safe`` past the interpreter's recursion
limit, and one of 1,000 made the parser itself raise ``RecursionError``. Here a body nested deeper
than ``MAX_JSON_DEPTH`` is fal's 422 (``json_invalid`` at ``["body", 0]``) before anything else
looks at it, for any depth, and nothing is logged beyond the access line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

MAX_JSON_DEPTH = 32  # arrays and objects inside one another; the deepest valid input here has 3


class JsonTooDeepError(json.JSONDecodeError):
    """A body nested deeper than ``MAX_JSON_DEPTH`` (a ``JSONDecodeError``: FastAPI answers it as fal's 422)."""

    def __init__(self, doc: str, pos: int) -> None:
        super().__init__(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", doc, pos)


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` has containers nested more than ``limit`` deep (``[]`` is 1); iterative, and it
    stops at the first such container."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_bounded_json(raw: bytes) -> Any:
    """``json.loads`` of a body, refusing (``JsonTooDeepError``) one nested deeper than ``MAX_JSON_DEPTH``."""
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than the parser itself can go
        raise JsonTooDeepError(raw.decode("utf-8", "replace"), 0) from None
    # Fewer brackets than the bound cannot nest past it: typical bodies skip the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nesting_depth_exceeds(value, MAX_JSON_DEPTH):
        raise JsonTooDeepError(raw.decode("utf-8", "replace"), 0)
    return value


class JsonBoundedRequest(Request):
    """A request whose ``json()`` is :func:`parse_bounded_json` (what FastAPI calls to read a JSON body)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_bounded_json(await self.body())
        return self._json


class JsonBoundedRoute(APIRoute):
    """An ``APIRoute`` whose handler reads JSON bodies through :class:`JsonBoundedRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded_handler(request: Request) -> Response:
            return await handler(JsonBoundedRequest(request.scope, request.receive))

        return bounded_handler
