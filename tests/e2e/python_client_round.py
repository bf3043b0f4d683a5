"""One submit -> status -> result -> cancel round with whichever ``fal_client`` release is importable.

The version matrix (``test_e2e_python_client_versions.py``) runs this once per pinned release, each
from its own ``pip install --target`` folder placed first on ``PYTHONPATH``, with the settings README
gives for that release (``FAL_RUN_HOST`` is read at import time, so every run is a fresh interpreter)::

    PYTHONPATH=.run/fal-clients/0.10.0 FAL_KEY=... FAL_RUN_HOST=localhost:PORT SSL_CERT_FILE=ca.pem \
        python tests/e2e/python_client_round.py OUT_DIR

Releases differ in what they offer (0.1-0.5.2 have no cancel and no by-id calls; 0.1.0 takes the
input positionally only), so the round uses only the public API of the release it runs on and says
in ``calls`` what it used: the test checks that list against the release, so a call cannot be
skipped silently. Errors are reported with the HTTP status a user can reach on that release
(``exc.status_code`` from 0.8 on, ``exc.__cause__.response.status_code`` before). Each image is
downloaded here, by a plain GET in the client's own environment (the host it names may resolve
only there), and saved under OUT_DIR for the test to decode. Prints one JSON document.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fal_client
import httpx

APP = "fal-ai/bitdance"
# The 16x tiny checkpoint serves 512x512 ("square"); 10 steps is the smallest allowed count and guidance
# 1.0 turns classifier-free guidance off (half the work): the round is about the protocol.
BASE_INPUT: dict[str, Any] = {
    "prompt": "a red cube on a wooden table",
    "image_size": "square",
    "num_inference_steps": 10,
    "guidance_scale": 1.0,
    "seed": 21,
    "output_format": "png",
}
KEPT_LOG_ENTRIES = 3


def describe_status(status: Any) -> dict[str, Any]:
    """A ``Status`` dataclass of any release as JSON: class name, fields, and the log count."""
    described = {"type": type(status).__name__, **dataclasses.asdict(status)}
    logs = described.get("logs")
    if isinstance(logs, list):
        described["log_count"] = len(logs)
        if described["type"] != "Completed":
            described["logs"] = logs[-KEPT_LOG_ENTRIES:]
    return described


def http_status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a client error, wherever this release keeps it."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "status_code", None)
        if isinstance(code, int):
            return code
        response = getattr(seen, "response", None)
        if response is not None and isinstance(getattr(response, "status_code", None), int):
            return int(response.status_code)
        seen = seen.__cause__
    return None


def expect_error(call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call``; describe what it raised, or say that it returned."""
    try:
        value = call()
    except Exception as exc:  # old releases raise httpx errors, newer ones FalClientError subclasses
        return {"raised": type(exc).__name__, "message": str(exc)[:500], "status_code": http_status_of(exc)}
    return {"raised": None, "returned": value}


def last_status(handle: Any) -> dict[str, Any]:
    final = None
    for status in handle.iter_events(with_logs=False):
        final = status
    assert final is not None, "iter_events yielded nothing"
    return describe_status(final)


def download_images(output: dict[str, Any], out_dir: Path, name: str) -> list[dict[str, Any]]:
    """GET every image URL as a user would (no credentials) and save the bytes for the test."""
    saved = []
    for index, image in enumerate(output.get("images") or []):
        response = httpx.get(image["url"], timeout=30)
        path = out_dir / f"{name}-{index}.bin"
        path.write_bytes(response.content)
        saved.append(
            {
                "url": image["url"],
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "content_length": response.headers.get("content-length"),
                "path": str(path),
            }
        )
    return saved


def round_trip(out_dir: Path) -> dict[str, Any]:
    calls: list[str] = []
    report: dict[str, Any] = {"calls": calls}
    can_cancel = hasattr(fal_client, "cancel")
    by_id = hasattr(fal_client, "status") and hasattr(fal_client, "result")

    handle = fal_client.submit(APP, BASE_INPUT)  # positional: 0.1.0 names the parameter "data"
    calls.append("submit")
    report["submitted"] = {
        "request_id": handle.request_id,
        "urls": [handle.response_url, handle.status_url, handle.cancel_url],
    }
    if can_cancel:
        # Submitted right behind the first one, so it is still waiting when it is cancelled.
        victim = fal_client.submit(APP, {**BASE_INPUT, "seed": 22})
        report["cancel_queued"] = expect_error(lambda: fal_client.cancel(APP, victim.request_id))
        calls.append("cancel")

    report["first_status"] = describe_status(handle.status(with_logs=True))
    report["events"] = [describe_status(status) for status in handle.iter_events(with_logs=True)]
    calls.append("status")
    report["result"] = handle.get()
    calls.append("result")
    report["downloads"] = download_images(report["result"], out_dir, "result")

    if by_id:
        report["by_id_status"] = describe_status(fal_client.status(APP, handle.request_id, with_logs=True))
        report["by_id_result"] = fal_client.result(APP, handle.request_id)
        calls.append("by_id")
    if can_cancel:
        report["cancel_completed"] = expect_error(lambda: fal_client.cancel(APP, handle.request_id))
        report["cancelled_final_status"] = last_status(victim)
        report["cancelled_result"] = expect_error(victim.get)
    return report


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "client_version": importlib.metadata.version("fal-client"),
        "client_file": fal_client.__file__,
    }
    try:
        report.update(ok=True, **round_trip(out_dir))
    except Exception as exc:  # reported to the test, which fails with the traceback
        report.update(ok=False, error=repr(exc), status_code=http_status_of(exc), traceback=traceback.format_exc())
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    json.dump(report, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
