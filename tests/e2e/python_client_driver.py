"""Drive the published ``fal-client`` against a running server and print one JSON document.

``fal_client`` reads ``FAL_RUN_HOST`` and ``FAL_QUEUE_RUN_HOST`` once, at import time, so the
e2e tests run this script in a fresh interpreter with the user's settings in its environment::

    FAL_KEY=... FAL_RUN_HOST=127.0.0.1:PORT FAL_QUEUE_RUN_HOST=127.0.0.1:PORT/queue \
    SSL_CERT_FILE=ca.pem python tests/e2e/python_client_driver.py sync [--webhook-url URL]

Scenario groups: ``sync``, ``async``, ``wrong_key`` and ``key_pair``. Every scenario catches its
own errors and reports them, so one failure does not hide the others; pytest asserts on the JSON.
Nothing here knows the server's internals: it only uses the client's public API.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import fal_client

APP = "fal-ai/bitdance"
UNKNOWN_REQUEST_ID = "00000000-0000-4000-8000-000000000000"
# The 16x tiny checkpoint serves 512x512 ("square"); 10 steps is the smallest allowed count and
# guidance 1.0 turns classifier-free guidance off (half the work): these tests are about the protocol.
BASE_INPUT: dict[str, Any] = {
    "prompt": "a red cube on a wooden table",
    "image_size": "square",
    "num_inference_steps": 10,
    "guidance_scale": 1.0,
    "seed": 7,
    "output_format": "png",
}
BAD_INPUT: dict[str, Any] = {**BASE_INPUT, "num_inference_steps": 5}
POLL_INTERVAL_S = 0.1
KEPT_LOG_ENTRIES = 3


def describe_status(status: fal_client.Status) -> dict[str, Any]:
    """A client ``Status`` dataclass as JSON: its class name plus its fields.

    Polling returns the cumulative logs every time: except on ``Completed``, only the last few
    entries are kept (with ``log_count``) so that the report stays small.
    """
    described = {"type": type(status).__name__, **dataclasses.asdict(status)}
    logs = described.get("logs")
    if isinstance(logs, list):
        described["log_count"] = len(logs)
        if not isinstance(status, fal_client.Completed):
            described["logs"] = logs[-KEPT_LOG_ENTRIES:]
    return described


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What a user sees of an exception raised by the client."""
    described: dict[str, Any] = {"class": type(exc).__name__, "str": str(exc)}
    if isinstance(exc, fal_client.FalClientHTTPError):
        described.update(
            status_code=exc.status_code,
            message=exc.message,
            error_type=exc.error_type,
            request_id_header=exc.response_headers.get("x-fal-request-id"),
        )
    return described


