"""The report: per-phase percentiles, throughput, errors by kind, goodput under an SLO, and the
comparison with the server's own metrics; written as JSON and CSV and printed as a table.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from loadtest.samples import PHASE_TITLES, PHASES, Sample

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    summary: dict[str, float | int] = {"count": len(ordered)}
    for p in PERCENTILES:
        summary[f"p{p}"] = percentile(ordered, p)
    summary["max"] = ordered[-1]
    summary["mean"] = sum(ordered) / len(ordered)
    return summary


def queue_overhead_s(sample: Sample) -> float | None:
    """Time to the result (end to end less the download) minus the inference time the endpoint reported."""
    if not sample.ok or sample.reported_inference_s is None or "e2e" not in sample.phases:
        return None
    to_result = sample.phases["e2e"] - sample.phases.get("download", 0.0)
    return to_result - sample.reported_inference_s


def build_report(
    samples: Sequence[Sample],
    *,
    config: dict[str, Any],
    wall_s: float,
    slo_s: float | None = None,
    server: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the kit prints and writes, from the samples of one run."""
    ok = [s for s in samples if s.ok]
    errors = Counter(s.error for s in samples if s.error)
    if samples:
        window = max(s.finished_at for s in samples) - min(s.started_at for s in samples)
    else:
        window = 0.0
    window = window if window > 0 else wall_s
    images = sum(s.images for s in ok)
    phases = {}
    for phase in PHASES:
        values = [s.phases[phase] for s in ok if phase in s.phases]
        if values:
            phases[phase] = summarize(values)
    overheads = [v for v in (queue_overhead_s(s) for s in samples) if v is not None]
    report: dict[str, Any] = {
        "config": config,
        "wall_s": wall_s,
        "window_s": window,
        "requests": {
            "sent": len(samples),
            "ok": len(ok),
            "errors": sum(errors.values()),
            "lost": errors.get("lost", 0),
            "completed_by_endpoint": sum(1 for s in samples if s.completed),
        },
        "throughput": {
            "requests_per_s": len(ok) / window if window else 0.0,
            "images_per_s": images / window if window else 0.0,
            "images": images,
            "image_bytes": sum(s.image_bytes for s in ok),
        },
        "phases": phases,
        "queue_overhead": summarize(overheads),
        "errors": dict(errors.most_common()),
        "in_progress_seen": sum(1 for s in ok if s.in_progress_seen),
    }
    if slo_s is not None:
        good = sum(1 for s in ok if s.phases.get("e2e", math.inf) <= slo_s)
        report["goodput"] = {
            "slo_s": slo_s,
            "good": good,
            "ratio": good / len(samples) if samples else 0.0,
            "requests_per_s": good / window if window else 0.0,
        }
    if server is not None:
        report["server"] = compare_with_server(samples, server)
    return report


def compare_with_server(samples: Sequence[Sample], server: dict[str, float]) -> dict[str, Any]:
    """The kit's counts and inference seconds next to the deltas of the server's /metrics over the run."""
    ok = [s for s in samples if s.ok]
    kit = {
        "completed": sum(1 for s in samples if s.completed),
        "completed_ok": len(ok),
        "inference_s_reported": sum(s.reported_inference_s or 0.0 for s in ok),
        "inference_s_observed": sum(s.phases.get("inference", 0.0) for s in ok if s.in_progress_seen),
        "observed_requests": sum(1 for s in ok if s.in_progress_seen),
    }
    pairs = {
        "completed": (kit["completed"], server.get("completed", 0.0)),
        "completed_ok": (kit["completed_ok"], server.get("completed_ok", 0.0)),
        "inference_s_reported": (kit["inference_s_reported"], server.get("inference_s", 0.0)),
    }
    if kit["observed_requests"] == kit["completed_ok"]:  # every request's IN_PROGRESS was seen
        pairs["inference_s_observed"] = (kit["inference_s_observed"], server.get("inference_s", 0.0))
    agreement = {
        name: {"kit": k, "server": v, "relative_difference": (k - v) / v if v else (0.0 if k == v else math.inf)}
        for name, (k, v) in pairs.items()
    }
    return {"kit": kit, "server": server, "agreement": agreement}


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=False, default=_nan_safe))


def _nan_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def write_csv(report: dict[str, Any], samples: Sequence[Sample], prefix: str | Path) -> list[Path]:
    """``PREFIX_phases.csv`` (one row per phase) and ``PREFIX_requests.csv`` (one row per request)."""
    phases_path, requests_path = Path(f"{prefix}_phases.csv"), Path(f"{prefix}_requests.csv")
    columns = ["count", *[f"p{p}" for p in PERCENTILES], "max", "mean"]
    with phases_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phase", *[f"{c}_s" if c != "count" else c for c in columns]])
        for phase, summary in [*report["phases"].items(), ("queue_overhead", report["queue_overhead"])]:
            writer.writerow([phase, *[summary.get(c, "") for c in columns]])
    with requests_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        head = ["request_id", "started_at", "error", "images", "image_bytes", "reported_inference_s"]
        writer.writerow([*head, *[f"{p}_s" for p in PHASES]])
        for s in samples:
            row: list[object] = [s.request_id, f"{s.started_at:.6f}", s.error or "", s.images, s.image_bytes]
            row.append("" if s.reported_inference_s is None else s.reported_inference_s)
            writer.writerow([*row, *[s.phases.get(p, "") for p in PHASES]])
    return [phases_path, requests_path]


def render_text(report: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    req, thr = report["requests"], report["throughput"]
    lines = [
        f"requests: {req['sent']} sent, {req['ok']} ok, {req['errors']} errors ({req['lost']} lost) "
        f"in {report['window_s']:.1f} s",
        f"throughput: {thr['requests_per_s']:.2f} requests/s, {thr['images_per_s']:.2f} images/s",
        "",
        f"{'phase':<42}{'count':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}   (seconds)",
    ]
    rows = [(PHASE_TITLES[p], s) for p, s in report["phases"].items()]
    if report["queue_overhead"].get("count"):
        rows.append(("queue overhead (to result - inference_time)", report["queue_overhead"]))
    for title, s in rows:
        figures = "".join(f"{s[k]:>9.3f}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{title:<42}{s['count']:>7}{figures}")
    if report["errors"]:
        lines += ["", "errors: " + ", ".join(f"{kind} x{n}" for kind, n in report["errors"].items())]
    if "goodput" in report:
        g = report["goodput"]
        lines.append(
            f"goodput (ok within {g['slo_s']:g} s): {g['good']} requests, {100 * g['ratio']:.1f} %, "
            f"{g['requests_per_s']:.2f} requests/s"
        )
    if "server" in report:
        lines += ["", "kit vs server /metrics (delta over the run):"]
        for name, a in report["server"]["agreement"].items():
            lines.append(
                f"  {name:<22} kit {a['kit']:>12.3f}   server {a['server']:>12.3f}   "
                f"difference {100 * a['relative_difference']:+.2f} %"
            )
    return "\n".join(lines)
