"""The load-test kit's pure parts: percentiles, the report, server metrics parsing, options, sweep chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import inputs, report, server_metrics, sweep
from loadtest.config import LoadConfig
from loadtest.samples import Sample


def sample(start: float, e2e: float, error: str | None = None, inference: float = 2.0, **phases: float) -> Sample:
    s = Sample(started_at=start, error=error, images=0 if error else 1, completed=True, in_progress_seen=True)
    s.phases = {"submit": 0.01, "queue_wait": 0.1, "inference": inference + 0.02, "download": 0.05, "e2e": e2e}
    s.phases.update(phases)
    s.reported_inference_s = inference
    return s


def test_percentiles_nearest_rank() -> None:
    values = list(range(1, 101))
    assert report.percentile(values, 50) == 50 and report.percentile(values, 99) == 99
    assert report.percentile(values, 100) == 100 and report.percentile([7.0], 90) == 7.0
    summary = report.summarize([3.0, 1.0, 2.0])
    assert summary == {"count": 3, "p50": 2.0, "p90": 3.0, "p99": 3.0, "max": 3.0, "mean": 2.0}
    assert report.summarize([]) == {"count": 0}


def test_report_throughput_errors_goodput_and_server_agreement() -> None:
    samples = [sample(100.0 + i, 2.5 + 0.1 * i) for i in range(8)]
    samples.append(sample(101.0, 1.0, error="runner_server_error"))
    samples.append(Sample(started_at=102.0, error="lost", phases={"e2e": 3.0}))
    server = {"completed": 9.0, "completed_ok": 8.0, "inference_s": 16.0, "inference_count": 8.0}
    data = report.build_report(samples, config={}, wall_s=20.0, slo_s=3.0, server=server)
    assert data["requests"] == {"sent": 10, "ok": 8, "errors": 2, "lost": 1, "completed_by_endpoint": 9}
    assert data["errors"] == {"runner_server_error": 1, "lost": 1}
    assert data["window_s"] == pytest.approx(107.0 + 3.2 - 100.0)
    assert data["throughput"]["requests_per_s"] == pytest.approx(8 / 10.2)
    assert data["goodput"]["good"] == 6 and data["goodput"]["ratio"] == pytest.approx(0.6)
    assert data["phases"]["e2e"]["count"] == 8 and data["phases"]["e2e"]["max"] == pytest.approx(3.2)
    # queue overhead: e2e - download - reported inference
    assert data["queue_overhead"]["p50"] == pytest.approx(2.8 - 0.05 - 2.0)
    agreement = data["server"]["agreement"]
    assert agreement["completed"]["relative_difference"] == 0.0
    assert agreement["inference_s_reported"]["relative_difference"] == pytest.approx(0.0)
    assert agreement["inference_s_observed"]["kit"] == pytest.approx(8 * 2.02)
    text = report.render_text(data)
    assert "queue wait" in text and "goodput" in text and "runner_server_error x1" in text


def test_json_and_csv_outputs(tmp_path: Path) -> None:
    samples = [sample(1.0, 2.5), sample(2.0, 2.7)]
    data = report.build_report(samples, config={"url": "x"}, wall_s=3.0)
    report.write_json(data, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["requests"]["ok"] == 2
    phases, requests = report.write_csv(data, samples, tmp_path / "run")
    assert phases.read_text().splitlines()[0] == "phase,count,p50_s,p90_s,p99_s,max_s,mean_s"
    assert len(requests.read_text().splitlines()) == 3


def test_server_metrics_parse_and_delta() -> None:
    text = "\n".join(
        [
            "# HELP bitdance_requests_completed_total Completed requests",
            'bitdance_requests_completed_total{outcome="ok"} 10.0',
            'bitdance_requests_completed_total{outcome="runner_server_error"} 2.0',
            "bitdance_inference_seconds_sum 21.5",
            "bitdance_inference_seconds_count 10.0",
            'bitdance_inference_seconds_bucket{le="1.0"} 0.0',
        ]
    )
    parsed = server_metrics.parse(text)
    assert parsed == {"completed": 12.0, "completed_ok": 10.0, "inference_s": 21.5, "inference_count": 10.0}
    later = {**parsed, "completed": 15.0, "inference_s": 30.0}
    assert server_metrics.delta(parsed, later)["completed"] == 3.0
    assert server_metrics.delta(None, later) is None


def test_config_urls_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "k1")
    local = LoadConfig(url="http://127.0.0.1:8000/", inputs=[{"prompt": "x"}], concurrency=2, requests=3)
    assert local.submit_url == "http://127.0.0.1:8000/queue/fal-ai/bitdance"
    assert local.run_url == "http://127.0.0.1:8000/fal-ai/bitdance"
    assert local.auth_headers == {"Authorization": "Key k1"} and local.public_dict()["key"] == "***"
    local.check()
    fal = LoadConfig(url="https://fal.run")
    assert fal.is_fal_hosted and fal.submit_url == "https://queue.fal.run/fal-ai/bitdance"
    assert LoadConfig(url="https://queue.example.com").queue_base == "https://queue.example.com"
    with pytest.raises(ValueError, match="exactly one load shape"):
        LoadConfig(inputs=[{"prompt": "x"}], requests=1).check()
    with pytest.raises(ValueError, match="--requests N or --duration"):
        LoadConfig(inputs=[{"prompt": "x"}], rate=1.0).check()


def test_inputs_builtin_mix_and_jsonl(tmp_path: Path) -> None:
    mix = inputs.builtin_mix(50)
    assert len(mix) == 50 and mix == inputs.builtin_mix(50)
    assert {m["image_size"] for m in mix} >= {"square_hd", "landscape_4_3"}
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "num_images": 2}\n')
    assert inputs.load_jsonl(path) == [{"prompt": "a"}, {"prompt": "b", "num_images": 2}]
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="JSON object"):
        inputs.load_jsonl(path)
    first = inputs.cycle([{"n": 1}, {"n": 2}, {"n": 3}], offset=1)
    assert [next(first)["n"] for _ in range(4)] == [2, 3, 1, 2]


def test_sweep_arguments_and_chart(tmp_path: Path) -> None:
    argv = ["--url", "http://h", "--sweep", "1,2", "--requests", "5", "--json=x.json", "--chart", "c.png", "--master"]
    assert sweep.base_argv(argv) == ["--url", "http://h", "--requests", "5"]
    assert sweep.rates_of("1, 2.5") == [1.0, 2.5]
    with pytest.raises(ValueError):
        sweep.rates_of("0")
    points = []
    for rate in (1.0, 2.0):
        data = report.build_report([sample(1.0, 2.0 + rate)], config={}, wall_s=1.0, slo_s=3.5)
        points.append((rate, data))
    assert "offered/s" in sweep.render_table(points)
    chart = tmp_path / "sweep.png"
    sweep.draw_chart(points, chart, 3.5)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