def expect_http_error(call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call``; return the client error it raised, or a marker saying it did not raise."""
    try:
        value = call()
    except fal_client.FalClientError as exc:
        return describe_error(exc)
    return {"class": None, "returned": value}


async def expect_http_error_async(call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    try:
        value = await call()
    except fal_client.FalClientError as exc:
        return describe_error(exc)
    return {"class": None, "returned": value}


# ---------------------------------------------------------------- sync client (module functions)


def sync_subscribe(options: argparse.Namespace) -> dict[str, Any]:
    updates: list[dict[str, Any]] = []
    enqueued: list[str] = []
    result = fal_client.subscribe(
        APP,
        arguments=BASE_INPUT,
        start_timeout=120,  # sent as x-fal-request-timeout: 120.0
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=lambda status: updates.append(describe_status(status)),
    )
    return {"request_id": enqueued[0] if enqueued else None, "updates": updates, "result": result}


def sync_submit(options: argparse.Namespace) -> dict[str, Any]:
    # With a webhook: the receiver in the test gets the same result (one generation for both).
    handle = fal_client.submit(APP, arguments=BASE_INPUT, webhook_url=options.webhook_url)
    first_status = describe_status(handle.status(with_logs=True))
    events = [describe_status(status) for status in handle.iter_events(with_logs=True, interval=POLL_INTERVAL_S)]
    result = handle.get()
    # The same request through the by-id functions, which rebuild URLs from FAL_QUEUE_RUN_HOST.
    by_id_status = describe_status(fal_client.status(APP, handle.request_id, with_logs=True))
    by_id_result = fal_client.result(APP, handle.request_id)
    cancel_completed = expect_http_error(lambda: fal_client.cancel(APP, handle.request_id))
    return {
        "request_id": handle.request_id,
        "urls": [handle.response_url, handle.status_url, handle.cancel_url],
        "first_status": first_status,
        "events": events,
        "result": result,
        "by_id_status": by_id_status,
        "by_id_result": by_id_result,
        "cancel_completed": cancel_completed,
    }


def sync_cancel(options: argparse.Namespace) -> dict[str, Any]:
    handle = fal_client.submit(APP, arguments=BASE_INPUT)
    fal_client.cancel(APP, handle.request_id)
    final = None
    for status in handle.iter_events(with_logs=False, interval=POLL_INTERVAL_S):
        final = status
    return {
        "request_id": handle.request_id,
        "final_status": describe_status(final) if final is not None else None,
        "result_error": expect_http_error(lambda: fal_client.result(APP, handle.request_id)),
        "unknown_status": expect_http_error(lambda: fal_client.status(APP, UNKNOWN_REQUEST_ID)),
        "unknown_cancel": expect_http_error(lambda: fal_client.cancel(APP, UNKNOWN_REQUEST_ID)),
    }


def sync_run(options: argparse.Namespace) -> dict[str, Any]:
    # Two JPEG images in one request: every image of a batch must come back.
    arguments = {**BASE_INPUT, "num_images": 2, "output_format": "jpeg", "seed": 11}
    return {"result": fal_client.run(APP, arguments=arguments)}


def sync_validation(options: argparse.Namespace) -> dict[str, Any]:
    return {
        "subscribe": expect_http_error(lambda: fal_client.subscribe(APP, arguments=BAD_INPUT)),
        "run": expect_http_error(lambda: fal_client.run(APP, arguments=BAD_INPUT)),
    }


# ---------------------------------------------------------------- AsyncClient


async def async_scenarios(options: argparse.Namespace) -> dict[str, dict[str, Any]]:
    client = fal_client.AsyncClient()

    async def subscribe() -> dict[str, Any]:
        updates: list[dict[str, Any]] = []

        async def on_queue_update(status: fal_client.Status) -> None:
            updates.append(describe_status(status))

        result = await client.subscribe(APP, arguments=BASE_INPUT, with_logs=True, on_queue_update=on_queue_update)
        return {"updates": updates, "result": result}

    async def submit() -> dict[str, Any]:
        handle = await client.submit(APP, arguments={**BASE_INPUT, "seed": 8}, priority="low")
        first_status = describe_status(await handle.status(with_logs=True))
        events = [
            describe_status(status) async for status in handle.iter_events(with_logs=True, interval=POLL_INTERVAL_S)
        ]
        result = await handle.get()
        by_id_status = describe_status(await client.status(APP, handle.request_id, with_logs=True))
        by_id_result = await client.result(APP, handle.request_id)
        cancel_completed = await expect_http_error_async(lambda: client.cancel(APP, handle.request_id))
        return {
            "request_id": handle.request_id,
            "first_status": first_status,
            "events": events,
            "result": result,
            "by_id_status": by_id_status,
            "by_id_result": by_id_result,
            "cancel_completed": cancel_completed,
        }

    async def cancel() -> dict[str, Any]:
        handle = await client.submit(APP, arguments=BASE_INPUT)
        await handle.cancel()  # through the cancel_url the server returned (the sync test uses the id)
        final = None
        async for status in handle.iter_events(interval=POLL_INTERVAL_S):
            final = status
        return {
            "request_id": handle.request_id,
            "final_status": describe_status(final) if final is not None else None,
            "result_error": await expect_http_error_async(lambda: client.result(APP, handle.request_id)),
        }

    async def run() -> dict[str, Any]:
        # sync_mode: the image comes back inline as a data URI and nothing is stored.
        return {"result": await client.run(APP, arguments={**BASE_INPUT, "sync_mode": True})}

    async def validation() -> dict[str, Any]:
        return {
            "subscribe": await expect_http_error_async(lambda: client.subscribe(APP, arguments=BAD_INPUT)),
            "run": await expect_http_error_async(lambda: client.run(APP, arguments=BAD_INPUT)),
        }

    scenarios = {
        "subscribe": subscribe,
        "submit": submit,
        "cancel": cancel,
        "run": run,
        "validation": validation,
    }
    return {name: await capture_async(body) for name, body in scenarios.items()}


# ---------------------------------------------------------------- wrong key


def wrong_key(options: argparse.Namespace) -> dict[str, Any]:
    return {
        "submit": expect_http_error(lambda: fal_client.submit(APP, arguments=BASE_INPUT)),
        "run": expect_http_error(lambda: fal_client.run(APP, arguments=BASE_INPUT)),
        "status": expect_http_error(lambda: fal_client.status(APP, UNKNOWN_REQUEST_ID)),
    }


def key_pair(options: argparse.Namespace) -> dict[str, Any]:
    # Run with FAL_KEY_ID + FAL_KEY_SECRET instead of FAL_KEY: an unknown id is then a 404, not a 401.
    return {"status": expect_http_error(lambda: fal_client.status(APP, UNKNOWN_REQUEST_ID))}


# ---------------------------------------------------------------- plumbing


def capture(body: Callable[[argparse.Namespace], dict[str, Any]], options: argparse.Namespace) -> dict:
    started = time.monotonic()
    try:
        outcome = {"ok": True, **body(options)}
    except Exception as exc:  # reported to the test, which fails with the traceback
        outcome = {"ok": False, "error": describe_error(exc), "traceback": traceback.format_exc()}
    outcome["elapsed_s"] = round(time.monotonic() - started, 3)
    return outcome


async def capture_async(body: Callable[[], Awaitable[dict[str, Any]]]) -> dict:
    started = time.monotonic()
    try:
        outcome = {"ok": True, **await body()}
    except Exception as exc:
        outcome = {"ok": False, "error": describe_error(exc), "traceback": traceback.format_exc()}
    outcome["elapsed_s"] = round(time.monotonic() - started, 3)
    return outcome


SYNC_SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "subscribe": sync_subscribe,
    "submit": sync_submit,
    "cancel": sync_cancel,
    "run": sync_run,
    "validation": sync_validation,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=["sync", "async", "wrong_key", "key_pair"])
    parser.add_argument("--webhook-url", help="webhook receiver for the submit scenario (sync group)")
    parser.add_argument("--only", help="comma-separated scenario names of the sync group (debugging)")
    options = parser.parse_args(argv)

    if options.group == "sync":
        names = options.only.split(",") if options.only else list(SYNC_SCENARIOS)
        report = {name: capture(SYNC_SCENARIOS[name], options) for name in names}
    elif options.group == "async":
        report = asyncio.run(async_scenarios(options))
    elif options.group == "wrong_key":
        report = {"wrong_key": capture(wrong_key, options)}
    else:
        report = {"key_pair": capture(key_pair, options)}
    report["client_version"] = fal_client.__version__
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
