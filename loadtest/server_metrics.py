"""The server's own figures (``/metrics``, Prometheus text) before and after a run, for comparison.

Only this server exposes them (fal's hosted endpoint does not): when the scrape fails the report
simply has no comparison. The deltas include any other traffic the server had during the run.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import httpx

LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


def parse(text: str) -> dict[str, float]:
    """``completed`` (all outcomes), ``completed_ok`` and ``inference_s`` / ``inference_count``."""
    out = {"completed": 0.0, "completed_ok": 0.0, "inference_s": 0.0, "inference_count": 0.0}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        name, labels, value = match["name"], match["labels"] or "", float(match["value"])
        if name == "bitdance_requests_completed_total":
            out["completed"] += value
            if 'outcome="ok"' in labels:
                out["completed_ok"] += value
        elif name == "bitdance_inference_seconds_sum":
            out["inference_s"] = value
        elif name == "bitdance_inference_seconds_count":
            out["inference_count"] = value
    return out


def scrape(base_url: str, headers: dict[str, str], verify: Any = True) -> dict[str, float] | None:
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/metrics", headers=headers, verify=verify, timeout=10.0)
    except (httpx.HTTPError, ssl.SSLError):
        return None
    if response.status_code != 200 or "bitdance_" not in response.text:
        return None
    return parse(response.text)


def delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    return {name: after[name] - before.get(name, 0.0) for name in after}
